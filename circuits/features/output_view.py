"""A feature's output view: the tokens its decoders most promote and suppress through the unembedding
(the label of a feature the index has no context for)."""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError
from circuits.replacement.hooks import has_post_mlp_norm


@torch.no_grad()
def feature_logits(model, transcoder, layer: int, feature: int,
                   W_U_d_vocab: torch.Tensor | None = None) -> torch.Tensor:
    """The feature's direct logit effect [vocab] (float32, CPU): its decoders summed over the layers
    they write to (sum_l W_dec_{layer->l}) -> final norm (approx.: LayerNorm's centring and the
    norm's weight, its scale ignored) -> W_U, demeaned over the vocabulary. A transcoder writing
    before a post-MLP norm (mlp.hook_out on Gemma) goes through that norm's weight first."""
    rows_k_d = transcoder.decoder_rows(layer, torch.tensor([feature]))[0].float()
    if transcoder.cfg.output_hook == "mlp.hook_out" and has_post_mlp_norm(model):
        post_w = torch.stack([model.blocks[layer + k].ln2_post.w.detach().float() for k in range(rows_k_d.shape[0])])
        rows_k_d = rows_k_d * post_w.to(rows_k_d.device)
    write_d = rows_k_d.sum(0)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        write_d = write_d - write_d.mean()
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        write_d = write_d * weight.detach().float()
    if W_U_d_vocab is None:  # callers labelling many features pass it once (a float32 copy for bf16 models)
        W_U_d_vocab = model.W_U.detach().float()
    logits_vocab = write_d @ W_U_d_vocab
    return (logits_vocab - logits_vocab.mean()).cpu()


@torch.no_grad()
def output_view(model, transcoder, layer: int, feature: int, k: int = 8) -> dict[str, list[tuple[str, float]]]:
    """Tokens the feature's decoders most promote / suppress (`feature_logits`), with their logits."""
    if not (0 <= layer < transcoder.cfg.n_layers and 0 <= feature < transcoder.cfg.n_features):
        raise CircuitsError(f"feature {layer}:{feature} does not exist (layers 0-{transcoder.cfg.n_layers - 1}, "
                            f"features 0-{transcoder.cfg.n_features - 1})")
    logits_vocab = feature_logits(model, transcoder, layer, feature)
    tok = model.tokenizer

    def rows(values, ids):
        return [(tok.decode([int(i)]) if tok is not None else str(int(i)), float(v)) for v, i in zip(values, ids)]

    k = min(k, logits_vocab.shape[0])
    low_values, low_ids = (-logits_vocab).topk(k)
    return {"promoted": rows(*logits_vocab.topk(k)), "suppressed": rows(-low_values, low_ids)}


def promoted_tokens(model, transcoder, layer_feat_pairs: list[tuple[int, int]], top: int = 3) -> list[list[str]]:
    """For each (layer, feature), the `top` tokens its decoders most promote (`feature_logits`),
    stripped of surrounding spaces (shown with repr when nothing is left)."""
    out = []
    W_U_d_vocab = model.W_U.detach().float() if layer_feat_pairs else None  # cast once, not per feature
    for layer, feat in layer_feat_pairs:
        ids = feature_logits(model, transcoder, layer, feat, W_U_d_vocab).topk(top).indices.tolist()
        out.append([model.tokenizer.decode([i]).strip() or repr(model.tokenizer.decode([i])) for i in ids])
    return out
