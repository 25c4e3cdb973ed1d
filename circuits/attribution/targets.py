"""Attribution targets: the rows of the adjacency matrix.

A target is a linear read-out of the residual stream at one (layer, position): a feature's
encoder row (read at its layer's input hook) or a logit direction (read after the final norm).
Each is mapped through its frozen norm to a seed vector in the residual stream.

`choose_targets` is the one place that decides a prompt's logit targets: the most likely next
tokens (`select_logits`) and the config's custom directions (`--target`, `--contrast`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuits.attribution.config import TraceConfig
from circuits.attribution.frozen_backward import FrozenBlocks
from circuits.errors import CircuitsError
from circuits.replacement.local import LocalReplacement
from circuits.replacement.prompts import token_id


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


@dataclass
class CustomTarget:
    """A direction read after the final norm at the last position, e.g. a logit difference."""

    label: str
    direction_d: torch.Tensor
    weight: float | None = None


def custom_targets(model, targets: list[str], contrast: str | None) -> list[CustomTarget]:
    """Directions after the final norm: a demeaned unembedding column per target token, or with a
    contrast token the difference of the two columns (a logit difference)."""
    if contrast is not None and len(targets) != 1:
        raise CircuitsError("--contrast needs exactly one --target")
    W_U = model.W_U.detach().float()
    out = []
    for text in targets:
        t = token_id(model, text)
        if contrast is not None:
            c = token_id(model, contrast)
            if c == t:
                raise CircuitsError(f"--target {text!r} and --contrast {contrast!r} are the same token: their "
                                    "logit difference is zero by definition; give two different tokens")
            out.append(CustomTarget(f"{text.strip()} - {contrast.strip()}", W_U[:, t] - W_U[:, c]))
        else:
            out.append(CustomTarget(f"{text.strip()} (target)", W_U[:, t] - W_U.mean(1)))
    return out


def final_norm_output(model, rep: LocalReplacement) -> torch.Tensor:
    """ln_final(resid_final) [d] at the last position, with its frozen scale."""
    x = rep.resid_final_d
    norm = getattr(model, "ln_final", None)
    if norm is None:
        return x
    if (model.cfg.normalization_type or "").startswith("LN"):
        x = x - x.mean()
    x = x / rep.lnf_scale_pos[-1]
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    x = x * w if w is not None else x
    return x + b if b is not None else x


def choose_targets(model, rep: LocalReplacement, blocks: FrozenBlocks, config: TraceConfig,
                   customs: list[CustomTarget] | None = None) -> LogitTargets:
    """The logit targets of a trace: the top logits (config.max_n_logits, config.desired_logit_prob),
    then one custom direction per config.targets (or the target - contrast difference), then
    config.answer's direction when the answer is not a top logit already; `customs`:
    those directions already made (custom_targets checks them before the forward pass)."""
    logits = select_logits(rep, blocks.W_U_d_vocab, config.max_n_logits, config.desired_logit_prob)
    x_final = final_norm_output(model, rep)
    if customs is None:
        customs = custom_targets(model, config.targets, config.contrast)
    if config.answer is not None and token_id(model, config.answer) not in logits.token_ids:
        customs = [*customs, *custom_targets(model, [config.answer], None)]
    for target in customs:
        direction = target.direction_d.to(x_final.device).float()
        logits = add_custom_target(logits, target.label, direction, float(direction @ x_final), target.weight)
    return logits
