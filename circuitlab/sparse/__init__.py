"""Sparse coders: SAEs, transcoders and crosscoders — training, evaluation, files, dashboards.

Architectures live one file each in ``circuitlab/sparse/architectures/`` and register by name
(``ARCHITECTURES``; how to add one: docs/extending.md). Transcoders and crosscoders are the same
coders with other input/output sites (``transcoder.py``, ``crosscoder.py``).
"""

from circuitlab.sparse.base import (
    ARCHITECTURES, CoderConfig, LossContext, SparseCoder, config_class, load_architectures, make_coder,
)
from circuitlab.sparse.crosscoder import crosscoder_config, source_shares
from circuitlab.sparse.files import load_coder, save_coder
from circuitlab.sparse.transcoder import transcoder_config

__all__ = ["ARCHITECTURES", "CoderConfig", "LossContext", "SparseCoder", "config_class", "load_architectures",
           "make_coder", "crosscoder_config", "source_shares", "transcoder_config", "load_coder", "save_coder"]
# Further entry points (imported on use, they pull in the engine / plotly):
#   circuitlab.sparse.store      ActivationSource, ActivationCache, ShardLoader, Exclusion, keep_mask
#   circuitlab.sparse.trainer    Trainer, TrainConfig, NonFiniteLoss
#   circuitlab.sparse.quick      fit_coders (coders fitted in seconds on a few texts)
#   circuitlab.sparse.evaluate   evaluate, reconstruction_metrics, splice_metrics, density_histogram
#   circuitlab.sparse.splice     splice (coders in the model, latents as a site)
#   circuitlab.sparse.attribution patch_latents (exact / AtP on latents)
#   circuitlab.sparse.dashboard  latent_cards, save_dashboard
#   circuitlab.sparse.bundled    coders shipped with the package, find_coder
#   circuitlab.sparse.run        train_file (what `circuitlab train` runs)
#   circuitlab.sparse.supervised evaluate_supervised (coders scored against supervised IOI dictionaries)
