"""Planted circuits: tiny GPT-2 models whose weights are set by hand, with exact ground truth.

Construction (``build``). Attention-only GPT-2 (MLP weights and biases zero, so every MLP writes
exactly 0; all attention biases zero). Each LayerNorm has epsilon 1e4 and gain 100: for residual
vectors with small variance it is (x - mean(x)) up to a relative error ~ var/2e4 (< 1e-4 here),
and every vector the construction writes is orthogonal to the all-ones direction, so the norms
act as the identity. The residual stream is split into orthonormal subspaces: ``tok`` (one
direction per token; the tied unembedding reads only these), ``pos`` (one per position, written
by the position embedding), ``prev`` (one per token) and ``junk`` (read by nothing).

``induction`` (2 layers x 2 heads):
  L0.H0 previous-token head: query pos_p . key pos_p' scores 40 iff p' = p - 1; values read the
  token, the output writes prev_{token(p-1)}.
  L1.H0 induction head: query tok_t . key prev_t scores 40 on a match; values read the token and
  the output writes 10 x tok_t -- it copies the token after the earlier occurrence.
  L0.H1 and L1.H1 are distractors: they attend (uniformly / by prev-token) and write only junk.
  Task: "<bos> r1 ... rn r1 ... rk" -> r(k+1); the corruption replaces the first-half rk by an
  unused token, so no key matches. True nodes: embed, L0.H0, L1.H0. True edges:
  embed->L0.H0.v, L0.H0->L1.H0.k, L1.H0->logits.

``copy`` (2 layers x 2 heads):
  L0.H0 copy head: every query attends to position 1 (query pos_p -> f0, key pos_1 -> f0) and
  writes 10 x tok of that token. The other heads write junk. Task: "<bos> s w1 ... wm" -> s;
  the corruption changes s. True nodes: embed, L0.H0. True edges: embed->L0.H0.v,
  L0.H0->logits.

Edges and nodes whose effect is exactly 0 by construction may still show effects of order 1e-4 of
the true ones (the LayerNorm approximation), so ground-truth checks use relative thresholds.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

TOKENS = ["<bos>"] + [chr(ord("a") + i) for i in range(24)]
N_POS = 32
D_MODEL, N_HEAD = 128, 2
D_HEAD = D_MODEL // N_HEAD
SHARP = 40.0  # attention score of a match (softmax leak e^-40)
COPY = 10.0  # logit written by a copying head


@dataclass
class Planted:
    """A planted model on disk with its exact ground truth."""

    name: str
    """'induction' or 'copy'."""
    path: Path
    """The Hugging Face folder (config, safetensors weights, word-level tokenizer)."""
    nodes: list[str]
    """True components (node labels as in circuits: 'embed', 'L0.H0')."""
    edges: list[str]
    """True edges ('L0.H0->L1.H0.k')."""
    description: str = ""
    """One line on the mechanism."""
    meta: dict = field(default_factory=dict)
    """Free-form extras."""

    @property
    def heads(self) -> list[str]:
        """True heads (the part of the truth that head-level node methods can find)."""
        return [n for n in self.nodes if ".H" in n]

    def load(self, device: str = "cpu", dtype=torch.float32):
        import circuitlab as cl

        return cl.load(str(self.path), device=device, dtype=dtype)

    def task(self, model, n: int = 8, seed: int = 0, metric: str = "logit_diff"):
        import circuitlab as cl

        gen = _induction_pairs if self.name == "induction" else _copy_pairs
        return cl.tasks.from_pairs(model, gen(n, seed), metric, name=f"planted-{self.name}")


def _basis(seed: int = 0) -> torch.Tensor:
    """Orthonormal columns orthogonal to the all-ones vector, [d_model, d_model - 1]."""
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(D_MODEL, 1, dtype=torch.float64) / D_MODEL ** 0.5
    x = torch.randn(D_MODEL, D_MODEL - 1, generator=g, dtype=torch.float64)
    x = x - ones @ (ones.T @ x)
    q, _ = torch.linalg.qr(x)
    return q


def _spaces():
    Q = _basis()
    V = len(TOKENS)
    tok = Q[:, :V]
    pos = Q[:, V : V + N_POS]
    prev = Q[:, V + N_POS : 2 * V + N_POS]
    junk = Q[:, 2 * V + N_POS : 2 * V + N_POS + 8]
    return tok, pos, prev, junk


def _outer(src: torch.Tensor, dst_idx: list[int], n: int, scale: float = 1.0) -> torch.Tensor:
    """A [d_model, n] read matrix sending column i of ``src`` to coordinate dst_idx[i]."""
    W = torch.zeros(src.shape[0], n, dtype=torch.float64)
    for i, j in enumerate(dst_idx):
        W[:, j] += scale * src[:, i]
    return W


def _head(attn, h: int, Wq, Wk, Wv, Wo) -> None:
    """Write one head's [d, dh] query/key/value and [dh, d] output matrices into GPT-2's fused layout."""
    d, dh = D_MODEL, D_HEAD
    W = attn.c_attn.weight  # [d, 3d], x @ W
    sl = slice(h * dh, (h + 1) * dh)
    W[:, 0 * d :][:, sl] = Wq.float()
    W[:, 1 * d :][:, sl] = Wk.float()
    W[:, 2 * d :][:, sl] = Wv.float()
    attn.c_proj.weight[sl, :] = Wo.float()


def _model(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(TOKENS), n_positions=N_POS, n_embd=D_MODEL, n_layer=2, n_head=N_HEAD,
                     layer_norm_epsilon=1e4, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                     tie_word_embeddings=True, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    m = GPT2LMHeadModel(cfg)
    tok, pos, prev, junk = _spaces()
    V = len(TOKENS)
    s = SHARP * D_HEAD ** 0.5  # GPT-2 divides scores by sqrt(d_head)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.transformer.wte.weight[:] = tok.T.float()
        m.transformer.wpe.weight[:] = pos.T.float()
        for ln in [m.transformer.ln_f] + [b.ln_1 for b in m.transformer.h] + [b.ln_2 for b in m.transformer.h]:
            ln.weight.fill_(100.0)
        zero = torch.zeros(D_MODEL, D_HEAD, dtype=torch.float64)
        read_tok = _outer(tok, list(range(V)), D_HEAD)
        to_junk = torch.zeros(D_HEAD, D_MODEL, dtype=torch.float64)  # e_t -> junk_{t mod 8}
        for t in range(V):
            to_junk[t] = junk[:, t % 8]
        copy_out = COPY * read_tok.T  # e_t -> 10 tok_t
        h0, h1 = m.transformer.h[0].attn, m.transformer.h[1].attn
        if kind == "induction":
            q = _outer(pos, list(range(N_POS)), D_HEAD, s)  # pos_p -> f_p
            k = _outer(pos[:, : N_POS - 1], list(range(1, N_POS)), D_HEAD)  # pos_p -> f_{p+1}
            prev_out = torch.zeros(D_HEAD, D_MODEL, dtype=torch.float64)
            for t in range(V):
                prev_out[t] = prev[:, t]
            _head(h0, 0, q, k, read_tok, prev_out)  # previous-token head
            _head(h0, 1, zero, zero, read_tok, to_junk)  # distractor: uniform, writes junk
            every = list(range(V))
            _head(h1, 0, _outer(tok, every, D_HEAD, s), _outer(prev, every, D_HEAD), read_tok, copy_out)
            _head(h1, 1, _outer(prev, every, D_HEAD, 1.0), _outer(prev, every, D_HEAD), read_tok, to_junk)
        elif kind == "copy":
            q = _outer(pos, [0] * N_POS, D_HEAD, s)  # every query -> f0
            k = _outer(pos[:, 1:2], [0], D_HEAD)  # only position 1's key -> f0
            _head(h0, 0, q, k, read_tok, copy_out)  # copy head
            _head(h0, 1, zero, zero, read_tok, to_junk)
            q1 = _outer(pos, list(range(N_POS)), D_HEAD, s)  # previous-token pattern, writes junk
            k1 = _outer(pos[:, : N_POS - 1], list(range(1, N_POS)), D_HEAD)
            _head(h1, 0, q1, k1, read_tok, to_junk)
            _head(h1, 1, zero, zero, read_tok, to_junk)
        else:
            raise ValueError(f"unknown planted model {kind!r}; choose 'induction' or 'copy'")
    return m


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>",
                                   pad_token="<bos>", unk_token="<bos>")
    fast.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=1))


TRUTH = {
    "induction": (["embed", "L0.H0", "L1.H0"], ["embed->L0.H0.v", "L0.H0->L1.H0.k", "L1.H0->logits"],
                  "previous-token head L0.H0 feeds induction head L1.H0's keys"),
    "copy": (["embed", "L0.H0"], ["embed->L0.H0.v", "L0.H0->logits"], "copy head L0.H0 copies the token at position 1"),
}


def build(name: str, folder: Optional[str | Path] = None) -> Planted:
    """Write planted model ``name`` ('induction' or 'copy') as a Hugging Face folder."""
    if name not in TRUTH:
        raise ValueError(f"unknown planted model {name!r}; choose from {list(TRUTH)}")
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=f"planted-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    _model(name).save_pretrained(folder, safe_serialization=True)
    _write_tokenizer(folder)
    nodes, edges, desc = TRUTH[name]
    return Planted(name, folder, list(nodes), list(edges), desc)


def _induction_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    letters = TOKENS[1:]
    out = []
    for _ in range(n):
        n1 = 8
        k = rng.randint(2, n1 - 1)
        pick = rng.sample(letters, n1 + 2)
        seq, fresh, wrong = pick[:n1], pick[n1], pick[n1 + 1]
        clean = seq + seq[:k]
        corrupt = list(clean)
        corrupt[k - 1] = fresh  # the first-half occurrence of the query token
        out.append({"clean": " ".join(clean), "corrupt": " ".join(corrupt), "answer": seq[k], "wrong": wrong})
    return out


def _copy_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    letters = TOKENS[1:]
    out = []
    for _ in range(n):
        pick = rng.sample(letters, 8)
        s, s2, rest = pick[0], pick[1], pick[2:]
        out.append({"clean": " ".join([s] + rest), "corrupt": " ".join([s2] + rest), "answer": s, "wrong": s2})
    return out
