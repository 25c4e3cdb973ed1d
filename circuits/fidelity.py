"""Fidelity of the replacement model: how well the transcoder stands in for the model's MLPs.

On held-out text:
- reconstruction, with the transcoder reading the original model's activations: FVU per layer,
  L0 per layer and summed, dead fraction (features that never fire on the evaluation tokens);
- the replacement model, ALL MLPs replaced by the transcoder at once (a CLT feature read at layer
  l' writes into every MLP output l >= l', from activations of the replacement run itself):
  next-token top-1 agreement with the original, mean KL(original || replacement), and the
  cross-entropy of both on the true next token.
Position 0 (BOS) carries no features (METHOD.md section 2): it keeps its true MLP output and is left
out of every figure. Predictions are scored at positions 1 .. n-2 (those with a next token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from transcoders.activation_source import pad_right
from transcoders.metrics import ReconstructionStats

REPORT_KEYS = ("fvu_per_layer", "fvu_mean", "l0_per_layer", "l0_total", "dead_fraction",
               "top1_agreement", "kl_mean", "ce_original", "ce_replacement")


def layer_activations(tc, x_pos_d: torch.Tensor, layer: int) -> torch.Tensor:
    """a [..., F] of layer `layer`'s features from that layer's input x [..., d]."""
    pre = x_pos_d @ tc.W_enc[layer].T + tc.b_enc[layer]
    if tc.cfg.activation == "jumprelu":
        return pre * (pre > tc.threshold[layer])
    if tc.cfg.activation == "relu":
        return pre.relu()
    from transcoders.activations import topk_relu

    return topk_relu(pre, tc.cfg.topk)


def layer_reconstruction(tc, acts_by_layer: Sequence[torch.Tensor], layer: int, x_pos_d: torch.Tensor) -> torch.Tensor:
    """y_hat_l = sum_{l' <= l} a_l' W_dec_{l'->l} + b_dec_l (+ x_l W_skip_l)."""
    y = tc.b_dec[layer].expand(*x_pos_d.shape[:-1], -1)
    for src in range(layer + 1):
        if tc.cfg.kind == "plt" and src != layer:
            continue
        y = y + acts_by_layer[src] @ tc.decoder_to_layer(src, layer)
    if tc.W_skip is not None:
        y = y + x_pos_d @ tc.W_skip[layer]
    return y


def replacement_hooks(tc) -> list:
    """TransformerLens forward hooks that replace every MLP output by the transcoder's (BOS kept)."""
    L, cfg = tc.n_layers, tc.cfg
    acts: list = [None] * L
    inputs: list = [None] * L

    def read(layer):
        def hook(x, hook):  # noqa: ARG001
            inputs[layer] = x
            acts[layer] = layer_activations(tc, x, layer)
        return hook

    def write(layer):
        def hook(y, hook):  # noqa: ARG001
            y_hat = layer_reconstruction(tc, acts, layer, inputs[layer]).to(y.dtype)
            y_hat[:, 0] = y[:, 0]
            return y_hat
        return hook

    return ([(f"blocks.{l}.{cfg.input_hook}", read(l)) for l in range(L)]
            + [(f"blocks.{l}.{cfg.output_hook}", write(l)) for l in range(L)])


def _batches(sequences: Iterable[Sequence[int]], batch_size: int, max_tokens: int, seq_len: int):
    batch, n = [], 0
    for seq in sequences:
        seq = list(seq)[:seq_len]
        if len(seq) < 3:
            continue
        batch.append(seq)
        n += len(seq)
        if len(batch) == batch_size or n >= max_tokens:
            yield batch
            batch = []
        if n >= max_tokens:
            return
    if batch:
        yield batch


@torch.no_grad()
def measure_fidelity(model, tc, sequences: Iterable[Sequence[int]], max_tokens: int = 32768,
                     batch_size: int = 32, seq_len: int = 128, progress: bool = False) -> dict:
    """The fidelity report (keys REPORT_KEYS + n_tokens, n_predictions) of `tc` on `model`."""
    cfg, L, dev = tc.cfg, tc.n_layers, model.cfg.device
    tc = tc.to(dev)
    stats = ReconstructionStats(L, tc.n_features)
    sums = {"agree": 0.0, "kl": 0.0, "ce_o": 0.0, "ce_r": 0.0, "n": 0}
    bar = _progress_bar(max_tokens) if progress else None
    for seqs in _batches(sequences, batch_size, max_tokens, seq_len):
        if bar is not None:
            bar.update(min(sum(len(s) for s in seqs), bar.total - bar.n))
        tokens, mask = pad_right(seqs)
        tokens, mask = tokens.to(dev), mask.to(dev)
        store: dict[str, torch.Tensor] = {}

        def save(act, hook):
            store[hook.name] = act

        names = [f"blocks.{l}.{h}" for h in (cfg.input_hook, cfg.output_hook) for l in range(L)]
        logits_o = model.run_with_hooks(tokens, fwd_hooks=[(n, save) for n in names])
        x = torch.stack([store[f"blocks.{l}.{cfg.input_hook}"] for l in range(L)], dim=2)
        y = torch.stack([store[f"blocks.{l}.{cfg.output_hook}"] for l in range(L)], dim=2)
        keep = mask.clone()
        keep[:, 0] = False
        y_hat, acts, _ = tc(x[keep].float())
        stats.update(y[keep].float(), y_hat, acts)
        logits_r = model.run_with_hooks(tokens, fwd_hooks=replacement_hooks(tc))
        _score_predictions(logits_o, logits_r, tokens, mask, sums)
    if bar is not None:
        bar.close()
    if sums["n"] == 0:
        from circuits.errors import CircuitsError

        raise CircuitsError("no held-out sequences of 3 or more tokens to measure fidelity on")
    n = sums["n"]
    report = stats.summary()
    report.update({"top1_agreement": round(sums["agree"] / n, 6), "kl_mean": round(sums["kl"] / n, 6),
                   "ce_original": round(sums["ce_o"] / n, 6), "ce_replacement": round(sums["ce_r"] / n, 6),
                   "n_predictions": n})
    return report


def _progress_bar(total_tokens: int):
    from tqdm.auto import tqdm

    return tqdm(total=total_tokens, desc="fidelity (held-out)", unit="tok", leave=False, dynamic_ncols=True)


def _score_predictions(logits_o, logits_r, tokens, mask, sums: dict) -> None:
    has_next = mask[:, :-1] & mask[:, 1:]
    has_next[:, 0] = False
    lo = logits_o[:, :-1][has_next].float().log_softmax(-1)
    lr = logits_r[:, :-1][has_next].float().log_softmax(-1)
    target = tokens[:, 1:][has_next]
    sums["agree"] += float((lo.argmax(-1) == lr.argmax(-1)).sum())
    sums["kl"] += float((lo.exp() * (lo - lr)).sum())
    sums["ce_o"] += float(-lo.gather(-1, target[:, None]).sum())
    sums["ce_r"] += float(-lr.gather(-1, target[:, None]).sum())
    sums["n"] += int(target.shape[0])


def fidelity_report(loaded, transcoders: str | Path, corpus: str | None = None, max_tokens: int = 32768,
                    seq_len: int = 128, progress: bool = False) -> dict:
    """`circuits fidelity`: load the transcoder directory, check it fits, measure on held-out text."""
    from circuits.transcoder_corpus import corpus_sequences
    from circuits.transcoder_fit import load_fitting_transcoder

    tc = load_fitting_transcoder(loaded.model, transcoders, device=str(loaded.model.cfg.device))
    seqs, corpus_id = corpus_sequences(loaded, corpus, seq_len, heldout=True)
    report = measure_fidelity(loaded.model, tc, seqs, max_tokens=max_tokens, seq_len=seq_len, progress=progress)
    return {**report, "model": loaded.name, "transcoders": str(transcoders), "corpus": corpus_id,
            "kind": tc.cfg.kind, "n_features": tc.n_features}


def plot_fidelity(report: dict, path: str | Path) -> Path:
    """FVU and L0 by layer, side by side (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(len(report["fvu_per_layer"])))
    fig, (ax_fvu, ax_l0) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_fvu.bar(layers, report["fvu_per_layer"], color="tab:red")
    ax_fvu.set(xlabel="layer", ylabel="FVU", title=f"FVU by layer (mean {report['fvu_mean']:.3f})")
    ax_l0.bar(layers, report["l0_per_layer"], color="tab:blue")
    ax_l0.set(xlabel="layer", ylabel="active features / token", title=f"L0 by layer (total {report['l0_total']:.1f})")
    for ax in (ax_fvu, ax_l0):
        ax.set_xticks(layers)
    fig.suptitle(f"top-1 agreement {report['top1_agreement']:.3f}, KL {report['kl_mean']:.3f}")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
