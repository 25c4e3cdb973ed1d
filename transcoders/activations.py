"""Feature nonlinearities: JumpReLU (straight-through threshold gradient), ReLU, TopK."""

from __future__ import annotations

import torch


class _JumpReLU(torch.autograd.Function):
    """a = h * [h > theta]; d a/d theta ~ -(theta/eps) * 1[|h - theta| < eps/2] (rectangle STE)."""

    @staticmethod
    def forward(ctx, pre_acts, threshold, bandwidth: float):
        ctx.save_for_backward(pre_acts, threshold)
        ctx.bandwidth = bandwidth
        return pre_acts * (pre_acts > threshold)

    @staticmethod
    def backward(ctx, grad_acts):
        pre_acts, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_acts * (pre_acts > threshold)
        in_window = ((pre_acts - threshold).abs() < eps / 2).to(grad_acts.dtype)
        grad_theta = grad_acts * (-(threshold / eps) * in_window)
        grad_theta = grad_theta.reshape(-1, *threshold.shape).sum(0)
        return grad_pre, grad_theta, None


def jumprelu(pre_acts: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre_acts [..., F] with threshold [F] (or broadcastable trailing shape)."""
    return _JumpReLU.apply(pre_acts, threshold, bandwidth)


def topk_relu(pre_acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest positive pre-activations in the last dim."""
    k = min(k, pre_acts.shape[-1])
    values, idx = pre_acts.topk(k, dim=-1)
    return torch.zeros_like(pre_acts).scatter(-1, idx, values.relu())
