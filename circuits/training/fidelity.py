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

from circuits.errors import CircuitsError
from circuits.replacement.hooks import capture_layers, load_fitting_transcoder
from circuits.replacement.local import replacement_hooks
from transcoders.activation_source import pad_right
from transcoders.metrics import ReconstructionStats

LOGITS_BUDGET_FLOATS = 1 << 25  # one batch's logits [B, T, vocab] stay below 128 MB (several copies live)

REPORT_KEYS = ("fvu_per_layer", "fvu_mean", "l0_per_layer", "l0_total", "dead_fraction",
               "top1_agreement", "kl_mean", "ce_original", "ce_replacement")


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
    # large vocabularies (Gemma: 262144) would need GBs of logits per batch: fewer sequences per batch
    batch_size = max(1, min(batch_size, LOGITS_BUDGET_FLOATS // (seq_len * model.cfg.d_vocab)))
    tc = tc.to(dev)
    stats = ReconstructionStats(L, tc.n_features)
    sums = {"agree": 0.0, "kl": 0.0, "ce_o": 0.0, "ce_r": 0.0, "n": 0}
    bar = _progress_bar(max_tokens) if progress else None
    for seqs in _batches(sequences, batch_size, max_tokens, seq_len):
        if bar is not None:
            bar.update(min(sum(len(s) for s in seqs), bar.total - bar.n))
        tokens, mask = pad_right(seqs)
        tokens, mask = tokens.to(dev), mask.to(dev)
        cap = capture_layers(model, tokens, cfg.input_hook, cfg.output_hook)
        x, y = _scored_rows(cap, mask)
        y_hat, acts, _ = tc(x)
        stats.update(y, y_hat, acts)
        logits_o = cap.logits
        logits_r = model.run_with_hooks(tokens, fwd_hooks=replacement_hooks(model, tc))
        _score_predictions(logits_o, logits_r, tokens, mask, sums)
    if bar is not None:
        bar.close()
    if sums["n"] == 0:
        raise CircuitsError("no held-out sequences of 3 or more tokens to measure fidelity on")
    n = sums["n"]
    report = stats.summary()
    report.update({"top1_agreement": round(sums["agree"] / n, 6), "kl_mean": round(sums["kl"] / n, 6),
                   "ce_original": round(sums["ce_o"] / n, 6), "ce_replacement": round(sums["ce_r"] / n, 6),
                   "n_predictions": n})
    return report


def _scored_rows(cap, mask_b_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) [n, L, d] in float32 at the positions reconstruction is scored on: every real (unpadded)
    position but the first, BOS, which carries no features."""
    keep = mask_b_t.to(cap.x_b_t_layer_d.device).clone()
    keep[:, 0] = False
    return cap.x_b_t_layer_d[keep].float(), cap.y_b_t_layer_d[keep].float()


class HeldOutReconstruction:
    """Reconstruction on a fixed set of held-out positions, scored again and again (a training run's
    held-out learning curve, TrainConfig.eval_every_tokens): the positions measure_fidelity reads
    first (same batches, BOS left out), their activations collected once on the first call and
    kept in float32. Returns the reconstruction part of the fidelity report (FVU, L0, dead)."""

    def __init__(self, model, sequences: Iterable[Sequence[int]], max_tokens: int, seq_len: int = 128,
                 batch_size: int = 32):
        self.model, self.sequences = model, sequences
        self.max_tokens, self.seq_len, self.batch_size = max_tokens, seq_len, batch_size
        self.x_n_layer_d: torch.Tensor | None = None
        self.y_n_layer_d: torch.Tensor | None = None

    @torch.no_grad()
    def _collect(self, input_hook: str, output_hook: str) -> None:
        xs, ys = [], []
        for seqs in _batches(self.sequences, self.batch_size, self.max_tokens, self.seq_len):
            tokens, mask = pad_right(seqs)
            cap = capture_layers(self.model, tokens.to(self.model.cfg.device), input_hook, output_hook, logits=False)
            x, y = _scored_rows(cap, mask)
            xs.append(x.cpu())
            ys.append(y.cpu())
        if not xs:
            raise CircuitsError("no held-out sequences of 3 or more tokens to score reconstruction on")
        self.x_n_layer_d, self.y_n_layer_d = torch.cat(xs), torch.cat(ys)

    @torch.no_grad()
    def __call__(self, tc, rows_per_batch: int = 512) -> dict:
        if self.x_n_layer_d is None:
            self._collect(tc.cfg.input_hook, tc.cfg.output_hook)
        dev = tc.W_enc.device
        stats = ReconstructionStats(tc.n_layers, tc.n_features)
        for i in range(0, self.x_n_layer_d.shape[0], rows_per_batch):
            x = self.x_n_layer_d[i:i + rows_per_batch].to(dev, tc.dtype)
            y_hat, acts, _ = tc(x)
            stats.update(self.y_n_layer_d[i:i + rows_per_batch], y_hat, acts)
        return {**stats.summary(), "n_tokens": stats.n_tokens}


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
                    seq_len: int = 128, progress: bool = False, strict_tokens: bool = False) -> dict:
    """`circuits fidelity`: load the transcoder directory, check it fits, measure on held-out text
    (at most max_tokens, and at most what the corpus can supply; strict_tokens: refuse more)."""
    from circuits.corpora.sequences import corpus_sequences, fit_token_supply

    tc = load_fitting_transcoder(loaded.model, transcoders, device=str(loaded.model.cfg.device))  # NaN refused there
    seqs, corpus_id = corpus_sequences(loaded, corpus, seq_len, heldout=True)
    max_tokens = fit_token_supply(seqs, max_tokens, strict_tokens)  # strict: the user's own --tokens
    report = measure_fidelity(loaded.model, tc, seqs, max_tokens=max_tokens, seq_len=seq_len, progress=progress)
    return {**report, "model": loaded.name, "transcoders": str(transcoders), "corpus": corpus_id,
            "kind": tc.cfg.kind, "n_features": tc.n_features}


def plot_fidelity(report: dict, path: str | Path) -> Path:
    """FVU and L0 by layer, side by side (matplotlib, Agg backend), written as PNG to `path`."""
    import io

    import matplotlib

    from safeio import write_bytes

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
    out, png = Path(path), io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    write_bytes(out, png.getvalue(), "plot")  # atomic, or through a special file / symlink
    return out
