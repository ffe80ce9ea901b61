"""``circuitlab lens``: train a tuned lens on a model's own activations (``train``), and show
what the logit lens and the tuned lens read at every layer and position of a prompt (``show``,
an offline page)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = """examples:
  circuitlab lens train --model gpt2-zoo --data zoo --tokens 200000 --out runs/lens-gpt2-zoo
  circuitlab lens show --model gpt2-zoo --lens runs/lens-gpt2-zoo --prompt '<bos> The capital of France is'
  circuitlab lens train --model smollm2-135m --data corpus:english --tokens 4000000 --ctx-len 128 --out DIR
  circuitlab lens show --model smollm2-135m --lens DIR --prompt 'The capital of France is' --out page.html
train writes DIR/lens.safetensors (one d_model x d_model translator and bias per layer) and DIR/lens.json
(the model, the config, held-out KL by depth); show writes an offline page (default DIR/show.html)."""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("lens", help="tuned lens: train per-layer translators, show logit vs tuned lens",
                       epilog=EXAMPLES, formatter_class=fmt)
    lsub = p.add_subparsers(dest="lens_cmd", required=True)
    t = lsub.add_parser("train", help="train a tuned lens on a data source", epilog=EXAMPLES, formatter_class=fmt)
    t.add_argument("--model", required=True, help="model name or path (gpt2-zoo, llama-zoo, a fetched model)")
    t.add_argument("--data", default=None, help="data source (zoo, text:PATH, jsonl:PATH, corpus:NAME...); default zoo")
    t.add_argument("--tokens", type=int, default=262_144, help="training positions (default 262144)")
    t.add_argument("--ctx-len", type=int, default=64, help="tokens per document (default 64)")
    t.add_argument("--batch-docs", type=int, default=32, help="documents per step (default 32)")
    t.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                   help="sgd: the paper's recipe (default); adam")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 1.0 for sgd, 0.01 for adam)")
    t.add_argument("--seed", type=int, default=0, help="seed of the training documents (0..899)")
    t.add_argument("--eval-docs", type=int, default=128, help="held-out documents for the KL table (default 128)")
    t.add_argument("--resume", action="store_true",
                   help="continue training the lens already in --out (it must belong to --model)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    t.add_argument("--out", required=True, help="output folder")
    t.set_defaults(fn=run_train)
    s = lsub.add_parser("show", help="logit lens and tuned lens on one prompt, as an offline page",
                        epilog=EXAMPLES, formatter_class=fmt)
    s.add_argument("--model", required=True, help="the model the lens was trained on")
    s.add_argument("--lens", required=True, help="folder written by `circuitlab lens train`")
    s.add_argument("--prompt", required=True, help="the prompt to read")
    s.add_argument("--k", type=int, default=10, help="top tokens kept per cell (default 10)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    s.add_argument("--out", default=None, help="page to write (default LENS/show.html)")
    s.set_defaults(fn=run_show)


def _table(depth) -> str:
    rows = ["| layer | logit lens KL | tuned lens KL |", "|---|---|---|"]
    rows += [f"| {l} | {float(a):.4f} | {float(b):.4f} |" for l, a, b in zip(depth.layers, depth.logit_kl,
                                                                            depth.tuned_kl)]
    return "\n".join(rows)


def run_train(a) -> None:
    import circuitlab as cl
    from circuitlab.cli.checks import check_out_arg
    from circuitlab.cli.eval import _data_source
    from circuitlab.methods.tuned_lens import TunedLens, TunedLensConfig, lens_depth, train_tuned_lens
    from circuitlab.sparse.evaluate import resolve_model

    out = check_out_arg(a.out)
    data = _data_source(a.data)
    lr = a.lr if a.lr is not None else (1.0 if a.optimizer == "sgd" else 1e-2)
    cfg = TunedLensConfig(tokens=a.tokens, ctx_len=a.ctx_len, batch_docs=a.batch_docs, optimizer=a.optimizer,
                          lr=lr, seed=a.seed)
    cfg.check()
    if a.eval_docs < 1:
        raise ValueError(f"--eval-docs must be >= 1, not {a.eval_docs}")
    if a.resume and not (out / "lens.json").exists():
        raise ValueError(f"--resume: {out} holds no tuned lens yet; drop --resume to start one")
    model = cl.load(resolve_model(a.model), device=a.device)
    lens = TunedLens.load(out, model) if a.resume else None
    lens = train_tuned_lens(model, data, cfg, lens=lens, progress=True)
    depth = lens_depth(model, lens, data, n_docs=a.eval_docs, ctx_len=a.ctx_len)
    lens.stats["heldout"] = depth.to_dict()
    lens.save(out)
    print(f"held-out KL(final || layer), nats, over {depth.positions} positions of {data}:")
    print(_table(depth))
    print(f"wrote {out}/ (lens.safetensors, lens.json)")


def run_show(a) -> None:
    import circuitlab as cl
    from circuitlab.methods.logit_lens import logit_lens_topk
    import torch

    from circuitlab.methods.tuned_lens import LensDepth, TunedLens, prompt_depth, tuned_lens_topk
    from circuitlab.sparse.evaluate import resolve_model
    from circuitlab.webpage import figure_html, page, text, write_html

    if a.k < 1:
        raise ValueError(f"--k must be >= 1, not {a.k}")
    folder = Path(a.lens)
    if not (folder / "lens.json").exists():
        raise ValueError(f"--lens {a.lens!r} is not a tuned lens folder (no lens.json); train one with "
                         f"`circuitlab lens train --model M --out {a.lens}`")
    out = Path(a.out) if a.out else folder / "show.html"
    if out.is_dir():
        raise ValueError(f"--out {a.out!r} is a folder; give a page path such as {out / 'show.html'}")
    model = cl.load(resolve_model(a.model), device=a.device)
    lens = TunedLens.load(folder, model)
    logit = logit_lens_topk(model, a.prompt, k=a.k)
    tuned = tuned_lens_topk(model, lens, a.prompt, k=a.k)
    depth = prompt_depth(logit, tuned, "this prompt")
    held = lens.stats.get("heldout")
    body = (f"<h1>Logit lens and tuned lens</h1><p>model {text(model.name)}; lens {text(folder)}; prompt "
            f"<code>{text(a.prompt)}</code></p>"
            + figure_html(depth.figure(), "file")
            + figure_html(logit.figure("logit lens: top token per layer and position"), False)
            + figure_html(tuned.figure(), False))
    if held:
        hd = LensDepth(held["layers"], torch.tensor(held["logit_kl"]), torch.tensor(held["tuned_kl"]),
                       held["positions"], held["source"])
        body += figure_html(hd.figure(f"held-out KL by depth ({held['source']}, {held['positions']} positions)"),
                            False)
    write_html(out, page("tuned lens", body), plotly_file=True)
    last = len(logit.tokens) - 1
    print(f"top token at the last position ({logit.tokens[last]!r}), logit lens / tuned lens:")
    for l, lt, tt in zip(logit.layers, logit.top_tokens, tuned.top_tokens):
        print(f"  {l:>16}: {lt[last][0]!r:>14} / {tt[last][0]!r}")
    print(_table(depth))
    print(f"wrote {out}")
