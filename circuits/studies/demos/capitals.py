"""`circuits demo capitals`: one-hop facts ("The capital of France is" -> " Paris") on any model.

1. **Which facts the model knows**: every (subject, capital) of the fact set is asked with the
   template; p(capital) and the top token are measured.
2. **The graph** of the main fact, traced towards its capital: scores, where the capital's
   influence comes from (token embeddings, features, errors; features at the subject token and at
   the last token), the strongest path from the subject token to the capital through features
   (graphs.paths.strongest_path) and the features at the subject token with the most influence.
3. **Interventions** (constrained patching in the real model, verdicts from measured logits at the
   last position, circuits.studies.experiments): inhibit the path's features; inhibit the strongest
   features at the subject token and at the last token, each next to a control (as many random
   active features at the same positions); swap the features of the subject token, and of the
   last token, for the other prompt's (the features stronger here removed, the other prompt's
   stronger ones injected; k of each, or all that differ).
4. **A reference that is not a feature intervention**: the other prompt's true MLP outputs patched
   in at the subject token, and at the last token (every layer) - does the real model carry the
   fact there at all? - and the share of that MLP-output difference the transcoder's
   reconstruction explains.

Fact sets: countries and capitals for real models ("The capital of France is"), US states for the
`world` organisms ("Fact: the capital of Texas is").
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from circuits.errors import CircuitsError
from circuits.studies.experiments import (Experiment, FeatureNode, Traced, clean_top, feature_node, format_experiment,
                                   json_safe, no_candidates, ranked_features, run_experiment, trace_answer)
from circuits.interventions import Intervention, clean_run, injections_from, top_tokens
from circuits.replacement.prompts import token_id, tokenize_prompt
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from graphs import NodeKind
from graphs.paths import strongest_path

COUNTRIES = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Japan", "Tokyo"),
             ("Russia", "Moscow"), ("China", "Beijing"), ("England", "London"), ("Greece", "Athens"),
             ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
             ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Canada", "Ottawa"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Australia", "Canberra")]
K = 10            # features per inhibition / swap side
INJECT = 2.0      # injected features: this many times their activation on the other prompt
SEED = 0          # the controls' random features
LADDER = (10, 20, 50, 100, 200, 400)  # the every-feature swaps are also run with the k strongest of each side


@dataclass(frozen=True)
class FactSet:
    template: str                     # "The capital of {} is"
    facts: list[tuple[str, str]]      # (subject, answer), single-token words
    main: tuple[str, str]             # the fact traced
    other: tuple[str, str]            # the fact swapped in


def fact_set(model_name: str) -> FactSet:
    """The world organisms know US states; every other model gets countries."""
    if model_name.startswith("world"):
        from circuits.models.world.facts import STATE_CAPITAL

        facts = [(s, c) for s, c in STATE_CAPITAL.items() if " " not in s and " " not in c]
        return FactSet("Fact: the capital of {} is", facts, ("Texas", "Austin"), ("California", "Sacramento"))
    return FactSet("The capital of {} is", COUNTRIES, ("France", "Paris"), ("Germany", "Berlin"))


def answer_token(model, word: str) -> str:
    """The answer as the model writes it after "is": ' Paris' where that is one token, else 'Paris'."""
    for text in (f" {word}", word):
        try:
            token_id(model, text)
            return text
        except CircuitsError:
            continue
    raise CircuitsError(f"'{word}' is not a single token of this model; choose another fact")


def subject_position(model, tokens: torch.Tensor, subject: str) -> int:
    """The (last) position of the subject's token in the prompt."""
    strs = [model.tokenizer.decode([int(t)]).strip() for t in tokens]
    hits = [i for i, s in enumerate(strs) if s == subject]
    if not hits:
        raise CircuitsError(f"'{subject}' is not one token of the prompt (tokens: {strs})")
    return hits[-1]


@dataclass
class OneHopReport:
    template: str
    accuracy: list[dict]              # [{subject, answer, p_answer, top, correct}]
    prompt: str
    answer: str
    other_prompt: str
    other_answer: str
    subject_pos: int
    top_clean: list[dict]
    scores: dict
    counts: dict
    shares: dict                      # influence on the answer by kind / position
    path: dict                        # {weight, nodes: [{id, kind, layer, pos, token, influence, label}]}
    subject_features: list[FeatureNode]
    reference: dict                   # per position: the real MLP-output patch, the transcoder's share of it
    experiments: list[Experiment] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("subject_features", "experiments")}
        out["subject_features"] = [asdict(f) | {"id": f.id} for f in self.subject_features]
        out["experiments"] = [e.to_json() for e in self.experiments]
        return json_safe(out)


@torch.no_grad()
def measure_facts(rm: ReplacementModel, facts: FactSet) -> list[dict]:
    rows = []
    for subject, answer in facts.facts:
        try:
            ans = answer_token(rm.model, answer)
        except CircuitsError:
            continue
        tokens = tokenize_prompt(rm.model, facts.template.format(subject))
        logits = rm.model(tokens[None].to(rm.model.cfg.device))[0, -1].float()
        probs = torch.softmax(logits, -1)
        top = top_tokens(rm.model, logits, 1)[0]["token"]
        rows.append({"subject": subject, "answer": answer, "p_answer": float(probs[token_id(rm.model, ans)]),
                     "top": top, "correct": top.strip() == answer})
    return rows


def influence_shares(traced: Traced, subject_pos: int) -> dict:
    """The answer's influence summed by node kind and by the features' position (influence sums
    over paths, so the shares of one graph add up to more than 1)."""
    g, inf = traced.graph, traced.influence_node
    feats = g.kind == NodeKind.FEATURE
    last = g.n_pos - 1
    emb = np.flatnonzero(g.kind == NodeKind.EMBEDDING)
    subject_emb = [i for i in emb if int(g.position[i]) == subject_pos]
    return {"features": float(inf[feats].sum()), "errors": float(inf[g.kind == NodeKind.ERROR].sum()),
            "embeddings": float(inf[emb].sum()),
            "subject_embedding": float(inf[subject_emb].sum()) if subject_emb else 0.0,
            "features_at_subject": float(inf[feats & (g.position == subject_pos)].sum()),
            "errors_at_subject": float(inf[(g.kind == NodeKind.ERROR) & (g.position == subject_pos)].sum()),
            "features_at_last": float(inf[feats & (g.position == last)].sum())}


def node_entry(rm: ReplacementModel, traced: Traced, i: int) -> dict:
    g = traced.graph
    kind = NodeKind(int(g.kind[i]))
    entry = {"node": int(i), "kind": kind.name.lower(), "layer": int(g.layer[i]), "pos": int(g.position[i]),
             "token": g.token_strs[int(g.position[i])] if kind != NodeKind.LOGIT else "",
             "influence": float(traced.influence_node[i]), "id": g.node_id(i), "label": ""}
    if kind == NodeKind.FEATURE:
        f = feature_node(rm, traced, int(i))
        entry.update(id=f.id, label=f.context or ("-> " + ", ".join(f.promotes[:4])))
    elif kind == NodeKind.LOGIT:
        entry["label"] = g.logit_labels[i - g.logit_slice.start]
    return entry


def path_from_subject(rm: ReplacementModel, traced: Traced, subject_pos: int) -> dict:
    g = traced.graph
    emb = [int(i) for i in np.flatnonzero(g.kind == NodeKind.EMBEDDING) if int(g.position[i]) == subject_pos]
    path = strongest_path(g, traced.result.pruned, emb, traced.target_node)
    return {"weight": path.weight, "step_weights": path.step_weights,
            "nodes": [node_entry(rm, traced, i) for i in path.nodes]}


def _inhibit(nodes: list[tuple[int, int, int]], multiplier: float = -1.0) -> list[Intervention]:
    return [Intervention(l, p, f, multiplier=multiplier) for l, p, f in nodes]


def random_control(acts: torch.Tensor, chosen: list[tuple[int, int, int]], rng: random.Random) -> list[tuple[int, int, int]]:
    """As many random active features (acts [pos, L, F]) as `chosen`, at the same positions, none of them chosen."""
    taken, out = set(chosen), []
    for pos in sorted({p for _, p, _ in chosen}):
        n = sum(1 for _, p, _ in chosen if p == pos)
        pool = [(int(l), pos, int(f)) for l, f in torch.nonzero(acts[pos]).tolist() if (int(l), pos, int(f)) not in taken]
        out += rng.sample(pool, min(n, len(pool)))
    return out


def inhibit_with_control(rm: ReplacementModel, traced: Traced, name: str, chosen: list[tuple[int, int, int]],
                         acts: torch.Tensor, rng: random.Random, why_none: str) -> Experiment:
    if not chosen:
        return no_candidates(name, "inhibit", traced.answer, why_none)
    exp = run_experiment(rm, traced.tokens, f"{name} x-1 ({len(chosen)} features)", _inhibit(chosen), traced.answer)
    control = random_control(acts, chosen, rng)
    if control:
        ctrl = run_experiment(rm, traced.tokens, "control", _inhibit(control), traced.answer)
        exp.note = (f"control, {len(control)} random active features at the same positions x-1: "
                    f"p({traced.answer.strip()}) {ctrl.p_answer_before:.3f} -> {ctrl.p_answer_after:.3f}")
    return exp


def swap_features(rm: ReplacementModel, traced: Traced, acts_here: torch.Tensor, other_tokens: torch.Tensor,
                  acts_there: torch.Tensor, pos: int, other_pos: int, where: str, goal: str, k: int | None,
                  inject_scale: float) -> Experiment:
    """At one position (`where`: the subject token or the last token): remove the k features
    stronger here than at the matching position of the other prompt, and inject the other prompt's
    k stronger ones (x inject_scale); k None: every feature that differs."""
    here, there = acts_here[pos], acts_there[other_pos]   # [L, F]
    F = here.shape[1]

    def strongest(diff: torch.Tensor, active: torch.Tensor) -> list[tuple[int, int]]:
        score = torch.where(active & (diff > 0), diff, torch.zeros_like(diff)).flatten()
        n = int((score > 0).sum()) if k is None else min(k, int((score > 0).sum()))
        return [divmod(int(i), F) for i in score.topk(n).indices] if n else []

    removed = strongest(here - there, here != 0)
    added = strongest(there - here, there != 0)
    name = (f"swap the {where}'s features for the {goal.strip()} prompt's "
            f"({'all' if k is None else f'k={k}'}, inject x{inject_scale:g})")
    if not removed and not added:
        return no_candidates(name, "swap", traced.answer, "no feature differs between the two subjects")
    ivs = [Intervention(l, pos, f, multiplier=0.0) for l, f in removed]
    ivs += injections_from(rm.model, rm.transcoder, other_tokens, [(l, other_pos, f) for l, f in added],
                           at_pos=pos, scale=inject_scale)
    exp = run_experiment(rm, traced.tokens, f"{name}: {len(removed)} removed, {len(added)} injected", ivs,
                         traced.answer, goal=goal, kind="swap")
    return exp


def swap_ladder(swap, goal: str, ks) -> str:
    """How many features a swap needs: p(goal) and the top token with the k strongest of each side (x1)."""
    steps = []
    for n in ks:
        exp = swap(n, 1.0)
        top = exp.top_after[0]["token"].strip() if exp.top_after else "-"
        p = "-" if exp.p_goal_after is None else f"{exp.p_goal_after:.3f}"
        steps.append(f"k={n}: {p} ({top})")
    return f"p({goal.strip()}) (top token) with the k strongest features of each side, x1: " + ", ".join(steps) if steps else ""


@torch.no_grad()
def mlp_reference(rm: ReplacementModel, tokens: torch.Tensor, other_tokens: torch.Tensor, pos: int,
                  other_pos: int, answer: str, goal: str) -> dict:
    """The real model with the other prompt's MLP outputs at `pos` (its `other_pos`), every layer:
    a reference for what the MLPs at that position carry about the fact. And the share of that
    MLP-output difference (summed over layers) the transcoder's reconstruction explains:
    1 - |d_true - d_rec|^2 / |d_true|^2 (None for a transcoder with a skip term)."""
    model, tc = rm.model, rm.transcoder
    here, there = clean_run(model, tc, tokens), clean_run(model, tc, other_tokens)
    out_hook = tc.cfg.output_hook
    L = model.cfg.n_layers
    from circuits.replacement.hooks import block_hook

    def patch(layer):
        def hook(mlp_out, hook):
            mlp_out = mlp_out.clone()
            mlp_out[:, pos] = there.mlp_out_pos_layer_d[other_pos, layer].to(mlp_out.dtype)
            return mlp_out
        return hook

    with model.hooks(fwd_hooks=[(block_hook(l, out_hook), patch(l)) for l in range(L)]):
        logits = model(tokens[None].to(model.cfg.device))[0, -1].float()
    probs_before = torch.softmax(here.logits_pos_vocab[-1], -1)
    probs = torch.softmax(logits, -1)
    a, g = token_id(model, answer), token_id(model, goal)

    def recon(run, p):
        acts = run.acts_pos_layer_feat[p]             # [L, F]
        return tc.decode(acts.to(tc.W_enc.dtype)).float()  # [L, d] (no skip-term input: see below)

    d_true = (there.mlp_out_pos_layer_d[other_pos] - here.mlp_out_pos_layer_d[pos]).float()   # [L, d]
    share = None
    if tc.W_skip is None:
        d_rec = recon(there, other_pos) - recon(here, pos)
        share = float(1 - ((d_true - d_rec) ** 2).sum() / (d_true ** 2).sum().clamp_min(1e-30))
    return {"p_answer": [float(probs_before[a]), float(probs[a])], "p_goal": [float(probs_before[g]), float(probs[g])],
            "top_after": top_tokens(model, logits, 3), "explained_share": share}


def run_capitals_demo(rm: ReplacementModel, facts: FactSet | None = None, k: int = K,
                      inject_scale: float = INJECT, config: TraceConfig | None = None,
                      seed: int = SEED) -> OneHopReport:
    facts = facts or fact_set(rm.name)
    model = rm.model
    (subject, answer), (other, other_answer) = facts.main, facts.other
    prompt, other_prompt = facts.template.format(subject), facts.template.format(other)
    ans, goal = answer_token(model, answer), answer_token(model, other_answer)
    accuracy = measure_facts(rm, facts)
    traced = trace_answer(rm, prompt, ans, config)
    tokens, other_tokens = traced.tokens, tokenize_prompt(model, other_prompt)
    pos, other_pos = subject_position(model, tokens, subject), subject_position(model, other_tokens, other)
    last = len(tokens) - 1
    acts_here = clean_run(model, rm.transcoder, tokens).acts_pos_layer_feat              # [pos, L, F]
    acts_there = clean_run(model, rm.transcoder, other_tokens).acts_pos_layer_feat
    path = path_from_subject(rm, traced, pos)
    subject_feats = ranked_features(rm, traced, top=k, positions=[pos])
    last_feats = ranked_features(rm, traced, top=k, positions=[last])
    rng = random.Random(seed)
    on_path = [(n["layer"], n["pos"], int(n["id"].split(":")[2])) for n in path["nodes"] if n["kind"] == "feature"]
    exps = [
        inhibit_with_control(rm, traced, "inhibit the path's features", on_path, acts_here, rng,
                             "no path from the subject token through features"),
        inhibit_with_control(rm, traced, f"inhibit the top {k} features at {subject!r}",
                             [(f.layer, f.pos, f.feature) for f in subject_feats], acts_here, rng,
                             "no feature at the subject token has influence on the answer"),
        inhibit_with_control(rm, traced, f"inhibit the top {k} features at the last token",
                             [(f.layer, f.pos, f.feature) for f in last_feats], acts_here, rng,
                             "no feature at the last token has influence on the answer"),
    ]
    other_last = len(other_tokens) - 1
    for where, here_pos, there_pos in (("subject token", pos, other_pos), ("last token", last, other_last)):
        def swap(n, scale):
            return swap_features(rm, traced, acts_here, other_tokens, acts_there, here_pos, there_pos, where, goal,
                                 n, scale)
        every = swap(None, 1.0)
        every.note = swap_ladder(swap, goal, [n for n in LADDER if n < len(every.changes) // 2])
        exps += [swap(k, inject_scale), every]
    summary = traced.result.summary
    return OneHopReport(facts.template, accuracy, prompt, ans, other_prompt, goal, pos,
                        clean_top(rm, tokens), summary["scores"], summary["counts"],
                        influence_shares(traced, pos), path, subject_feats,
                        {"subject token": mlp_reference(rm, tokens, other_tokens, pos, other_pos, ans, goal),
                         "last token": mlp_reference(rm, tokens, other_tokens, last, other_last, ans, goal)}, exps)


def format_capitals(report: OneHopReport) -> list[str]:
    right = [r for r in report.accuracy if r["correct"]]
    lines = [f"one-hop facts {report.template!r}: the model's top token is the capital for {len(right)} of "
             f"{len(report.accuracy)}"]
    for r in report.accuracy:
        lines.append(f"  {r['subject']:<12} p({r['answer']}) {r['p_answer']:.3f}  top {r['top'].strip()!r}"
                     f"{'' if r['correct'] else '  (wrong)'}")
    s, c, sh = report.scores, report.counts, report.shares
    top = ", ".join(f"{t['token'].strip()} {t['prob']:.3f}" for t in report.top_clean)
    lines += [f"prompt {report.prompt!r} -> {report.answer.strip()!r}; model's top tokens: {top}",
              f"graph: features {c['features_before']} -> {c['features_after']} kept; replacement "
              f"{s['replacement']:.3f} (pruned {s['replacement_pruned']:.3f}), completeness "
              f"{s['completeness']:.3f} (pruned {s['completeness_pruned']:.3f})",
              f"influence on {report.answer.strip()!r} (summed over paths): features {sh['features']:.3f}, errors "
              f"{sh['errors']:.3f}, token embeddings {sh['embeddings']:.3f}; at the subject token "
              f"(pos {report.subject_pos}): its embedding {sh['subject_embedding']:.3f}, features "
              f"{sh['features_at_subject']:.3f}, errors {sh['errors_at_subject']:.3f}; features at the last token "
              f"{sh['features_at_last']:.3f}"]
    p = report.path
    if p["nodes"]:
        lines.append(f"strongest path from the subject token to {report.answer.strip()!r} through features "
                     f"(weight {p['weight']:.2e}; id L:POS:F, layer, influence, label):")
        for n in p["nodes"]:
            where = f"L{n['layer']:<2} pos {n['pos']} {n['token']!r}" if n["kind"] != "logit" else "logit"
            lines.append(f"  {n['kind']:<9} {n['id']:<14} {where:<22} {n['influence']:.4f}  {n['label']}")
    else:
        lines.append("strongest path from the subject token: none through features in the pruned graph")
    lines.append(f"features at the subject token with the most influence on {report.answer.strip()!r}:")
    for f in report.subject_features[:5]:
        label = f.context or ("-> " + ", ".join(f.promotes[:4]))
        lines.append(f"  {f.id:<12} L{f.layer:<2} {f.influence:.4f} {'kept ' if f.kept else 'pruned'} {label}")
    if not report.subject_features:
        lines.append("  (none)")
    for exp in report.experiments:
        lines += format_experiment(exp)
    lines.append(f"reference (not a feature intervention): the real MLP outputs of {report.other_prompt!r} patched "
                 "in, every layer, at")
    for where, r in report.reference.items():
        share = "-" if r["explained_share"] is None else f"{r['explained_share']:.3f}"
        lines.append(f"  the {where}: p({report.other_answer.strip()}) {r['p_goal'][0]:.3f} -> {r['p_goal'][1]:.3f}, "
                     f"p({report.answer.strip()}) {r['p_answer'][0]:.3f} -> {r['p_answer'][1]:.3f}; share of that "
                     f"MLP-output difference the transcoder reconstructs: {share}")
    return lines
