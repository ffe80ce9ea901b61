"""Shared pieces of the benchmarks: a GPT-2-small-shaped random model and a random task."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def label(method: str, kw: dict) -> str:
    """A results-table name for an estimator run with options ``kw`` (RelP's rule, IG's variant)."""
    if method == "relp":
        return "relp (attnlrp)" if kw.get("attention") == "attnlrp" else "relp (LN rule)"
    if method == "ig":
        return f"ig ({kw.get('variant', 'inputs')})"
    return method


def gpt2_small_random(folder: Path | None = None, layers: int = 12, d_model: int = 768, heads: int = 12,
                      vocab: int = 50257) -> Path:
    """Save a randomly initialised GPT-2-small-shaped model (with a small word tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiny import write_tokenizer

    folder = Path(folder or tempfile.mkdtemp(prefix="cl-gpt2small-"))
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=d_model, n_layer=layers, n_head=heads,
                         bos_token_id=0, eos_token_id=0)
        GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
        write_tokenizer(folder)
    return folder


def random_task(model, n_prompts: int = 8, n_tokens: int = 16, seed: int = 0, vocab: int = 1000):
    """Clean/corrupt prompts of random tokens that differ in two positions; logit-diff metric."""
    from circuitlab.tasks import metrics as M
    from circuitlab.tasks.task import Task

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n_prompts, n_tokens), generator=g)
    clean[:, 0] = 0
    corrupt = clean.clone()
    corrupt[:, 3] = torch.randint(1, vocab, (n_prompts,), generator=g)
    corrupt[:, n_tokens - 4] = torch.randint(1, vocab, (n_prompts,), generator=g)
    lengths = torch.full((n_prompts,), n_tokens)
    ans = torch.randint(1, vocab, (n_prompts,), generator=g)
    wrong = torch.randint(1, vocab, (n_prompts,), generator=g)
    metric = M.logit_diff(lengths - 1, ans, wrong)
    return Task(clean, corrupt, lengths, ans, wrong, metric, {"END": lengths - 1}, [], "random").to(model.device)
