"""Per-base adapters: a global (long-term) and a local (short-term) behaviour view of each session.

An adapter reads both views out of one pass of the base model, so wrapping costs no second pass.
Bases with a natural pair get their own adapter (SR-GNN: attention readout and last-click state,
docs/METHOD.md step 4; GCSAN, NARM, STAMP, NextItNet); every other base uses ``GenericViews``: global =
the base's own sequence representation (its ``forward``), local = the last clicked item's embedding.

Each adapter also says how wide its views are (``view_size``; the fusion's input and the intent
projection's output) and how wide the vector the base scores with is (``out_size``; the fusion's
output), and may post-process the fused vector (``finish``; CORE keeps it on the unit sphere).

Some bases get a small per-base mixin placed before ``LLM4SBRMixin`` in the MRO: BERT4Rec
(masked-item training; see ``BERT4RecMixin``), FEARec (its contrastive loss encodes other samples'
prefixes; see ``FEARecMixin``), and SR-GNN/GCSAN for speed only (their session graphs built batched,
the same graphs: ``SRGNNGraphMixin``, ``GCSANGraphMixin``). Which base uses which adapter and mixins is declared
in ``bases.py``; docs/BASES.md's table of supported bases lists the pair chosen for each base (``GLOBAL``/``LOCAL``
below are the same words).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Views = Tuple[torch.Tensor, torch.Tensor]  # (global, local), each [B, view_size]


@dataclass
class Call:
    """One call of the base's ``forward`` as the base made it, with its sequence, lengths and users."""

    args: tuple
    kwargs: dict
    item_seq: torch.Tensor
    item_seq_len: torch.Tensor
    user: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)

    def base_forward(self, model):
        """The base's own ``forward`` on this call's arguments (its sequence representation)."""
        return model.base_model_class.forward(model, *self.args, **self.kwargs)


def last_index(item_seq: torch.Tensor) -> torch.Tensor:
    """Position of each row's last clicked item, [B]: the last non-padding entry.

    Works for right-padded rows (RecBole's ``item_id_list``) and left-padded ones (SHAN's
    ``Inverse_item_id_list``) alike.
    """
    positions = torch.arange(1, item_seq.size(1) + 1, device=item_seq.device)
    return ((item_seq > 0).long() * positions).argmax(dim=1)


def last_item(item_seq: torch.Tensor, item_seq_len: torch.Tensor = None) -> torch.Tensor:
    """The last clicked item of each session, [B]."""
    return item_seq.gather(1, last_index(item_seq).unsqueeze(1)).squeeze(1)


def seq_len_of(item_seq: torch.Tensor) -> torch.Tensor:
    """Number of clicked items per row (for bases whose forward takes no lengths)."""
    return (item_seq > 0).sum(dim=1)


def embedding_dim(model) -> int:
    return int(model.item_embedding.embedding_dim)


class GenericViews:
    """global = the base's own sequence representation; local = the last clicked item's embedding."""

    GLOBAL = "the base's own sequence representation (its `forward` output)"
    LOCAL = "embedding of the last clicked item"

    def view_size(self, model) -> int:
        return embedding_dim(model)

    def out_size(self, model) -> int:
        return embedding_dim(model)

    def views(self, model, call: Call) -> Views:
        return call.base_forward(model), model.item_embedding(last_item(call.item_seq))

    def base_output(self, model, call: Call, global_view: torch.Tensor, local_view: torch.Tensor) -> torch.Tensor:
        """The vector the stock base scores with, composed from the two views exactly as the base's own
        ``forward`` does (no second pass): what ``fusion: residual`` keeps. Here the global view is
        the base's own output."""
        return global_view

    def finish(self, model, fused: torch.Tensor) -> torch.Tensor:
        return fused


class SRGNNViews(GenericViews):
    """SR-GNN (Wu et al. 2019): global = soft-attention readout, local = last click's GGNN state.

    The base's own forward up to the readout; its ``linear_transform`` is replaced by the fusion.
    """

    GLOBAL = "soft-attention readout `a` over the GGNN states (before `linear_transform`)"
    LOCAL = "GGNN state of the last click `ht`"

    def views(self, model, call: Call) -> Views:
        item_seq, item_seq_len = call.item_seq, call.item_seq_len
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

    def base_output(self, model, call, global_view, local_view):
        return model.linear_transform(torch.cat([global_view, local_view], dim=1))


class GCSANViews(GenericViews):
    """GCSAN (Xu et al. 2019): global = self-attention output at the last position (it attends over
    the whole session's GNN states), local = the last click's GNN state. The base mixes the two as
    ``weight * at + (1 - weight) * ht``; the fusion replaces that mix (``weight`` is unused)."""

    GLOBAL = "self-attention output at the last position `at`"
    LOCAL = "GNN state of the last click `ht`"

    def views(self, model, call: Call) -> Views:
        item_seq, item_seq_len = call.item_seq, call.item_seq_len
        alias_inputs, A, items = model._get_slice(item_seq)
        hidden = model.gnn(A, model.item_embedding(items))
        alias_inputs = alias_inputs.view(-1, alias_inputs.size(1), 1).expand(-1, -1, model.hidden_size)
        seq_hidden = torch.gather(hidden, dim=1, index=alias_inputs)
        ht = model.gather_indexes(seq_hidden, item_seq_len - 1)
        attention_mask = model.get_attention_mask(item_seq)
        outputs = model.self_attention(seq_hidden, attention_mask, output_all_encoded_layers=True)
        at = model.gather_indexes(outputs[-1], item_seq_len - 1)
        return at, ht

    def base_output(self, model, call, global_view, local_view):
        return model.weight * global_view + (1 - model.weight) * local_view


class NARMViews(GenericViews):
    """NARM (Li et al. 2017): global = the global encoder's final GRU state ``c_global``, local = the
    local encoder's attention readout ``c_local``, each through the base's ``ct_dropout`` as in the
    base; the fusion replaces ``B [c_local; c_global]``. Views are ``hidden_size`` wide, the fused
    vector ``embedding_size`` (what the base scores with)."""

    GLOBAL = "global encoder: final GRU state `c_global`"
    LOCAL = "local encoder: attention readout `c_local`"

    def view_size(self, model) -> int:
        return int(model.hidden_size)

    def views(self, model, call: Call) -> Views:
        item_seq, item_seq_len = call.item_seq, call.item_seq_len
        item_seq_emb = model.emb_dropout(model.item_embedding(item_seq))
        gru_out, _ = model.gru(item_seq_emb)
        c_global = ht = model.gather_indexes(gru_out, item_seq_len - 1)
        mask = item_seq.gt(0).unsqueeze(2).expand_as(gru_out)
        q1 = model.a_1(gru_out)
        q2 = model.a_2(ht).unsqueeze(1).expand_as(q1)
        alpha = model.v_t(mask * torch.sigmoid(q1 + q2))
        c_local = torch.sum(alpha.expand_as(gru_out) * gru_out, 1)
        return model.ct_dropout(c_global), model.ct_dropout(c_local)

    def base_output(self, model, call, global_view, local_view):
        # the base drops out [c_local; c_global] as one tensor; per view here (the same in eval)
        return model.b(torch.cat([local_view, global_view], dim=1))


class STAMPViews(GenericViews):
    """STAMP (Liu et al. 2018): global = ``h_s = tanh(MLP_A(m_a))``, the general interest (attention
    over the session memory plus its mean ``m_s``), local = ``h_t = tanh(MLP_B(m_t))``, the last
    click; the fusion replaces the trilinear product ``h_s * h_t``."""

    GLOBAL = "general interest `h_s = tanh(MLP_A(m_a))`, `m_a` = attention readout + mean `m_s`"
    LOCAL = "last click `h_t = tanh(MLP_B(m_t))`"

    def views(self, model, call: Call) -> Views:
        item_seq, item_seq_len = call.item_seq, call.item_seq_len
        item_seq_emb = model.item_embedding(item_seq)
        last_inputs = model.gather_indexes(item_seq_emb, item_seq_len - 1)
        ms = torch.div(torch.sum(item_seq_emb, dim=1), item_seq_len.unsqueeze(1).float())
        alpha = model.count_alpha(item_seq_emb, last_inputs, ms)
        ma = torch.matmul(alpha.unsqueeze(1), item_seq_emb).squeeze(1) + ms
        hs = model.tanh(model.mlp_a(ma))
        ht = model.tanh(model.mlp_b(last_inputs))
        return hs, ht

    def base_output(self, model, call, global_view, local_view):
        return global_view * local_view


class NextItNetViews(GenericViews):
    """NextItNet (Yuan et al. 2019): global = the base's own output (``final_layer`` of the dilated
    causal CNN's last column), local = the CNN's state at the last clicked item (it sees only the
    session up to that click)."""

    GLOBAL = "the base's own output (`final_layer` of the causal CNN's last column)"
    LOCAL = "causal CNN state at the last click"

    def views(self, model, call: Call) -> Views:
        hidden = model.residual_blocks(model.item_embedding(call.item_seq))  # [B, L, C]
        global_view = model.final_layer(hidden[:, -1, :])
        local_view = hidden.gather(1, last_index(call.item_seq).view(-1, 1, 1).expand(-1, 1, hidden.size(2)))
        return global_view, local_view.squeeze(1)


class COREViews(GenericViews):
    """CORE (Hou et al. 2022) scores by cosine in the item-embedding space: global = its own
    (normalised) session embedding, local = the last item's embedding; the fused vector is
    L2-normalised again so the base's temperature-scaled cosine loss and scores run unchanged."""

    GLOBAL = "the base's own (L2-normalised) session embedding"
    LOCAL = "embedding of the last clicked item"

    def finish(self, model, fused: torch.Tensor) -> torch.Tensor:
        return F.normalize(fused, dim=-1)


class BERT4RecViews(GenericViews):
    """BERT4Rec: global = the encoder output at the mask appended after the prefix (exactly what its
    predict/full_sort_predict score), local = the last clicked item's embedding."""

    GLOBAL = "encoder output at the [mask] appended after the prefix"
    LOCAL = "embedding of the last clicked item"

    def views(self, model, call: Call) -> Views:
        item_seq, item_seq_len = call.item_seq, call.item_seq_len
        masked = model.reconstruct_test_data(item_seq, item_seq_len)
        output = model.base_model_class.forward(model, masked)  # [B, L, H]
        return model.gather_indexes(output, item_seq_len - 1), model.item_embedding(last_item(item_seq))


# --------------------------------------------------------------------------------------------------
# per-base mixins (placed before LLM4SBRMixin in the MRO)
class BERT4RecMixin:
    """BERT4Rec trains by masked-item prediction (cloze) over random positions inside the prefix and
    predicts by appending a mask after it. The cloze positions are not the sample's next item, so
    the prefix's intent has nothing to fuse with there. Wrapped:

    * ``forward(item_seq)`` (one argument, the base's own calls in its cloze loss) is the base's
      encoder, unchanged; ``forward(item_seq, item_seq_len)`` is the fused representation at the
      appended mask.
    * ``calculate_loss`` = the base's cloze loss, unchanged, + the next-item loss of the fused
      representation (CE over all items, or BPR against one uniform negative with ``loss_type:
      BPR``), scored as BERT4Rec's predict does (item embeddings + ``output_bias``); the sum is the
      base loss, the alignment-uniformity term the second.
    * ``predict``/``full_sort_predict`` (``LLM4SBRMixin``'s, which run ``_base_predict`` and
      ``_base_full_sort_predict`` below): the base's scoring of the fused representation.
    """

    def forward(self, item_seq, item_seq_len=None):
        if item_seq_len is None:
            return self.base_model_class.forward(self, item_seq)
        return self._fused(Call((item_seq, item_seq_len), {}, item_seq, item_seq_len))

    def _base_loss(self, interaction):
        cloze = self.base_model_class.calculate_loss(self, interaction)
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = torch.randint(1, self.n_items, pos_items.shape, device=pos_items.device)
            pos = (seq_output * self.item_embedding(pos_items)).sum(-1) + self.output_bias[pos_items]
            neg = (seq_output * self.item_embedding(neg_items)).sum(-1) + self.output_bias[neg_items]
            next_item = -torch.log(1e-14 + torch.sigmoid(pos - neg)).mean()
        else:
            logits = seq_output @ self.item_embedding.weight[: self.n_items].t() + self.output_bias
            next_item = nn.functional.cross_entropy(logits, pos_items)
        return cloze + next_item

    def _base_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        test_item = interaction[self.ITEM_ID]
        return (seq_output * self.item_embedding(test_item)).sum(dim=1) + self.output_bias[test_item]

    def _base_full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight[: self.n_items].t() + self.output_bias


def session_graphs(item_seq: torch.Tensor):
    """RecBole's SR-GNN/GCSAN ``_get_slice`` for the whole batch at once (no per-sample numpy loop):
    ``(alias_inputs, A, items, mask)`` exactly as ``SRGNN._get_slice`` builds them, on ``item_seq``'s
    device (tests/test_srgnn_graph.py compares them with RecBole's on random batches).

    Per row: ``items`` = its sorted unique ids (0 included when padded) then zeros; ``alias_inputs`` =
    each position's index in ``items``; ``A = [A_in | A_out]`` ``[L, 2L]`` from the edges
    ``seq[i] -> seq[i+1]`` up to the first padding at position >= 1, ``A_in`` normalised by the
    target's in-degree (transposed), ``A_out`` by the source's out-degree (zero degrees count 1)."""
    batch, width = item_seq.shape
    mask = item_seq.gt(0)
    ordered, order = item_seq.sort(dim=1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = first.long().cumsum(dim=1) - 1  # index of each sorted entry's value among the unique ids
    items = torch.zeros_like(item_seq).scatter_(1, rank, ordered)
    alias_inputs = torch.empty_like(item_seq).scatter_(1, order, rank)
    # edge i -> i+1 while no padding has appeared in seq[1..i+1] (RecBole's loop breaks there)
    valid = (item_seq[:, 1:] == 0).long().cumsum(dim=1) == 0
    rows, steps = valid.nonzero(as_tuple=True)
    adjacency = torch.zeros(batch, width, width, dtype=torch.float64, device=item_seq.device)
    adjacency[rows, alias_inputs[rows, steps], alias_inputs[rows, steps + 1]] = 1.0
    in_degree = adjacency.sum(dim=1).clamp_min(1.0)  # [B, L]: per target node
    out_degree = adjacency.sum(dim=2).clamp_min(1.0)  # [B, L]: per source node
    a_in = adjacency.transpose(1, 2) / in_degree.unsqueeze(2)
    a_out = adjacency / out_degree.unsqueeze(2)
    return alias_inputs, torch.cat([a_in, a_out], dim=2).float(), items, mask


class SRGNNGraphMixin:
    """``LLM4SBR_SRGNN``: RecBole's ``_get_slice`` (a numpy loop per sample, about a third of SR-GNN's
    epoch on CPU) replaced by ``session_graphs``: the same graphs, built batched on the model's device."""

    def _get_slice(self, item_seq):
        return session_graphs(item_seq)


class GCSANGraphMixin:
    """``LLM4SBR_GCSAN``: as ``SRGNNGraphMixin`` (GCSAN's ``_get_slice`` is SR-GNN's without ``mask``)."""

    def _get_slice(self, item_seq):
        return session_graphs(item_seq)[:3]


class FEARecMixin:
    """FEARec's contrastive losses (``contrast: su|us|us_x``) also encode *other* training samples'
    prefixes (``sem_aug``: samples with the same target). Those get their own prefix's intent, found
    by content in the training set; the batch's own sequence gets the batch's intents."""

    def _call_keys(self, call: Call) -> torch.Tensor:
        seq = call.item_seq
        batch_seq = None if self._state is None else self._state.batch_seq
        if batch_seq is None or seq is batch_seq or (seq.shape == batch_seq.shape and torch.equal(seq, batch_seq)):
            return super()._call_keys(call)
        index = self._fearec_key_index()
        rows = seq.cpu().numpy()
        try:
            keys = [index[row.tobytes()] for row in rows]
        except KeyError:
            raise RuntimeError(
                f"{type(self).__name__}: forward got a sequence that is neither the batch's nor a "
                "training prefix, so it has no intent.") from None
        return torch.as_tensor(keys, dtype=torch.long, device=seq.device)

    def _fearec_key_index(self):
        index = getattr(self, "_fearec_index", None)
        if index is None:
            feat = self.dataset.inter_feat
            seqs = feat[self.ITEM_SEQ].cpu().numpy()
            keys = feat[self.KEY_FIELD].cpu().numpy().tolist()
            index = {row.tobytes(): key for row, key in zip(seqs, keys)}
            self._fearec_index = index
        return index
