"""The frozen attention patterns of a prompt, stored causally or rebuilt from q and k (issue 19).

A causal pattern [H, P, P] is zero above its diagonal: the frozen model keeps, per block of
QUERY_BLOCK queries [q0, q1), only the keys < q1 ([H, q1 - q0, q1], float32: the numbers are the
model's). That is about half of P x P at long prompts, and the attention backward runs over the
same blocks, so it skips the masked half too. Blocks are taken while the forward runs (one layer's
full pattern alive at a time), never all layers' full patterns at once.

Long prompts: half of P x P per head and layer is still gigabytes (SmolLM2 at 2,000 tokens: 2.3 GB).
A layer whose `qk_hooks` ran (the engine picks the layers above those whose patterns fit its
budget) keeps instead the queries and keys exactly as the
attention module scored them (after q/k norms and rotary: `hook_rot_q/k`, else `hook_q/k`; keys
per grouped-query value head, [P, G, e]), and rebuilds each causal block when it is read, with the
module's own operations: `calculate_attention_scores` (scale, soft cap, grouped heads) on the block's
queries against keys < q1, `apply_causal_mask` at offset q0 (causal mask and sliding window), softmax.
Same numbers up to float rounding of the softmax's sum (keys >= q1 are masked to exp(-inf) = 0 in
the forward). Models whose scores take anything else (ALiBi, relative biases, log-n scaling,
attention sinks, q/k norms without rotary) keep their patterns (`rebuildable`).
"""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError

QUERY_BLOCK = 128


def rebuildable(model) -> bool:
    """Whether every layer's pattern is softmax(mask(calculate_attention_scores(q, k))) of q and k
    read at the hooks `qk_hook_names` names (the architectures tracing supports: yes)."""
    cfg = model.cfg
    if getattr(cfg, "attention_dir", "causal") != "causal" or getattr(cfg, "use_logn_attn", False):
        return False
    if getattr(cfg, "use_attention_sinks", False):
        return False
    if cfg.positional_embedding_type == "rotary":
        return True
    clip = getattr(cfg, "clip_qkv", None)
    return cfg.positional_embedding_type in ("standard", "shortformer") and not cfg.use_qk_norm and clip is None


def qk_hook_names(model, layer: int) -> tuple[str, str]:
    """The hooks holding layer's queries and keys as the module scores them."""
    if model.cfg.positional_embedding_type == "rotary":
        return f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


class FrozenPatterns:
    """Per layer, the causal blocks of its attention pattern, or the layer's q and k they are
    rebuilt from (`attention_modules` needed then). `patterns[l]` gives the full [H, P, P]
    (materialised on demand: for the frozen forward's hooks, not for attribution)."""

    def __init__(self, n_layers: int, n_pos: int, attention_modules=None):
        self.n_pos = n_pos
        self._blocks: list[list[torch.Tensor] | None] = [None] * n_layers
        self._q: list[torch.Tensor | None] = [None] * n_layers  # [P, H, e] as scored (model dtype)
        self._k: list[torch.Tensor | None] = [None] * n_layers  # [P, G, e]
        self._attn = list(attention_modules) if attention_modules is not None else [None] * n_layers
        self._zeroed: set[int] = set()

    def keep(self, layer: int, pattern_h_q_k: torch.Tensor) -> None:
        """Store one layer's pattern [H, P, P] as causal blocks (refusing a non-causal one)."""
        P = pattern_h_q_k.shape[-1]
        blocks = []
        for q0 in range(0, P, QUERY_BLOCK):
            q1 = min(P, q0 + QUERY_BLOCK)
            if q1 < P and bool(pattern_h_q_k[:, q0:q1, q1:].any()):
                raise CircuitsError(f"layer {layer}'s attention reads later positions: only causal attention "
                                    "is supported for tracing")
            blocks.append(pattern_h_q_k[:, q0:q1, :q1].float().clone())
        self._blocks[layer] = blocks

    def hook(self, layer: int):
        """A TransformerLens forward hook on blocks.{layer}.attn.hook_pattern that keeps it."""
        def keep(value, hook):  # noqa: ARG001 - TransformerLens hook signature
            self.keep(layer, value[0])
        return keep

    def qk_hooks(self, model, layer: int) -> list:
        """(name, hook) pairs that keep layer's queries and keys (rebuild mode)."""
        q_name, k_name = qk_hook_names(model, layer)

        def keep_q(value, hook):  # noqa: ARG001
            self._q[layer] = value[0].detach().clone()

        def keep_k(value, hook):  # noqa: ARG001
            self._k[layer] = value[0].detach().clone()
        return [(q_name, keep_q), (k_name, keep_k)]

    @property
    def rebuilt_layers(self) -> list[int]:
        """The layers whose patterns are rebuilt from q and k."""
        return [l for l, q in enumerate(self._q) if q is not None]

    @property
    def rebuild(self) -> bool:
        return bool(self.rebuilt_layers)

    def with_layer_zeroed(self, layer: int) -> "FrozenPatterns":
        """A copy (sharing the other layers' blocks) whose `layer` attends nowhere."""
        out = FrozenPatterns(len(self._blocks), self.n_pos, self._attn)
        out._blocks, out._q, out._k = list(self._blocks), list(self._q), list(self._k)
        out._zeroed = self._zeroed | {layer}
        return out

    def __len__(self) -> int:
        return len(self._blocks)

    def _rebuilt(self, layer: int, q0: int, q1: int) -> torch.Tensor:
        """pattern[:, q0:q1, :q1] [H, q1 - q0, q1] from the kept q and k, by the module's own ops."""
        attn = self._attn[layer]
        q, k = self._q[layer], self._k[layer]
        scores = attn.calculate_attention_scores(q[None, q0:q1], k[None, :q1])  # [1, H, Q, q1]
        scores = attn.apply_causal_mask(scores, q0)
        pattern = torch.nn.functional.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
        return pattern[0].float()

    def _n_heads(self, layer: int) -> int:
        return self._q[layer].shape[1] if self._blocks[layer] is None else self._blocks[layer][0].shape[0]

    def blocks(self, layer: int, n_pos: int):
        """(q0, pattern[:, q0:q1, :q1]) for the query blocks below `n_pos`, cut at n_pos."""
        if self._blocks[layer] is None:  # rebuilt from q and k, one block at a time
            for q0 in range(0, min(n_pos, self.n_pos), QUERY_BLOCK):
                q1 = min(q0 + QUERY_BLOCK, n_pos)
                if layer in self._zeroed:
                    yield q0, torch.zeros(self._n_heads(layer), q1 - q0, q1, device=self._q[layer].device)
                else:
                    yield q0, self._rebuilt(layer, q0, q1)
            return
        for i, block in enumerate(self._blocks[layer]):
            q0 = i * QUERY_BLOCK
            if q0 >= n_pos:
                break
            q1 = min(q0 + block.shape[1], n_pos)
            block = block[:, :q1 - q0, :q1]
            yield q0, torch.zeros_like(block) if layer in self._zeroed else block

    def __getitem__(self, layer: int) -> torch.Tensor:
        H = self._n_heads(layer)
        device = (self._q[layer] if self._blocks[layer] is None else self._blocks[layer][0]).device
        full = torch.zeros(H, self.n_pos, self.n_pos, device=device)
        for q0, block in self.blocks(layer, self.n_pos):
            full[:, q0:q0 + block.shape[1], :block.shape[2]] = block
        return full

    @property
    def nbytes(self) -> int:
        kept = sum(b.numel() * b.element_size() for layer in self._blocks if layer for b in layer)
        return kept + sum(t.numel() * t.element_size() for t in self._q + self._k if t is not None)


def causal_pattern_bytes(n_layers: int, n_heads: int, n_pos: int) -> int:
    """float32 bytes FrozenPatterns holds for a prompt of n_pos tokens (patterns kept)."""
    per_head = sum((min(n_pos, q0 + QUERY_BLOCK) - q0) * min(n_pos, q0 + QUERY_BLOCK)
                   for q0 in range(0, n_pos, QUERY_BLOCK))
    return 4 * n_layers * n_heads * per_head


def qk_bytes(n_layers: int, n_heads: int, n_kv_heads: int, d_head: int, n_pos: int, element_size: int = 4) -> int:
    """Bytes FrozenPatterns holds when it rebuilds the patterns: q [P, H, e] and k [P, G, e] per layer."""
    return element_size * n_layers * n_pos * (n_heads + n_kv_heads) * d_head


def rebuild_temp_bytes(n_heads: int, n_pos: int) -> int:
    """The largest temporaries of rebuilding one query block: scores, masked scores, pattern."""
    return 3 * 4 * n_heads * QUERY_BLOCK * n_pos
