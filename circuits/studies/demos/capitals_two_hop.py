"""`circuits demo capitals-two-hop`: two-hop facts ("The capital of the country where sushi comes
from is" -> Japan -> " Tokyo") and an honest check for an intermediate feature.

For each prompt: does the model answer it (p, top token)? The prompt is traced towards its answer.
**Intermediate features** are read from one-hop prompts, not from the graph: at the subject token
of the fact set's template ("The capital of Japan is"), the features whose activation exceeds
their largest activation on every other subject's prompt (top k by that margin). The check: which
of them are active in the two-hop prompt, where, with what influence on the answer, and whether
the pruned graph keeps them on a path to the answer's logit (graphs.paths.reaching); also any
feature whose output view promotes the intermediate word. Experiment: inhibit the intermediate
features wherever they fire in the two-hop prompt (x-1), next to a random control. The verdict is
"yes" only when they lie on a kept path AND the inhibition works; on a path without an effect is
"weak".
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import torch

from circuits.studies.demos.capitals import FactSet, answer_token, fact_set, inhibit_with_control, subject_position
from circuits.errors import CircuitsError
from circuits.features.output_view import promoted_tokens
from circuits.studies.experiments import Experiment, clean_top, format_experiment, json_safe, trace_answer
from circuits.interventions import clean_run
from circuits.replacement.prompts import tokenize_prompt
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from graphs import NodeKind
from graphs.paths import reaching

REAL_TWO_HOP = [("The capital of the country where sushi comes from is", "Japan", "Tokyo"),
                ("People in the country whose capital is Paris speak", "France", "French"),
                ("The capital of the country where the Eiffel Tower stands is", "France", "Paris")]
WORLD_TWO_HOP = [("Fact: the capital of the state containing Dallas is", "Texas", "Austin"),
                 ("Fact: the capital of the state where Kobe Bryant played basketball is", "California", "Sacramento")]
K = 10          # intermediate features per subject
VIEW_TOP = 5    # "promotes X": X among the feature's top-5 output-view tokens


def two_hop_prompts(model_name: str) -> list[tuple[str, str, str]]:
    return WORLD_TWO_HOP if model_name.startswith("world") else REAL_TWO_HOP


@dataclass
class TwoHopCase:
    prompt: str
    intermediate: str
    answer: str
    top_clean: list[dict]
    correct: bool
    scores: dict
    intermediate_features: list[dict]   # from the one-hop prompts: {layer, feature, margin}
    in_graph: list[dict]                # those active here: {id, pos, token, influence, kept, reaches_answer}
    promoting: list[dict]               # feature nodes whose output view promotes the intermediate
    verdict: str
    experiment: Experiment | None = None


@dataclass
class TwoHopFactsReport:
    template: str
    cases: list[TwoHopCase] = field(default_factory=list)

    def to_json(self) -> dict:
        return json_safe({"template": self.template,
                          "cases": [asdict(c) | {"experiment": c.experiment.to_json() if c.experiment else None}
                                    for c in self.cases]})


@torch.no_grad()
def intermediate_features(rm: ReplacementModel, facts: FactSet, subject: str, k: int) -> list[dict]:
    """Features at the subject token of the one-hop prompt of `subject` that fire more there than
    on any other subject's one-hop prompt (the k largest margins)."""
    subjects = [s for s, _ in facts.facts]
    if subject not in subjects:
        raise CircuitsError(f"'{subject}' is not a subject of the fact set ({', '.join(subjects)})")
    acts = {}
    for s in subjects:
        tokens = tokenize_prompt(rm.model, facts.template.format(s))
        try:
            pos = subject_position(rm.model, tokens, s)
        except CircuitsError:
            continue
        acts[s] = clean_run(rm.model, rm.transcoder, tokens).acts_pos_layer_feat[pos]   # [L, F]
    here = acts[subject]
    others = torch.stack([a for s, a in acts.items() if s != subject]).amax(0)
    margin = torch.where(here > 0, here - others, torch.zeros_like(here)).flatten()
    n = min(k, int((margin > 0).sum()))
    F = here.shape[1]
    return [{"layer": int(i) // F, "feature": int(i) % F, "margin": float(margin[i])}
            for i in margin.topk(n).indices] if n else []


def check_case(rm: ReplacementModel, facts: FactSet, prompt: str, intermediate: str, answer: str, k: int,
               config: TraceConfig | None, rng: random.Random) -> TwoHopCase:
    ans = answer_token(rm.model, answer)
    traced = trace_answer(rm, prompt, ans, config)
    top = clean_top(rm, traced.tokens)
    g, pruned = traced.graph, traced.result.pruned
    found = intermediate_features(rm, facts, intermediate, k)
    wanted = {(f["layer"], f["feature"]) for f in found}
    feats = [int(i) for i in (g.kind == NodeKind.FEATURE).nonzero()[0]]
    to_answer = reaching(pruned, traced.target_node)
    in_graph, promoting = [], []
    for i in feats:
        layer, feat, pos = int(g.layer[i]), int(g.feature[i]), int(g.position[i])
        entry = {"id": f"{layer}:{pos}:{feat}", "layer": layer, "pos": pos, "token": g.token_strs[pos],
                 "influence": float(traced.influence_node[i]), "kept": bool(pruned.node_mask[i])}
        if (layer, feat) in wanted:
            entry["reaches_answer"] = entry["kept"] and bool(to_answer[i])
            in_graph.append(entry)
        if entry["kept"] and intermediate in promoted_tokens(rm.model, rm.transcoder, [(layer, feat)], VIEW_TOP)[0]:
            entry["reaches_answer"] = bool(to_answer[i])
            promoting.append(entry)
    in_graph.sort(key=lambda e: -e["influence"])
    promoting.sort(key=lambda e: -e["influence"])
    acts = clean_run(rm.model, rm.transcoder, traced.tokens).acts_pos_layer_feat   # [pos, L, F]
    chosen = [(e["layer"], e["pos"], int(e["id"].split(":")[2])) for e in in_graph]
    exp = inhibit_with_control(rm, traced, f"inhibit the {intermediate} features", chosen, acts, rng,
                               f"no {intermediate} feature fires in this prompt")
    verdict = intermediate_verdict(intermediate, answer, found, in_graph, promoting, exp)
    return TwoHopCase(prompt, intermediate, answer, top, top[0]["token"].strip() == answer,
                      traced.result.summary["scores"], found, in_graph[:10], promoting[:5], verdict, exp)


def intermediate_verdict(intermediate: str, answer: str, found: list[dict], in_graph: list[dict],
                         promoting: list[dict], inhibition: Experiment) -> str:
    """yes: intermediate features lie on kept paths to the answer AND inhibiting them works; weak:
    on kept paths, but inhibiting them does not move the answer; partly / no: see the lines."""
    on_path = [e for e in in_graph if e["reaches_answer"]]
    if on_path:
        best = on_path[0]
        where = (f"{best['id']} (layer {best['layer']}, at {best['token'].strip()!r}), a {intermediate} feature of "
                 f"the one-hop prompt, lies on a kept path to {answer!r} (influence {best['influence']:.4f}; "
                 f"{len(on_path)} such node(s))")
        if inhibition.worked:
            return f"yes: {where}, and inhibiting them works ({inhibition.reason})"
        return (f"weak: {where}, but inhibiting them does not move the answer ({inhibition.reason}): no causal "
                "evidence of an intermediate step")
    view = [e for e in promoting if e["reaches_answer"]]
    if view:
        best = view[0]
        return (f"partly: no {intermediate} feature of the one-hop prompt is on a kept path, but {best['id']} "
                f"promotes {intermediate} in its output view and is (influence {best['influence']:.4f})")
    if not found:
        return f"no: the transcoder has no {intermediate}-specific feature at the subject of the one-hop prompt"
    if in_graph:
        best = in_graph[0]
        return (f"no: {len(in_graph)} {intermediate} feature node(s) fire here, none on a kept path to {answer!r} "
                f"(strongest {best['id']}, influence {best['influence']:.4f}, {'kept' if best['kept'] else 'pruned'})")
    return f"no: none of the {len(found)} {intermediate} features of the one-hop prompt fires in this prompt"


def run_capitals_two_hop(rm: ReplacementModel, prompts: list[tuple[str, str, str]] | None = None, k: int = K,
                         config: TraceConfig | None = None, seed: int = 0) -> TwoHopFactsReport:
    facts = fact_set(rm.name)
    rng = random.Random(seed)
    report = TwoHopFactsReport(facts.template)
    for prompt, intermediate, answer in prompts or two_hop_prompts(rm.name):
        report.cases.append(check_case(rm, facts, prompt, intermediate, answer, k, config, rng))
    return report


def format_capitals_two_hop(report: TwoHopFactsReport) -> list[str]:
    lines = []
    for c in report.cases:
        top = ", ".join(f"{t['token'].strip()} {t['prob']:.3f}" for t in c.top_clean[:3])
        s = c.scores
        lines += [f"prompt {c.prompt!r} -> {c.intermediate} -> {c.answer}: "
                  f"{'answered' if c.correct else 'NOT answered'} (top tokens {top})",
                  f"  replacement {s['replacement']:.3f} (pruned {s['replacement_pruned']:.3f}), completeness "
                  f"{s['completeness']:.3f} (pruned {s['completeness_pruned']:.3f})",
                  f"  {c.intermediate} features (subject of {report.template.format(c.intermediate)!r}, margin over "
                  f"other subjects): " + (", ".join(f"{f['layer']}:{f['feature']} {f['margin']:.2f}"
                                                     for f in c.intermediate_features[:6]) or "none")]
        for e in c.in_graph[:5]:
            lines.append(f"    fires here: {e['id']:<12} at {e['token'].strip()!r}, influence {e['influence']:.4f}, "
                         f"{'kept' if e['kept'] else 'pruned'}, on a kept path to {c.answer}: "
                         f"{'yes' if e['reaches_answer'] else 'no'}")
        for e in c.promoting[:3]:
            lines.append(f"    promotes {c.intermediate}: {e['id']:<12} at {e['token'].strip()!r}, influence "
                         f"{e['influence']:.4f}, on a kept path: {'yes' if e['reaches_answer'] else 'no'}")
        lines.append(f"  intermediate {c.intermediate} feature on a kept path? {c.verdict}")
        if c.experiment is not None:
            lines += ["  " + line for line in format_experiment(c.experiment)]
    return lines
