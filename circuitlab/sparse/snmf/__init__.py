"""SNMF of MLP activations: factors, their contexts, the difference-of-means baseline and the
steering test (Shafran et al. 2025, "Decomposing MLP Activations into Interpretable Features via
Semi-Nonnegative Matrix Factorization"). User guide: docs/snmf.md.

Modules: ``factorize`` (the factorisation itself, on any matrix), ``activations`` (MLP rows
through the engine, top contexts, concepts, difference of means), ``steering`` (the causal
test), ``report`` (everything for one layer, saved as safetensors + JSON + an offline page).
"""

from circuitlab.sparse.snmf.activations import (SITES, Activations, concept_share, concept_tokens, diff_means,
                                                mlp_activations, top_contexts)
from circuitlab.sparse.snmf.factorize import Factorization, SNMFConfig, match_factors, snmf
from circuitlab.sparse.snmf.steering import (SteeringConfig, SteeringTest, factor_steering, random_directions,
                                             rms_norm, steering_test)

__all__ = ["SITES", "Activations", "Factorization", "SNMFConfig", "SteeringConfig", "SteeringTest", "concept_share",
           "concept_tokens", "diff_means", "factor_steering", "match_factors", "mlp_activations", "random_directions",
           "rms_norm", "snmf", "steering_test", "top_contexts"]
