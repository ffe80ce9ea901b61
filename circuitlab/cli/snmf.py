"""``circuitlab snmf``: semi-nonnegative matrix factorisation of one MLP layer's activations, its
factors' top contexts, and the steering test against the difference of means and random
directions (written as factors.safetensors, snmf.json and an offline snmf.html)."""

from __future__ import annotations

EXAMPLES = """examples:
  circuitlab snmf --model gpt2-zoo --layer 2 --factors 32 --data zoo --out runs/snmf
  circuitlab snmf --model llama-zoo --layer 1 --site mlp_out --factors 16 --steer 0 --out DIR
  circuitlab snmf --model smollm2-135m --layer 10 --factors 64 --data corpus:sotu --docs 512 --ctx-len 128 --out DIR
"""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("snmf", help="SNMF of MLP activations: factors, top contexts, steering test",
                       epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--model", required=True, help="model name or path (gpt2-zoo, llama-zoo, a fetched model)")
    p.add_argument("--layer", type=int, required=True, help="the block whose MLP is factorised")
    p.add_argument("--site", default="neurons", choices=("neurons", "mlp_out"),
                   help="neurons: the MLP's hidden activations (default); mlp_out: its output")
    p.add_argument("--factors", type=int, default=32, help="number of factors k (default 32)")
    p.add_argument("--data", default=None, help="data source (zoo, text:PATH, jsonl:PATH, corpus:NAME...); default zoo")
    p.add_argument("--docs", type=int, default=256, help="documents to factorise (default 256)")
    p.add_argument("--ctx-len", type=int, default=64, help="tokens per document (default 64)")
    p.add_argument("--iters", type=int, default=300, help="most iterations (default 300)")
    p.add_argument("--l1", type=float, default=0.01,
                   help="coefficient sparsity, a fraction of the rms activation norm (default 0.01; 0 = plain)")
    p.add_argument("--keep", type=float, default=1.0,
                   help="fraction of each direction's entries kept by winner-take-all (default 1: all)")
    p.add_argument("--init", default="kmeans", choices=("kmeans", "random"), help="initialisation (default kmeans)")
    p.add_argument("--seed", type=int, default=0, help="seed of the documents and the initialisation")
    p.add_argument("--steer", type=int, default=4,
                   help="factors to steer, the most concept-specific first (default 4; 0 skips the test)")
    p.add_argument("--strengths", default="0,0.25,0.5,1,2",
                   help="steering strengths in units of the site's rms activation norm (default 0,0.25,0.5,1,2)")
    p.add_argument("--steer-docs", type=int, default=16, help="held-out documents of neutral text (default 16)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=run)


def _strengths(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"--strengths {text!r} is not a comma-separated list of numbers, e.g. 0,0.5,1") from None


def run(a) -> None:
    import circuitlab as cl
    from circuitlab.cli.checks import check_out_arg
    from circuitlab.cli.eval import _data_source
    from circuitlab.sparse.evaluate import resolve_model
    from circuitlab.sparse.snmf.factorize import SNMFConfig
    from circuitlab.sparse.snmf.page import KL_TARGET
    from circuitlab.sparse.snmf.report import FACTORS_FILE, INFO_FILE, PAGE_FILE, analyse
    from circuitlab.sparse.snmf.steering import SteeringConfig

    out = check_out_arg(a.out)
    data = _data_source(a.data)
    cfg = SNMFConfig(factors=a.factors, iters=a.iters, l1=a.l1, keep=a.keep, init=a.init, seed=a.seed)
    steer_cfg = SteeringConfig(strengths=_strengths(a.strengths), n_docs=a.steer_docs, seed=a.seed)
    if a.steer < 0:
        raise ValueError(f"--steer must be >= 0, not {a.steer}")
    model = cl.load(resolve_model(a.model))
    if not 0 <= a.layer < model.n_layers:
        raise ValueError(f"--layer {a.layer} is outside {a.model}'s blocks 0..{model.n_layers - 1}")
    r = analyse(model, a.layer, a.site, cfg, data, a.docs, a.ctx_len, a.seed, a.steer, steer_cfg)
    r.save(out)
    f = r.fact
    print(f"{r.hook}: {f.Z.shape[0]} tokens x {f.Y.shape[1]}, {cfg.factors} factors, relative error {f.error:.4f} "
          f"({len(f.objective)} iterations)")
    for c in sorted(r.cards, key=lambda c: -c.share)[:10]:
        print(f"  factor {c.factor:3d}: {c.share:4.0%} on {', '.join(c.concept_text)}")
    for t in r.steering:
        j = max(range(len(t.strengths)), key=lambda i: (t.strengths[i] <= 1, t.strengths[i]))
        cells = "; ".join(f"{n} {t.delta_logp[n][j]:+.2f} (KL {t.kl[n][j]:.2f})" for n in t.delta_logp)
        print(f"  steer {t.label} (concept {', '.join(t.concept_text)}), strength {t.strengths[j]:g}: {cells}")
        eq = "; ".join(f"{n} {'n/a' if v is None else f'{v:+.2f}'}" for n, v in t.at_kl(KL_TARGET).items())
        print(f"    at KL {KL_TARGET}: {eq}")
    print(f"wrote {out}/ ({FACTORS_FILE}, {INFO_FILE}, {PAGE_FILE})")
