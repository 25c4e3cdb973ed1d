"""Attribution targets: the rows of the adjacency matrix.

A target is a linear read-out of the residual stream at one (layer, position): a feature's
encoder row (read at its layer's input hook) or a logit direction (read after the final norm).
Each is mapped through its frozen norm to a seed vector in the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.replacement import LocalReplacement


@dataclass
class TargetSeeds:
    """B rows: where each target reads the residual stream and with which vector."""

    layer: torch.Tensor  # [B] feature layer, or n_layers for logit-side targets (final residual)
    position: torch.Tensor  # [B]
    vec_d: torch.Tensor  # [B, d] seed vector in the residual stream

    def __len__(self) -> int:
        return int(self.layer.shape[0])

    def select(self, idx: torch.Tensor) -> "TargetSeeds":
        return TargetSeeds(self.layer[idx], self.position[idx], self.vec_d[idx])


@dataclass
class LogitTargets:
    """Logit nodes (top tokens) and custom directions, read at the last position."""

    labels: list[str]
    token_ids: list[int]  # vocab id per target, -1 for a custom direction
    probabilities: torch.Tensor  # [n] probability of the token (0 for custom directions)
    weights: torch.Tensor  # [n] weight of each target in the influence computation
    values: torch.Tensor  # [n] the target's value on this prompt (demeaned logit / direction . x)
    directions_d_n: torch.Tensor  # [d, n] read-out vectors after the final norm


def select_logits(rep: LocalReplacement, W_U_d_vocab: torch.Tensor, max_n_logits: int = 10,
                  desired_logit_prob: float = 0.95) -> LogitTargets:
    """The most likely next tokens until `desired_logit_prob` cumulative probability, at most
    `max_n_logits`; each read out through its demeaned unembedding column. Probabilities are the
    model's; a logit node's value is its demeaned logit before any final soft-capping."""
    probs = torch.softmax(rep.logits_vocab, -1)
    top_probs, top_ids = probs.sort(descending=True)
    cumulative = top_probs.cumsum(0)
    n = int((cumulative < desired_logit_prob).sum().item()) + 1
    n = max(1, min(n, max_n_logits))
    ids = top_ids[:n]
    directions = W_U_d_vocab[:, ids] - W_U_d_vocab.mean(1, keepdim=True)
    values = rep.node_logits_vocab[ids] - rep.node_logits_vocab.mean()
    return LogitTargets(labels=[str(int(i)) for i in ids], token_ids=[int(i) for i in ids],
                        probabilities=top_probs[:n].clone(), weights=top_probs[:n].clone(),
                        values=values, directions_d_n=directions)


def add_custom_target(targets: LogitTargets, label: str, direction_d: torch.Tensor, value: float,
                      weight: float | None = None) -> LogitTargets:
    """Append a custom direction (e.g. logit("Sacramento") - logit("Albany")) as a target."""
    w = float(weight) if weight is not None else float(max(targets.weights.max().item(), 1e-3))
    dev = targets.weights.device
    return LogitTargets(
        labels=targets.labels + [label], token_ids=targets.token_ids + [-1],
        probabilities=torch.cat([targets.probabilities, torch.zeros(1, device=dev)]),
        weights=torch.cat([targets.weights, torch.tensor([w], device=dev)]),
        values=torch.cat([targets.values, torch.tensor([value], device=dev)]),
        directions_d_n=torch.cat([targets.directions_d_n, direction_d[:, None]], dim=1))


def logit_seeds(rep: LocalReplacement, blocks: FrozenBlocks, logits: LogitTargets) -> TargetSeeds:
    n = logits.directions_d_n.shape[1]
    vec_n_d = blocks.final_norm_backward(logits.directions_d_n.T, rep.lnf_scale_pos[-1])
    device = vec_n_d.device
    return TargetSeeds(torch.full((n,), blocks.n_layers, device=device),
                       torch.full((n,), rep.n_pos - 1, device=device), vec_n_d)


def feature_seeds(rep: LocalReplacement, blocks: FrozenBlocks, transcoder, idx: torch.Tensor) -> TargetSeeds:
    """Seeds for the active features `idx` (indices into rep.features): their encoder rows read
    at the input hook, mapped to resid_mid through the frozen ln2 of their position."""
    f = rep.features
    layer, pos, feat = f.layer[idx], f.position[idx], f.feature[idx]
    vec = torch.empty(len(idx), rep.embed_pos_d.shape[1], device=rep.embed_pos_d.device)
    for l in layer.unique().tolist():
        rows = (layer == l).nonzero(as_tuple=True)[0]
        enc_n_d = transcoder.encoder_rows(l, feat[rows]).float().to(vec.device)
        scale = rep.ln2_scale_layer_pos[l, pos[rows]]  # [n]
        vec[rows] = blocks.input_hook_backward(l, enc_n_d, scale, transcoder.cfg.input_hook)
    return TargetSeeds(layer, pos, vec)
