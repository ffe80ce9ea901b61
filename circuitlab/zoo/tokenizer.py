"""Word-level tokenizer of the zoo models: one world word = one token.

Why word level: the analysis tasks need single-token answers and token positions that are
easy to name (the IOI ``roles``). With a vocabulary made of exactly the words in
``world.py`` both hold by construction.

Conventions (the whole package relies on them):

- Pre-tokenization is ``Whitespace`` (``\\w+|[^\\w\\s]+``): words and punctuation become
  separate tokens, and leading spaces are dropped, so ``" Mary"`` and ``"Mary"`` encode to
  the same single id. The zoo corpus always writes punctuation space-separated.
- ``<bos>`` is the only special token besides ``<unk>``; it doubles as EOS and PAD.
- **The tokenizer never adds BOS.** Callers write it into the text: prompts start with
  ``"<bos> "`` (``corpus.BOS``), or prepend ``tokenizer.bos_token_id`` themselves.
  Tokenizing ``"<bos> When Mary ..."`` yields BOS at index 0 exactly once.
- Decoding joins tokens with single spaces.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .world import all_words

BOS_TOKEN = "<bos>"
"""Beginning-of-sequence token; also used as EOS and padding."""
UNK_TOKEN = "<unk>"
"""Unknown-word token (never produced by the zoo corpus)."""


def vocabulary() -> list[str]:
    """Token strings in id order: ``<bos>``, ``<unk>``, then :func:`world.all_words`."""
    return [BOS_TOKEN, UNK_TOKEN] + all_words()


def build_raw_tokenizer() -> Tokenizer:
    """The ``tokenizers`` object (what ``tokenizer.json`` serialises)."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([BOS_TOKEN, UNK_TOKEN])
    return tok


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The transformers wrapper (no automatic BOS/EOS; see module docstring)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=build_raw_tokenizer(), bos_token=BOS_TOKEN, eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN, unk_token=UNK_TOKEN, add_bos_token=False, add_eos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=128)
    return tok


def save_tokenizer(folder: str | Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(folder))
    special = {"bos_token": BOS_TOKEN, "eos_token": BOS_TOKEN, "pad_token": BOS_TOKEN,
               "unk_token": UNK_TOKEN}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
