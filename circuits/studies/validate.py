"""Validation at scale: do the graphs predict what interventions in the real model do?

Over generated prompts of both kinds (addition `calc: a+b=` and two-hop capital queries built
from the world corpus facts), with the correct answer as the target:

(a) ablation check: for the top-k feature nodes by influence on the answer's logit, ablate each in
    the real model (constrained patching, x0) and measure the change of the answer's demeaned logit,
    read out as the model does and with the final norm's scale held (as the graph's logit node).
    Reported: Spearman(influence, |change|) pooled over all (prompt, node) pairs, per kind and per
    prompt; and Spearman(graph-predicted change, change), where the prediction is the linearised
    total effect of removing the node in the graph (`linear_effects`).
(b) swap success rate of the two-hop experiment over pairs of prompts with different states
    (circuits.studies.swap_trials), with a control that swaps as many random features, for the
    default setting and a grid of settings (number of state features, injection scale).
(c) replacement and completeness scores (METHOD.md section 4), mean / min / max, pruned and
    unpruned, by prompt kind.

    result = validate(ReplacementModel.load("world"), n=30)
    print("\\n".join(format_validation(result)))
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from circuits.studies.state_features import (DEFAULT_INHIBIT, DEFAULT_INJECT, DEFAULT_K, StateFeatureFinder,
                                             two_hop_queries)
from circuits.studies.swap_trials import SwapRow, swap_grid, swap_rows
from circuits.errors import CircuitsError
from circuits.studies.experiments import Traced, answer_logit_change, json_safe, ranked_features, trace_answer
from circuits.interventions import Intervention
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from graphs import Graph

SCORE_KEYS = ("replacement", "completeness", "replacement_pruned", "completeness_pruned")


def spearman(x, y) -> float:
    """Spearman rank correlation of two equal-length sequences (nan if either is constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise CircuitsError(f"spearman needs two sequences of the same length >= 2, got {x.size} and {y.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y)[0])


def linear_effects(graph: Graph, target_node: int) -> np.ndarray:
    """float64 [n_features]: the change of the target node's value when each feature is ablated, in
    the graph's linearisation (every other feature stays active, edges scale with their source).

    With m[t, s] = A[t, s] / a_s (the target's pre-activation per unit of source activation) and
    g_s = m[T, s] + sum_t g_t m[t, s] the total derivative of the target along all paths, ablating s
    changes the target by -a_s g_s.
    """
    fs = graph.feature_slice
    act_feat = graph.activation[fs].astype(np.float64)
    g_feat = np.zeros(act_feat.shape[0])
    row = graph.target_row(target_node)
    if row is None:  # an error or embedding node: no inputs, nothing changes it
        return g_feat
    # rows of edges: the feature nodes (row r = feature r), then the logits
    m_target_feat = graph.edges[:, fs].astype(np.float64) / np.where(act_feat > 0, act_feat, np.inf)
    x_target = np.zeros(graph.n_targets)
    x_target[row] = 1.0
    for _ in range(graph.n_layers + 2):
        step_feat = x_target @ m_target_feat
        if not step_feat.any():
            break
        g_feat += step_feat
        x_target = np.zeros(graph.n_targets)
        x_target[fs] = step_feat
    return -act_feat * g_feat


def ablation_effects(rm: ReplacementModel, traced: Traced, layer: int, pos: int, feature: int) -> tuple[float, float]:
    """Change of the answer's demeaned logit (last position) when the feature is ablated (x0) by
    constrained patching in the real model: (as the model reads it out, with the final norm's
    scale held at its clean value). The second is what the graph's logit node measures (METHOD.md
    section 3): for a confident answer, the first also carries the final norm's rescaling of the
    whole (large) logit, which no single edge describes."""
    ablate = [Intervention(layer, pos, feature, multiplier=0.0)]
    return (answer_logit_change(rm, traced, ablate),
            answer_logit_change(rm, traced, ablate, freeze_final_norm=True))


@dataclass
class AblationRow:
    prompt: str
    kind: str
    id: str
    influence: float      # on the answer's logit (graph)
    predicted: float      # linearised change of the answer's logit (graph)
    actual: float         # measured change of the answer's demeaned logit (real model)
    actual_frozen_norm: float  # the same, read out with the final norm's scale held (as the graph)


@dataclass
class PromptRow:
    prompt: str
    kind: str
    answer: str
    correct: bool         # the model's top-1 token is the answer
    scores: dict
    spearman: float       # influence vs |actual| over this prompt's ablated nodes


@dataclass
class ValidationResult:
    prompts: list[PromptRow]
    ablations: list[AblationRow]
    swaps: list[SwapRow]
    summary: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return json_safe({"summary": self.summary, "prompts": [asdict(p) for p in self.prompts],
                          "ablations": [asdict(a) for a in self.ablations], "swaps": [asdict(s) for s in self.swaps]})


def generate_prompts(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(kind, prompt, answer): n//2 additions (a, b in 10..99) and the rest two-hop queries."""
    rng = random.Random(seed)
    n_add = n // 2
    adds = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n_add)]
    out = [("addition", f"calc: {a}+{b}=", str(a + b)) for a, b in adds]
    queries = two_hop_queries()
    out += [("two-hop", p, capital) for p, _, capital in rng.sample(queries, min(n - n_add, len(queries)))]
    return out


def ablation_rows(rm: ReplacementModel, traced: Traced, kind: str, top_k: int) -> list[AblationRow]:
    predicted_feat = linear_effects(traced.graph, traced.target_node)
    rows = []
    for f in ranked_features(rm, traced, top=top_k):
        rows.append(AblationRow(traced.prompt, kind, f.id, f.influence, float(predicted_feat[f.node]),
                                *ablation_effects(rm, traced, f.layer, f.pos, f.feature)))
    return rows


def score_table(prompts: list[PromptRow]) -> dict[str, dict[str, dict[str, float]]]:
    """{kind or 'all': {score: {mean, min, max}}}."""
    table = {}
    for kind in ("addition", "two-hop", "all"):
        rows = [p for p in prompts if kind == "all" or p.kind == kind]
        if rows:
            table[kind] = {key: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                           for key in SCORE_KEYS for v in [[r.scores[key] for r in rows]]}
    return table


READOUTS = {"real": "actual", "frozen_norm": "actual_frozen_norm"}


def _rho(x, y) -> float:
    return spearman(x, y) if len(x) > 1 else float("nan")


def correlations(ablations: list[AblationRow]) -> dict[str, dict[str, float]]:
    """{readout: {name: spearman}} for both read-outs of the ablation effect (see AblationRow)."""
    out = {}
    for readout, attr in READOUTS.items():
        def rho(rows, signed=False):
            effects = [getattr(r, attr) for r in rows]
            if signed:
                return _rho([r.predicted for r in rows], effects)
            return _rho([r.influence for r in rows], [abs(e) for e in effects])

        prompts = sorted({r.prompt for r in ablations})
        per_prompt = [rho([r for r in ablations if r.prompt == p]) for p in prompts]
        per_prompt = [v for v in per_prompt if np.isfinite(v)]
        out[readout] = {
            "influence_vs_abs_effect": rho(ablations),
            "influence_vs_abs_effect_addition": rho([r for r in ablations if r.kind == "addition"]),
            "influence_vs_abs_effect_two-hop": rho([r for r in ablations if r.kind == "two-hop"]),
            "influence_vs_abs_effect_per_prompt_mean": float(np.mean(per_prompt)) if per_prompt else float("nan"),
            "influence_vs_abs_effect_per_prompt_median": float(np.median(per_prompt)) if per_prompt else float("nan"),
            "predicted_vs_actual_signed": rho(ablations, signed=True),
        }
    return out


def summarise(prompts: list[PromptRow], ablations: list[AblationRow], swaps: list[SwapRow],
              grid: list[dict] | None = None) -> dict:
    out = {
        "n_prompts": len(prompts), "n_ablations": len(ablations),
        "accuracy": {k: float(np.mean([p.correct for p in prompts if p.kind == k]))
                     for k in ("addition", "two-hop") if any(p.kind == k for p in prompts)},
        "spearman": correlations(ablations),
        "scores": score_table(prompts),
    }
    if swaps:
        correct = [s for s in swaps if s.clean_correct]
        out["swap"] = {"n_pairs": len(swaps), "k": swaps[0].k, "inhibit": swaps[0].inhibit,
                       "inject_scale": swaps[0].inject_scale, "success_rate": float(np.mean([s.success for s in swaps])),
                       "n_clean_correct": len(correct),
                       "success_rate_clean_correct": float(np.mean([s.success for s in correct])) if correct else float("nan"),
                       "control_success_rate": float(np.mean([s.control_success for s in swaps]))}
    if grid:
        out["swap_grid"] = grid
    return out


def validate(rm: ReplacementModel, n: int = 30, seed: int = 0, top_k: int = 10, n_swaps: int = 20,
             k: int = DEFAULT_K, inhibit: float = DEFAULT_INHIBIT, inject_scale: float = DEFAULT_INJECT,
             grid: bool = True, config: TraceConfig | None = None, progress=None) -> ValidationResult:
    """Run (a), (b) and (c) over `n` generated prompts and `n_swaps` swap pairs; with `grid`, (b)
    also for every setting of circuits.studies.swap_trials.SWAP_GRID on the same pairs."""
    if n < 2:
        raise CircuitsError(f"validation needs at least 2 prompts (one of each kind), got {n}")
    prompts, ablations = [], []
    for kind, prompt, answer in generate_prompts(n, seed):
        traced = trace_answer(rm, prompt, answer, config)
        rows = ablation_rows(rm, traced, kind, top_k)
        ablations += rows
        with torch.no_grad():
            top1 = int(rm.model(traced.tokens[None].to(rm.model.cfg.device))[0, -1].argmax())
        rho = _rho([r.influence for r in rows], [abs(r.actual) for r in rows])
        prompts.append(PromptRow(prompt, kind, answer, top1 == traced.answer_id, traced.result.summary["scores"], rho))
        if progress is not None:
            progress(prompts[-1])
    finder = StateFeatureFinder(rm) if n_swaps else None  # found once, for the default setting and the grid
    swaps = swap_rows(rm, n_swaps, seed, k, inhibit, inject_scale, finder=finder) if n_swaps else []
    table = swap_grid(rm, n_swaps, seed, finder=finder, known={(k, float(inhibit), float(inject_scale)): swaps}) \
        if n_swaps and grid else None
    return ValidationResult(prompts, ablations, swaps, summarise(prompts, ablations, swaps, table))


def format_validation(result: ValidationResult) -> list[str]:
    """The tables a person reads: Spearman, swap success, scores."""
    s = result.summary
    acc = ", ".join(f"{k} {v:.2f}" for k, v in s["accuracy"].items())
    lines = [f"prompts: {s['n_prompts']} (model top-1 accuracy: {acc}); ablated feature nodes: {s['n_ablations']}",
             "", "(a) graph vs ablation in the real model (constrained patching, x0; the answer's demeaned logit)",
             f"  {'spearman':<52} {'real':>8} {'frozen':>8}"]
    names = [("influence vs |change|, pooled", "influence_vs_abs_effect"),
             ("influence vs |change|, addition only", "influence_vs_abs_effect_addition"),
             ("influence vs |change|, two-hop only", "influence_vs_abs_effect_two-hop"),
             ("influence vs |change|, per prompt (mean)", "influence_vs_abs_effect_per_prompt_mean"),
             ("influence vs |change|, per prompt (median)", "influence_vs_abs_effect_per_prompt_median"),
             ("graph-predicted (linearised) vs actual change, signed", "predicted_vs_actual_signed")]
    rho = s["spearman"]
    lines += [f"  {name:<52} {rho['real'][key]:>8.3f} {rho['frozen_norm'][key]:>8.3f}" for name, key in names]
    lines.append("  (real: the logits as the model reads them out; frozen: final norm's scale held at its clean "
                 "value, as the graph's logit node)")
    if "swap" in s:
        w = s["swap"]
        lines += ["", "(b) two-hop swap (inhibit state S features, inject state T features from a T prompt)",
                  f"  pairs {w['n_pairs']} (k = {w['k']} state features per side, removed x{w['inhibit']:g}, injected "
                  f"x{w['inject_scale']:g}): success {w['success_rate']:.2f}; on the {w['n_clean_correct']} pairs the "
                  f"model answers correctly before: {w['success_rate_clean_correct']:.2f}; "
                  f"control (random features): {w['control_success_rate']:.2f}"]
    if "swap_grid" in s:
        lines.append(f"  {'k':>4} {'removed x':>9} {'injected x':>10} {'success':>8} {'control':>8}  (same pairs)")
        lines += [f"  {g['k']:>4} {g['inhibit']:>9g} {g['inject_scale']:>10g} {g['success_rate']:>8.2f} "
                  f"{g['control_success_rate']:>8.2f}" for g in s["swap_grid"]]
    lines += ["", "(c) replacement / completeness scores", f"  {'kind':<10} {'score':<22} {'mean':>7} {'min':>7} {'max':>7}"]
    for kind, table in s["scores"].items():
        for key, v in table.items():
            lines.append(f"  {kind:<10} {key:<22} {v['mean']:7.3f} {v['min']:7.3f} {v['max']:7.3f}")
    return lines
