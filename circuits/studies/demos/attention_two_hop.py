"""`circuits demo attention-two-hop`: which heads move the state from the city to the last position,
and what on the query side makes them look there (issue 20, case study b).

Prompt (`world`): "Fact: the capital of the state containing Dallas is" -> Austin. Traced with --qk.
1. Heads: over the kept edges from the city's position (" Dallas") to the last position (" is"),
   each head's summed |loading|; the top head and its share.
2. Its attention: the pattern of that head from the last position to the city (and its rank
   among the keys).
3. Why it looks there: its QK attribution at (last, city): the top query-side and key-side
   contributors (marginals) and top pairs; where they sit (which position) and what they are.
4. Intervention: remove the top query-side feature's writes (its decoder output, all layers it
   writes) in the real model and measure that head's attention from the last position to the city.
Verdicts: the top head carries most of the moved edges; it attends to the city more than to any
other non-BOS key; its top key-side contributor sits at the city's position; removing the top
query-side feature lowers its attention to the city.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from circuits.studies.experiments import json_safe
from circuits.replacement.hooks import block_hook, transcoder_hooks
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from circuits.trace import trace_prompt

DALLAS = ("Fact: the capital of the state containing Dallas is", " Dallas")


@dataclass
class AttentionTwoHopReport:
    prompt: str
    city_pos: int
    last_pos: int
    head_shares: list[list] = field(default_factory=list)  # [[layer, head, share of |loading|]]
    head: tuple[int, int] | None = None
    attention_to_city: float = 0.0
    city_rank: int = 0  # rank of the city among non-BOS keys (1 = most attended)
    q_top: list[list] = field(default_factory=list)  # [[node_id, value, label]]
    k_top: list[list] = field(default_factory=list)
    pairs: list[list] = field(default_factory=list)
    inhibited: str = ""
    attention_after: float = 0.0
    score: float = 0.0  # the head's pre-softmax score at (last, city), before any soft cap
    score_after: float = 0.0  # ... with the top query-side feature's writes removed (after any cap)
    inhibited_marginal: float = 0.0  # that feature's query-side marginal
    verdicts: dict[str, bool] = field(default_factory=dict)
    word: str = "city"  # what the subject token is, in the printed lines and verdicts

    def to_json(self) -> dict:
        return json_safe(asdict(self))


def _position_of(setup: ReplacementModel, prompt: str, word: str) -> int:
    from circuits.errors import CircuitsError
    from circuits.replacement.prompts import token_id

    tokens = setup.tokens(prompt).tolist()
    target = token_id(setup.model, word)
    if target not in tokens:
        raise CircuitsError(f"{word!r} is not a token of {prompt!r}")
    return len(tokens) - 1 - tokens[::-1].index(target)


def head_shares(graph, src_pos: int, dst_pos: int) -> np.ndarray:
    """[L, H] summed |loading| over kept edges from src_pos to dst_pos, as shares of the total."""
    lo = graph.attention.loadings
    mask = (graph.position[lo.source] == src_pos) & (graph.position[lo.target] == dst_pos)
    totals = lo.head_totals(mask)
    return totals / max(totals.sum(), 1e-30)


@torch.no_grad()
def attention_with_feature_scaled(setup: ReplacementModel, tokens: torch.Tensor, layer: int, head: int,
                                  q: int, k: int, feature: tuple[int, int, int] | None,
                                  multiplier: float = 0.0) -> tuple[float, float]:
    """The real model's (pattern, pre-softmax score) of (layer, head) at (q, k), with the feature
    (layer, pos, index)'s decoder writes scaled by `multiplier` in every MLP output it writes to
    (0: removed, -1: inhibited; its activation as the real model computes it; None: clean)."""
    model, tc = setup.model, setup.transcoder
    store: dict = {}
    hooks = [(block_hook(layer, "attn.hook_pattern"), lambda v, hook: store.__setitem__("p", v[0, head, q].float())),
             (block_hook(layer, "attn.hook_attn_scores"), lambda v, hook: store.__setitem__("s", v[0, head, q, k].item()))]
    if feature is not None:
        f_layer, pos, index = feature
        x_name = transcoder_hooks(tc, f_layer)[0]
        acts: dict = {}

        def read(value, hook):
            acts["a"] = tc.layer_features(value[0, pos].to(tc.dtype), f_layer)[index]

        hooks.append((x_name, read))
        dec = tc.decoder_rows(f_layer, torch.tensor([index]))[0]  # [n_out, d]
        for j in range(min(dec.shape[0], model.cfg.n_layers - f_layer)):
            def scale(value, hook, j=j):
                value[0, pos] += ((multiplier - 1) * acts["a"] * dec[j]).to(value.dtype)
                return value
            hooks.append((transcoder_hooks(tc, f_layer + j)[1], scale))
    model.run_with_hooks(tokens[None], fwd_hooks=hooks, stop_at_layer=layer + 1)
    return float(store["p"][k]), float(store["s"])


def attention_with_feature_removed(setup: ReplacementModel, tokens: torch.Tensor, layer: int, head: int,
                                   q: int, k: int, feature: tuple[int, int, int] | None) -> tuple[float, float]:
    """attention_with_feature_scaled with the feature's writes removed (multiplier 0)."""
    return attention_with_feature_scaled(setup, tokens, layer, head, q, k, feature, 0.0)


@torch.no_grad()
def head_pattern(setup: ReplacementModel, tokens: torch.Tensor, layer: int, head: int, q: int) -> list[float]:
    """The real model's attention of (layer, head) from query q to every key 0..q."""
    store: dict = {}
    setup.model.run_with_hooks(tokens[None], fwd_hooks=[(block_hook(layer, "attn.hook_pattern"),
                               lambda v, hook: store.__setitem__("p", v[0, head, q, :q + 1].float()))],
                               stop_at_layer=layer + 1)
    return store["p"].tolist()


def run_attention_two_hop(setup: ReplacementModel, prompt: str = DALLAS[0], city: str = DALLAS[1],
                          qk_heads: int = 8, word: str = "city") -> AttentionTwoHopReport:
    """`word` names what `city` is (a city, a country) in the verdicts."""
    result = trace_prompt(setup, prompt, TraceConfig(qk=True, qk_heads=qk_heads))
    graph = result.graph
    city_pos, last_pos = _position_of(setup, prompt, city), graph.n_pos - 1
    report = AttentionTwoHopReport(prompt, city_pos, last_pos, word=word)
    shares = head_shares(graph, city_pos, last_pos)
    order = np.argsort(-shares.reshape(-1))[:5]
    H = shares.shape[1]
    report.head_shares = [[int(j // H), int(j % H), float(shares.reshape(-1)[j])] for j in order]
    layer, head = report.head_shares[0][:2]
    report.head = (layer, head)
    from circuits.attention import explain_head

    qk = explain_head(setup, prompt, layer, head, last_pos, city_pos)
    tokens = setup.tokens(prompt)
    pattern = head_pattern(setup, tokens, layer, head, last_pos)
    report.attention_to_city = pattern[city_pos]
    report.score = qk.model_score
    report.city_rank = 1 + sum(p > pattern[city_pos] for p in pattern[1:])
    label = {i: d.get("clerp", "") for i, d in qk.nodes.items()}
    report.q_top = [[i, v, label.get(i, "")] for i, v in qk.q_marginals[:8]]
    report.k_top = [[i, v, label.get(i, "")] for i, v in qk.k_marginals[:8]]
    report.pairs = [[a, b, v] for a, b, v in qk.pairs[:8]]
    top_feature = next((i for i, v in qk.q_marginals if v > 0 and not i.startswith(("E_", "bias"))
                        and i.split("_")[1] != "-1"), None)
    if top_feature is not None:
        l, f, c = (int(x) for x in top_feature.split("_"))
        report.inhibited = top_feature
        report.attention_after, report.score_after = attention_with_feature_removed(
            setup, tokens, layer, head, last_pos, city_pos, (l, c, f))
        report.inhibited_marginal = next(v for i, v in qk.q_marginals if i == top_feature)
    top_k_pos = int(report.k_top[0][0].rsplit("_", 1)[1]) if report.k_top else -1
    w = report.word
    report.verdicts = {
        "the top head carries the most of the moved edges": report.head_shares[0][2] >= 0.3,
        f"it attends to the {w} more than to any other non-BOS key": report.city_rank == 1,
        f"its top key-side contributor sits at the {w}": top_k_pos == city_pos,
    }
    if top_feature is not None:  # a layer-0 head's query reads only the token embedding and constants
        report.verdicts[f"removing the top query-side feature lowers its score for the {w}"] = \
            report.score_after < report.score
        report.verdicts[f"removing the top query-side feature lowers its attention to the {w}"] = \
            report.attention_after < report.attention_to_city
    return report


def format_attention_two_hop(r: AttentionTwoHopReport) -> list[str]:
    w = r.word
    lines = [f"prompt: {r.prompt!r}; {w} at position {r.city_pos}, last position {r.last_pos}",
             f"heads moving the {w}'s position to the last one (share of |loading| of the kept edges):"]
    lines += [f"  L{l}H{h}: {s:.2f}" for l, h, s in r.head_shares]
    if r.head is not None:
        lines.append(f"L{r.head[0]}H{r.head[1]} attends {r.attention_to_city:.3f} from the last position to the {w} "
                     f"(rank {r.city_rank} among non-BOS keys)")
        lines.append("why it looks there - query side (against the whole key):")
        lines += [f"  {i:<16} {v:+.3f}  {lab}" for i, v, lab in r.q_top]
        lines.append("key side (against the whole query):")
        lines += [f"  {i:<16} {v:+.3f}  {lab}" for i, v, lab in r.k_top]
        lines.append("top pairs (query node x key node):")
        lines += [f"  {a:<16} x {b:<16} {v:+.3f}" for a, b, v in r.pairs]
        if not r.inhibited:
            lines.append("no feature raises the query side (a layer-0 head reads only the query token's embedding and "
                         "the constant: biases, position terms): no feature to remove")
        else:
            lines.append(f"removing query-side feature {r.inhibited} (marginal {r.inhibited_marginal:+.3f}): score "
                         f"{r.score:.3f} -> {r.score_after:.3f}, attention to the {w} {r.attention_to_city:.3f} -> "
                         f"{r.attention_after:.3f}")
    lines += [f"verdict: {'YES' if ok else 'NO '}  {text}" for text, ok in r.verdicts.items()]
    return lines
