"""Alignment and uniformity (DirectAU; docs/METHOD.md Eq. 8-9) between behaviour and intent views.

``alignment``/``uniformity``/``AlignUniformLoss`` are the definitions, one view at a time (autograd
through ``F.normalize`` and ``torch.pdist``). The model computes the sum over its V views with
``align_uniform_views``: the same loss for all views at once, ``[V, B, d]`` each side, with a hand-written
backward (``_AlignUniformViews``). At a batch of 100 and two views the per-view graph is ~450 small
ops (normalisation, four ``pdist``s and their backward), a fixed ~1 ms per training batch on one CPU
thread; the fused one is ~40 (one normalisation of the 2V matrices, one ``bmm`` Gram of them, the
pairwise terms from it). Equal to the per-view sum up to float32 rounding (tests/test_layers.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: ``F.normalize``'s default: a vector shorter than this is divided by it instead of by its norm
NORM_EPS = 1e-12


def alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean ||x - y||^2`` over the batch; x, y already L2-normalised, shape [B, d]."""
    return (x - y).pow(2).sum(dim=1).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)``; 0 for a batch of one (no pair to spread)."""
    if x.size(0) < 2:
        return x.new_zeros(())
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


class AlignUniformLoss(nn.Module):
    """Per view: ``L_a(H, h~) + (L_u(H) + L_u(h~)) / 2`` on L2-normalised vectors."""

    def forward(self, behaviour: torch.Tensor, intent: torch.Tensor) -> torch.Tensor:
        x, y = F.normalize(behaviour, dim=-1), F.normalize(intent, dim=-1)
        return alignment(x, y) + (uniformity(x) + uniformity(y)) / 2


class _AlignUniformViews(torch.autograd.Function):
    """``sum_v AlignUniformLoss(x[v], y[v])`` for ``x, y [V, B, d]``, forward and backward by hand.

    With ``z`` the 2V matrices ``[x; y]`` normalised (``zh = z / max(|z|, eps)``), ``e_ij = exp(-t d_ij)``
    off the diagonal (``d_ij = |zh_i - zh_j|^2`` from the Gram matrix) and ``S = sum_ij e_ij`` (each pair
    twice): ``L_u = log(S / (B (B - 1)))``, ``dL_u/dzh_k = -(4t / S) (sum_j e_kj zh_k - sum_j e_kj zh_j)``;
    ``L_a = mean_b |xh_b - yh_b|^2``; the normalisation's backward is ``(g - zh (zh . g)) / |z|``
    (``g / eps`` below eps, as autograd through ``F.normalize``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
        n_views, batch = x.size(0), x.size(1)
        z = torch.cat([x, y])  # [2V, B, d]
        norm = z.norm(dim=-1, keepdim=True)
        scale = norm.clamp_min(NORM_EPS)
        zh = z / scale
        diff = zh[:n_views] - zh[n_views:]
        loss = diff.pow(2).sum() / batch
        grad_zh = torch.cat([diff, -diff]).mul_(2.0 / batch)  # of the alignment
        if batch >= 2:
            gram = torch.bmm(zh, zh.transpose(1, 2))  # [2V, B, B]
            sq = gram.diagonal(dim1=1, dim2=2)
            d2 = (sq.unsqueeze(2) + sq.unsqueeze(1)).sub_(gram, alpha=2.0).clamp_min_(0.0)
            e = d2.mul_(-t).exp_()
            e.diagonal(dim1=1, dim2=2).zero_()
            total = e.sum(dim=(1, 2))  # [2V]
            loss = loss + torch.log(total / (batch * (batch - 1))).sum() / 2
            w = e.div_(total.view(-1, 1, 1)).mul_(-2.0 * t)  # each matrix's L_u enters with 1/2
            grad_zh += w.sum(dim=2, keepdim=True) * zh - torch.bmm(w, zh)
        ctx.save_for_backward(zh, scale, norm > NORM_EPS, grad_zh)
        ctx.n_views = n_views
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        zh, scale, normal, grad_zh = ctx.saved_tensors
        g = grad_zh * grad_out
        radial = (zh * g).sum(dim=-1, keepdim=True)
        grad_z = torch.where(normal, g - zh * radial, g) / scale
        return grad_z[: ctx.n_views], grad_z[ctx.n_views :], None


def align_uniform_views(behaviour: torch.Tensor, intent: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``sum_v AlignUniformLoss()(behaviour[v], intent[v])`` for ``[V, B, d]`` each (see
    ``_AlignUniformViews``); float32 or wider."""
    if behaviour.shape != intent.shape or behaviour.dim() != 3:
        raise ValueError(f"align_uniform_views: behaviour {tuple(behaviour.shape)} and intent "
                         f"{tuple(intent.shape)} must both be [V, B, d]")
    return _AlignUniformViews.apply(behaviour, intent, t)
