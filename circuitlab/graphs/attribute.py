"""Build an attribution graph: batched backward passes, feature targets visited by influence.

Edge from source s to target t = (source vector of s) . (gradient at s's write site of t's
pre-activation) in the linearised replacement model: feature (l, p, f): a_f * W_dec[f] . g;
error (l, p): error vector . g; token p: embedding . g. One backward pass serves a batch of
targets (the prompt repeated, one target per row); the linearised forward is kept across
batches of the same size, so a graph costs one forward per batch size (the logits, the full
feature batches, the last one) and one backward per batch. Logit targets first (top tokens up to
cumulative probability ``logit_prob``, at most ``max_logits``, demeaned unembedding), then
features in order of their influence on the logits so far, up to ``max_feature_nodes``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

from circuitlab.graphs.graph import Graph
from circuitlab.graphs.prune import normalize
from circuitlab.graphs.replacement import CleanRun, GradientReader, Target, clean_run, frozen_run
from circuitlab.graphs.transcoders import as_transcoders


@dataclass
class GraphConfig:
    """How a graph is built."""

    max_feature_nodes: Optional[int] = 2000
    """Feature targets visited (rows computed); None visits every active feature. Features not
    visited are merged into their error node."""
    batch_size: int = 32
    """Targets per backward pass (rows of the repeated prompt). The linearised forward of this many
    rows is kept between backward passes, so it also sets the memory held while building."""
    max_logits: int = 10
    """At most this many logit targets."""
    logit_prob: float = 0.95
    """Take top tokens until their cumulative probability reaches this."""
    exclude_bos: bool = True
    """No feature nodes at position 0 (the attention sink); its MLP output is an error node."""


def _tok_str(tokenizer, i: int) -> str:
    try:
        return tokenizer.decode([int(i)])
    except Exception:  # noqa: BLE001 - any tokenizer failure: fall back to the id
        return str(int(i))


def logit_targets(model, clean: CleanRun, cfg: GraphConfig, target=None) -> tuple[list[int], torch.Tensor]:
    """(token ids, probabilities): the given target(s) or the top tokens."""
    probs = torch.softmax(clean.logits.float(), -1)
    if target is not None:
        items = [target] if isinstance(target, (str, int)) else list(target)
        ids = [model.token_id(t) if isinstance(t, str) else int(t) for t in items]
        return ids, probs[ids]
    p, idx = torch.sort(probs, descending=True)
    k = int(torch.searchsorted(torch.cumsum(p, 0), torch.tensor(cfg.logit_prob, dtype=p.dtype))) + 1
    k = max(1, min(k, cfg.max_logits, len(p)))
    return idx[:k].tolist(), p[:k]


class _Rows:
    """Edges computed so far: rows over sources [active features, errors, tokens].

    Rows live in two buffers sized once (raw for the graph, normalised for influence), so
    choosing the next targets costs one matrix-vector product per graph layer, not a copy of
    every row so far: graphs of 30 layers x thousands of active features stay cheap."""

    def __init__(self, reader: GradientReader, n_logits: int, max_features: Optional[int]):
        model, tcs, clean = reader.model, reader.transcoders, reader.clean
        self.model, self.tcs, self.clean, self.reader = model, tcs, clean, reader
        L, T = model.n_layers, clean.tokens.shape[0]
        self.L, self.T = L, T
        feats, vals = [], []
        for l, a in enumerate(clean.acts):
            nz = a.nonzero()
            feats.append(torch.cat([torch.full((len(nz), 1), l, dtype=torch.long, device=nz.device), nz], 1))
            vals.append(a[nz[:, 0], nz[:, 1]])
        self.active = torch.cat(feats).cpu()  # [n_active, 3] (layer, pos, feature), layer-major
        self.values = torch.cat(vals).float()
        self.n_active = len(self.active)
        self.n_src = self.n_active + L * T + T
        self.cap = self.n_active if max_features is None else min(max_features, self.n_active)
        """Feature targets that will be visited."""
        self.raw = torch.zeros(n_logits + self.cap, self.n_src)
        self.normed = torch.zeros(n_logits + self.cap, self.n_src)
        self.n_rows = 0
        self.targets: list[Target] = []
        self.preacts: list[torch.Tensor] = []
        act = self.active.to(self.values.device)
        self.sources = []  # per layer: (active indices, positions, decoder rows times activations), fixed
        for l, tc in enumerate(tcs.layers):
            idx = (act[:, 0] == l).nonzero()[:, 0]
            p, f = act[idx, 1], act[idx, 2]
            self.sources.append((idx, p, tc.W_dec[f].float() * self.values[idx, None]))  # [n_l, d]

    @property
    def rows(self) -> torch.Tensor:
        """[rows computed, sources] edge weights."""
        return self.raw[: self.n_rows]

    def compute(self, targets: Sequence[Target]) -> None:
        vals, g_embed, g_mlp = self.reader(targets)
        R = len(targets)
        out = torch.zeros(R, self.n_src, device=g_embed.device)
        for l, (idx, p, dec) in enumerate(self.sources):
            if len(idx):
                out[:, idx] = torch.einsum("rnd,nd->rn", g_mlp[l][:, p], dec)
            e0 = self.n_active + l * self.T
            out[:, e0:e0 + self.T] = torch.einsum("rtd,td->rt", g_mlp[l], self.clean.errors[l])
        t0 = self.n_active + self.L * self.T
        out[:, t0:] = torch.einsum("rtd,td->rt", g_embed, self.clean.embed)
        out = out.cpu()
        self.raw[self.n_rows:self.n_rows + R] = out
        self.normed[self.n_rows:self.n_rows + R] = normalize(out)  # row-wise: the same as normalising all rows
        self.n_rows += R
        self.targets += list(targets)
        self.preacts.append(vals.cpu())

    def feature_influence(self, logit_w: torch.Tensor) -> torch.Tensor:
        """Influence of each active feature on the logits through the rows computed so far."""
        M = self.normed[: self.n_rows]
        is_logit = torch.tensor([t.kind == "logit" for t in self.targets])
        feat_node = torch.tensor([self._index(t) if t.kind == "feature" else -1 for t in self.targets])
        w0 = torch.zeros(len(self.targets))
        w0[is_logit] = logit_w
        cur = w0 @ M
        total = cur.clone()
        frows = (~is_logit).nonzero()[:, 0]
        contiguous = len(frows) > 0 and int(frows[-1] - frows[0]) == len(frows) - 1
        M_f = M[int(frows[0]):int(frows[-1]) + 1] if contiguous else M[frows]  # feature rows follow the logits'
        src_f = feat_node[frows]
        for _ in range(4 * self.L + 8):
            if not bool(cur.any()) or len(frows) == 0:
                break
            cur = cur[src_f] @ M_f
            total += cur
        return total[: self.n_active]

    def _index(self, t: Target) -> int:
        if not hasattr(self, "_lookup"):
            self._lookup = {tuple(r): i for i, r in enumerate(self.active.tolist())}
        return self._lookup[(t.layer, t.pos, t.feature)]


def attribute(model, transcoders, prompt: str | torch.Tensor, target=None,
              cfg: Optional[GraphConfig] = None) -> Graph:
    """The attribution graph of ``prompt`` (text or [T] tokens) for ``target`` (token text/id or a
    list of them; default: top tokens up to ``cfg.logit_prob``; default config ``GraphConfig()``)."""
    cfg = cfg or GraphConfig()
    if cfg.batch_size < 1:
        raise ValueError(f"GraphConfig.batch_size must be at least 1, got {cfg.batch_size}")
    t_start = time.perf_counter()
    tcs = as_transcoders(transcoders)
    tcs.check(model)
    tcs.to(model.device)
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else torch.as_tensor(prompt).reshape(-1)
    if tokens.numel() < 1:
        raise ValueError("empty prompt")
    clean = clean_run(model, tcs, tokens.to(model.device), exclude_bos=cfg.exclude_bos)
    ids, probs = logit_targets(model, clean, cfg, target)
    with GradientReader(model, tcs, clean) as reader:  # the kept forward is freed on leaving
        rows = _Rows(reader, len(ids), cfg.max_feature_nodes)
        logit_t = [Target("logit", token=i) for i in ids]
        for s in range(0, len(logit_t), cfg.batch_size):
            rows.compute(logit_t[s:s + cfg.batch_size])
        cap = rows.cap
        visited = torch.zeros(rows.n_active, dtype=torch.bool)
        order: list[int] = []
        while len(order) < cap:
            infl = rows.feature_influence(probs.cpu().float())
            infl[visited] = -1
            n = min(cfg.batch_size, cap - len(order))
            pick = torch.topk(infl, n).indices.tolist()
            visited[pick] = True
            order += pick
            rows.compute([Target("feature", *(int(v) for v in rows.active[i])) for i in pick])
    graph = _assemble(model, tcs, clean, rows, sorted(order), ids, probs, prompt)
    # clean run and bias run, plus the linearised forwards (one per batch size)
    graph.meta.update(config=asdict(cfg), forward_passes=reader.forward_passes + 2,
                      backward_passes=reader.backward_passes,
                      seconds=time.perf_counter() - t_start, n_active=rows.n_active)
    return graph


def _assemble(model, tcs, clean, rows: _Rows, selected: list[int], ids, probs, prompt) -> Graph:
    L, T, K = rows.L, rows.T, len(ids)
    ns = len(selected)
    N = ns + L * T + T + K
    A = torch.zeros(N, N)
    preact = torch.zeros(N)
    sel_pos = {a: i for i, a in enumerate(selected)}
    all_rows = rows.rows
    all_pre = torch.cat(rows.preacts)
    # source columns: selected features keep theirs; the others join their error node
    col = ns + rows.active[:, 0] * T + rows.active[:, 1]
    col[torch.tensor(selected, dtype=torch.long)] = torch.arange(ns)
    src_map = torch.cat([col, torch.arange(ns, ns + L * T + T)])
    node_of_row = []
    for r, t in enumerate(rows.targets):
        if t.kind == "logit":
            node = ns + L * T + T + ids.index(t.token)
        else:
            node = sel_pos[rows._index(t)]
        node_of_row.append(node)
        A[node].index_add_(0, src_map, all_rows[r])
        preact[node] = all_pre[r]
    # explicit bias terms: one frozen run with every source removed
    node_targets = [None] * N
    for r, t in enumerate(rows.targets):
        node_targets[node_of_row[r]] = t
    tnodes = [i for i in range(N) if node_targets[i] is not None]
    bias = torch.zeros(N)
    b = frozen_run(model, tcs, clean, [node_targets[i] for i in tnodes], bias_only=True)[0]
    bias[tnodes] = b.cpu()
    tok = model.tokenizer
    return Graph(prompt=prompt if isinstance(prompt, str) else "", tokens=clean.tokens.cpu(),
                 token_strs=[_tok_str(tok, i) for i in clean.tokens.tolist()], n_layers=L,
                 active_features=rows.active, activations=rows.values.cpu(),
                 selected=torch.tensor(selected, dtype=torch.long), logit_tokens=torch.tensor(ids, dtype=torch.long),
                 logit_strs=[_tok_str(tok, i) for i in ids], logit_probs=probs.cpu().float(), adjacency=A,
                 bias=bias, preact=preact, scan=tcs.name, model_name=getattr(model, "name", ""), meta={})
