"""The zoo: small language models trained on a synthetic corpus, shipped with circuitlab.

Why bundled: machines here reach no model hub, so tests and analyses need weights that
live in the package. Each model folder under ``models/`` is a plain Hugging Face folder
(``config.json``, ``model.safetensors``, tokenizer files, ``README.md`` card), loadable with
``AutoModelForCausalLM.from_pretrained(model_dir(name))``.

Modules: ``world`` (vocabulary), ``templates`` + ``corpus`` (task generators, train/held-out
split), ``tokenizer`` (word-level; prompts start with ``"<bos> "``), ``configs`` + ``train``
(reproduce a model), ``evaluate`` (held-out accuracy), ``card`` (model card).
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Folder holding the bundled models, one subfolder per name."""


def list_models() -> list[str]:
    """Names of the bundled (trained and exported) zoo models, sorted."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir()
                  if p.is_dir() and not p.name.startswith(".")
                  and (p / "config.json").exists() and (p / "model.safetensors").exists())


def model_dir(name: str) -> Path:
    """The folder of bundled model ``name``; ValueError listing valid names otherwise."""
    names = list_models()
    if name not in names:
        raise ValueError(f"unknown zoo model {name!r}; bundled models: {names or 'none'}"
                         " (train one with `python -m circuitlab.zoo.train NAME`)")
    return MODELS_DIR / name


__all__ = ["MODELS_DIR", "list_models", "model_dir"]
