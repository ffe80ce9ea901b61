"""Tiny random Hugging Face models, saved and loaded through the same path users use."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("when then Mary John Anna Tom went to the store park gave a drink book , . is of in "
         "capital France Paris Spain Madrid").split()


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<unk>": 1}
    for w in WORDS + [f"w{i}" for i in range(100)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>",
                                   pad_token="<bos>", unk_token="<unk>")
    fast.save_pretrained(folder)
    # keep the word-level tokenizer whatever the architecture's default tokenizer class is
    import json

    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=1))


VOCAB = 2 + len(WORDS) + 100


def make_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        return tf.GPT2Config(n_positions=64, n_embd=64, n_layer=3, n_head=4, **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, **common)
    if arch == "gemma2":
        return tf.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=16, max_position_embeddings=64, **common)
    if arch == "neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                max_position_embeddings=64, **common)
    raise ValueError(arch)


def save_tiny(folder: Path, arch: str, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch))
    with torch.no_grad():  # larger random weights so effects are not all tiny
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


IOI_PAIRS = [
    {
        "clean": "when Mary and John went to the store , John gave a drink to",
        "corrupt": "when Mary and John went to the store , Anna gave a drink to",
        "answer": " Mary",
        "wrong": " John",
        "roles": {"IO": 2, "S1": 4, "S2": 11},
    },
    {
        "clean": "when John and Mary went to the park , Mary gave a book to",
        "corrupt": "when John and Mary went to the park , Tom gave a book to",
        "answer": " John",
        "wrong": " Mary",
        "roles": {"IO": 2, "S1": 4, "S2": 11},
    },
    {
        "clean": "then Tom and Anna went to the store , Anna gave a drink",
        "corrupt": "then Tom and Anna went to the store , Mary gave a drink",
        "answer": " Tom",
        "wrong": " Anna",
        "roles": {"IO": 2, "S1": 4, "S2": 11},
    },
]


def save_linear_gpt2(folder: Path, weight_scale: float = 1.0, seed: int = 1) -> Path:
    """A 2-layer GPT-2 made linear: identity MLP activation, constant (uniform causal) attention
    (query/key weights zero) and LayerNorm whose epsilon (1e4) dwarfs the variance, gains x100 to
    keep activations at their usual size. Matrices are multiplied by ``weight_scale`` so that
    effects are not tiny. Estimators and decompositions are exact on it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, activation_function="linear",
                     layer_norm_epsilon=1e4, bos_token_id=0, eos_token_id=0)
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        if weight_scale != 1.0:
            for p in m.parameters():
                if p.dim() >= 2:
                    p.mul_(weight_scale)
        for blk in m.transformer.h:
            blk.attn.c_attn.weight[:, : 2 * 32] = 0
            blk.attn.c_attn.bias[: 2 * 32] = 0
        for ln in [m.transformer.ln_f] + [b.ln_1 for b in m.transformer.h] + [b.ln_2 for b in m.transformer.h]:
            ln.weight.mul_(100.0)
    m.save_pretrained(folder)
    write_tokenizer(folder)
    return folder
