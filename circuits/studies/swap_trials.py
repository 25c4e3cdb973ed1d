"""Two-hop swap trials at scale (part (b) of circuits.studies.validate): over random pairs of two-hop
queries with different states, swap the prompt's state features for the source's (as
`circuits demo two-hop` does, with the pair's own prompts left out when the state features are
chosen), and the same swap with random features as a control.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from circuits.interventions import Intervention, injections_from, intervene
from circuits.replacement.prompts import next_token_distribution, token_id, tokenize_prompt
from circuits.replacement.model import ReplacementModel
from circuits.studies.state_features import DEFAULT_INHIBIT, DEFAULT_INJECT, DEFAULT_K, StateFeatureFinder, run_swap


@dataclass
class SwapRow:
    prompt: str
    source: str
    state: str
    source_state: str
    clean_correct: bool   # the model answers the prompt's capital before the swap
    k: int                # state features asked for per side
    inhibit: float        # multiplier of the removed state features
    inject_scale: float   # scale of the injected activations
    n_removed: int
    n_added: int
    success: bool
    control_success: bool
    top_after: str


def swap_pairs(queries: list[tuple[str, str, str]], n_pairs: int, seed: int = 0) -> list[tuple[tuple, tuple]]:
    """n_pairs random (query, source query) pairs with different states."""
    rng = random.Random(seed + 1)
    pairs = []
    while len(pairs) < n_pairs:
        a, b = rng.sample(queries, 2)
        if a[1] != b[1]:
            pairs.append((a, b))
    return pairs


def swap_rows(rm: ReplacementModel, n_pairs: int, seed: int = 0, k: int = DEFAULT_K, inhibit: float = DEFAULT_INHIBIT,
              inject_scale: float = DEFAULT_INJECT, finder: StateFeatureFinder | None = None) -> list[SwapRow]:
    """Swap trials over random pairs of two-hop queries with different states, plus a control
    (the same pairs for every setting: the pairs and the control's picks have their own seeds)."""
    finder = finder or StateFeatureFinder(rm)
    control_rng = random.Random(seed + 2)
    rows = []
    for (p, s, c), (q, t, d) in swap_pairs(finder.queries, n_pairs, seed):
        exp, plan = run_swap(finder, p, s, c, q, t, d, k=k, inhibit=inhibit, inject_scale=inject_scale,
                             leave_out=True)
        control = control_swap(finder, p, q, len(plan.removed), len(plan.added), d, inhibit, inject_scale, control_rng)
        top_after = exp.top_after[0]["token"].strip() if exp.top_after else ""
        rows.append(SwapRow(p, q, s, t, _clean_correct(rm, p, c), k, inhibit, inject_scale, len(plan.removed),
                            len(plan.added), exp.worked, control, top_after))
    return rows


# (k, inhibit, inject_scale)
SWAP_GRID = [(k, inhibit, scale) for k in (5, 20, 50) for inhibit in (0.0, -1.0) for scale in (1.0, 2.0, 4.0)]


def swap_grid(rm: ReplacementModel, n_pairs: int, seed: int = 0, grid=SWAP_GRID,
              finder: StateFeatureFinder | None = None,
              known: dict[tuple[int, float, float], list[SwapRow]] | None = None) -> list[dict]:
    """Success and control rates of the swap for each setting of `grid`, on the same pairs. `finder`:
    the state features already found; `known`: rows already run for a setting (k, inhibit, scale)
    on these pairs (e.g. the default setting's), reused instead of run again."""
    finder = finder or StateFeatureFinder(rm)
    out = []
    for k, inhibit, scale in grid:
        rows = (known or {}).get((k, inhibit, scale)) or swap_rows(rm, n_pairs, seed, k, inhibit, scale, finder=finder)
        out.append({"k": k, "inhibit": inhibit, "inject_scale": scale,
                    "success_rate": float(np.mean([r.success for r in rows])),
                    "control_success_rate": float(np.mean([r.control_success for r in rows])),
                    "mean_removed": float(np.mean([r.n_removed for r in rows])),
                    "mean_added": float(np.mean([r.n_added for r in rows]))})
    return out


def _clean_correct(rm: ReplacementModel, prompt: str, answer: str) -> bool:
    return next_token_distribution(rm.model, prompt, 1)[0]["token"].strip() == answer


def control_swap(finder: StateFeatureFinder, prompt: str, source: str, n_removed: int, n_added: int,
                 goal: str, inhibit: float, inject_scale: float, rng: random.Random) -> bool:
    """The same swap with random features (stronger here / stronger on the source) in place of the
    state features: does the goal capital win anyway?"""
    here, there = finder.last_acts(prompt), finder.last_acts(source)
    F = here.shape[1]

    def pick(mask_layer_feat: np.ndarray, n: int) -> list[tuple[int, int]]:
        flat = [int(i) for i in np.flatnonzero(mask_layer_feat.reshape(-1))]
        return [divmod(i, F) for i in rng.sample(flat, min(n, len(flat)))]

    # as in plan_swap: inhibit what is stronger here, inject what is stronger on the source
    pick_removed = pick((here != 0) & (here > there), n_removed)
    pick_added = pick((there != 0) & (there > here), n_added)
    ivs = [Intervention(l, -1, f, multiplier=inhibit) for l, f in pick_removed]
    ivs += injections_from(finder.rm.model, finder.rm.transcoder, tokenize_prompt(finder.rm.model, source),
                           [(l, -1, f) for l, f in pick_added], at_pos=-1, scale=inject_scale)
    if not ivs:
        return False
    tokens = tokenize_prompt(finder.rm.model, prompt)
    result = intervene(finder.rm, tokens, ivs, top=1)
    return int(result.logits_after[-1].argmax()) == token_id(finder.rm.model, goal)
