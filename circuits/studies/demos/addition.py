"""`circuits demo addition`: the paths to "95" in "calc: 36+59=" and inhibition experiments.

1. Trace the prompt towards the answer a+b (METHOD.md section 6).
2. Rank feature nodes by their influence on the answer's logit, group them by position (a, b, '=',
   others) and give each a role from an operand sweep (circuits.studies.demos.operand_roles).
3. Inhibit, by constrained patching in the real model: the strongest ones-digit feature; the
   ones-digit, magnitude and exact-sum groups (up to MAX_GROUP features each, most influential
   first, among the POOL most influential nodes); the strongest feature at '='. Each experiment
   reads the answer distribution before / after and ends with a verdict line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from circuits.studies.experiments import (json_safe, Experiment, FeatureNode, clean_top, format_experiment,
                                   no_candidates, ranked_features, run_experiment, trace_answer)
from circuits.studies.demos.operand_roles import addition_positions, feature_roles
from circuits.interventions import Intervention
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig

MAX_GROUP = 10  # features inhibited at once in the group experiments
POOL = 300      # feature nodes (by influence) classified for the experiments


@dataclass
class AdditionReport:
    prompt: str
    answer: str
    top_clean: list[dict]
    scores: dict
    counts: dict
    groups: dict[str, list[FeatureNode]]     # position label -> features, most influential first
    edges: list[dict]                        # strongest inputs of the top '=' features
    roles: dict                              # role counts over the classified pool, best ones-digit eta2
    experiments: list[Experiment] = field(default_factory=list)

    def to_json(self) -> dict:
        return json_safe({"prompt": self.prompt, "answer": self.answer, "top_clean": self.top_clean,
                          "scores": self.scores, "counts": self.counts,
                          "groups": {k: [asdict(f) | {"id": f.id} for f in v] for k, v in self.groups.items()},
                          "edges": self.edges, "roles": self.roles,
                          "experiments": [e.to_json() for e in self.experiments]})


def position_label(pos: int, where: dict[str, int], token: str) -> str:
    names = {where["a"]: "a", where["b"]: "b", where["="]: "="}
    return f"{token.strip()!r} (pos {pos}{', ' + names[pos] if pos in names else ''})"


def strongest_inputs(traced, node: int, k: int = 3) -> list[dict]:
    """The k sources with the largest |edge| into `node`, as readable dicts."""
    g = traced.graph
    row = g.incoming(node)
    out = []
    for s in abs(row).argsort()[::-1][:k]:
        if row[s] == 0:
            break
        kind = ["feature", "error", "token", "logit"][int(g.kind[s])]
        name = (f"{g.layer[s]}:{g.position[s]}:{g.feature[s]}" if kind == "feature" else
                f"error L{g.layer[s]}@{g.position[s]}" if kind == "error" else repr(g.token_strs[g.position[s]]))
        out.append({"source": name, "kind": kind, "weight": float(row[s])})
    return out


def _inhibit(nodes: list[FeatureNode], multiplier: float) -> list[Intervention]:
    return [Intervention(f.layer, f.pos, f.feature, multiplier=multiplier) for f in nodes]


def digit_note(answer: str, top_after: list[dict]) -> str:
    """Which digits of the answer the new top token keeps (the parallel-paths prediction)."""
    new = top_after[0]["token"].strip() if top_after else ""
    if not (new.isdigit() and answer.isdigit()) or new == answer:
        return ""
    same_ones, same_tens = new[-1] == answer[-1], int(new) // 10 == int(answer) // 10
    return (f"new top {new}: ones digit {'kept' if same_ones else 'changed'}, "
            f"tens {'kept' if same_tens else 'changed'}")


def experiments(rm: ReplacementModel, traced, pool: list[FeatureNode], where: dict[str, int],
                multiplier: float) -> list[Experiment]:
    ans = traced.answer
    ones = [f for f in pool if f.role.startswith("ones digit")]
    magnitude = [f for f in pool if f.role.startswith("magnitude")]
    exact_sum = [f for f in pool if f.role.startswith("sum")]
    at_eq = [f for f in pool if f.pos == where["="]]
    plans = [
        ("inhibit the strongest ones-digit feature", ones[:1], "no ones-digit feature on the path"),
        ("inhibit the ones-digit group", ones[:MAX_GROUP], "no ones-digit feature on the path"),
        ("inhibit the magnitude group", magnitude[:MAX_GROUP], "no magnitude feature on the path"),
        ("inhibit the exact-sum group", exact_sum[:MAX_GROUP], "no exact-sum feature on the path"),
        ("inhibit the strongest '=' feature", at_eq[:1], "no feature at '=' on the path"),
    ]
    out = []
    for name, chosen, why in plans:
        if not chosen:
            out.append(no_candidates(name, "inhibit", ans, why))
            continue
        label = f"{name} x{multiplier:g} ({len(chosen)} feature{'s' if len(chosen) > 1 else ''})"
        exp = run_experiment(rm, traced.tokens, label, _inhibit(chosen, multiplier), ans)
        exp.note = digit_note(ans, exp.top_after)
        out.append(exp)
    return out


def run_addition_demo(rm: ReplacementModel, a: int = 36, b: int = 59, top: int = 15, multiplier: float = -1.0,
                      config: TraceConfig | None = None) -> AdditionReport:
    prompt, answer = f"calc: {a}+{b}=", str(a + b)
    tokens, where = addition_positions(rm.model, prompt, a, b)
    traced = trace_answer(rm, prompt, answer, config)
    pool = ranked_features(rm, traced, top=max(top, POOL))
    roles = feature_roles(rm.model, rm.transcoder, tokens, where,
                          [(f.layer, f.pos, f.feature) for f in pool], a, b)
    for f, role in zip(pool, roles):
        f.role = f"{role.category}: {role.text()}" if role.category != "unclear" else f"unclear (eta2 {role.eta2:.2f})"
    role_summary = summarise_roles(pool, roles)
    nodes = pool[:top]
    groups: dict[str, list[FeatureNode]] = {}
    for f in sorted(nodes, key=lambda f: f.pos):
        groups.setdefault(position_label(f.pos, where, traced.graph.token_strs[f.pos]), []).append(f)
    edges = [{"target": f.id, "inputs": strongest_inputs(traced, f.node)} for f in nodes if f.pos == where["="]][:3]
    edges.insert(0, {"target": f"logit {answer!r}", "inputs": strongest_inputs(traced, traced.target_node, 5)})
    summary = traced.result.summary
    return AdditionReport(prompt, answer, clean_top(rm, tokens), summary["scores"], summary["counts"],
                          groups, edges, role_summary, experiments(rm, traced, pool, where, multiplier))


def summarise_roles(pool: list[FeatureNode], roles) -> dict:
    """How many classified features have each role, and the best ones-digit eta2 among them."""
    counts: dict[str, int] = {}
    for role in roles:
        counts[role.category] = counts.get(role.category, 0) + 1
    best = max(range(len(roles)), key=lambda i: roles[i].family_eta2.get("ones digit", 0.0), default=None)
    return {"n_classified": len(roles), "counts": counts,
            "best_ones_eta2": roles[best].family_eta2.get("ones digit", 0.0) if best is not None else None,
            "best_ones_feature": pool[best].id if best is not None else None}


def format_addition(report: AdditionReport) -> list[str]:
    s, c = report.scores, report.counts
    top = ", ".join(f"{t['token'].strip()} {t['prob']:.3f}" for t in report.top_clean)
    lines = [f"prompt {report.prompt!r} -> {report.answer!r}; model's top tokens: {top}",
             f"graph: features {c['features_before']} -> {c['features_after']} kept; replacement "
             f"{s['replacement']:.3f} (pruned {s['replacement_pruned']:.3f}), completeness "
             f"{s['completeness']:.3f} (pruned {s['completeness_pruned']:.3f})",
             f"features with the most influence on {report.answer!r}, by position "
             "(id L:POS:F, influence, kept?, role from the operand sweep, output view):"]
    for label, feats in report.groups.items():
        lines.append(f"  {label}")
        for f in feats:
            lines.append(f"    {f.id:<11} {f.influence:.3f} {'kept ' if f.kept else 'pruned'} {f.role}; "
                         f"promotes {', '.join(f.promotes[:3])}" + (f"; top context {f.context}" if f.context else ""))
    r = report.roles
    if r["n_classified"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items(), key=lambda kv: -kv[1]))
        lines.append(f"roles of the {r['n_classified']} most influential features: {counts}; the best ones-digit "
                     f"eta2 is {r['best_ones_eta2']:.2f} ({r['best_ones_feature']})")
    lines.append("strongest inputs (the paths):")
    for e in report.edges:
        ins = ", ".join(f"{i['source']} {i['weight']:+.2f}" for i in e["inputs"])
        lines.append(f"  {e['target']} <- {ins}")
    for exp in report.experiments:
        lines += format_experiment(exp)
    return lines
