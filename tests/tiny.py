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
