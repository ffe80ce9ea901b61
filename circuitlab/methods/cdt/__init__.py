"""Contextual decomposition for transformers (CD-T; Hsu et al. 2024, "Efficient Automated
Circuit Discovery in Transformers using Contextual Decomposition").

Every activation is split into a *relevant* part, coming from chosen sources (a head's output,
an MLP's output, the clean-minus-corrupted difference of the input at some positions ...), and
an *irrelevant* rest, carried through norms (linearised around the full activation), attention
(values decomposed, patterns from the full forward pass) and MLPs (the nonlinearity split by
each part's share of the pre-activation) up to the logits and the task metric:

* :func:`decompose`: the parts at every layer and at the logits for any source sets;
* node method ``cdt`` (``cl.patch(model, task, sites, method="cdt")``): each node's relevance
  to the metric, in the units of exact patching;
* edge method ``cdt`` (``circuits.edges(model, task, method="cdt")``): each sender -> receiver
  edge's relevance, on the component graph of EAP.
"""

from circuitlab.methods.cdt import edges, node  # noqa: F401  (registers the methods)
from circuitlab.methods.cdt.decompose import Decomposition, decompose
from circuitlab.methods.cdt.rules import Rules

__all__ = ["decompose", "Decomposition", "Rules"]
