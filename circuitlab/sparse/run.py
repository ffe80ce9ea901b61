"""Running a training file end to end: models -> activation shards -> coders -> files -> evals.

Coders whose sites and models match share one activation stream (an L0 sweep costs one set of
forward passes); groups run one after another. With ``shared_stream`` every coder on the same
models shares one stream, whatever its site (one forward pass feeds all layers' coders). Under
torchrun every rank gathers or reads only its own shards, and rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import torch

from circuitlab.io import atomic_write
from circuitlab.sparse.base import make_coder
from circuitlab.sparse.config import TrainFile, coder_config, default_name
from circuitlab.sparse.dist import init_comm
from circuitlab.sparse.store import (
    ActivationCache, ActivationSource, Columns, Exclusion, ShardLoader, ShardPlan, SourceSpec, documents, make_shard,
    shared_spec,
)
from circuitlab.sparse.trainer import Trainer


def _load(name: str, device: str):
    import circuitlab as cl

    return cl.load(name, device=device)


def state_dir(out: Path, names: list[str]) -> Path:
    """Resumable trainer state of one group of coders, outside ``out`` (which may sit inside the
    installed package): ``sparse-train/<out hash>/<coder names>`` under the user cache
    (:func:`circuitlab.io.state_cache`). Names joined longer than ``MAX_STATE_NAME`` characters
    (a file name may not exceed 255 bytes; a 30-layer stack's names do) become the first name, the
    number of others and a hash of all of them."""
    from circuitlab.io import state_cache

    root = state_cache()
    key = hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:12]
    joined = "+".join(names)
    if len(joined.encode()) > MAX_STATE_NAME:
        digest = hashlib.sha1(joined.encode()).hexdigest()[:12]
        joined = f"{names[0][:100]}+{len(names) - 1}-more-{digest}"
    return root / "sparse-train" / key / joined


MAX_STATE_NAME = 160
"""Longest state folder name kept as the joined coder names."""


def data_identity(run, ms: list, names: tuple) -> dict:
    """What defines a group's activation stream, recorded with its training state: a saved
    state from another model, corpus or data layout is never resumed silently. The data source is
    recorded only when it is not the zoo corpus, so states saved before sources existed resume."""
    return {"models": list(names), "d_model": [m.d_model for m in ms], "n_layers": [m.n_layers for m in ms],
            "ctx_len": run.ctx_len, "corpus_seed": run.corpus_seed, "shard_tokens": run.shard_tokens,
            "docs_per_batch": run.docs_per_batch, "buffer_shards": run.buffer_shards, "seed": run.seed,
            "exclude_norm_factor": run.exclude_norm_factor, "exclude_special_tokens": run.exclude_special_tokens,
            **({"data": run.data} if run.data != "zoo" else {}),
            **({"shared_stream": True} if run.shared_stream else {})}


def _write_state_pointer(out: Path, names: list[str], where: Path) -> None:
    """``out/train_state.json``: where each group's resumable state lives (it is kept outside
    ``out``, which may sit inside the installed package)."""
    p = out / "train_state.json"
    try:
        d = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        d = {}
    d.setdefault("about", "Resumable trainer state (checkpoints) of each group of coders trained into this "
                          "folder. `circuitlab train --restart` discards it; `--resume` continues it after safe "
                          "setting changes. Deleting a folder listed here also restarts that group.")
    d.setdefault("groups", {})["+".join(names)] = {"coders": names, "state_dir": str(where)}
    atomic_write(p, lambda t: Path(t).write_text(json.dumps(d, indent=1)))


def coder_history(history: list[dict], name: str) -> list[dict]:
    """One coder's records from the trainer's history (loss, FVU, L0, dead fraction per logged step)."""
    pre = name + "."
    return [{"step": h["step"], "tokens": h["tokens"], **{k[len(pre):]: v for k, v in h.items() if k.startswith(pre)}}
            for h in history]


def loss_curve_figure(histories: dict[str, list[dict]]):
    """Loss, FVU and L0 against training tokens, one line per coder."""
    from plotly.subplots import make_subplots

    keys = ("loss", "fvu", "l0")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss", "FVU", "L0"))
    for i, (name, hist) in enumerate(histories.items()):
        for j, k in enumerate(keys):
            fig.add_scatter(x=[h["tokens"] for h in hist], y=[h.get(k) for h in hist], name=name, legendgroup=name,
                            showlegend=j == 0, line={"color": _COLORS[i % len(_COLORS)]}, row=1, col=j + 1)
    fig.update_xaxes(title_text="training tokens")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title="sparse-coder training", height=380, width=1200)
    return fig


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def write_loss_curve(path: Path, histories: dict[str, list[dict]]) -> None:
    """The loss-curve page; it opens offline (plotly.js is bundled beside it)."""
    from circuitlab.webpage import write_figure

    write_figure(loss_curve_figure(histories), path, "sparse-coder training")


def train_file(tf: TrainFile, models: Optional[dict] = None, resume_mode: str = "auto") -> dict[str, dict]:
    """Train every coder of ``tf``; return {coder name: metrics}. ``models`` ({name: Model})
    skips loading (tests pass tiny models). ``resume_mode``: "auto" resumes saved state only
    when its configuration matches, "resume" also after safe changes (learning rate, schedule,
    total_tokens raised), "restart" discards it (see ``Trainer``)."""
    run = tf.run
    torch.set_num_threads(run.threads)
    comm = init_comm()
    device = run.device
    if device == "cuda" and comm.world > 1:
        device = f"cuda:{torch.cuda.current_device()}"
    models = dict(models or {})

    def model(name):
        if name not in models:
            models[name] = _load(name, device)
        return models[name]

    out = Path(run.out).expanduser()
    d_model = model(run.model).d_model
    groups: dict[tuple, list] = {}
    for sec, fields in tf.coders:
        cfg = coder_config(sec, fields, d_model, run.model)
        key = (cfg.models,) if run.shared_stream else (cfg.hooks_in, cfg.hooks_out, cfg.models)
        groups.setdefault(key, []).append((default_name(sec, cfg), cfg))
    results: dict[str, dict] = {}
    all_histories: dict[str, list[dict]] = {}
    for key, members in groups.items():
        names = key[-1]
        ms = [model(n) for n in dict.fromkeys(names)]
        tok = ms[0].tokenizer
        special = tuple(sorted(set(tok.all_special_ids))) if run.exclude_special_tokens else ()
        ex = Exclusion(run.exclude_bos, special, None)
        columns: dict[str, Columns] = {}
        if run.shared_stream:
            spec, cols = shared_spec([SourceSpec.of(cfg) for _, cfg in members], ms[0].d_model)
            columns = {n: c for (n, _), c in zip(members, cols)}
        else:
            spec = SourceSpec.of(members[0][1])
        src = ActivationSource(ms, spec, ex, run.ctx_len)
        if run.exclude_norm_factor > 0:
            calibration = documents(run.corpus_seed * 7 + 12345, run.docs_per_batch, run.data, run.ctx_len)
            ex.norm_above = src.calibrate(calibration, run.exclude_norm_factor)
        plan = ShardPlan(run.corpus_seed, run.shard_tokens, run.docs_per_batch, run.data)
        n_shards = max(comm.world, math.ceil(tf.train.total_tokens / run.shard_tokens))
        if run.cache_dir:
            key_s = hashlib.sha1(json.dumps([list(spec.hooks_in), list(spec.hooks_out), list(names)]
                                            if run.shared_stream else [*key]).encode()).hexdigest()[:12]
            cache = ActivationCache(Path(run.cache_dir) / f"acts_{key_s}")
            if comm.rank == 0:
                cache.build(src, plan, n_shards, meta={"models": list(names)}, progress=True)
            if comm.world > 1:
                import torch.distributed as dist

                dist.barrier()
            shard_fn = cache.read
        else:
            shard_fn = lambda i: make_shard(src, plan, i)  # noqa: E731
        coders = {}
        for name, cfg in members:
            cfg.exclude_bos, cfg.exclude_token_ids, cfg.exclude_norm_above = ex.bos, ex.token_ids, ex.norm_above
            coders[name] = make_coder(cfg).to(device)
        loader = ShardLoader(shard_fn, n_shards, tf.train.batch_size, run.seed, parts=comm.world,
                             rank=comm.rank, world=comm.world, buffer_shards=run.buffer_shards)
        sample = shard_fn(0)
        sample = sample.index(torch.arange(min(len(sample), tf.train.init_tokens)))
        group_names = [n for n, _ in members]
        where = state_dir(out, group_names)
        if comm.rank == 0:
            where.mkdir(parents=True, exist_ok=True)  # an unusable state folder fails now, not at the first checkpoint
            _write_state_pointer(out, group_names, where)
        trainer = Trainer(coders, loader, tf.train, where, comm, data=data_identity(run, ms, names),
                          resume_mode=resume_mode, columns=columns)
        trainer.run(sample=sample)
        if comm.rank != 0:
            continue
        all_histories.update({n: coder_history(trainer.history, n) for n in coders})
        from circuitlab.sparse.evaluate import density_histogram, evaluate, save_metrics
        from circuitlab.sparse.files import save_coder

        for name in coders:
            coder = trainer.export(name)
            folder = save_coder(coder, out / name, meta={"train_tokens": trainer.tokens_seen,
                                                         "train_seconds": getattr(trainer, "elapsed", None)})
            m = {"train_tokens_per_s": trainer.tokens_seen / max(1e-9, getattr(trainer, "elapsed", 1e-9))}
            if run.evaluate:
                m.update(evaluate(ms, coder.to(device), n_docs=run.eval_docs, ctx_len=run.ctx_len, data=run.data))
                dens = m.pop("_density")
                if run.density_html:
                    atomic_write(folder / "density.html",
                                 lambda t, d=dens, n=name: density_histogram(d, n).write_html(t))
                    m["density_file"] = "density.html"
            save_metrics(m, folder / "metrics.json")
            atomic_write(folder / "history.json",
                         lambda t, h=all_histories[name]: Path(t).write_text(json.dumps(h, indent=1)))
            results[name] = m
    if comm.rank == 0:
        atomic_write(out / "summary.json", lambda t: Path(t).write_text(json.dumps(results, indent=1)))
        if all_histories:
            write_loss_curve(out / "loss_curve.html", all_histories)
    return results
