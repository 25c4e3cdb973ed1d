"""QK attributions: a head's attention score split into (query-side node, key-side node) pairs
(Kamath, Ameisen et al. 2025, "Tracing Attention Computation Through Feature Interactions").

Head h of block l scores query position q against key position k as
    score = q_vec . k_vec / attn_scale,   q_vec = Rot_q( n_q * (ln1_q(x_q) W_Q_h + b_Q_h) )
with x_q the residual stream (resid_pre of block l) at q, ln1_q its norm, n_q the query norm (QK-norm,
Qwen3/Gemma-3; identity elsewhere) and Rot_q the rotary embedding at q (identity without rotary);
k_vec likewise at k. Freeze, as the forward pass had them, the ln1 scales at q and k and the
QK-norm scales of (q, h) and (k, h) - the same norm scales the local replacement model freezes -
and q_vec is an affine map of x_q, k_vec of x_k. In the local replacement model x_q is a sum of node
contributions (every active feature, error node and token embedding at positions <= q, moved by
frozen attention from earlier positions) plus a constant (biases, BOS, learned positions, b_dec).
So q_vec = sum_i Q_i + Q_bias, k_vec = sum_j K_j + K_bias, and
    score = sum_ij Q_i.K_j/s + sum_i Q_i.K_bias/s + sum_j Q_bias.K_j/s + Q_bias.K_bias/s   exactly.
Q_i [e] comes from e backward rows seeded at resid_pre(l), position q, with the rows of the map
x_q -> q_vec (compute_rows on the local replacement model with block l's pattern zeroed, so the
seed sits before attention l). Q_bias is q_vec of a frozen run with every node set to zero (`zeroed_hooks`).
Gemma-2 soft-caps the score after this (cap * tanh(score / cap)); we split the score before the cap.

Shapes: e head dim, N source columns (SourceLayout order: active features, errors, embeddings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from circuits.attribution.frozen_backward import FrozenBlocks, norm_backward
from circuits.attribution.engine import bounded_batch_size
from circuits.attribution.rows import SourceLayout, compute_rows
from circuits.attribution.targets import TargetSeeds
from circuits.errors import CircuitsError
from circuits.replacement.hooks import block_hook
from circuits.replacement.hooks import transcoder_hooks
from circuits.replacement.local import LocalReplacement, freeze_hooks


@dataclass
class QKAttribution:
    """One head's score at (query, key) split into node pairs and named remainders."""

    layer: int
    head: int
    query: int
    key: int
    attn_scale: float
    q_nodes_e_n: torch.Tensor  # [e, N] each source column's part of the query vector
    k_nodes_e_n: torch.Tensor  # [e, N] each source column's part of the key vector
    q_bias_e: torch.Tensor  # [e] the constant part of the query vector
    k_bias_e: torch.Tensor  # [e] the constant part of the key vector
    model_score: float  # the score the model computed (before any soft cap)
    soft_cap: float | None = None  # Gemma-2's attention soft cap, applied after the score

    @property
    def q_total_e(self) -> torch.Tensor:
        return self.q_nodes_e_n.sum(1) + self.q_bias_e

    @property
    def k_total_e(self) -> torch.Tensor:
        return self.k_nodes_e_n.sum(1) + self.k_bias_e

    def remainders(self) -> dict[str, float]:
        """The named terms beside the node pairs."""
        s = self.attn_scale
        return {"query nodes x key bias": float(self.q_nodes_e_n.sum(1) @ self.k_bias_e) / s,
                "query bias x key nodes": float(self.q_bias_e @ self.k_nodes_e_n.sum(1)) / s,
                "query bias x key bias": float(self.q_bias_e @ self.k_bias_e) / s}

    def pairs(self, q_columns: torch.Tensor, k_columns: torch.Tensor) -> torch.Tensor:
        """Pair contributions [len(q_columns), len(k_columns)]: Q_i . K_j / attn_scale."""
        return self.q_nodes_e_n[:, q_columns].T @ self.k_nodes_e_n[:, k_columns] / self.attn_scale

    def q_marginals(self) -> torch.Tensor:
        """[N] each query-side node against the whole key vector (bias included)."""
        return self.k_total_e @ self.q_nodes_e_n / self.attn_scale

    def k_marginals(self) -> torch.Tensor:
        """[N] each key-side node against the whole query vector (bias included)."""
        return self.q_total_e @ self.k_nodes_e_n / self.attn_scale

    def q_bias_marginal(self) -> float:
        return float(self.q_bias_e @ self.k_total_e) / self.attn_scale

    def k_bias_marginal(self) -> float:
        return float(self.q_total_e @ self.k_bias_e) / self.attn_scale

    def score(self) -> float:
        """The sum of every pair and remainder: the pre-softmax score (before any soft cap)."""
        return float(self.q_total_e @ self.k_total_e) / self.attn_scale


def check_qk_supported(model) -> None:
    cfg = model.cfg
    if cfg.positional_embedding_type not in ("standard", "rotary", "shortformer"):
        raise CircuitsError(f"QK attributions do not support {cfg.positional_embedding_type} position terms yet")
    if getattr(cfg, "use_logn_attn", False) or getattr(cfg, "use_dynamic_ntk_rope", False):
        raise CircuitsError("QK attributions do not support length-dependent query scaling yet")
    if cfg.original_architecture in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        raise CircuitsError("QK attributions do not support whole-vector QK-norms (OLMo) yet")


def _kv_head(model, head: int) -> int:
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return head // (model.cfg.n_heads // n_kv)


def _rotary_matrix(attn, pos: int, e: int, device) -> torch.Tensor:
    """Rot [e, e] with rot(v) = Rot @ v at position `pos` (the model's own apply_rotary, applied to
    the basis vectors; identity without rotary)."""
    if attn.cfg.positional_embedding_type != "rotary":
        return torch.eye(e, device=device)
    basis = torch.zeros(e, pos + 1, 1, e, device=device, dtype=attn.W_Q.dtype)
    basis[torch.arange(e), pos, 0, torch.arange(e)] = 1
    return attn.apply_rotary(basis)[:, pos, 0, :].float().T


def _qk_norm_factor(model, rep: LocalReplacement, layer: int, which: str, pos: int, head_index: int,
                    n_heads: int) -> torch.Tensor | float:
    """The frozen QK-norm of one (position, head): w / scale [e], or 1 without a QK-norm."""
    attn = model.blocks[layer].attn
    norm = getattr(attn, f"{which}_norm", None)
    if norm is None or not model.cfg.use_qk_norm:
        return 1.0
    scale = rep.norm_scales[block_hook(layer, f"attn.{which}_norm.hook_scale")].reshape(-1)
    factor = 1.0 / scale[pos * n_heads + head_index].float()
    w = getattr(norm, "w", None)
    return factor if w is None else factor * w.detach().float()


def side_seeds(model, blocks: FrozenBlocks, rep: LocalReplacement, layer: int, head: int, pos: int,
               side: str) -> torch.Tensor:
    """Seed vectors [e, d] in resid_pre(layer) at `pos`: row j reads coordinate j of the linear part
    of the query (side "q") or key ("k") vector of `head`."""
    attn = model.blocks[layer].attn
    if side == "q":
        W_d_e, idx, n = attn.W_Q[head], head, model.cfg.n_heads
    else:
        kv = _kv_head(model, head)
        W_K = attn._W_K if hasattr(attn, "_W_K") else attn.W_K
        W_d_e, idx, n = W_K[kv], kv, W_K.shape[0]
    W_d_e = W_d_e.detach().float()
    e = W_d_e.shape[1]
    rot_e_e = _rotary_matrix(attn, pos, e, W_d_e.device)
    norm = _qk_norm_factor(model, rep, layer, side, pos, idx, n)
    M_e_d = (rot_e_e * norm) @ W_d_e.T  # q_vec_lin = M (ln1 x)
    if not blocks.has_norm:
        return M_e_d
    scale = rep.ln1_scale_layer_pos[layer, pos].reshape(1).expand(e)
    return norm_backward(M_e_d, scale, blocks.ln1_w[layer], blocks.centered)


def _qk_hooks(model, layer: int) -> tuple[str, str]:
    if model.cfg.positional_embedding_type == "rotary":
        return block_hook(layer, "attn.hook_rot_q"), block_hook(layer, "attn.hook_rot_k")
    if model.cfg.use_qk_norm:
        raise CircuitsError("QK-norm without rotary embeddings is not supported for QK attributions")
    return block_hook(layer, "attn.hook_q"), block_hook(layer, "attn.hook_k")


def _capture(names: list[str], store: dict):
    def make(name):
        def hook(value, hook):  # noqa: ARG001 - TransformerLens hook signature
            store[name] = value[0].detach().float()
        return hook
    return [(n, make(n)) for n in names]


def zeroed_hooks(model, transcoder, rep: LocalReplacement) -> list:
    """Hooks running the local replacement model with every node set to zero: embeddings zero, each
    MLP output the transcoder's decoder bias plus its skip term of the live input (no feature, no
    error; BOS adds its constant error, as the engine's BOS rule), every pattern and norm scale frozen. What remains is the
    constant part of every activation."""
    live_x: dict[int, torch.Tensor] = {}

    def zero_embed(value, hook):  # noqa: ARG001 - TransformerLens hook signature
        return torch.zeros_like(value)

    def read_input(layer):
        def hook(value, hook):  # noqa: ARG001
            live_x[layer] = value.to(transcoder.dtype)
        return hook

    def write_output(layer):
        def hook(value, hook):  # noqa: ARG001
            zero = [torch.zeros(*value.shape[:-1], transcoder.cfg.n_features, dtype=transcoder.dtype,
                                device=value.device)] * (layer + 1)
            y = transcoder.decode_layer(zero, layer, live_x[layer])
            y[..., 0, :] += rep.error_layer_pos_d[layer, 0]  # BOS: its error is a constant, its skip term live
            return y.to(value.dtype)
        return hook

    hooks = [("hook_embed", zero_embed)]
    for l in range(model.cfg.n_layers):
        inp, out = transcoder_hooks(transcoder, l)
        hooks += [(inp, read_input(l)), (out, write_output(l))]
    return hooks + freeze_hooks(model, rep)


@torch.no_grad()
def constant_qk(model, transcoder, rep: LocalReplacement, layers: list[int]) -> dict[int, tuple]:
    """{layer: (queries, keys) [P, heads, e]} of the frozen model with every node zeroed (features,
    errors, embeddings): the constant part of each. One forward pass for all `layers`."""
    names = {l: _qk_hooks(model, l) for l in layers}
    store: dict = {}
    model.run_with_hooks(rep.tokens[None], fwd_hooks=zeroed_hooks(model, transcoder, rep)
                         + _capture([n for p in names.values() for n in p], store), stop_at_layer=max(layers) + 1)
    return {l: (store[q], store[k]) for l, (q, k) in names.items()}


@torch.no_grad()
def model_qk(model, rep: LocalReplacement, layers: list[int]) -> dict[int, tuple]:
    """{layer: (queries, keys) [P, heads, e]} of the clean run (what the model scored)."""
    names = {l: _qk_hooks(model, l) for l in layers}
    store: dict = {}
    model.run_with_hooks(rep.tokens[None], fwd_hooks=_capture([n for p in names.values() for n in p], store),
                         stop_at_layer=max(layers) + 1)
    return {l: (store[q], store[k]) for l, (q, k) in names.items()}


@torch.no_grad()
def qk_attribution(model, transcoder, rep: LocalReplacement, blocks: FrozenBlocks, layout: SourceLayout,
                   layer: int, head: int, query: int, key: int, constants=None, clean=None) -> QKAttribution:
    """Split head `head` of block `layer`'s score of `query` against `key` (key <= query) into node
    pairs. `constants` / `clean`: constant_qk / model_qk of this layer, when already computed."""
    return qk_attributions(model, transcoder, rep, blocks, layout, layer, [(head, query, key)], constants, clean)[0]


@torch.no_grad()
def qk_attributions(model, transcoder, rep: LocalReplacement, blocks: FrozenBlocks, layout: SourceLayout,
                    layer: int, heads: list[tuple[int, int, int]], constants=None, clean=None) -> list[QKAttribution]:
    """qk_attribution for several (head, query, key) of one block, their rows in one backward sweep."""
    check_qk_supported(model)
    for _, query, key in heads:
        if not 0 <= key <= query < rep.n_pos:
            raise CircuitsError(f"need 0 <= key <= query < {rep.n_pos}, got query {query}, key {key}")
    seed_vecs, positions, block_of = [], [], {}  # block_of: (side, head or value head, position) -> row block
    for head, query, key in heads:
        for side, h, pos in (("q", head, query), ("k", _kv_head(model, head), key)):
            if (side, h, pos) not in block_of:  # query heads sharing a value/key head share key rows (GQA)
                block_of[(side, h, pos)] = len(seed_vecs)
                seed_vecs.append(side_seeds(model, blocks, rep, layer, head, pos, side))
                positions += [pos] * seed_vecs[-1].shape[0]
    e = seed_vecs[-1].shape[0]
    cut = dataclasses.replace(rep, patterns=rep.patterns.with_layer_zeroed(layer))
    vec = torch.cat(seed_vecs)
    seeds = TargetSeeds(torch.full((vec.shape[0],), layer, device=vec.device),
                        torch.tensor(positions, device=vec.device), vec)
    # [2e * len(heads), N], in batches whose stored gradients stay within the engine's budget
    batch = bounded_batch_size(64, int(seeds.position.max()) + 1, blocks.n_layers, vec.shape[1])
    rows = torch.cat([compute_rows(cut, blocks, transcoder, layout, seeds.select(torch.arange(i, min(i + batch, len(seeds)))))
                      for i in range(0, len(seeds), batch)])
    q_const, k_const = constants if constants is not None else constant_qk(model, transcoder, rep, [layer])[layer]
    q_clean, k_clean = clean if clean is not None else model_qk(model, rep, [layer])[layer]
    scale = float(model.blocks[layer].attn.attn_scale)
    cap = getattr(model.cfg, "attn_scores_soft_cap", -1.0)
    out = []
    for i, (head, query, key) in enumerate(heads):
        kv = _kv_head(model, head) if k_const.shape[1] != q_const.shape[1] else head
        qb, kb = block_of[("q", head, query)], block_of[("k", _kv_head(model, head), key)]
        q_rows, k_rows = rows[qb * e:(qb + 1) * e], rows[kb * e:(kb + 1) * e]
        out.append(QKAttribution(layer, head, query, key, scale, q_rows, k_rows, q_const[query, head],
                                 k_const[key, kv], float(q_clean[query, head] @ k_clean[key, kv]) / scale,
                                 float(cap) if cap is not None and cap > 0 else None))
    return out
