"""`circuits demo two-hop`: state features in two-hop facts, inhibited and swapped.

Prompts (METHOD.md section 6): "Fact: the capital of the state where Kobe Bryant played basketball
is" (-> California -> Sacramento) and "Fact: the capital of the state containing Dallas is"
(-> Texas -> Austin). Both are traced towards their capital. State features come from
circuits.studies.state_features (fire on the state's prompts and not on other states'); each is shown
with its output view and whether the pruned graph keeps it. Experiments: inhibit Texas on the
Dallas prompt; swap Texas -> California (California features read from the Kobe prompt); and the
reverse on the Kobe prompt. Finally an honest check: does a feature whose output view promotes the
intermediate state ("California", "Texas") lie on a kept path to the capital's logit?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from circuits.features.output_view import promoted_tokens
from circuits.studies.experiments import (Experiment, Traced, clean_top, format_experiment, json_safe,
                                  trace_answer)
from circuits.studies.state_features import (DEFAULT_INHIBIT, DEFAULT_INJECT, DEFAULT_K, StateFeature, StateFeatureFinder,
                                     one_hop_probe, run_inhibit, run_swap)
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from graphs import NodeKind
from graphs.paths import reaching

KOBE = ("Fact: the capital of the state where Kobe Bryant played basketball is", "California", "Sacramento")
DALLAS = ("Fact: the capital of the state containing Dallas is", "Texas", "Austin")
VIEW_TOP = 5  # "promotes X" means X is among the feature's top-5 output-view tokens
LADDER = (5, 10, 20, 30, 50, 80)  # the swaps are also run with these numbers of state features


@dataclass
class StateCheck:
    """Features of one traced prompt whose output view promotes its intermediate state."""

    prompt: str
    state: str
    capital: str
    promoting: list[dict]          # [{id, layer, pos, token, influence, kept, reaches_capital}]
    state_features: list[dict]     # the contrast-found state features and their place in the graph
    specificity: dict              # influence share of nodes promoting the state vs other states
    probe: dict                    # how many state features fire when the state / the capital is the answer
    verdict: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TwoHopReport:
    top_clean: dict[str, list[dict]]
    scores: dict[str, dict]
    checks: list[StateCheck]
    experiments: list[Experiment] = field(default_factory=list)

    def to_json(self) -> dict:
        return json_safe({"top_clean": self.top_clean, "scores": self.scores,
                          "checks": [c.to_json() for c in self.checks],
                          "experiments": [e.to_json() for e in self.experiments]})


def state_check(rm: ReplacementModel, traced: Traced, state: str, found: list[StateFeature]) -> StateCheck:
    """Which features promote `state` in their output view, and do they lie on a kept path?"""
    g, pruned = traced.graph, traced.result.pruned
    feats = np.flatnonzero(g.kind == NodeKind.FEATURE)
    pairs = sorted({(int(g.layer[i]), int(g.feature[i])) for i in feats})
    views = dict(zip(pairs, promoted_tokens(rm.model, rm.transcoder, pairs, VIEW_TOP)))
    view_of = [views[int(g.layer[i]), int(g.feature[i])] for i in feats]
    reaches_capital = reaching(pruned, traced.target_node)  # bool [n_nodes]
    promoting = []
    for i, view in zip(feats, view_of):
        if state not in view:
            continue
        kept = bool(pruned.node_mask[i])
        promoting.append({"id": f"{g.layer[i]}:{g.position[i]}:{g.feature[i]}", "layer": int(g.layer[i]),
                          "pos": int(g.position[i]), "token": g.token_strs[int(g.position[i])],
                          "influence": float(traced.influence_node[i]), "kept": kept,
                          "also_promotes_capital": traced.answer in view,
                          "reaches_capital": kept and bool(reaches_capital[i])})
    promoting.sort(key=lambda d: -d["influence"])
    last = g.n_pos - 1
    listed = []
    for f in found:
        hit = np.flatnonzero((g.kind == NodeKind.FEATURE) & (g.layer == f.layer) & (g.feature == f.feature)
                             & (g.position == last))
        i = int(hit[0]) if len(hit) else None
        listed.append({"id": f"{f.layer}:{last}:{f.feature}", "score": f.score,
                       "promotes": promoted_tokens(rm.model, rm.transcoder, [(f.layer, f.feature)], VIEW_TOP)[0],
                       "in_graph": i is not None, "kept": i is not None and bool(pruned.node_mask[i]),
                       "influence": float(traced.influence_node[i]) if i is not None else 0.0})
    share = influence_share(traced, feats, view_of)
    on_path = [p for p in promoting if p["reaches_capital"]]
    if on_path:
        best = on_path[0]
        verdict = (f"yes: {best['id']} (layer {best['layer']}, at {best['token'].strip()!r}) promotes {state} and "
                   f"lies on a kept path to {traced.answer!r} (influence {best['influence']:.3f}); "
                   f"{len(on_path)} such feature node(s)")
        if share.get(state, 0.0) <= max(v for k, v in share.items() if k != state):
            verdict += (f"; but not specific: nodes promoting {state} hold {share.get(state, 0.0):.3f} of the feature "
                        f"influence, no more than nodes promoting another state (up to "
                        f"{max(v for k, v in share.items() if k != state):.3f})")
    elif promoting:
        verdict = (f"no: {len(promoting)} feature node(s) promote {state} but none lies on a kept path to "
                   f"{traced.answer!r} (strongest {promoting[0]['id']}, influence {promoting[0]['influence']:.3f}, "
                   f"{'kept' if promoting[0]['kept'] else 'pruned'})")
    else:
        verdict = f"no: no active feature promotes {state} in its top-{VIEW_TOP} output view"
    others = [v for k, v in share.items() if k != state]
    specificity = {"share": share.get(state, 0.0), "other_states_mean": float(np.mean(others)) if others else 0.0,
                   "other_states_max": float(np.max(others)) if others else 0.0}
    return StateCheck(traced.prompt, state, traced.answer, promoting[:8], listed, specificity, {}, verdict)


def influence_share(traced: Traced, feats: np.ndarray, view_of: list[list[str]]) -> dict[str, float]:
    """Per single-token state: the share of all feature influence on the answer held by the nodes
    whose output view promotes that state (a baseline for "promotes California")."""
    from circuits.models.world.facts import STATE_CAPITAL

    influence = traced.influence_node[feats]
    total = float(influence.sum()) or 1.0
    return {st: float(sum(x for x, v in zip(influence, view_of) if st in v)) / total
            for st in STATE_CAPITAL if " " not in st}


def ladder_note(run, ks=LADDER) -> str:
    """The top token after the experiment for each number of state features in `ks`."""
    tops = []
    for k in ks:
        exp = run(k)
        tops.append(f"k={k}: {exp.top_after[0]['token'].strip() if exp.top_after else '-'}")
    return "top token with k state features: " + ", ".join(tops)


def run_two_hop_demo(rm: ReplacementModel, k: int = DEFAULT_K, inhibit: float = DEFAULT_INHIBIT,
                     inject_scale: float = DEFAULT_INJECT,
                     config: TraceConfig | None = None) -> TwoHopReport:
    finder = StateFeatureFinder(rm)
    checks, top_clean, scores = [], {}, {}
    for prompt, state, capital in (KOBE, DALLAS):
        traced = trace_answer(rm, prompt, capital, config)
        found = finder.find(state, k, allowed=finder.last_acts(prompt) != 0)
        checks.append(state_check(rm, traced, state, found))
        checks[-1].probe = one_hop_probe(finder, state, found)
        top_clean[prompt] = clean_top(rm, traced.tokens)
        scores[prompt] = traced.result.summary["scores"]
    opts = dict(inhibit=inhibit, inject_scale=inject_scale)
    runs = [(f"inhibit Texas x{inhibit:g} (Dallas prompt)", lambda k: run_inhibit(finder, *DALLAS, k=k, inhibit=inhibit)),
            ("swap Texas -> California (Dallas prompt)", lambda k: run_swap(finder, *DALLAS, *KOBE, k=k, **opts)[0]),
            (f"inhibit California x{inhibit:g} (Kobe prompt)", lambda k: run_inhibit(finder, *KOBE, k=k, inhibit=inhibit)),
            ("swap California -> Texas (Kobe prompt)", lambda k: run_swap(finder, *KOBE, *DALLAS, k=k, **opts)[0])]
    exps = []
    for name, run in runs:
        exp = run(k)
        exp.name = f"{name}, k={k}"
        exp.note = ladder_note(run)
        exps.append(exp)
    return TwoHopReport(top_clean, scores, checks, exps)


def format_two_hop(report: TwoHopReport) -> list[str]:
    lines = []
    for check in report.checks:
        top = ", ".join(f"{t['token'].strip()} {t['prob']:.3f}" for t in report.top_clean[check.prompt])
        s = report.scores[check.prompt]
        lines += [f"prompt {check.prompt!r} -> {check.state} -> {check.capital}; model's top tokens: {top}",
                  f"  replacement {s['replacement']:.3f} (pruned {s['replacement_pruned']:.3f}), completeness "
                  f"{s['completeness']:.3f} (pruned {s['completeness_pruned']:.3f})",
                  f"  {check.state} features at the last position (fire on {check.state} prompts, not others):"]
        pr = check.probe
        if check.state_features:
            lines.append(f"    of these {pr['n_features']}: {pr['state_is_answer']} also fire selectively when "
                         f"{check.state} itself is the answer (one-hop 'the state containing X is'), "
                         f"{pr['capital_is_answer']} when {check.capital} is ('the capital of {check.state} is'); "
                         f"by chance about {pr['chance']:.1f} each; the 5 strongest:")
        for f in check.state_features[:5]:
            where = ("kept" if f["kept"] else "pruned") if f["in_graph"] else "not in graph"
            lines.append(f"    {f['id']:<11} score {f['score']:.2f}, influence {f['influence']:.3f} ({where}); "
                         f"promotes {', '.join(f['promotes'])}")
        if not check.state_features:
            lines.append("    (none found)")
        lines.append(f"  features whose output view promotes {check.state}:")
        for p in check.promoting[:5]:
            lines.append(f"    {p['id']:<11} at {p['token'].strip()!r}, influence {p['influence']:.3f}, "
                         f"{'kept' if p['kept'] else 'pruned'}, on a kept path to {check.capital}: "
                         f"{'yes' if p['reaches_capital'] else 'no'}"
                         + (f" (also promotes {check.capital})" if p["also_promotes_capital"] else ""))
        sp = check.specificity
        lines.append(f"  share of influence on {check.capital} held by nodes promoting {check.state}: "
                     f"{sp['share']:.3f} (other states: mean {sp['other_states_mean']:.3f}, "
                     f"max {sp['other_states_max']:.3f})")
        lines.append(f"  intermediate {check.state} feature on a kept path? {check.verdict}")
    for exp in report.experiments:
        lines += format_experiment(exp)
    return lines
