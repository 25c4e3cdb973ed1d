"""What an addition feature computes, from an operand sweep (the paper's "operand plots").

Every prompt `calc: a+b=` with a, b in 10..99 is run once; a feature's activation at its position
over the grid [a, b] is explained by each candidate property of (a, b) as the share of its variance
between the property's groups (eta^2). Properties come in three families: ones digits (of a, of b,
of the sum, the (ones of a, ones of b) lookup pair), magnitudes (tens of a, of b, of the sum), and
exact values (a, b, the sum). The role is the digit family with the larger eta^2 when it reaches
MIN_ETA2, else the exact family when it does, else "unclear"; within a family, the simplest
property reaching ROLE_SHARE of the family's best eta^2 names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuits.errors import CircuitsError
from circuits.replacement.hooks import capture_layers
from circuits.replacement.prompts import token_id, tokenize_prompt

OPERANDS = np.arange(10, 100)
ROLE_SHARE = 0.85    # a simpler property wins when it explains this share of the best eta^2
MIN_ETA2 = 0.3       # below this no property explains the feature: role "unclear"

# name -> (category, grouping of (a, b), label for the traced (a, b)); simplest first.
PROPERTIES = {
    "ones(a)": ("ones digit", lambda a, b: a % 10, lambda a, b: f"_{a % 10} (ones digit of {a})"),
    "ones(b)": ("ones digit", lambda a, b: b % 10, lambda a, b: f"_{b % 10} (ones digit of {b})"),
    "ones(sum)": ("ones digit", lambda a, b: (a + b) % 10, lambda a, b: f"sum ends in {(a + b) % 10}"),
    "tens(a)": ("magnitude", lambda a, b: a // 10, lambda a, b: f"~{a // 10}x (magnitude of {a})"),
    "tens(b)": ("magnitude", lambda a, b: b // 10, lambda a, b: f"~{b // 10}x (magnitude of {b})"),
    "tens(sum)": ("magnitude", lambda a, b: (a + b) // 10, lambda a, b: f"sum ~{(a + b) // 10}x"),
    "ones(a)+ones(b)": ("ones digit", lambda a, b: (a % 10) * 10 + b % 10,
                        lambda a, b: f"_{a % 10}+_{b % 10} lookup"),
    "a": ("operand", lambda a, b: a, lambda a, b: f"operand {a}"),
    "b": ("operand", lambda a, b: b, lambda a, b: f"operand {b}"),
    "sum": ("sum", lambda a, b: a + b, lambda a, b: f"sum = {a + b}"),
}


@dataclass
class Role:
    property: str        # a key of PROPERTIES, or "unclear"
    category: str        # ones digit | magnitude | operand | sum | unclear
    label: str           # for the traced prompt, e.g. "_9 (ones digit of 59)"
    eta2: float          # variance share the property explains
    active_share: float  # share of the grid where the feature fires
    family_eta2: dict = field(default_factory=dict)  # best eta2 per family (ones digit, magnitude, exact)

    def text(self) -> str:
        return f"{self.label} (eta2 {self.eta2:.2f}, fires on {100 * self.active_share:.0f}% of a+b)"


def eta_squared(acts: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of `acts` [n] explained by the means of `groups` [n]."""
    total = float(((acts - acts.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=acts)
    counts = np.bincount(inverse)
    means = sums / counts
    return float((counts * (means - acts.mean()) ** 2).sum() / total)


FAMILIES = {"ones digit": ("ones(a)", "ones(b)", "ones(sum)", "ones(a)+ones(b)"),
            "magnitude": ("tens(a)", "tens(b)", "tens(sum)"),
            "exact": ("a", "b", "sum")}


def classify(acts_a_b: np.ndarray, a: int, b: int) -> Role:
    """The role of one feature from its activations over the operand grid [90, 90]."""
    grid_a, grid_b = np.meshgrid(OPERANDS, OPERANDS, indexing="ij")
    acts = acts_a_b.reshape(-1).astype(np.float64)
    active = float((acts > 0).mean())
    scores = {name: eta_squared(acts, fn(grid_a, grid_b).reshape(-1)) for name, (_, fn, _) in PROPERTIES.items()}
    best = {fam: max(scores[n] for n in names) for fam, names in FAMILIES.items()}
    digit = max(("ones digit", "magnitude"), key=lambda fam: best[fam])
    family = digit if best[digit] >= MIN_ETA2 else "exact" if best["exact"] >= MIN_ETA2 else None
    if family is None:
        return Role("unclear", "unclear", "unclear", max(scores.values()), active, best)
    name = next(n for n in FAMILIES[family] if scores[n] >= ROLE_SHARE * best[family])
    category, _, label = PROPERTIES[name]
    return Role(name, category, label(a, b), scores[name], active, best)


def addition_positions(model, prompt: str, a: int, b: int) -> tuple[torch.Tensor, dict[str, int]]:
    """Tokens of `prompt` and the positions of a, b and the last token ('=')."""
    tokens = tokenize_prompt(model, prompt)
    ids = tokens.tolist()
    where = {}
    for name, n in (("a", a), ("b", b)):
        tid = token_id(model, str(n))
        if tid not in ids:
            raise CircuitsError(f"'{n}' is not a single token of '{prompt}' in this model's tokenizer")
        where[name] = ids.index(tid) if name == "a" else len(ids) - 1 - ids[::-1].index(tid)
    where["="] = len(ids) - 1
    return tokens, where


@torch.no_grad()
def sweep_activations(model, transcoder, prompt_tokens: torch.Tensor, positions: dict[str, int],
                      features: list[tuple[int, int, int]], batch: int = 1024) -> np.ndarray:
    """Activations [n_features, 90, 90] of `features` (layer, pos, feature) over every a+b prompt.

    The operand tokens at positions["a"], positions["b"] are replaced by each pair from 10..99.
    """
    ids = torch.tensor([token_id(model, str(n)) for n in OPERANDS])
    pairs = torch.cartesian_prod(torch.arange(len(OPERANDS)), torch.arange(len(OPERANDS)))  # [8100, 2]
    out = np.zeros((len(features), len(OPERANDS) ** 2), dtype=np.float32)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        tokens = prompt_tokens.repeat(len(chunk), 1)
        tokens[:, positions["a"]] = ids[chunk[:, 0]]
        tokens[:, positions["b"]] = ids[chunk[:, 1]]
        x_b_t_layer_d = capture_layers(model, tokens, transcoder.cfg.input_hook, logits=False).x_b_t_layer_d
        acts_by_site: dict[tuple[int, int], torch.Tensor] = {}
        for j, (layer, pos, feat) in enumerate(features):
            if (layer, pos) not in acts_by_site:
                x_n_d = x_b_t_layer_d[:, pos, layer].to(transcoder.W_enc.dtype)
                acts_by_site[layer, pos] = transcoder.layer_features(x_n_d, layer)
            out[j, start:start + len(chunk)] = acts_by_site[layer, pos][:, feat].float().cpu().numpy()
    return out.reshape(len(features), len(OPERANDS), len(OPERANDS))


def feature_roles(model, transcoder, prompt_tokens: torch.Tensor, positions: dict[str, int],
                  features: list[tuple[int, int, int]], a: int, b: int) -> list[Role]:
    """The role of each (layer, pos, feature), for the traced pair (a, b)."""
    if not features:
        return []
    acts = sweep_activations(model, transcoder, prompt_tokens, positions, features)
    return [classify(acts[j], a, b) for j in range(len(features))]
