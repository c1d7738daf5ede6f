"""EIMF's semantic prediction task (Qiao et al., arXiv 2411.09410): the session representation
predicts the *text embedding* of the target item.

``z = P s`` maps the session representation ``s`` (the vector the base scores with) into the text
space of the catalogue (``P``: ``d -> d_text``, no bias); the logits are ``z E_text^T`` over the
catalogue's text embeddings ``E_text`` (stage 1's encoder, unit norm, row 0 = padding, masked out),
and the loss is the cross-entropy of the target item:

    L_sp = mean_b  -log( exp(z_b . e_{t_b}) / sum_{j >= 1} exp(z_b . e_j) )

It is a training signal only: ``P`` and ``E_text`` are not used by ``predict``/``full_sort_predict``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def semantic_logits(z: torch.Tensor, item_text: torch.Tensor) -> torch.Tensor:
    """``z E_text^T`` with the padding item (row 0) at ``-inf``: [B, n_items]."""
    logits = z @ item_text.t()
    logits[:, 0] = float("-inf")
    return logits


def semantic_prediction_loss(z: torch.Tensor, item_text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``targets`` [B] under ``softmax(z E_text^T)`` (padding excluded)."""
    return F.cross_entropy(semantic_logits(z, item_text), targets)
