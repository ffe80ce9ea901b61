"""Per-layer transcoders, and the model they belong to, in folders circuit-tracer 0.5.0 reads offline.

Why: to build the same attribution graph with circuit-tracer (the reference implementation) and
compare it with circuitlab's, both must read the same weights from local folders, since the
Hugging Face hub may be out of reach.

Transcoders (:func:`export_transcoders`) go in circuit-tracer's own local cache layout, which
``ReplacementModel.from_pretrained(model, "/abs/DIR")`` and ``circuit-tracer attribute -t /abs/DIR``
open without the hub (an absolute path joined to its cache folder is the path itself)::

    DIR/config.yaml             model_kind: transcoder_set, feature_input_hook, feature_output_hook,
                                scan, model_name (when a model folder is given), activation, k
    DIR/layer_{l}.safetensors   W_enc [d_sae, d_in], W_dec [d_sae, d_model], b_enc [d_sae],
                                b_dec [d_model], W_skip [d_model, d_in] (skip transcoders),
                                activation_function.threshold [d_sae] (JumpReLU),
                                activation_function.k [] (TopK)

circuit-tracer computes ``act(x @ W_enc.T + b_enc)`` and ``f @ W_dec + b_dec + x @ W_skip.T``;
a coder that subtracts ``b_dec`` from its input first has that folded into ``b_enc``. Its file
loader builds ReLU, or JumpReLU when a threshold is present (``x * (x > threshold)``, the same
as circuitlab's ``relu`` then threshold for the positive thresholds circuitlab learns). It has a
``TopK`` activation class but no loader that builds it, so a TopK set carries the tensor
``activation_function.k``: circuit-tracer's loader then refuses the file (an unexpected key)
instead of silently reading it as ReLU, and a loader that knows the key builds ReLU(TopK(k))
(``benchmarks/circuit_tracer_compare.py``, ``ct_transcoders``).

Models (:func:`export_model`): circuit-tracer 0.5.0 pins transformers <= 4.57.3, which reads
neither transformers 5's ``rope_parameters`` (it would silently fall back to rope_theta 10000)
nor its ``TokenizersBackend`` tokenizer class. The exported folder links the weights and
tokenizer and rewrites those two entries.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from circuitlab.engine.sites import parse_hook
from circuitlab.graphs.transcoders import TranscoderSet, as_transcoders
from circuitlab.io import atomic_folder
from circuitlab.sparse.base import SparseCoder

CIRCUIT_TRACER_VERSION = "0.5.0"
"""The circuit-tracer release whose loaders this layout follows."""

INPUT_HOOKS = {"resid_mid": "hook_resid_mid", "ln2.out": "mlp.hook_in", "mlp_in": "mlp.hook_in"}
"""circuitlab read site -> circuit-tracer ``feature_input_hook`` (block-relative). ``mlp.hook_in``
(the MLP's input, after its norm) is the name both of circuit-tracer's backends know for Llama."""
OUTPUT_HOOKS = {"mlp_out": "hook_mlp_out"}
"""circuitlab write site -> circuit-tracer ``feature_output_hook``."""
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja", ".tiktoken")
"""Files of a model folder that transformers reads (weights, index, tokenizer, generation config)."""
ACTIVATIONS = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
"""circuitlab architecture -> activation written to config.yaml (batchtopk files hold jumprelu)."""


def _site(hook: str, table: dict[str, str], what: str) -> tuple[str, int]:
    parsed = parse_hook(hook)
    if parsed is None or parsed[0] not in table:
        raise ValueError(f"transcoders {what} {hook!r}; circuit-tracer can use coders that read "
                         f"{' / '.join(INPUT_HOOKS)} and write {' / '.join(OUTPUT_HOOKS)}: export "
                         "transcoders trained on those sites")
    return table[parsed[0]], int(parsed[1])


def layer_tensors(coder: SparseCoder) -> dict[str, torch.Tensor]:
    """One layer's tensors in circuit-tracer's names and orientation (float32, CPU)."""
    arch = coder.cfg.arch
    if arch not in ACTIVATIONS:
        raise ValueError(f"a {arch!r} transcoder has no circuit-tracer equivalent; export relu, jumprelu, "
                         "batchtopk (saved as jumprelu) or topk transcoders")
    if not (torch.all(coder.in_scale == 1) and torch.all(coder.out_scale == 1)):
        raise ValueError("the coder still holds its training normalisation: call coder.fold_scaling() "
                         "(or save and reload it) before exporting")
    W_enc = coder.W_enc.detach().float().cpu()  # [d_in, d_sae]
    b_enc = coder.b_enc.detach().float().cpu()
    b_dec = coder.b_dec.detach().float().cpu()
    if coder.cfg.b_dec_in:  # (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc)
        b_enc = b_enc - b_dec @ W_enc
    t = {"W_enc": W_enc.t().contiguous(), "W_dec": coder.W_dec.detach().float().cpu().contiguous(),
         "b_enc": b_enc.contiguous(), "b_dec": b_dec.contiguous()}
    if coder.W_skip is not None:
        t["W_skip"] = coder.W_skip.detach().float().cpu().t().contiguous()  # x @ W_skip.T
    if arch == "jumprelu":
        t["activation_function.threshold"] = coder.threshold.detach().float().cpu().contiguous()
    if arch == "topk":
        t["activation_function.k"] = torch.tensor(int(coder.cfg.k), dtype=torch.int64)
    return t


def _yaml(entries: dict) -> str:
    """A flat YAML mapping: every value written as JSON, which YAML reads as the same value."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in entries.items() if v is not None)


def export_transcoders(transcoders, folder: str | Path, model_folder: Optional[str | Path] = None,
                       scan: Optional[str] = None) -> Path:
    """Write ``transcoders`` (a TranscoderSet, a folder, or one coder per layer) to ``folder`` in
    circuit-tracer's local layout, replacing what was there. ``model_folder``: the exported model
    (:func:`export_model`), recorded as ``model_name`` so ``circuit-tracer attribute -t DIR`` needs no
    ``-m``. Returns the folder."""
    tcs: TranscoderSet = as_transcoders(transcoders)
    sites = [(_site(tc.hook_in, INPUT_HOOKS, "read"), _site(tc.hook_out, OUTPUT_HOOKS, "write")) for tc in tcs.layers]
    ins = {s[0][0] for s in sites}
    if len(ins) != 1:
        raise ValueError(f"the layers read different sites ({sorted(ins)}); circuit-tracer's transcoder set has "
                         "one feature_input_hook: export transcoders that all read the same site")
    for l, ((_, li), (_, lo)) in enumerate(sites):
        if li != l or lo != l:
            raise ValueError(f"layer {l}'s transcoder reads block {li} and writes block {lo}; circuit-tracer's "
                             "per-layer transcoders read and write their own block")
    widths = {tc.d_sae for tc in tcs.layers}
    if len(widths) != 1:
        raise ValueError(f"the layers have different widths {sorted(widths)}; circuit-tracer's transcoder set "
                         "needs one d_sae for every layer")
    archs = {tc.cfg.arch for tc in tcs.layers}
    if len(archs) != 1:
        raise ValueError(f"the layers mix architectures {sorted(archs)}; export one architecture per set")
    arch = archs.pop()
    tensors = [layer_tensors(tc) for tc in tcs.layers]
    ks = {int(tc.cfg.k) for tc in tcs.layers} if arch == "topk" else set()
    config = {"model_kind": "transcoder_set", "feature_input_hook": sites[0][0][0],
              "feature_output_hook": sites[0][1][0], "scan": scan or tcs.name,
              "model_name": str(Path(model_folder).resolve()) if model_folder else None,
              "activation": ACTIVATIONS[arch], "k": ks.pop() if len(ks) == 1 else None,
              "skip_connection": tcs.layers[0].W_skip is not None, "exported_by": "circuitlab",
              "circuit_tracer_version": CIRCUIT_TRACER_VERSION}
    from safetensors.torch import save_file

    with atomic_folder(folder, keep_others=False) as tmp:
        for l, t in enumerate(tensors):
            save_file(t, str(tmp / f"layer_{l}.safetensors"))
        (tmp / "config.yaml").write_text(_yaml(config))
    return Path(folder)


def model_folder(name: str | Path) -> Path:
    """The local Hugging Face folder of a model circuitlab loads by ``name`` (a fetched real model,
    a zoo model or a folder); FileNotFoundError for hub ids (circuit-tracer must read a folder)."""
    from circuitlab.models import fetch
    from circuitlab.zoo import list_models, model_dir

    name = str(name)
    if name in fetch.REAL_MODELS:
        if not fetch.is_fetched(name):
            raise fetch.not_fetched_error(name)
        return fetch.model_folder(name)
    if name in list_models():
        return Path(model_dir(name))
    p = Path(name).expanduser()
    if (p / "config.json").exists():
        return p
    raise FileNotFoundError(f"{name!r} is not a local model folder (config.json + weights): circuit-tracer must "
                            "read the model offline; pass a fetched model, a zoo model or a folder")


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symlinks
        shutil.copy2(src, dst)


def export_model(name: str | Path, folder: str | Path) -> Path:
    """A folder transformers <= 4.57 (circuit-tracer 0.5.0's) loads as the same model as ``name``:
    weights and tokenizer linked, ``config.json`` given ``rope_theta`` (and ``rope_scaling``) from
    ``rope_parameters``, ``tokenizer_config.json`` the generic fast tokenizer class. Returns it."""
    src = model_folder(name)
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    files = [p for p in src.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
             and p.name not in ("config.json", "tokenizer_config.json")]
    with atomic_folder(folder, keep_others=False) as tmp:
        for p in files:
            _link(p, tmp / p.name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        tok_cfg_file = src / "tokenizer_config.json"
        if tok_cfg_file.exists():
            tok = json.loads(tok_cfg_file.read_text())
            if tok.get("tokenizer_class") == "TokenizersBackend":
                tok["tokenizer_class"] = "PreTrainedTokenizerFast"
            tok.pop("backend", None)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=1))
    return Path(folder)


def export_for_circuit_tracer(model, transcoders, folder: str | Path) -> dict[str, Path]:
    """``folder/model`` (:func:`export_model` of ``model``, a name or a loaded model) and
    ``folder/transcoders`` (:func:`export_transcoders`, pointing at that model)."""
    folder = Path(folder)
    name = getattr(model, "name", model)
    m = export_model(name, folder / "model")
    t = export_transcoders(transcoders, folder / "transcoders", model_folder=m)
    return {"model": m, "transcoders": t}


def attribute_command(folder: str | Path, prompt: str, out: str = "graph.pt") -> str:
    """The ``circuit-tracer attribute`` command line for an :func:`export_for_circuit_tracer` folder
    (nnsight backend: the one that opens a local Llama folder; ReLU / JumpReLU sets only)."""
    tc = Path(folder).resolve() / "transcoders"
    return (f"circuit-tracer attribute -t {tc} --backend nnsight -p {json.dumps(prompt)} -o {out} "
            "--max_feature_nodes 7500 --batch_size 64")
