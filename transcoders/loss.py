"""The training objective (METHOD.md section 1), on normalised activations:

  loss = sum_l ||y_hat_l - y_l||^2                                   (reconstruction)
       + lambda   * sum_l sum_i tanh(c * ||W_dec_i|| * a_i)           (sparsity)
       + lambda_p * sum_l sum_i m_i * relu(theta_i - h_i) * ||W_dec_i|| (pre-activation; keeps features alive)
each averaged over tokens (options: the reconstruction as d * sum_l FVU_l, each layer weighted equally;
TopK / BatchTopK instead of the penalties; the AuxK term for dead features, `auxk_loss`).
||W_dec_i|| is feature i's decoders concatenated over its output layers.
m_i is 1 for every feature (METHOD.md), or, with `preact_mask`, 1 only for the features the trainer
counts as dead (silent for `revive_after_tokens`): those are pushed back towards firing while the
live ones are left to the reconstruction and sparsity terms (the idea of reviving only dead latents
follows the auxiliary dead-latent loss of Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

The forward pass here is Transcoder.forward computed layer-major (features as [L, N, F], one
batched matmul for every layer's encoder, one matmul per source layer for the decoders): the same
numbers (tests/transcoders/test_parts.py checks it), laid out so every elementwise pass over the
[L, N, F] activations runs on contiguous memory; it is the training hot path. The whole objective
is one nn.Module so DistributedDataParallel sees every parameter use inside a single forward.
"""

from __future__ import annotations

import torch
from torch import nn

from transcoders.activations import topk_relu
from transcoders.transcoder import Transcoder


class _JumpReLUWithPenalties(torch.autograd.Function):
    """Layer-major JumpReLU fused with both penalties (training hot path; fewer passes over [L, N, F]).

    Inputs: pre h [L, N, F], theta [L, 1, F], norms ||W_dec|| [L, 1, F], pre-activation weights
    w [L, 1, F] (= m * ||W_dec||), c, eps.
    Outputs: a = h * [h > theta], S = sum tanh(c ||W_dec|| a), P = sum relu(theta - h) w.
    Gradients are the autograd ones of those formulas, with the rectangle STE for theta:
    d a / d theta = -(theta / eps) * 1[|h - theta| < eps / 2] (tests compare with plain autograd).
    """

    @staticmethod
    def forward(ctx, pre, theta, norms, p_weights, c: float, eps: float):
        on = torch.gt(pre, theta, out=torch.empty_like(pre))  # float 0/1 masks: bool ops are slow on CPU
        acts = pre * on
        t = torch.tanh_(acts * (c * norms))
        # sum_n relu(theta - h_n) = theta * #(h <= theta) - sum_{h <= theta} h, from reductions only
        n_on = on.sum(1, keepdim=True)
        below_sum = theta * (pre.shape[1] - n_on) - (pre.sum(1, keepdim=True) - acts.sum(1, keepdim=True))
        ctx.save_for_backward(pre, theta, norms, p_weights, on, acts, t, below_sum, n_on)
        ctx.c, ctx.eps = c, eps
        return acts, t.sum(), (below_sum * p_weights).sum()

    @staticmethod
    def backward(ctx, g_acts, g_s, g_p):
        # One new [L, N, F] buffer; the saved pre and t are overwritten (this node runs backward once).
        pre, theta, norms, p_weights, on, acts, t, below_sum, n_on = ctx.saved_tensors
        c, eps = ctx.c, ctx.eps
        window = torch.lt(pre.sub_(theta).abs_(), eps / 2, out=pre)  # STE window 1[|h - theta| < eps/2]
        sech2 = t.mul_(t).neg_().add_(1.0)  # 1 - tanh^2
        g_total = torch.addcmul(g_acts, sech2, (g_s * c) * norms)  # d/d a: decoder path + sparsity
        g_norms = sech2.mul_(acts).sum(1, keepdim=True) * (g_s * c)
        g_p_weights = below_sum * g_p
        g_theta = window.mul_(g_total).sum(1, keepdim=True) * (-theta / eps)
        g_theta = g_theta + (g_p * p_weights) * (pre.shape[1] - n_on)
        # JumpReLU passes the gradient where h > theta; the pre-activation loss acts where h <= theta
        g_pre = g_total.add_(g_p * p_weights).mul_(on).sub_(g_p * p_weights)
        return g_pre, g_theta, g_norms, g_p_weights, None, None


class _LayerMajorDecode(torch.autograd.Function):
    """y_hat [N, L, d] = b_dec + sum over source layers l of a_l @ W_dec_l (written to layers l..l+k-1),
    from acts [L, N, F]. Its backward writes d/d acts into one [L, N, F] tensor (autograd's own
    would build one [N, F] per layer and stack them: an extra pass over the largest tensor)."""

    @staticmethod
    def forward(ctx, acts_lnf, b_dec, *W_dec):
        L, N, F = acts_lnf.shape
        d = b_dec.shape[-1]
        y_hat = b_dec.unsqueeze(0).repeat(N, 1, 1)
        for l_src, W_fkd in enumerate(W_dec):
            k = W_fkd.shape[1]
            y_hat[:, l_src:l_src + k] += (acts_lnf[l_src] @ W_fkd.reshape(F, k * d)).view(N, k, d)
        ctx.save_for_backward(acts_lnf, *W_dec)
        return y_hat

    @staticmethod
    def backward(ctx, g_y):
        acts_lnf, *W_dec = ctx.saved_tensors
        L, N, F = acts_lnf.shape
        d = g_y.shape[-1]
        g_acts = torch.empty_like(acts_lnf) if ctx.needs_input_grad[0] else None
        g_W = []
        for l_src, W_fkd in enumerate(W_dec):
            k = W_fkd.shape[1]
            g_written = g_y[:, l_src:l_src + k].reshape(N, k * d)
            if g_acts is not None:
                torch.mm(g_written, W_fkd.reshape(F, k * d).T, out=g_acts[l_src])
            g_W.append((acts_lnf[l_src].T @ g_written).view(F, k, d) if ctx.needs_input_grad[2 + l_src] else None)
        g_b_dec = g_y.sum(0) if ctx.needs_input_grad[1] else None
        return (g_acts, g_b_dec, *g_W)


def layer_major_forward(tc: Transcoder, x_tok_layer_d: torch.Tensor, acts_lnf: torch.Tensor | None = None):
    """(y_hat [N, L, d], acts [L, N, F], pre [L, N, F]) - Transcoder.forward, layer-major inside.
    `acts_lnf` (already activated features) skips encoding (the fused JumpReLU path)."""
    cfg = tc.cfg
    x_lnd = x_tok_layer_d.transpose(0, 1).contiguous()
    pre_lnf = None
    if acts_lnf is None:
        pre_lnf = encode_layer_major(tc, x_lnd)
        if cfg.activation == "relu":
            acts_lnf = pre_lnf.relu()
        elif cfg.activation == "batchtopk":
            acts_lnf = batch_topk(pre_lnf, cfg.topk)
        else:
            acts_lnf = topk_relu(pre_lnf, cfg.topk)
    y_hat = _LayerMajorDecode.apply(acts_lnf, tc.b_dec, *tc.W_dec)
    if tc.W_skip is not None:
        y_hat = y_hat + torch.bmm(x_lnd, tc.W_skip).transpose(0, 1)
    return y_hat, acts_lnf, pre_lnf


def batch_topk(pre_lnf: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK (Bussmann et al. 2024): per layer, the k * N largest positive pre-activations over
    the whole batch [L, N, F] are kept, the rest are 0 (an average of k per token)."""
    L, N, F = pre_lnf.shape
    flat = pre_lnf.relu().reshape(L, N * F)
    values, idx = flat.topk(min(k * N, N * F), dim=1, sorted=False)
    return torch.zeros_like(flat).scatter(1, idx, values).view(L, N, F)


def auxk_loss(tc: Transcoder, pre_lnf: torch.Tensor, residual_nld: torch.Tensor, var_l: torch.Tensor,
              dead_lf: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024, appendix B.1): the k_aux largest pre-activations among each layer's dead
    features decode (without b_dec) the residual y - y_hat the live ones leave; returns
    d * sum_l min(n_dead_l / k_aux, 1) * ||e_hat_l - e_l||^2 / var_l. Gradient reaches only dead
    features' encoders and decoders."""
    L, N, F = pre_lnf.shape
    dead_l1f = dead_lf.bool()[:, None, :]
    masked = pre_lnf.masked_fill(~dead_l1f, float("-inf"))
    values, idx = masked.topk(min(k_aux, F), dim=-1, sorted=False)
    acts = torch.zeros_like(pre_lnf).scatter(-1, idx, values.clamp_min(0.0))
    e_hat = _LayerMajorDecode.apply(acts, torch.zeros_like(tc.b_dec), *tc.W_dec)
    err_l = (e_hat - residual_nld).pow(2).sum(dim=(0, 2))
    scale_l = (dead_lf.sum(1).to(err_l) / k_aux).clamp(max=1.0)
    return residual_nld.shape[-1] * (scale_l * err_l / var_l.clamp_min(1e-12)).sum()


def encode_layer_major(tc: Transcoder, x_lnd: torch.Tensor) -> torch.Tensor:
    """Pre-activations h [L, N, F] from inputs x [L, N, d]: one batched matmul for all layers."""
    return torch.baddbmm(tc.b_enc[:, None, :], x_lnd, tc.W_enc.transpose(1, 2))


class TranscoderObjective(nn.Module):
    def __init__(self, transcoder: Transcoder, sparsity_c: float, preact_coef: float, recon_loss: str = "sum",
                 auxk_coef: float = 0.0, auxk_k: int | None = None):
        super().__init__()
        self.transcoder = transcoder
        self.sparsity_c = sparsity_c
        self.preact_coef = preact_coef
        self.recon_loss, self.auxk_coef = recon_loss, auxk_coef
        self.auxk_k = auxk_k or max(transcoder.cfg.d_model // 2, 1)

    def forward(self, x_tok_layer_d: torch.Tensor, y_tok_layer_d: torch.Tensor, sparsity_coef: float,
                preact_mask_lf: torch.Tensor | None = None, dead_mask_lf: torch.Tensor | None = None):
        """Returns (loss, parts {recon, sparsity, preact, auxk} detached, y_hat [N, L, d], acts [L, N, F]).
        preact_mask_lf [L, F] (0/1): the features the pre-activation loss applies to (None: all);
        dead_mask_lf [L, F] (0/1): the features the AuxK term revives (used when auxk_coef > 0)."""
        tc = self.transcoder
        n_tok = x_tok_layer_d.shape[0]
        zero = x_tok_layer_d.new_zeros(())
        sparsity = preact = zero
        if tc.cfg.activation == "jumprelu":
            norms_l1f = tc.decoder_norms()[:, None, :]
            p_weights_l1f = norms_l1f if preact_mask_lf is None else norms_l1f * preact_mask_lf[:, None, :].to(norms_l1f)
            pre_lnf = encode_layer_major(tc, x_tok_layer_d.transpose(0, 1).contiguous())
            acts_lnf, sparsity_sum, preact_sum = _JumpReLUWithPenalties.apply(
                pre_lnf, tc.threshold[:, None, :], norms_l1f, p_weights_l1f, self.sparsity_c,
                tc.cfg.jumprelu_bandwidth)
            y_hat, _, _ = layer_major_forward(tc, x_tok_layer_d, acts_lnf)
            sparsity, preact = sparsity_sum / n_tok, preact_sum / n_tok
        else:
            y_hat, acts_lnf, pre_lnf = layer_major_forward(tc, x_tok_layer_d)
            if tc.cfg.activation == "relu":  # topk / batchtopk: sparsity is the constraint, no penalty
                norms_l1f = tc.decoder_norms()[:, None, :]
                p_weights_l1f = norms_l1f if preact_mask_lf is None else norms_l1f * preact_mask_lf[:, None, :].to(norms_l1f)
                sparsity = torch.tanh(acts_lnf * (self.sparsity_c * norms_l1f)).sum() / n_tok
                preact = (-pre_lnf).relu().mul(p_weights_l1f).sum() / n_tok
        var_l = None
        if self.recon_loss == "fvu" or self.auxk_coef > 0:
            var_l = (y_tok_layer_d - y_tok_layer_d.mean(0, keepdim=True)).pow(2).sum(dim=(0, 2))
        if self.recon_loss == "fvu":  # each layer weighted equally; d * sum_l FVU_l ~ the sum's scale
            err_l = (y_hat - y_tok_layer_d).pow(2).sum(dim=(0, 2))
            recon = y_tok_layer_d.shape[-1] * (err_l / var_l.clamp_min(1e-12)).sum()
        else:
            recon = torch.nn.functional.mse_loss(y_hat, y_tok_layer_d, reduction="sum") / n_tok
        loss = recon + sparsity_coef * sparsity
        if self.preact_coef > 0 and tc.cfg.activation in ("jumprelu", "relu"):
            loss = loss + self.preact_coef * preact
        auxk = zero
        if self.auxk_coef > 0 and dead_mask_lf is not None and bool(dead_mask_lf.any()):
            auxk = auxk_loss(tc, pre_lnf, (y_tok_layer_d - y_hat).detach(), var_l, dead_mask_lf, self.auxk_k)
            loss = loss + self.auxk_coef * auxk
        parts = {"recon": recon.detach(), "sparsity": sparsity.detach(), "preact": preact.detach(),
                 "auxk": auxk.detach()}
        return loss, parts, y_hat.detach(), acts_lnf.detach()
