"""`circuits demo attention-induction`: induction heads on a random token sequence repeated twice
(issue 20, case study a; default model smollm2-135m with its default PLT).

Prompt: BOS, then n random word tokens s_1..s_n, then the same n again (positions n+1..2n). At
position n+i (token s_i) an induction head looks at the key n+i-(n-1) = i+1, whose previous token
is s_i (the query's current token), and copies s_{i+1}.
1. Trace with --qk. Copy edges: the kept edges from a first-half position i+1 to its second-half
   query n+i (and from position n+1 to the last, 2n). Each head's summed |loading| over them; the
   top heads.
2. The top head's QK attribution at (q, k) = the copy pair where it carries most. Each of its top
   pairs (query node, key node) is checked computationally:
   - positions: the query node sits at q, the key node at k-1 (the key's previous token, brought to
     k by an earlier head), and token(k-1) == token(q) by construction;
   - the nodes' own contexts: a token embedding stands for its token; a feature stands for the
     tokens at the centres of its top contexts in the feature index (when the transcoder has one),
     and, in the prompt itself, for the tokens at the positions where it is active. The pair says
     "the key's previous token is the query's current token" when the query node is at q, the key
     node at k-1, and both stand for s_i (the token at q).
3. Intervention: inhibit the top query-side feature (its decoder writes times `multiplier` - 1
   added, in the real model) and measure the head's attention from q to k (and its score).
Verdicts: the top head carries most of the copy edges; it attends to the copy position more than
to any other non-BOS key; most of the top pairs' |value| is on pairs that say "previous token =
current token"; inhibiting the top query-side feature lowers its attention to the copy position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from circuits.attribution.config import TraceConfig
from circuits.errors import CircuitsError
from circuits.replacement.model import ReplacementModel
from circuits.studies.demos.attention_two_hop import attention_with_feature_scaled, head_pattern
from circuits.studies.experiments import json_safe
from circuits.trace import trace_prompt


@dataclass
class InductionReport:
    prompt: str
    n: int  # tokens in one copy of the sequence
    tokens: list[str]
    head_shares: list[list] = field(default_factory=list)  # [[layer, head, share of |loading| of copy edges]]
    head: tuple[int, int] | None = None
    query: int = 0
    key: int = 0
    attention_to_copy: float = 0.0
    copy_rank: int = 0  # rank of the copy position among non-BOS keys (1 = most attended)
    pairs: list[list] = field(default_factory=list)  # [[q_id, k_id, value, q_pos, k_pos, says_prev_eq_current]]
    matching_share: float = 0.0  # share of the top pairs' |value| on pairs saying "previous = current"
    feature_share: float = 0.0  # share of the top pairs' nodes (both sides) that are features
    q_top: list[list] = field(default_factory=list)
    k_top: list[list] = field(default_factory=list)
    inhibited: str = ""
    multiplier: float = -1.0
    score: float = 0.0
    score_after: float = 0.0
    attention_after: float = 0.0
    verdicts: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict:
        return json_safe(asdict(self))


def random_repeated_prompt(rm: ReplacementModel, n: int, seed: int) -> tuple[str, list[int]]:
    """A text of n random word tokens (a space, then 3-8 ASCII letters) written twice, that the
    model's tokenizer reads back as exactly those tokens (BOS, s_1..s_n, s_1..s_n)."""
    tok = rm.model.tokenizer
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    words = [i for s, i in vocab if (w := s.removeprefix("Ġ")).isascii() and w.isalpha() and 3 <= len(w) <= 8
             and (s.startswith("Ġ") or not any(v.startswith("Ġ") for v, _ in vocab[:50]))]
    if len(words) < 4 * n:
        raise CircuitsError("the tokenizer has too few word tokens for a random sequence")
    g = np.random.default_rng(seed)
    for _ in range(50):
        ids = [int(i) for i in g.choice(words, n, replace=False)]
        text = tok.decode(ids)
        prompt = text + text if text.startswith(" ") else f"{text} {text}"  # word-level tokenizers: a space
        got = rm.tokens(prompt).tolist()
        if got[1:] == ids + ids:
            return prompt, ids
    raise CircuitsError("no random sequence re-tokenizes as itself: try another --seed")


def copy_pairs(n: int) -> list[tuple[int, int]]:
    """(query, key) of the copy edges: query n+i (token s_i, i = 1..n) looks at key i+1."""
    return [(n + i, i + 1) for i in range(1, n + 1)]


def copy_head_shares(graph, n: int) -> np.ndarray:
    """[L, H] summed |loading| over the kept copy edges, as shares of their total."""
    lo = graph.attention.loadings
    pairs = set(copy_pairs(n))
    qs, ks = graph.position[lo.target], graph.position[lo.source]
    mask = np.array([(int(q), int(k)) in pairs for q, k in zip(qs, ks)], dtype=bool)
    totals = lo.head_totals(mask)
    return totals / max(totals.sum(), 1e-30)


def _node_tokens(rm: ReplacementModel, node: dict, active_positions: dict, tokens: list[int]) -> set[int]:
    """The tokens a QK contributor stands for: an embedding's own token; a feature's top-context
    centre tokens (feature index) and the prompt's tokens where it is active; nothing for others."""
    kind = node.get("feature_type")
    if kind == "embedding":
        return {tokens[int(node["ctx_idx"])]}
    if kind != "cross layer transcoder":
        return set()
    layer, feature = int(node["layer"]), int(node["node_id"].split("_")[1])
    out = {tokens[p] for p in active_positions.get((layer, feature), [])}
    if rm.index is not None:
        out |= {c.token_ids[c.center] for c in rm.index.top_contexts(layer, feature)}
    return out


def _active_positions(rm: ReplacementModel, prompt: str) -> dict:
    from circuits.replacement.local import build_local_replacement

    rep = build_local_replacement(rm.model, rm.transcoder, rm.tokens(prompt))
    f = rep.features
    out: dict = {}
    for l, c, i in zip(f.layer.tolist(), f.position.tolist(), f.feature.tolist()):
        out.setdefault((l, i), []).append(c)
    return out


def run_attention_induction(rm: ReplacementModel, n: int = 12, seed: int = 0, qk_heads: int = 8,
                            multiplier: float = -1.0, top_pairs: int = 10) -> InductionReport:
    prompt, ids = random_repeated_prompt(rm, n, seed)
    tokens = [int(t) for t in rm.tokens(prompt).tolist()]
    report = InductionReport(prompt, n, [rm.model.tokenizer.decode([t]) for t in tokens], multiplier=multiplier)
    graph = trace_prompt(rm, prompt, TraceConfig(qk=True, qk_heads=qk_heads)).graph
    shares = copy_head_shares(graph, n)
    H = shares.shape[1]
    order = np.argsort(-shares.reshape(-1))[:5]
    report.head_shares = [[int(j // H), int(j % H), float(shares.reshape(-1)[j])] for j in order]
    layer, head = report.head_shares[0][:2]
    report.head = (layer, head)
    # the copy pair where this head carries most of the kept copy edges
    lo = graph.attention.loadings
    mass = {}
    for q, k in copy_pairs(n):
        sel = (graph.position[lo.target] == q) & (graph.position[lo.source] == k)
        mass[(q, k)] = float(np.abs(lo.loadings[sel, layer, head]).sum())
    report.query, report.key = max(mass, key=mass.get)
    q, k = report.query, report.key

    from circuits.attention import explain_head

    qk = explain_head(rm, prompt, layer, head, q, k, top=max(top_pairs, 48))  # 48: where to look for a query feature
    pattern = head_pattern(rm, torch.tensor(tokens), layer, head, q)
    report.attention_to_copy = pattern[k]
    report.copy_rank = 1 + sum(p > pattern[k] for p in pattern[1:])
    report.score = qk.model_score
    active = _active_positions(rm, prompt)
    current = tokens[q]
    total, matching = 0.0, 0.0
    for a, b, v in qk.pairs[:top_pairs]:
        na, nb = qk.nodes[a], qk.nodes[b]
        qa, kb = na.get("ctx_idx"), nb.get("ctx_idx")
        ok = (qa == q and kb == k - 1 and current in _node_tokens(rm, na, active, tokens)
              and current in _node_tokens(rm, nb, active, tokens))
        report.pairs.append([a, b, v, qa, kb, ok])
        total += abs(v)
        matching += abs(v) if ok and v > 0 else 0.0
    report.matching_share = matching / max(total, 1e-30)
    kinds = [qk.nodes[i].get("feature_type") for p in qk.pairs[:top_pairs] for i in p[:2]]
    report.feature_share = sum(x == "cross layer transcoder" for x in kinds) / max(len(kinds), 1)
    label = {i: d.get("clerp", "") for i, d in qk.nodes.items()}
    report.q_top = [[i, v, label.get(i, "")] for i, v in qk.q_marginals[:8]]
    report.k_top = [[i, v, label.get(i, "")] for i, v in qk.k_marginals[:8]]
    top_feature = next((i for i, v in qk.q_marginals if v > 0 and qk.nodes[i].get("feature_type") == "cross layer transcoder"),
                       None)
    if top_feature is not None:
        l, f, c = (int(x) for x in top_feature.split("_"))
        report.inhibited = top_feature
        report.attention_after, report.score_after = attention_with_feature_scaled(
            rm, torch.tensor(tokens), layer, head, q, k, (l, c, f), multiplier)
    report.verdicts = {
        "the top head carries the most of the copy edges": report.head_shares[0][2] >= 0.3,
        "it attends to the copy position more than to any other non-BOS key": report.copy_rank == 1,
        "most of its top QK pairs say 'the key's previous token is the query's current token'":
            report.matching_share > 0.5,
    }
    if top_feature is not None:
        report.verdicts["inhibiting the top query-side feature lowers its attention to the copy position"] = \
            report.attention_after < report.attention_to_copy
    return report


def format_attention_induction(r: InductionReport) -> list[str]:
    lines = [f"prompt: {r.n} random tokens twice: {r.prompt!r}",
             "heads carrying the copy edges (first-half key i+1 -> second-half query n+i; share of |loading|):"]
    lines += [f"  L{l}H{h}: {s:.2f}" for l, h, s in r.head_shares]
    if r.head is not None:
        lines.append(f"L{r.head[0]}H{r.head[1]} at query {r.query} ({r.tokens[r.query]!r}) attends {r.attention_to_copy:.3f} "
                     f"to key {r.key} ({r.tokens[r.key]!r}, after {r.tokens[r.key - 1]!r}; rank {r.copy_rank} among non-BOS keys)")
        lines.append("top QK pairs (query node @pos x key node @pos; 'yes': query at q, key at k-1, both stand for the current token):")
        lines += [f"  {a:<18}@{qa:<3} x {b:<18}@{kb:<3} {v:+.3f}  {'yes' if ok else 'no'}" for a, b, v, qa, kb, ok in r.pairs]
        lines.append(f"share of the top pairs' |value| on 'previous token = current token' pairs: {r.matching_share:.2f}; "
                     f"share of their nodes that are features: {r.feature_share:.2f} (the rest: error nodes, "
                     "embeddings, constants)")
        lines.append("query side (against the whole key):")
        lines += [f"  {i:<18} {v:+.3f}  {lab}" for i, v, lab in r.q_top]
        lines.append("key side (against the whole query):")
        lines += [f"  {i:<18} {v:+.3f}  {lab}" for i, v, lab in r.k_top]
        if r.inhibited:
            lines.append(f"inhibiting query-side feature {r.inhibited} (x{r.multiplier:g}): score {r.score:.3f} -> "
                         f"{r.score_after:.3f}, attention to the copy position {r.attention_to_copy:.3f} -> {r.attention_after:.3f}")
        else:
            lines.append("no feature among the 48 largest query-side contributors raises the score: nothing to inhibit")
    lines += [f"verdict: {'YES' if ok else 'NO '}  {text}" for text, ok in r.verdicts.items()]
    return lines
