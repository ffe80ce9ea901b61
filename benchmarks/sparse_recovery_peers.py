"""Ground-truth feature recovery of TopK SAEs trained by SAE Lens and by sparsify, beside circuitlab's.

The same toy data as ``benchmarks/sparse_recovery.py`` (power-law feature frequencies, d 64, 256
features), the same token stream for every trainer, the same held-out rows and the same scoring:
the stream is what circuitlab's ``ShardLoader`` serves, dumped once to a safetensors file in
``--work``. circuitlab's TopK trains in this process (checked batch by batch against the dump);
each peer trains in a subprocess run by its own virtual environment's python (this file with
``--worker``, which imports only torch, safetensors, the peer and ``sparse_recovery``'s shared
pieces, whose module level needs only torch). Every coder is TopK with ``--k`` and ``--d-sae``
latents, trained for the same steps of ``--batch`` rows with its own trainer and that trainer's
defaults (learning rate, schedule, optimiser, normalisation, auxiliary loss, initialisation), and
scored with ``circuitlab.sparse.recovery.recovery`` on its decoder rows and with FVU (circuitlab's
definition) on its own reconstruction of the held-out rows. Coder seeds differ from the data seed
(see ``benchmarks/sparse_recovery.py``).

How each peer is fed tensors:

* SAE Lens: ``sae_lens.training.sae_trainer.SAETrainer`` with a ``TopKTrainingSAE`` and an
  iterator of activation batches as its ``data_provider``. This is the trainer that SAE Lens's
  own toy-data entry ``sae_lens.synthetic.train_toy_sae`` runs (that entry draws its own
  synthetic data and cannot replay a stream); ``SAETrainerConfig`` keeps its defaults, which are
  the ones ``train_toy_sae`` sets too (lr 3e-4 constant, dead window 1000 steps), and ``lr_end``,
  which ``SAETrainer`` requires, is set to the lr as ``train_toy_sae`` does. The SAE is
  saved with ``save_inference_model`` and loaded back with ``SAE.load_from_disk`` for scoring.
* sparsify: ``sparsify.Trainer`` (its only trainer), which hooks a module of a model and takes a
  dataset of ``input_ids``. The "model" here is a frozen ``nn.Embedding`` whose table is the
  stream and the dataset is the row indices in order, so the hooked module's output is exactly
  the stream's batches (sparsify does not shuffle). The final checkpoint is loaded with
  ``SparseCoder.load_from_disk`` (for its default schedule-free optimiser that holds the averaged
  weights, which are what sparsify saves).

Setup (each peer in its own venv, with the CPU torch pinned; ``sparsify`` on the package index
is an unrelated project, EleutherAI's is ``eai-sparsify``):

    python3.11 -m venv runs/peers/saelens && runs/peers/saelens/bin/pip install torch==2.13.0
    echo torch==2.13.0 > runs/peers/torch-pin.txt
    runs/peers/saelens/bin/pip install -c runs/peers/torch-pin.txt sae-lens==6.54.12
    python3.11 -m venv runs/peers/sparsify && runs/peers/sparsify/bin/pip install torch==2.13.0
    runs/peers/sparsify/bin/pip install -c runs/peers/torch-pin.txt eai-sparsify==1.3.3

Run (1 thread per process, one trainer at a time; about 3 minutes of CPU). The ``--variant`` rows
rerun a peer with some of its defaults set to circuitlab's (learning rate 8e-4 / sqrt(512 / 2^14)
= 0.0045255; a dead-latent window of about 200k tokens, so that the auxiliary loss starts within
the run), to see which defaults explain a gap. This is the command behind
``benchmarks/results/sparse_recovery_peers.json``:

    python benchmarks/sparse_recovery_peers.py --variant saelens:lr=0.0045255 \
        --variant saelens:lr=0.0045255,dead_feature_window=195 \
        --variant sparsify:auxk_alpha=0.03125,dead_feature_threshold=200000 \
        --variant sparsify:auxk_alpha=1,dead_feature_threshold=200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sparse_recovery import (add_toy_args, frequency_quarters, held_out, recovery_scores, toy_data, toy_loader,
                             toy_settings)

PEERS = ("saelens", "sparsify")
DIST = {"saelens": "sae-lens", "sparsify": "eai-sparsify"}


# --------------------------------------------------------------------------- workers (peer venvs)
def _split(overrides: dict, *classes) -> list[dict]:
    """Overrides grouped by the first config dataclass among ``classes`` that has the field."""
    import dataclasses

    groups: list[dict] = [{} for _ in classes]
    for key, value in overrides.items():
        for g, cls in zip(groups, classes):
            if key in {f.name for f in dataclasses.fields(cls)}:
                g[key] = value
                break
        else:
            names = sorted({f.name for cls in classes for f in dataclasses.fields(cls)})
            raise SystemExit(f"override {key!r} is no field of {', '.join(c.__name__ for c in classes)}; "
                             f"fields: {', '.join(names)}")
    return groups


def _stream(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(path)
    return t["train"], t["heldout"]


def _train_saelens(train: torch.Tensor, held: torch.Tensor, a: argparse.Namespace, tmp: str) -> tuple[dict, dict]:
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae_kw, trainer_kw = _split(a.overrides, TopKTrainingSAEConfig, SAETrainerConfig)
    torch.manual_seed(a.coder_seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(**{"d_in": train.shape[1], "d_sae": a.d_sae, "k": a.k, **sae_kw}))
    w_init = sae.W_dec.detach().clone()
    # lr_end must be given (SAETrainer asserts it); train_toy_sae sets it to lr, as here
    lr = trainer_kw.get("lr", SAETrainerConfig.lr)
    cfg = SAETrainerConfig(**{"total_training_samples": train.shape[0], "train_batch_size_samples": a.batch,
                              "device": "cpu", "lr_end": lr, **trainer_kw})
    batches = (train[i:i + a.batch] for i in range(0, train.shape[0], a.batch))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    trainer.fit()
    sc = sae.cfg
    defaults = {
        "entry": "sae_lens.training.sae_trainer.SAETrainer(TopKTrainingSAE, data_provider=iterator of batches)",
        "optimizer": "Adam", "lr": cfg.lr, "lr_schedule": cfg.lr_scheduler_name,
        "lr_warm_up_steps": cfg.lr_warm_up_steps, "lr_decay_steps": cfg.lr_decay_steps,
        "adam_betas": [cfg.adam_beta1, cfg.adam_beta2], "grad_clip_norm": 1.0,
        "loss": "sum over dims, mean over rows, of squared error (raw units) + aux",
        "aux_loss_coefficient": sc.aux_loss_coefficient, "dead_feature_window_steps": cfg.dead_feature_window,
        "normalize_activations": sc.normalize_activations, "apply_b_dec_to_input": sc.apply_b_dec_to_input,
        "rescale_acts_by_decoder_norm": sc.rescale_acts_by_decoder_norm, "decoder_init_norm": sc.decoder_init_norm,
        "b_dec_init": "zeros", "steps": trainer.n_training_steps, "samples": trainer.n_training_samples,
    }
    sae.save_inference_model(tmp)
    inf = SAE.load_from_disk(tmp)
    with torch.no_grad():
        acts = inf.encode(held)
        recon = inf.decode(acts)
    return {"W_dec": inf.W_dec.detach(), "W_dec_init": w_init, "recon": recon, "fired": (acts > 0)}, defaults


def _train_sparsify(train: torch.Tensor, held: torch.Tensor, a: argparse.Namespace, tmp: str) -> tuple[dict, dict]:
    from torch import nn
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer

    class Stream(nn.Module):
        """A frozen table lookup standing in for the model sparsify hooks: row ids in, rows out."""

        def __init__(self, table: torch.Tensor):
            super().__init__()
            self.embed = nn.Embedding.from_pretrained(table, freeze=True)

        @property
        def base_model(self) -> nn.Module:
            return self

        @property
        def device(self) -> torch.device:
            return self.embed.weight.device

        @property
        def dummy_inputs(self) -> dict:
            return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.embed(input_ids)

    class Ids(torch.utils.data.Dataset):
        def __init__(self, n: int):
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": torch.tensor([i])}

    sae_kw, trainer_kw = _split(a.overrides, SaeConfig, TrainConfig)
    cfg = TrainConfig(SaeConfig(**{"num_latents": a.d_sae, "k": a.k, **sae_kw}),
                      **{"batch_size": a.batch, "hookpoints": ["embed"], "init_seeds": [a.coder_seed],
                         "log_to_wandb": False, "save_dir": tmp, "run_name": "toy", **trainer_kw})
    trainer = Trainer(cfg, Ids(train.shape[0]), Stream(train))
    w_init = trainer.saes["embed"].W_dec.detach().clone()
    trainer.fit()
    sae = SparseCoder.load_from_disk(Path(tmp) / "toy" / "embed")
    n_lat = sae.num_latents
    # sparsify's own defaults per optimiser (sparsify.trainer.Trainer.__init__)
    scale = (n_lat / 2**14) ** 0.5
    opt, lr, schedule = {
        "signum": ("signum (schedule-free SignSGD, momentum 0.95)", 5e-3 / scale, "schedule-free"),
        "adam": ("adam", 2e-4 / scale, f"linear warm-up {cfg.lr_warmup_steps} steps, then linear decay to 0"),
        "muon": ("muon (Adam for biases)", 2e-3, "linear decay to 0"),
    }[cfg.optimizer]
    defaults = {
        "entry": "sparsify.Trainer(cfg, dataset of row ids, model = frozen nn.Embedding over the stream)",
        "optimizer": opt, "lr": cfg.lr or lr, "lr_schedule": schedule,
        "loss": cfg.loss_fn + " (squared error / batch variance) + auxk_alpha * auxk",
        "auxk_alpha": cfg.auxk_alpha, "dead_feature_threshold_tokens": cfg.dead_feature_threshold,
        "normalize_inputs": False, "normalize_decoder": cfg.sae.normalize_decoder,
        "b_dec_init": "mean of the first batch", "steps": trainer.global_step,
    }
    with torch.no_grad():
        top_acts, top_idx, _ = sae.encode(held)
        recon = sae.decode(top_acts, top_idx)
        fired = torch.zeros(held.shape[0], n_lat, dtype=torch.bool).scatter_(-1, top_idx, top_acts > 0)
    return {"W_dec": sae.W_dec.detach(), "W_dec_init": w_init, "recon": recon, "fired": fired}, defaults


def worker(a: argparse.Namespace) -> None:
    """Train one peer's TopK on the dumped stream; write its decoder and held-out outputs."""
    from importlib.metadata import version

    from safetensors.torch import save_file

    torch.set_num_threads(a.threads)
    a.overrides = json.loads(a.overrides)
    train, held = _stream(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        out, defaults = {"saelens": _train_saelens, "sparsify": _train_sparsify}[a.worker](train, held, a, tmp)
    info = {"package": DIST[a.worker], "version": version(DIST[a.worker]), "torch": torch.__version__,
            "python": sys.version.split()[0], "overrides": a.overrides, "defaults": defaults}
    out = {k: v.float().contiguous() if k != "fired" else v.to(torch.uint8).contiguous() for k, v in out.items()}
    save_file(out, a.out, metadata={"info": json.dumps(info)})


# --------------------------------------------------------------------------- driver (circuitlab venv)
def _rows_metrics(held: torch.Tensor, recon: torch.Tensor, fired: torch.Tensor, w_dec: torch.Tensor,
                  w_init: torch.Tensor, data, common: torch.Tensor, rare: torch.Tensor, thr: float) -> dict:
    from circuitlab.sparse.base import spread
    from circuitlab.sparse.recovery import recovery

    dens = fired.double().mean(0)
    return {
        "fvu": float((held - recon).pow(2).sum() / spread(held)), "l0": float(fired.double().sum(-1).mean()),
        "dead_fraction": float((dens == 0).double().mean()),
        **recovery_scores(recovery(w_dec, data.dirs, thr), common, rare, thr),
        "mmcs_at_init": recovery(w_init, data.dirs, thr)["mmcs"],
    }


def _variant(spec: str) -> tuple[str, str, dict]:
    """``PEER:key=value,key=value`` -> (row name, peer, overrides); values are JSON, else strings."""
    peer, _, rest = spec.partition(":")
    if peer not in PEERS or not rest:
        raise SystemExit(f"--variant {spec!r}: write PEER:key=value[,key=value...] with PEER one of {', '.join(PEERS)}")
    overrides = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return f"{peer} ({rest})", peer, overrides


def run(a: argparse.Namespace) -> dict:
    import hashlib

    from safetensors.torch import load_file, save_file

    from circuitlab.sparse.base import make_coder
    from circuitlab.sparse.store import ShardLoader
    from circuitlab.sparse.architectures.topk import TopKConfig
    from circuitlab.sparse.trainer import TrainConfig, Trainer, default_lr

    pythons = {"saelens": a.saelens_python, "sparsify": a.sparsify_python}
    jobs = [(p, p, {}) for p in a.peers] + [_variant(v) for v in a.variant]
    for p in {p for _, p, _ in jobs}:
        if not Path(pythons[p]).exists():
            raise SystemExit(f"no python for peer {p!r} at {pythons[p]}: create its venv as the module docstring "
                             f"says, or pass --{p}-python")
    data = toy_data(a)
    steps = max(1, a.tokens // a.batch)
    loader = toy_loader(data, a)
    train = torch.cat([loader.next().x for _ in range(steps)])
    held = held_out(data, a)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    stream_path = work / "stream.safetensors"
    save_file({"train": train.contiguous(), "heldout": held.contiguous()}, str(stream_path))
    digest = hashlib.sha256(train.numpy().tobytes()).hexdigest()[:16]

    class Checked(ShardLoader):
        """The loader circuitlab trains from, asserting each batch equals the dumped one."""

        i = 0

        def next(self):
            rows = super().next()
            if self.i < steps and not torch.equal(rows.x, train[self.i * a.batch:(self.i + 1) * a.batch]):
                raise RuntimeError(f"circuitlab's batch {self.i} differs from the dumped stream")
            self.i += 1
            return rows

    common, rare = frequency_quarters(data)
    coder = make_coder(TopKConfig(d_in=a.d, d_sae=a.d_sae, k=a.k, seed=a.coder_seed))
    w_init = coder.W_dec.detach().clone()
    tcfg = TrainConfig(total_tokens=a.tokens, batch_size=a.batch, progress=False, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as out:
        t = Trainer({"topk": coder}, toy_loader(data, a, Checked), tcfg, out)
        t.run(sample=data.shard(0))
        exp = t.export("topk")
    if t.loader.i != steps:
        raise RuntimeError(f"circuitlab trained on {t.loader.i} batches, the peers get {steps}")
    with torch.no_grad():
        f = exp.encode(held)
        recon = exp.decode(f, held)
    rows = {"circuitlab": _rows_metrics(held, recon, f > 0, exp.W_dec.detach(), w_init, data, common, rare,
                                        a.threshold)}
    rows["circuitlab"].update(package="circuitlab", version="this repository", torch=torch.__version__,
                              overrides={}, defaults={
        "entry": "circuitlab.sparse.trainer.Trainer", "optimizer": "Adam", "lr": default_lr(coder),
        "lr_schedule": f"linear warm-up {tcfg.warmup_fraction:g}, linear decay to 0 over the last "
                       f"{tcfg.decay_fraction:g} of the steps",
        "loss": "mean over rows of squared error (normalised units) + aux_coeff * AuxK",
        "aux_coeff": coder.cfg.aux_coeff, "dead_window_tokens": t.dead_window,
        "normalize": "E||x|| = sqrt(d)" if tcfg.normalize else False, "b_dec_init": tcfg.b_dec_init,
        "fit_encoder_scale": tcfg.fit_encoder_scale, "steps": t.step})
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), WANDB_MODE="disabled",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH="")
    for j, (name, p, overrides) in enumerate(jobs):
        out_path = work / f"{j}_{p}.safetensors"
        log = work / f"{j}_{p}.log"
        cmd = [pythons[p], str(Path(__file__).resolve()), "--worker", p, "--data", str(stream_path), "--out",
               str(out_path), "--d-sae", str(a.d_sae), "--k", str(a.k), "--batch", str(a.batch),
               "--coder-seed", str(a.coder_seed), "--threads", str(a.threads), "--overrides", json.dumps(overrides)]
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc:
            raise SystemExit(f"{name} failed (exit {rc}); see {log}")
        from safetensors import safe_open

        with safe_open(str(out_path), "pt") as fh:
            info = json.loads(fh.metadata()["info"])
        o = load_file(str(out_path))
        rows[name] = _rows_metrics(held, o["recon"], o["fired"].bool(), o["W_dec"], o["W_dec_init"], data, common,
                                   rare, a.threshold)
        rows[name].update(info)
    return {
        "command": "python benchmarks/sparse_recovery_peers.py " + " ".join(sys.argv[1:]),
        "settings": {
            **toy_settings(a), "d_sae": a.d_sae, "k": a.k, "steps": steps, "batch": a.batch,
            "tokens": steps * a.batch, "stream_sha256_16": digest, "held_out_tokens": int(held.shape[0]),
            "threshold": a.threshold, "threads": a.threads, "data_seed": a.seed, "coder_seed": a.coder_seed,
            "training": "one dumped stream (circuitlab's ShardLoader order); each coder with its own trainer "
                        "and that trainer's defaults; peers in their own venvs",
            "common/rare quarter": f"the {len(common)} most / least frequent features",
        },
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--saelens-python", default="runs/peers/saelens/bin/python", help="python of the SAE Lens venv")
    ap.add_argument("--sparsify-python", default="runs/peers/sparsify/bin/python", help="python of the sparsify venv")
    ap.add_argument("--work", default="runs/peers/sparse_recovery", help="folder for the stream and peer outputs")
    add_toy_args(ap)
    ap.add_argument("--k", type=int, default=5, help="TopK k")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (rounded down to whole batches)")
    ap.add_argument("--seed", type=int, default=0, help="data seed")
    ap.add_argument("--coder-seed", type=int, default=1000, help="seed of every coder's init (not the data seed)")
    ap.add_argument("--json", default="benchmarks/results/sparse_recovery_peers.json")
    ap.add_argument("--variant", action="append", default=[],
                    help="an extra row: PEER:key=value,... overriding fields of the peer's SAE or trainer config "
                         "(SAE Lens: TopKTrainingSAEConfig, SAETrainerConfig; sparsify: SaeConfig, TrainConfig)")
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    if a.coder_seed == a.seed:
        raise SystemExit("--coder-seed equals the data --seed: a coder would start with the true directions "
                         "as its decoder; pick another")
    torch.set_num_threads(a.threads)
    res = run(a)
    Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    for n, r in res["results"].items():
        print(f"{n:60s} {r['version']:>15s}  FVU {r['fvu']:.4f}  L0 {r['l0']:5.2f}  MMCS {r['mmcs']:.3f}  "
              f"recovered {r['recovered']:.3f}  (common {r['recovered_common_quarter']:.2f}, rare "
              f"{r['recovered_rare_quarter']:.2f})  dead {r['dead_fraction']:.3f}  init MMCS {r['mmcs_at_init']:.3f}")


if __name__ == "__main__":
    main()
