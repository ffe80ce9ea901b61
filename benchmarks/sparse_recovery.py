"""Ground-truth feature recovery of every registered architecture on toy data with known features.

The data (``ToyData``) are sparse non-negative combinations of ``--features`` random unit
directions in ``--d`` dimensions (more features than dimensions: superposition), firing with
power-law frequencies (feature i with probability proportional to (i + 1) ** -exponent,
``--mean-active`` features per row on average). Every registered architecture trains on the
same token stream (one ``Trainer``, one loader) for the same number of tokens. Reported on
held-out rows: FVU, L0 and dead latents of the exported coder (scaling folded, BatchTopK as
JumpReLU), and its recovery of the true directions (``circuitlab.sparse.recovery``): MMCS and
the fraction of features whose best decoder cosine reaches ``--threshold``, overall and for
the most common and the rarest quarter of the features.

ReLU's L1 and JumpReLU's L0 coefficients set their L0 only indirectly. The defaults were picked
from 1M-token runs so that the held-out L0 lands near TopK's k (ReLU l1 5: L0 4.7; JumpReLU
l0 1: 4.9), comparing the architectures at a similar sparsity; a second ReLU row (l1 1) shows
ReLU where its L0 is free to be higher (``--l1`` takes several values):

    python benchmarks/sparse_recovery.py --archs topk batchtopk relu jumprelu   # 1 thread, minutes
    python benchmarks/sparse_recovery.py            # every registered architecture
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

# The pieces below are shared with sparse_recovery_peers.py, whose workers import this module from
# peer venvs without circuitlab: circuitlab imports stay inside the functions.


def add_toy_args(ap: argparse.ArgumentParser) -> None:
    """Arguments of the toy data, the training stream and the scoring, alike in every recovery benchmark."""
    ap.add_argument("--d", type=int, default=64, help="activation width")
    ap.add_argument("--features", type=int, default=256, help="true features (directions)")
    ap.add_argument("--exponent", type=float, default=1.0, help="power-law exponent of feature frequencies")
    ap.add_argument("--mean-active", type=float, default=5.0, help="active features per row, on average")
    ap.add_argument("--noise", type=float, default=0.01, help="Gaussian noise per dimension")
    ap.add_argument("--d-sae", type=int, default=512, help="latents per coder")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=64, help="training shards the loader cycles through")
    ap.add_argument("--shard-tokens", type=int, default=4096)
    ap.add_argument("--held-shards", type=int, default=4, help="held-out shards for FVU / L0")
    ap.add_argument("--threshold", type=float, default=0.9, help="cosine at which a feature counts as recovered")
    ap.add_argument("--threads", type=int, default=1)


def toy_data(a: argparse.Namespace):
    """The ``ToyData`` that ``add_toy_args``'s arguments and ``--seed`` describe."""
    from circuitlab.sparse.synthetic import ToyData

    return ToyData(d=a.d, n_features=a.features, freq_exponent=a.exponent, mean_active=a.mean_active,
                   noise=a.noise, shard_tokens=a.shard_tokens, seed=a.seed)


def toy_loader(data, a: argparse.Namespace, cls: type | None = None):
    """The training stream every coder sees (``cls``: a ``ShardLoader`` subclass to serve it instead)."""
    from circuitlab.sparse.store import ShardLoader

    return (cls or ShardLoader)(data.shard, a.shards, a.batch, seed=a.seed)


def held_out(data, a: argparse.Namespace) -> torch.Tensor:
    """Held-out rows: shards far past any the training stream reaches."""
    return torch.cat([data.shard(10_000 + j).x for j in range(a.held_shards)])


def frequency_quarters(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the most common and of the rarest quarter of the true features."""
    order = torch.argsort(data.probs, descending=True)
    quarter = max(1, len(order) // 4)
    return order[:quarter], order[-quarter:]


def recovery_scores(r: dict, common: torch.Tensor, rare: torch.Tensor, threshold: float) -> dict:
    """MMCS and recovered fractions (overall, common and rare quarter) from a ``recovery`` result."""
    best = torch.tensor(r["per_feature"])
    return {
        "mmcs": r["mmcs"], "recovered": r["recovered"],
        "recovered_common_quarter": float((best[common] >= threshold).double().mean()),
        "recovered_rare_quarter": float((best[rare] >= threshold).double().mean()),
    }


def toy_settings(a: argparse.Namespace) -> dict:
    """The toy data's settings as the results JSON records them."""
    return {"d": a.d, "n_features": a.features, "freq_exponent": a.exponent, "mean_active": a.mean_active,
            "noise": a.noise}


def run(a: argparse.Namespace) -> dict:
    from circuitlab.sparse.base import config_class, load_architectures, make_coder
    from circuitlab.sparse.evaluate import reconstruction_metrics
    from circuitlab.sparse.recovery import coder_recovery
    from circuitlab.sparse.trainer import TrainConfig, Trainer

    data = toy_data(a)
    registered = load_architectures()
    archs = a.archs or sorted(registered)
    unknown = [x for x in archs if x not in registered]
    if unknown:
        raise SystemExit(f"unknown architecture(s) {unknown}; registered: {', '.join(sorted(registered))}")
    # coder seeds differ from the data seed: ToyData and a coder seeded alike draw the same first
    # torch.randn rows, which would start an autoencoder's decoder on the true directions
    runs = []  # (row name, arch, config overrides)
    for arch in archs:
        fields = {f.name for f in dataclasses.fields(config_class(arch))}
        if arch == "relu":
            runs += [("relu" if i == 0 else f"relu_l1={v:g}", arch, dict(l1_coeff=v)) for i, v in enumerate(a.l1)]
        elif arch == "jumprelu":
            runs.append((arch, arch, dict(l0_coeff=a.l0_coeff)))
        else:
            runs.append((arch, arch, dict(k=a.k) if "k" in fields else {}))
    coders, extra = {}, {}
    for i, (name, arch, kw) in enumerate(runs):
        coders[name] = make_coder(config_class(arch)(d_in=a.d, d_sae=a.d_sae, seed=a.seed + 1000 + i, **kw))
        extra[name] = dict(arch=arch, **kw)
    reference = {n: coder_recovery(c, data.dirs, a.threshold) for n, c in coders.items()}
    cfg = TrainConfig(total_tokens=a.tokens, batch_size=a.batch, progress=False, checkpoint_every=0)
    loader = toy_loader(data, a)
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(coders, loader, cfg, out)
        t.run(sample=data.shard(0))
        exported = {n: t.export(n) for n in coders}
    held = held_out(data, a)
    common, rare = frequency_quarters(data)
    rows = {}
    for n, c in exported.items():
        m = reconstruction_metrics(c, held)
        rows[n] = {
            "config": extra[n],
            "fvu": m["fvu"], "l0": m["l0"], "dead_fraction": m["dead_fraction"],
            **recovery_scores(coder_recovery(c, data.dirs, a.threshold), common, rare, a.threshold),
            "mmcs_at_init": reference[n]["mmcs"], "recovered_at_init": reference[n]["recovered"],
        }
    return {
        "command": "python benchmarks/sparse_recovery.py " + " ".join(sys.argv[1:]),
        "settings": {
            **toy_settings(a), "feature_prob_max": float(data.probs.max()), "feature_prob_min": float(data.probs.min()),
            "d_sae": a.d_sae, "tokens": a.tokens, "batch": a.batch, "lr": "default_lr (8e-4 / sqrt(d_sae / 2^14))",
            "threshold": a.threshold, "held_out_tokens": int(held.shape[0]), "threads": a.threads, "seed": a.seed,
            "training": "all coders on one token stream (one Trainer), default TrainConfig schedule",
            "common/rare quarter": f"the {len(common)} most / least frequent features",
        },
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=None, help="architectures (default: every registered one)")
    add_toy_args(ap)
    ap.add_argument("--k", type=int, default=5, help="TopK / BatchTopK k")
    ap.add_argument("--l1", type=float, nargs="+", default=[5.0, 1.0],
                    help="ReLU L1 coefficient(s): the first is the 'relu' row, others are extra rows")
    ap.add_argument("--l0-coeff", type=float, default=1.0, help="JumpReLU L0 coefficient")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per coder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="benchmarks/results/sparse_recovery.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = run(a)
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    for n, r in res["results"].items():
        print(f"{n:10s} FVU {r['fvu']:.4f}  L0 {r['l0']:6.2f}  MMCS {r['mmcs']:.3f}  recovered {r['recovered']:.3f}"
              f"  (common {r['recovered_common_quarter']:.2f}, rare {r['recovered_rare_quarter']:.2f})"
              f"  dead {r['dead_fraction']:.3f}")


if __name__ == "__main__":
    main()
