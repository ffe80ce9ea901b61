"""``circuitlab supervised``: score sparse coders against supervised IOI feature dictionaries
(approximation, sparse control, interpretability) and write the scores as JSON."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = """examples:
  circuitlab supervised --model gpt2-zoo --all                 # every coder found for the model
  circuitlab supervised path/to/coder_folder --out scores.json # the model named in its cfg.json
  circuitlab supervised --model gpt2-zoo --site resid_post --layer 3   # the dictionary alone
Each coder is scored at its own site against a dictionary fitted there (the sup_* columns are
that dictionary's own scores); --reference adds a "supervised" row per site scoring the
dictionary itself as a coder. Writes --out (JSON, default ./supervised.json) and a page of the
edit curves beside it (.html)."""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("supervised", help="score coders against supervised IOI dictionaries (approximation, "
                                          "control, interpretability)", epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("coders", nargs="*", help="coder folders (cfg.json + sae_weights.safetensors)")
    p.add_argument("--model", help="model to run (default: the one the first coder's cfg.json names)")
    p.add_argument("--reference", action="store_true", help="add a row per site scoring the dictionary itself "
                                                            "as a coder (one latent per attribute value)")
    p.add_argument("--all", action="store_true", help="also every single-source coder found for --model "
                                                      "(bundled or trained into the user cache)")
    p.add_argument("--site", default=None, help="dictionary site when no coder is given (default resid_post)")
    p.add_argument("--layer", type=int, default=None, help="its block (default: the last)")
    p.add_argument("--role", default="END", help="IOI position read and edited: S1, IO, S2 or END (default END)")
    p.add_argument("--edit", default="io,s", help="attributes edited for control: io, s, order (default io,s)")
    p.add_argument("--n-fit", type=int, default=512, help="prompts the dictionary is fitted on (default 512)")
    p.add_argument("--n-eval", type=int, default=256, help="other prompts scored (default 256)")
    p.add_argument("--max-latents", type=int, default=8, help="most latents a greedy edit changes (default 8)")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass (default 64)")
    p.add_argument("--device", default=None, help="device for the model (default: circuitlab's choice)")
    p.add_argument("--out", default="supervised.json", help="JSON file to write (default ./supervised.json)")
    p.set_defaults(fn=run)


def _options(a):
    from circuitlab.sparse.supervised import ATTRIBUTES, SupervisedOptions
    from circuitlab.cli.checks import parse_names

    edit = tuple(parse_names("edit", a.edit, ATTRIBUTES))
    for name in ("n_fit", "n_eval", "max_latents"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(a, name)}")
    opts = SupervisedOptions(role=a.role, edit=edit, n_fit=a.n_fit, n_eval=a.n_eval, seed=a.seed,
                             max_latents=a.max_latents, batch_size=a.batch_size)
    opts.check()
    return opts


def _coder_folders(a) -> list[Path]:
    from circuitlab.sparse.files import CFG_FILE

    folders = [Path(c) for c in a.coders]
    for f in folders:
        if not (f / CFG_FILE).is_file():
            raise ValueError(f"{f} is not a coder folder (no {CFG_FILE}); give folders written by circuitlab train "
                             "or SAE Lens")
    if a.all:
        if not a.model:
            raise ValueError("--all needs --model NAME (whose coders to score)")
        from circuitlab.sparse.bundled import search_folders

        for root in search_folders(a.model):
            folders += sorted(p for p in root.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    return list(dict.fromkeys(folders))


def run(a) -> None:
    from dataclasses import replace

    import circuitlab as cl
    from circuitlab.sparse.evaluate import resolve_model
    from circuitlab.sparse.files import load_coder
    from circuitlab.sparse.supervised import control_figure, evaluate_supervised, save_scores
    from circuitlab.webpage import write_figure

    opts = _options(a)
    out = Path(a.out)
    if out.suffix != ".json":
        raise ValueError(f"--out {a.out!r} should name a .json file")
    folders = _coder_folders(a)
    coders = [(f.name, load_coder(f)) for f in folders]
    coders = [(n, c) for n, c in coders if c.cfg.n_sources == 1 and c.cfg.n_targets_ == 1]  # no crosscoders
    if a.coders and not coders:
        raise ValueError("none of the coders given reads a single site (crosscoders cannot be scored here)")
    if a.all and not coders:
        raise ValueError(f"no single-source coder found for --model {a.model!r}; train one or name its folder")
    name = a.model or (coders[0][1].cfg.models[0] if coders and coders[0][1].cfg.models else None)
    if not name:
        raise ValueError("name the model: --model NAME_OR_PATH (or give a coder folder whose cfg.json names one)")
    kwargs = {"device": a.device} if a.device else {}
    model = cl.load(resolve_model(name), **kwargs)
    results, sites = [], set()
    if not coders:
        opts.site, opts.layer = a.site or "resid_post", a.layer
        results.append(evaluate_supervised(model, None, opts))
    elif a.site is not None or a.layer is not None:
        raise ValueError("--site/--layer choose the dictionary's site when no coder is given; coders are scored "
                         "at their own sites")
    for label, coder in coders:
        coder = coder.to(model.device)
        if a.reference and coder.hook_out not in sites:  # the dictionary itself, once per site
            sites.add(coder.hook_out)
            results.append(evaluate_supervised(model, None, replace(opts, site=coder.hook_out), name="supervised"))
        results.append(evaluate_supervised(model, coder, opts, name=label))
        print(f"scored {label}", flush=True)
    save_scores(results, out, name, opts)
    page = write_figure(control_figure(results), out.with_suffix(".html"))
    cols = list(dict.fromkeys(k for r in results for k in r.summary()))
    print("| coder | site | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 2))
    for r in results:
        s = r.summary()
        print(f"| {r.coder} | {r.hook} | " + " | ".join("-" if s.get(c) is None else f"{s[c]:g}" for c in cols) + " |")
    print(f"wrote {out} and {page.name}")

