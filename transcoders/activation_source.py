"""Training data: (input hook, MLP output) pairs for every layer, streamed from a model over a corpus.

Layout: per-layer activations are token-major everywhere, the layer axis just before the width:
[B, T, L, d] for a batch of sequences, [N, L, d] for tokens in rows (what the trainer shuffles).

- `LayerReader` is how the trainer sees a model: given tokens [B, T] and two per-block hook names,
  it returns x, y [B, T, L, d]. This package never hooks a model itself; `circuits.training.train`
  supplies a reader built on circuits.replacement.hooks.capture_layers (the one capture).
- `ModelActivationSource` runs a reader over an iterable of token-id sequences (any re-iterable: a
  list, a corpus generator object, a text-file reader) and returns activations for every layer at
  once: x [N, L, d] (input hook) and y [N, L, d] (output hook).
  A group's sequences are sorted by length before batching, so forward passes carry little padding.
  Position 0 of every sequence (BOS) carries no features and is left out; so is right padding.
- `ShuffleBuffer` mixes at token level: it fills a group of ~buffer_tokens tokens, permutes it
  with a generator seeded by (seed, group index) and hands out batches. Its state is three
  numbers (group, where the group starts in the corpus, batches used), so a resumed run rebuilds
  exactly the same batches without storing the buffer.
Sources only need `read_group(start) -> (x, y, next_start)` and `start_position()`; the memory-mapped
disk cache (`activation_cache.py`) is another such source.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Protocol, Sequence

import torch

from transcoders.cpu_memory import default_allocation
from transcoders.errors import TranscoderError


class NonFiniteActivations(TranscoderError):
    """NaN or Inf in the model's activations; `layer` and `hook` name where."""

    def __init__(self, layer: int, hook: str):
        super().__init__(f"non-finite activations (NaN/Inf) at layer {layer} ({hook})")
        self.layer, self.hook = layer, hook


def check_finite(x_tok_layer_d: torch.Tensor, y_tok_layer_d: torch.Tensor, input_hook: str, output_hook: str) -> None:
    for tensor, hook in ((x_tok_layer_d, input_hook), (y_tok_layer_d, output_hook)):
        bad = ~torch.isfinite(tensor).all(dim=(0, 2)) if tensor.numel() else torch.zeros(0, dtype=torch.bool)
        if bad.any():
            layer = int(bad.nonzero()[0])
            raise NonFiniteActivations(layer, f"blocks.{layer}.{hook}")


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, T] right-padded and valid mask [B, T]. Causal attention makes right padding
    invisible to the real positions, so no attention mask is needed."""
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return tokens, mask


class LayerReader(Protocol):
    """A model as the trainer reads it: its shape, and one forward pass returning every layer's
    activations at two per-block hooks."""

    n_layers: int
    d_model: int

    def __call__(self, tokens_b_t: torch.Tensor, input_hook: str,
                 output_hook: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x_b_t_layer_d, y_b_t_layer_d: the `input_hook` and `output_hook` activations [B, T, L, d]."""
        ...


@torch.no_grad()
def model_activations(read_layers: LayerReader, tokens_b_t: torch.Tensor, valid_b_t: torch.Tensor,
                      input_hook: str, output_hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass; x, y [N, L, d] (float32, CPU) at the valid positions except 0 (BOS)."""
    x_b_t_layer_d, y_b_t_layer_d = read_layers(tokens_b_t, input_hook, output_hook)
    keep_b_t = valid_b_t.clone()
    keep_b_t[:, 0] = False
    keep_b_t = keep_b_t.to(x_b_t_layer_d.device)
    return x_b_t_layer_d[keep_b_t].float().cpu(), y_b_t_layer_d[keep_b_t].float().cpu()


class ModelActivationSource:
    """Activations of a model (read through `read_layers`) over `sequences`, in groups of at least
    `group_tokens` tokens.

    Positions are {"epoch": e, "index": i}: the group starts at sequence i of pass e over the corpus;
    a finite corpus wraps around. Sequences longer than `seq_len` are cut; shorter than 2 are skipped.
    """

    def __init__(self, read_layers: LayerReader, sequences: Iterable[Sequence[int]], input_hook: str,
                 output_hook: str, seq_len: int, model_batch: int, group_tokens: int):
        self.read_layers, self.sequences = read_layers, sequences
        self.input_hook, self.output_hook = input_hook, output_hook
        self.seq_len, self.model_batch, self.group_tokens = seq_len, model_batch, group_tokens
        self._iter: Iterator | None = None
        self._at: tuple[int, int] | None = None  # (epoch, index) of the next item of self._iter
        self.model_seconds = 0.0

    def start_position(self) -> dict:
        return {"epoch": 0, "index": 0}

    def _seek(self, epoch: int, index: int) -> None:
        if self._at != (epoch, index):
            self._iter = itertools.islice(iter(self.sequences), index, None)
            self._at = (epoch, index)

    def _next_sequence(self) -> list[int]:
        epoch, index = self._at
        for _ in range(2):
            for seq in self._iter:
                index += 1
                self._at = (epoch, index)
                seq = list(seq)[: self.seq_len]
                if len(seq) >= 2:
                    return seq
            if index == 0:
                break
            epoch, index = epoch + 1, 0
            self._iter, self._at = iter(self.sequences), (epoch, 0)
        raise TranscoderError("the corpus produced no token sequences of 2 or more tokens")

    def read_group(self, start: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        import time

        self._seek(int(start["epoch"]), int(start["index"]))
        seqs, n = [], 0
        while n < self.group_tokens:  # whole sequences; each contributes len - 1 tokens (no BOS)
            seqs.append(self._next_sequence())
            n += len(seqs[-1]) - 1
        seqs.sort(key=len)  # similar lengths share a forward pass: little padding (order is shuffled later)
        x_all = y_all = None  # filled in place (no second copy), once the first batch gives the shape
        row = 0
        with default_allocation():  # forward passes of varying sizes: do not fragment the kept heap
            for i in range(0, len(seqs), self.model_batch):
                tokens, mask = pad_right(seqs[i:i + self.model_batch])
                t0 = time.perf_counter()
                x, y = model_activations(self.read_layers, tokens, mask, self.input_hook, self.output_hook)
                self.model_seconds += time.perf_counter() - t0
                check_finite(x, y, self.input_hook, self.output_hook)
                if x_all is None:
                    x_all, y_all = x.new_empty((n, *x.shape[1:])), y.new_empty((n, *y.shape[1:]))
                x_all[row:row + x.shape[0]], y_all[row:row + y.shape[0]] = x, y
                row += x.shape[0]
        epoch, index = self._at
        return x_all[:row], y_all[:row], {"epoch": epoch, "index": index}


class ShuffleBuffer:
    """Token-level shuffling over groups from a source; each rank takes its slice of every global batch."""

    def __init__(self, source, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise TranscoderError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.group, self.group_start, self.pos = 0, source.start_position(), 0
        self._x = self._y = self._perm = None
        self._next_start = None

    def state_dict(self) -> dict:
        return {"group": self.group, "group_start": self.group_start, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.group, self.group_start, self.pos = int(state["group"]), state["group_start"], int(state["pos"])
        self._x = None

    def _fill(self) -> None:
        self._x = self._y = self._perm = None  # the old group is freed before the next is read
        self._x, self._y, self._next_start = self.source.read_group(self.group_start)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.group)
        self._perm = torch.randperm(self._x.shape[0], generator=gen)

    def current_group(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All tokens of the current group, x, y [N, L, d] (used to estimate normalisation)."""
        if self._x is None:
            self._fill()
        return self._x, self._y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y [batch_size / world_size, L, d] for this rank."""
        if self._x is None:
            self._fill()
        if (self.pos + 1) * self.batch_size > self._perm.shape[0]:
            self.group, self.group_start, self.pos = self.group + 1, self._next_start, 0
            self._fill()
        idx = self._perm[self.pos * self.batch_size:(self.pos + 1) * self.batch_size]
        local = self.batch_size // self.world_size
        idx = idx[self.rank * local:(self.rank + 1) * local]
        self.pos += 1
        return self._x[idx], self._y[idx]
