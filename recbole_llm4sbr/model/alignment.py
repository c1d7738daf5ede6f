"""Alignment and uniformity (DirectAU; docs/METHOD.md Eq. 8-9) between behaviour and intent views."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
