"""Per-base view adapters: a global (long-term) and a local (short-term) behaviour representation.

An adapter reads both views out of one pass of the base model, so wrapping costs no second pass.
Bases with a natural pair get their own adapter (SR-GNN: attention readout and last-click state,
METHOD.md step 4); every other base uses ``generic_views``.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

Views = Tuple[torch.Tensor, torch.Tensor]  # (global, local), each [B, hidden]


def last_item(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """The last clicked item of each session, [B]."""
    return item_seq.gather(1, (item_seq_len - 1).clamp(min=0).unsqueeze(1)).squeeze(1)


def generic_views(model, item_seq, item_seq_len) -> Views:
    """global = the base's own sequence representation; local = the last clicked item's embedding."""
    base_forward = model.base_model_class.forward
    global_view = base_forward(model, item_seq, item_seq_len)
    local_view = model.item_embedding(last_item(item_seq, item_seq_len))
    return global_view, local_view


def srgnn_views(model, item_seq, item_seq_len) -> Views:
    """SR-GNN (Wu et al. 2019): global = soft-attention readout, local = last click's GGNN state.

    The base's own forward up to the readout; its ``linear_transform`` is replaced by the fusion.
    """
    alias_inputs, A, items, mask = model._get_slice(item_seq)
    hidden = model.gnn(A, model.item_embedding(items))
    alias_inputs = alias_inputs.view(-1, alias_inputs.size(1), 1).expand(-1, -1, model.embedding_size)
    seq_hidden = torch.gather(hidden, dim=1, index=alias_inputs)
    ht = model.gather_indexes(seq_hidden, item_seq_len - 1)
    q1 = model.linear_one(ht).view(ht.size(0), 1, ht.size(1))
    q2 = model.linear_two(seq_hidden)
    alpha = model.linear_three(torch.sigmoid(q1 + q2))
    a = torch.sum(alpha * seq_hidden * mask.view(mask.size(0), -1, 1).float(), 1)
    return a, ht


#: base model name -> adapter; bases not listed use ``generic_views``
VIEW_ADAPTERS: Dict[str, Callable[..., Views]] = {
    "SRGNN": srgnn_views,
}


def view_adapter(base_name: str) -> Callable[..., Views]:
    return VIEW_ADAPTERS.get(base_name, generic_views)
