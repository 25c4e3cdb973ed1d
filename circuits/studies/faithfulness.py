"""Graph faithfulness over a dataset (issue 21), after the Mechanistic Interpretability Benchmark's
circuit track: keep only a graph's nodes at a sweep of pruning levels and ablate the rest.

For one prompt and its full attribution graph:
- edges are ranked by their pruning score A_hat[t, s] * (influence_t + w_t) on the full graph
  (graphs/prune.py, METHOD.md section 4); the circuit at level x keeps the top ceil(x * n_edges)
  edges (ties by node order) and its nodes are the feature and error nodes those edges touch;
- every other feature (also active features the graph did not attribute, and features that switch
  on in the ablated run) and every other error node is ablated, in two models:
  * the local replacement model of the prompt (attention patterns and norm scales frozen at the
    clean run, transcoder features recomputed from the live residual stream, error terms added):
    with nothing ablated it reproduces the model's logits exactly;
  * the real model, by constrained patching (circuits.interventions.patch_hooks): each ablated
    feature's decoder change is added to the MLP outputs it writes, attention and MLPs run freely.
    Error nodes have no handle in the real model: only features are ablated there;
- two ablations: `zero` (activation 0, error 0) and `mean` (the feature's mean activation over
  every non-BOS position of the dataset, also where it was inactive; the error node's mean error
  vector per layer). Zero ablation is the graph's own semantics (a node absent from the graph
  contributes nothing); mean ablation keeps each ablated part at a typical value, so a circuit is
  not credited for undoing an out-of-distribution input, as MIB recommends. Both are reported.
- faithfulness f(x) = (m(circuit at x) - m(empty)) / (m(full) - m(empty)), m being the logit
  difference target - contrast (`logit-diff`) or the target's probability (`prob`) at the last
  position; empty = every feature and error ablated (embeddings kept), full = nothing ablated.
- CPR = area under f over the edge fraction x in [0, 1] (trapezoids through (0, 0) and the levels),
  CMD = area between f and 1 over the same points (MIB: CPR higher is better, CMD lower is better).
A prompt whose |m(full) - m(empty)| < 1e-6 has no defined f and is left out of the means (counted).
Over the dataset: the mean and standard deviation of the per-prompt f, CPR and CMD (the spread), and
MIB's dataset faithfulness, f of the means = (mean m(circuit) - mean m(empty)) / (mean m(full) -
mean m(empty)) with its CPR and CMD: a prompt whose m(full) is close to m(empty) has a huge
per-prompt f that dominates the mean of the f's, not the f of the means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

LEVELS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
METRICS = ("logit-diff", "prob")
ABLATIONS = ("zero", "mean")
MODELS = ("local", "real")
EPS = 1e-6


# --- which nodes a level keeps ------------------------------------------------------------------
def ranked_edges(graph) -> tuple[np.ndarray, np.ndarray]:
    """(target nodes, source nodes) of every nonzero edge, best pruning score first."""
    from graphs.prune import node_influence, normalized_abs_adjacency

    influence = node_influence(graph)
    w = graph.logit_weight_vector()
    coo = sparse.coo_array(sparse.csr_array(graph.edges))
    a_hat = sparse.csr_array(normalized_abs_adjacency(sparse.csr_array(graph.edges)))
    rows, cols = coo.row, coo.col
    target_nodes = graph.target_nodes()[rows]
    score = np.asarray(a_hat[rows, cols]).reshape(-1) * (influence[target_nodes] + w[target_nodes])
    order = np.lexsort((cols, target_nodes, -score))
    return target_nodes[order].astype(np.int64), cols[order].astype(np.int64)


def circuit_nodes(graph, targets: np.ndarray, sources: np.ndarray, level: float) -> np.ndarray:
    """Node indices (features and errors) touched by the top ceil(level * n_edges) edges."""
    from graphs import NodeKind

    k = max(1, math.ceil(level * targets.shape[0] - 1e-9))
    nodes = np.union1d(targets[:k], sources[:k])
    inner = (graph.kind[nodes] == NodeKind.FEATURE) | (graph.kind[nodes] == NodeKind.ERROR)
    return nodes[inner]


@dataclass
class Keep:
    """What survives ablation: features [P, L, F] and error nodes [L, P] (bool)."""

    features: torch.Tensor
    errors: torch.Tensor


def keep_masks(graph, nodes: np.ndarray | None, shape: tuple[int, int, int], device) -> Keep:
    """Masks of the kept nodes (None: everything kept, the full model)."""
    from graphs import NodeKind

    P, L, F = shape
    if nodes is None:
        return Keep(torch.ones(P, L, F, dtype=torch.bool, device=device),
                    torch.ones(L, P, dtype=torch.bool, device=device))
    feats = torch.zeros(P, L, F, dtype=torch.bool, device=device)
    errs = torch.zeros(L, P, dtype=torch.bool, device=device)
    kind = graph.kind[nodes]
    f = nodes[kind == NodeKind.FEATURE]
    feats[torch.as_tensor(graph.position[f]), torch.as_tensor(graph.layer[f]), torch.as_tensor(graph.feature[f])] = True
    e = nodes[kind == NodeKind.ERROR]
    errs[torch.as_tensor(graph.layer[e]), torch.as_tensor(graph.position[e])] = True
    return Keep(feats, errs)


# --- ablation values ----------------------------------------------------------------------------
@dataclass
class AblationValues:
    """The value an ablated node takes: features [L, F], error vectors [L, d]."""

    features: torch.Tensor
    errors: torch.Tensor


def zero_values(transcoder, device) -> AblationValues:
    cfg = transcoder.cfg
    return AblationValues(torch.zeros(cfg.n_layers, cfg.n_features, device=device),
                          torch.zeros(cfg.n_layers, cfg.d_model, device=device))


@torch.no_grad()
def dataset_means(rm, prompts: list[str]) -> AblationValues:
    """Mean feature activation [L, F] and mean error vector [L, d] over every non-BOS position of
    the prompts (summed in prompt order: every rank computes the same numbers)."""
    from circuits.replacement.local import build_local_replacement

    tc = rm.transcoder
    feat_sum = err_sum = None
    count = 0
    for prompt in prompts:
        rep = build_local_replacement(rm.model, tc, rm.tokens(prompt))
        f = rep.features
        acts = torch.zeros(tc.cfg.n_layers, tc.cfg.n_features, dtype=torch.float64, device=f.activation.device)
        acts.index_put_((f.layer, f.feature), f.activation.double(), accumulate=True)  # [L, F], BOS has none
        errs = rep.error_layer_pos_d[:, 1:].double().sum(1)                # [L, d]
        feat_sum = acts if feat_sum is None else feat_sum + acts
        err_sum = errs if err_sum is None else err_sum + errs
        count += rep.n_pos - 1
    return AblationValues((feat_sum / count).float(), (err_sum / count).float())


# --- the two ablated models (a batch of circuits in one forward pass) ---------------------------
def stack(keeps: list[Keep]) -> Keep:
    """Several circuits as one batch: features [B, P, L, F], errors [B, L, P]."""
    return Keep(torch.stack([k.features for k in keeps]), torch.stack([k.errors for k in keeps]))


def _frozen_batch_hook(tensor: torch.Tensor):
    """Replace an activation of the batched run by the clean run's value (batch 1), on every row."""
    def hook(value, hook):  # noqa: ARG001
        return tensor.reshape(value.shape[1:]).expand(value.shape).to(value.dtype)
    return hook


@torch.no_grad()
def local_logits(model, transcoder, rep, keep: Keep, values: AblationValues) -> torch.Tensor:
    """Last-position logits [B, vocab] of the local replacement model, one row per circuit of the
    batch `keep` (stack()), with the nodes outside it set to `values`: features are re-read from
    the live residual at every layer, then ablated; attention patterns and norm scales frozen."""
    from circuits.replacement.hooks import block_hook, transcoder_hooks

    dtype = transcoder.dtype
    B = keep.features.shape[0]
    live_x: dict[int, torch.Tensor] = {}
    live_acts: dict[int, torch.Tensor] = {}

    def read_input(layer):
        def hook(x, hook):  # noqa: ARG001
            live_x[layer] = x.to(dtype)
            acts = transcoder.layer_features(live_x[layer], layer)                            # [B, P, F]
            live_acts[layer] = torch.where(keep.features[:, :, layer], acts, values.features[layer].to(dtype))
        return hook

    def write_output(layer):
        def hook(y, hook):  # noqa: ARG001
            y_hat = transcoder.decode_layer(live_acts, layer, live_x[layer])                 # [B, P, d]
            err = torch.where(keep.errors[:, layer, :, None], rep.error_layer_pos_d[layer], values.errors[layer])
            y_hat = y_hat + err
            y_hat[..., 0, :] = rep.mlp_out_layer_pos_d[layer, 0]
            return y_hat.to(y.dtype)
        return hook

    hooks = []
    for l in range(model.cfg.n_layers):
        inp, out = transcoder_hooks(transcoder, l)
        hooks += [(inp, read_input(l)), (out, write_output(l)),
                  (block_hook(l, "attn.hook_pattern"), _frozen_batch_hook(rep.patterns[l]))]
    hooks += [(name, _frozen_batch_hook(scale)) for name, scale in rep.norm_scales.items()]
    tokens = rep.tokens[None].expand(B, -1)
    return model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1].float()


@torch.no_grad()
def real_logits(model, transcoder, clean, keep: Keep, values: AblationValues) -> torch.Tensor:
    """Last-position logits [B, vocab] of the real model, one row per circuit of `keep`, with the
    features outside it set to `values` by constrained patching as circuits.interventions does it
    (patch_hooks with attention and MLPs running freely): each changed feature's decoder change
    is added to the MLP outputs it writes. BOS untouched."""
    from circuits.replacement.hooks import block_hook

    acts = clean.acts_pos_layer_feat                                                       # [P, L, F]
    target = torch.where(keep.features, acts, values.features[None].to(acts.dtype))       # [B, P, L, F]
    target[:, 0] = acts[0]
    delta = target - acts
    zeros_x = torch.zeros(*delta.shape[:-1], transcoder.cfg.d_model, dtype=acts.dtype, device=acts.device)
    deltas = transcoder.decode(delta, zeros_x) - transcoder.decode(torch.zeros_like(delta), zeros_x)  # [B, P, L, d]
    n_pos = acts.shape[0]

    def mlp_hook(layer):
        def hook(mlp_out, hook):  # noqa: ARG001
            mlp_out = mlp_out.clone()
            mlp_out[:, :n_pos] = mlp_out[:, :n_pos] + deltas[:, :, layer].to(mlp_out.dtype)
            return mlp_out
        return hook

    hooks = [(block_hook(l, transcoder.cfg.output_hook), mlp_hook(l)) for l in range(model.cfg.n_layers)]
    tokens = clean.tokens[None].expand(delta.shape[0], -1)
    return model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1].float()


# --- one prompt -----------------------------------------------------------------------------------
def metric_fn(metric: str, target: int, contrast: int):
    if metric == "logit-diff":
        return lambda logits: float(logits[target] - logits[contrast])
    if metric == "prob":
        return lambda logits: float(torch.softmax(logits.double(), -1)[target])
    raise ValueError(metric)


def answer_tokens(model, logits_vocab: torch.Tensor, targets, contrast) -> tuple[int, int]:
    """(target, contrast) ids: the prompt's own, else the clean run's top token and runner-up."""
    from circuits.replacement.prompts import token_id

    ranked = logits_vocab.argsort(descending=True)[:2].tolist()
    t = token_id(model, targets[0]) if targets else ranked[0]
    c = token_id(model, contrast) if contrast is not None else (ranked[1] if ranked[0] == t else ranked[0])
    return t, c


def area(levels, f) -> float:
    x = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    y = np.concatenate([[0.0], np.asarray(f, dtype=np.float64)])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def curve_scores(levels, f) -> dict:
    """CPR (area under f) and CMD (area between f and 1) over the edge fraction."""
    x = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64)])
    gap = np.abs(1 - np.concatenate([[0.0], np.asarray(f, dtype=np.float64)]))
    return {"cpr": area(levels, f), "cmd": float(np.sum((x[1:] - x[:-1]) * (gap[1:] + gap[:-1]) / 2))}


@torch.no_grad()
def evaluate_prompt(rm, graph, targets, contrast, metric: str, means: AblationValues | None,
                    levels=LEVELS, ablations=ABLATIONS) -> dict:
    """Faithfulness curves of one prompt's graph: {curves: {"local/zero": {m, f, m_empty, cpr, cmd}, ...}}."""
    from circuits.interventions import clean_run
    from circuits.replacement.local import build_local_replacement

    model, tc = rm.model, rm.transcoder
    tokens = rm.tokens(graph.prompt)
    rep = build_local_replacement(model, tc, tokens)
    clean = clean_run(model, tc, tokens.to(model.cfg.device))
    t, c = answer_tokens(model, clean.logits_pos_vocab[-1], targets, contrast)
    m = metric_fn(metric, t, c)
    shape = tuple(clean.acts_pos_layer_feat.shape)
    dev = clean.acts_pos_layer_feat.device
    m_full = m(clean.logits_pos_vocab[-1])
    targets_e, sources_e = ranked_edges(graph)
    kept = [keep_masks(graph, circuit_nodes(graph, targets_e, sources_e, x), shape, dev) for x in levels]
    batch = stack([keep_masks(graph, np.zeros(0, dtype=np.int64), shape, dev), *kept])  # row 0: empty
    runners = {"local": lambda k, v: local_logits(model, tc, rep, k, v),
               "real": lambda k, v: real_logits(model, tc, clean, k, v)}
    curves = {}
    for ablation in ablations:
        values = zero_values(tc, dev) if ablation == "zero" else means
        for name, run in runners.items():
            logits = run(batch, values)
            m_empty, ms = m(logits[0]), [m(row) for row in logits[1:]]
            denom = m_full - m_empty
            f = [(v - m_empty) / denom for v in ms] if abs(denom) >= EPS else None
            curve = {"m": ms, "m_empty": m_empty, "f": f}
            if f is not None:
                s = curve_scores(levels, f)
                curve.update(cpr=s["cpr"], cmd=s["cmd"])
            curves[f"{name}/{ablation}"] = curve
    tok = model.tokenizer
    return {"metric": metric, "target": tok.decode([t]), "contrast": tok.decode([c]), "m_full": m_full,
            "levels": list(levels), "n_edges": int(targets_e.shape[0]),
            "n_nodes": [int(k.features.sum() + k.errors.sum()) for k in kept], "curves": curves}


# --- the dataset ----------------------------------------------------------------------------------
def summarize_curves(records: list[dict], levels=LEVELS) -> dict:
    """Per curve (model/ablation): mean and standard deviation of f per level, of CPR and CMD,
    over the prompts where f is defined; how many prompts were left out."""
    keys = sorted({k for r in records for k in r["curves"]})
    out = {"levels": list(levels), "n_prompts": len(records), "curves": {}}
    for key in keys:
        good = [r["curves"][key] for r in records if r["curves"].get(key, {}).get("f") is not None]
        # MIB's dataset faithfulness: the ratio of the means, robust to prompts whose m(full) is
        # close to m(empty) (their per-prompt f is huge and dominates the mean of the f's)
        full = np.mean([r["m_full"] for r in records if key in r["curves"]])
        empty = np.mean([r["curves"][key]["m_empty"] for r in records if key in r["curves"]])
        m_mean = np.mean([r["curves"][key]["m"] for r in records if key in r["curves"]], axis=0)
        of_means = ((m_mean - empty) / (full - empty)).tolist() if abs(full - empty) >= EPS else None
        f = np.array([g["f"] for g in good], dtype=np.float64).reshape(len(good), len(levels))
        cpr = np.array([g["cpr"] for g in good])
        cmd = np.array([g["cmd"] for g in good])
        out["curves"][key] = {
            "n": len(good), "left_out": len(records) - len(good),
            "f_mean": f.mean(0).tolist() if len(good) else None, "f_std": f.std(0).tolist() if len(good) else None,
            "cpr_mean": float(cpr.mean()) if len(good) else None, "cpr_std": float(cpr.std()) if len(good) else None,
            "cmd_mean": float(cmd.mean()) if len(good) else None, "cmd_std": float(cmd.std()) if len(good) else None,
            "f_of_means": of_means,
            **({f"{k}_of_means": v for k, v in curve_scores(levels, of_means).items()} if of_means else {}),
        }
    return out


def plot(summary: dict, path, title: str = "") -> None:
    """Mean faithfulness per level (band: one standard deviation), one panel per ablation."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safeio import write_bytes

    ablations = sorted({k.split("/")[1] for k in summary["curves"]})
    fig, axes = plt.subplots(1, len(ablations), figsize=(5.5 * len(ablations), 4), squeeze=False)
    x = np.asarray(summary["levels"])
    for ax, ablation in zip(axes[0], ablations):
        for model in MODELS:
            c = summary["curves"].get(f"{model}/{ablation}")
            if not c or c["f_mean"] is None:
                continue
            mean, std = np.asarray(c["f_mean"]), np.asarray(c["f_std"])
            label = f"{model}: mean of f (CPR {c['cpr_mean']:.2f}, CMD {c['cmd_mean']:.2f}, n={c['n']})"
            line = ax.plot(x, mean, marker="o", label=label)[0]
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=line.get_color())
            if c.get("f_of_means"):
                ax.plot(x, c["f_of_means"], ls=":", marker="s", color=line.get_color(),
                        label=f"{model}: f of means (CPR {c['cpr_of_means']:.2f}, CMD {c['cmd_of_means']:.2f})")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("fraction of edges kept")
        ax.set_ylabel("faithfulness f")
        ax.set_title(f"{ablation} ablation")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
