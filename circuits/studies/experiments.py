"""Experiments on a ReplacementModel, shared by the case studies (circuits/demos) and validation:
tracing towards one answer (and reading its logit node), ranking features by their influence on
that answer, describing a feature, and running an intervention with a verdict.

    rm = ReplacementModel.load("world")
    traced = trace_answer(rm, "calc: 36+59=", "95")
    nodes = ranked_features(rm, traced, top=12)        # FeatureNode, most influential first
    exp = run_experiment(rm, traced.tokens, "inhibit _9", [Intervention(...)], answer="95")
    print(exp.verdict_line())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from circuits.errors import CircuitsError
from circuits.features.output_view import promoted_tokens
from circuits.interventions import Intervention, intervene, top_tokens
from circuits.replacement.prompts import token_id, tokenize_prompt
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from circuits.trace import TraceResult, trace_prompt
from graphs import Graph, NodeKind
from graphs.prune import node_influence

INHIBITION_DROP = 0.5  # an inhibition "worked" when p(answer) falls by more than this share ...
# ... or when the top token changes.
SHOW_CHANGES = 8  # interventions listed per experiment (--json has them all)


@dataclass
class Traced:
    """One prompt traced towards `answer`: the graph and the answer's logit node in it."""

    prompt: str
    answer: str
    answer_id: int
    tokens: torch.Tensor          # [pos]
    result: TraceResult
    target_node: int              # index of the answer's logit node in result.graph
    influence_node: np.ndarray    # float64 [n_nodes]: influence on the answer's logit alone

    @property
    def graph(self) -> Graph:
        return self.result.graph


def influence_on(graph: Graph, node: int) -> np.ndarray:
    """float64 [n_nodes]: each node's influence e_node^T (A_hat + A_hat^2 + ...) on one target."""
    w_node = np.zeros(graph.n_nodes)
    w_node[node] = 1.0
    return node_influence(graph, w_node)


def find_logit_node(graph: Graph, answer: str, answer_id: int) -> int | None:
    sl = graph.logit_slice
    for i in range(sl.start, sl.stop):
        label = graph.logit_labels[i - sl.start]
        if int(graph.token_id[i]) == answer_id or label == f"{answer.strip()} (target)":
            return i
    return None


def trace_answer(rm: ReplacementModel, prompt: str, answer: str, config: TraceConfig | None = None) -> Traced:
    """Trace `prompt`; the answer token is a target node even when it is not among the top logits."""
    config = config or TraceConfig()
    answer_id = token_id(rm.model, answer)
    tokens = tokenize_prompt(rm.model, prompt)
    if answer not in config.targets:
        config = config.model_copy(update={"answer": answer})
    result = trace_prompt(rm, prompt, config)
    node = find_logit_node(result.graph, answer, answer_id)
    if node is None:
        raise CircuitsError(f"the graph of '{prompt}' has no logit node for '{answer}'")
    return Traced(prompt, answer, answer_id, tokens, result, node, influence_on(result.graph, node))


@dataclass
class FeatureNode:
    """A feature node of a traced graph, with what the demos print about it."""

    node: int
    layer: int
    pos: int
    feature: int
    activation: float
    influence: float          # on the answer's logit
    kept: bool                # survives pruning
    promotes: list[str]       # output view: tokens its decoders most promote
    context: str = ""         # strongest index context ('' without an index)
    role: str = ""            # filled in by a demo

    @property
    def id(self) -> str:
        return f"{self.layer}:{self.pos}:{self.feature}"


def feature_node(rm: ReplacementModel, traced: Traced, i: int) -> FeatureNode:
    g = traced.graph
    layer, feat = int(g.layer[i]), int(g.feature[i])
    context = rm.index.label(layer, feat, width=60) if rm.index is not None else ""
    return FeatureNode(i, layer, int(g.position[i]), feat, float(g.activation[i]),
                       float(traced.influence_node[i]), bool(traced.result.pruned.node_mask[i]),
                       promoted_tokens(rm.model, rm.transcoder, [(layer, feat)], 5)[0], context)


def ranked_features(rm: ReplacementModel, traced: Traced, top: int | None = None,
                    positions: list[int] | None = None) -> list[FeatureNode]:
    """Feature nodes by influence on the answer, strongest first (optionally at `positions` only)."""
    g = traced.graph
    idx = np.flatnonzero(g.kind == NodeKind.FEATURE)
    if positions is not None:
        idx = idx[np.isin(g.position[idx], positions)]
    idx = idx[np.argsort(-traced.influence_node[idx], kind="stable")]
    idx = idx[traced.influence_node[idx] > 0]
    return [feature_node(rm, traced, int(i)) for i in (idx if top is None else idx[:top])]


def answer_logit_change(rm: ReplacementModel, traced: Traced, interventions: list[Intervention],
                        freeze_final_norm: bool = False) -> float:
    """Change of the answer's demeaned logit at the last position under constrained patching
    (circuits.interventions.intervene). With `freeze_final_norm` the final norm's scale is held at
    its clean value: the read-out of the graph's logit node (METHOD.md section 3)."""
    result = intervene(rm, traced.tokens, interventions,
                       freeze_final_norm=freeze_final_norm)
    t = traced.answer_id
    before, after = result.logits_before[-1].double(), result.logits_after[-1].double()
    return float((after[t] - after.mean()) - (before[t] - before.mean()))


# --- experiments -------------------------------------------------------------------------------
@dataclass
class Experiment:
    """One intervention and its measured outcome at the last position."""

    name: str
    kind: str                       # "inhibit" (worked: p(answer) falls > 50% or top changes) |
    #                                 "swap" (worked: the goal becomes the top token)
    answer: str                     # the clean answer
    goal: str | None                # swap: the token that should win
    changes: list[dict]             # [{id, before, after}]
    top_before: list[dict]
    top_after: list[dict]
    p_answer_before: float
    p_answer_after: float
    p_goal_before: float | None = None
    p_goal_after: float | None = None
    worked: bool = False
    reason: str = ""
    note: str = ""                  # what else the demo read from the outcome

    def verdict_line(self) -> str:
        return f"verdict [{self.name}]: {'worked' if self.worked else 'did not work'} ({self.reason})"

    def to_json(self) -> dict:
        return json_safe(asdict(self))


def json_safe(obj):
    """`obj` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def decide(kind: str, answer: str, goal: str | None, top_before: list[dict], top_after: list[dict],
           p_answer: tuple[float, float], p_goal: tuple[float, float] | None) -> tuple[bool, str]:
    """The verdict from measured probabilities (see Experiment.kind)."""
    t0, t1 = top_before[0]["token"].strip(), top_after[0]["token"].strip()
    probs = f"p({answer.strip()}) {p_answer[0]:.3f} -> {p_answer[1]:.3f}, top {t0!r} -> {t1!r}"
    if kind == "swap":
        assert goal is not None and p_goal is not None
        worked = t1 == goal.strip() and t0 != goal.strip()
        already = " (it was the top token before)" if t0 == goal.strip() else ""
        return worked, f"p({goal.strip()}) {p_goal[0]:.3f} -> {p_goal[1]:.3f}{already}, {probs}"
    dropped = p_answer[1] < (1 - INHIBITION_DROP) * p_answer[0]
    return dropped or t0 != t1, probs


def no_candidates(name: str, kind: str, answer: str, why: str) -> Experiment:
    """An experiment that could not be set up: it did not work, and the line says why."""
    return Experiment(name, kind, answer, None, [], [], [], float("nan"), float("nan"),
                      worked=False, reason=why)


def run_experiment(rm: ReplacementModel, tokens: torch.Tensor, name: str, interventions: list[Intervention],
                   answer: str, goal: str | None = None, kind: str = "inhibit", top: int = 5,
                   layers: tuple[int, int | None] | None = None) -> Experiment:
    """Constrained patching (circuits.interventions.intervene) and the verdict from its logits."""
    result = intervene(rm, tokens, interventions, layers=layers, top=top)
    before, after = result.logits_before[-1], result.logits_after[-1]

    def prob(logits, text):
        return float(torch.softmax(logits.float(), -1)[token_id(rm.model, text)])

    p_answer = (prob(before, answer), prob(after, answer))
    p_goal = (prob(before, goal), prob(after, goal)) if goal is not None else None
    worked, reason = decide(kind, answer, goal, result.top_before, result.top_after, p_answer, p_goal)
    return Experiment(name, kind, answer, goal,
                      [{"id": c.feature_id, "before": c.before, "after": c.after} for c in result.changes],
                      result.top_before, result.top_after, *p_answer,
                      *(p_goal if p_goal is not None else (None, None)), worked=worked, reason=reason)


def format_experiment(exp: Experiment) -> list[str]:
    """Readable lines: the changes, the top tokens before / after, the verdict."""
    lines = [f"experiment [{exp.name}]"]
    if not exp.changes:
        return lines + [f"  {exp.verdict_line()}"]
    shown = ", ".join(f"{c['id']} {c['before']:.2f}->{c['after']:.2f}" for c in exp.changes[:SHOW_CHANGES])
    more = f" (+{len(exp.changes) - SHOW_CHANGES} more)" if len(exp.changes) > SHOW_CHANGES else ""
    lines.append(f"  changes ({len(exp.changes)}): {shown}{more}")
    lines.append(f"  {'before':<24} {'after':<24}")
    for p, q in zip(exp.top_before, exp.top_after):
        lines.append(f"  {p['prob']:6.3f} {p['token'].strip():<16} {q['prob']:6.3f} {q['token'].strip():<16}")
    if exp.note:
        lines.append(f"  {exp.note}")
    return lines + [f"  {exp.verdict_line()}"]


def clean_top(rm: ReplacementModel, tokens: torch.Tensor, k: int = 5) -> list[dict]:
    with torch.no_grad():
        logits = rm.model(tokens[None].to(rm.model.cfg.device))[0, -1]
    return top_tokens(rm.model, logits, k)
