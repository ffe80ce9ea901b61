"""Coders fitted in seconds on a few texts: tests, demos and ``circuitlab graph --fit-quick``.

The same coders, activation source and trainer as ``circuitlab train``, on one shard held in
memory: every step is a full batch of the texts' tokens (BOS and special tokens excluded as the
configs say), and nothing is kept on disk. Good enough to exercise code that needs coders;
their quality is whatever a few hundred steps on a few hundred tokens give, so train properly
(``circuitlab train``) for anything you read features from.
"""

from __future__ import annotations

import tempfile
from typing import Sequence

from circuitlab.sparse.base import CoderConfig, SparseCoder, make_coder
from circuitlab.sparse.store import ActivationSource, Exclusion, ShardLoader, SourceSpec
from circuitlab.sparse.trainer import TrainConfig, Trainer


def fit_coders(model, texts: Sequence[str], configs: Sequence[CoderConfig], steps: int = 300, lr: float = 3e-3,
               ctx_len: int = 64) -> list[SparseCoder]:
    """One coder per config, trained for ``steps`` full-batch steps on the activations of
    ``texts`` and returned ready to use (scaling folded, BatchTopK as JumpReLU, on the model's
    device). Coders reading the same sites share one pass over the texts."""
    if not texts:
        raise ValueError("fit_coders needs at least one text")
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault((tuple(cfg.hooks_in), tuple(cfg.hooks_out)), []).append(i)
    out: dict[int, SparseCoder] = {}
    for idx in groups.values():
        first = configs[idx[0]]
        rows = ActivationSource([model], SourceSpec.of(first), Exclusion.of(first), ctx_len).rows(list(texts))
        if len(rows) == 0:
            raise ValueError(f"no token of the {len(texts)} texts reaches the coders at {first.hooks_in[0]} "
                             "(each text is only its BOS token?); give longer texts")
        coders = {str(i): make_coder(configs[i]) for i in idx}
        train = TrainConfig(total_tokens=steps * len(rows), batch_size=len(rows), lr=lr, init_tokens=len(rows),
                            checkpoint_every=0, progress=False)
        with tempfile.TemporaryDirectory(prefix="circuitlab-fit-") as tmp:
            trainer = Trainer(coders, ShardLoader(lambda i: rows, 1, len(rows)), train, tmp)
            trainer.run(sample=rows)
        out.update({i: trainer.export(str(i)).to(model.device) for i in idx})
    return [out[i] for i in range(len(configs))]
