"""Transcoders: encode the MLP input, decode the MLP output (optionally plus a linear skip).

A transcoder is an ordinary sparse coder whose target is a different site; this file only
names the sites so that every architecture with a linear encoder can be a transcoder. The skip
connection ``x @ W_skip`` captures the MLP's linear part so latents are spent on its non-linear
computation.
"""

from __future__ import annotations

from circuitlab.sparse.base import CoderConfig, config_class
from circuitlab.sparse.splice import site_hook

MLP_IN = "resid_mid"
"""Default transcoder input: the residual stream entering the MLP's norm (``ln2.out``, the norm's
output, is the other common choice)."""
MLP_OUT = "mlp_out"
"""Transcoder target: the MLP's output written to the residual stream."""


def transcoder_config(arch: str, layer: int, d_model: int, d_sae: int, model: str = "", skip: bool = True,
                      hook_in: str = MLP_IN, **fields) -> CoderConfig:
    """Config of a transcoder for ``layer``'s MLP (``hook_in``, by default resid_mid -> mlp_out):
    ``hook_in`` is a hook point or a hook-name template with ``{layer}`` (see ``site_hook``)."""
    cls = config_class(arch)
    return cls(d_in=d_model, d_sae=d_sae, d_out=d_model, skip=skip,
               hooks_in=(site_hook(hook_in, layer),), hooks_out=(site_hook(MLP_OUT, layer),),
               models=(model,) if model else (), **fields)
