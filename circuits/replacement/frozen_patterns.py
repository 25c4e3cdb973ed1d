"""The frozen attention patterns of a prompt, stored causally (issue 19).

A causal pattern [H, P, P] is zero above its diagonal: the frozen model keeps, per block of
QUERY_BLOCK queries [q0, q1), only the keys < q1 ([H, q1 - q0, q1], float32: the numbers are the
model's). That is about half of P x P at long prompts, and the attention backward runs over the
same blocks, so it skips the masked half too. Blocks are taken while the forward runs (one layer's
full pattern alive at a time), never all layers' full patterns at once.
"""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError

QUERY_BLOCK = 128


class FrozenPatterns:
    """Per layer, the causal blocks of its attention pattern. `patterns[l]` gives the full
    [H, P, P] (materialised on demand: for the frozen forward's hooks, not for attribution)."""

    def __init__(self, n_layers: int, n_pos: int):
        self.n_pos = n_pos
        self._blocks: list[list[torch.Tensor] | None] = [None] * n_layers

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

    def with_layer_zeroed(self, layer: int) -> "FrozenPatterns":
        """A copy (sharing the other layers' blocks) whose `layer` attends nowhere."""
        out = FrozenPatterns(len(self._blocks), self.n_pos)
        out._blocks = [[torch.zeros_like(b) for b in blocks] if l == layer else blocks
                       for l, blocks in enumerate(self._blocks)]
        return out

    def __len__(self) -> int:
        return len(self._blocks)

    def blocks(self, layer: int, n_pos: int):
        """(q0, pattern[:, q0:q1, :q1]) for the query blocks below `n_pos`, cut at n_pos."""
        for i, block in enumerate(self._blocks[layer]):
            q0 = i * QUERY_BLOCK
            if q0 >= n_pos:
                break
            q1 = min(q0 + block.shape[1], n_pos)
            yield q0, block[:, :q1 - q0, :q1]

    def __getitem__(self, layer: int) -> torch.Tensor:
        blocks = self._blocks[layer]
        H = blocks[0].shape[0]
        full = torch.zeros(H, self.n_pos, self.n_pos, device=blocks[0].device)
        for q0, block in self.blocks(layer, self.n_pos):
            full[:, q0:q0 + block.shape[1], :block.shape[2]] = block
        return full

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for layer in self._blocks if layer for b in layer)


def causal_pattern_bytes(n_layers: int, n_heads: int, n_pos: int) -> int:
    """float32 bytes FrozenPatterns holds for a prompt of n_pos tokens."""
    per_head = sum((min(n_pos, q0 + QUERY_BLOCK) - q0) * min(n_pos, q0 + QUERY_BLOCK)
                   for q0 in range(0, n_pos, QUERY_BLOCK))
    return 4 * n_layers * n_heads * per_head
