"""``LLM4SBR_<Base>``: any supported RecBole sequential recommender with LLM4SBR's intent views.

The class is made from the base by name (``llm4sbr_class("SRGNN")``): ``LLM4SBRMixin`` sits before
the base in the MRO and overrides ``forward`` so that it returns the fused session representation
(the width the base scores with). The base's own ``calculate_loss``/``predict``/``full_sort_predict``
call ``self.forward(...)`` with their usual arguments (``(item_seq, item_seq_len)``, ``(item_seq)``,
``(user, item_seq)``, ...: read from the base's signature) and so run unchanged: CE or BPR, RecBole's
Trainer and evaluator; prediction costs the fusion's small matmuls, not a second pass. The mixin
hands the batch's prefix keys to ``forward`` around those calls and adds ``au_weight * (alignment +
uniformity)`` to the loss as a second term (the Trainer sums and logs it). Per-base view adapters
and the two per-base mixins (BERT4Rec, FEARec) live in ``views.py``.
"""
from __future__ import annotations

import inspect
import sys
from typing import Dict

import torch
from torch import nn

from recbole_llm4sbr.model.alignment import AlignUniformLoss
from recbole_llm4sbr.model.fusion import GatedFusion
from recbole_llm4sbr.model.views import Call, base_mixins, seq_len_of, view_adapter

PREFIX = "LLM4SBR_"

#: names the bases give the arguments of their ``forward``
SEQ_ARGS = ("item_seq", "seq_item")
LEN_ARGS = ("item_seq_len", "seq_item_len")
USER_ARGS = ("user",)

#: bases whose layers are sized by MAX_ITEM_LIST_LENGTH and need item_id_list exactly that wide
WIDTH_BOUND = ("Caser", "FEARec", "FOSSIL", "LightSANs", "SINE")


def forward_roles(base_class) -> Dict[str, str]:
    """Argument name -> role (``seq``/``len``/``user``) of the base's ``forward``; ValueError when
    an argument is none of these (such a base scores something other than a session)."""
    params = list(inspect.signature(base_class.forward).parameters)[1:]  # drop self
    roles = {}
    for name in params:
        if name in SEQ_ARGS:
            roles[name] = "seq"
        elif name in LEN_ARGS:
            roles[name] = "len"
        elif name in USER_ARGS:
            roles[name] = "user"
        else:
            raise ValueError(
                f"{PREFIX}{base_class.__name__}: {base_class.__name__}.forward{tuple(params)} takes "
                f"'{name}', which is not a session's items, lengths or user; it cannot be wrapped.")
    if "seq" not in roles.values():
        raise ValueError(f"{PREFIX}{base_class.__name__}: {base_class.__name__}.forward takes no item sequence.")
    return roles


class LLM4SBRMixin:
    """Stage 2 of LLM4SBR around a base recommender (METHOD.md steps 4-9)."""

    base_model_name: str = ""
    base_model_class: type = None
    forward_signature: inspect.Signature = None
    forward_roles: Dict[str, str] = {}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.KEY_FIELD = config["PREFIX_KEY_FIELD"] or "prefix_key"
        self._check_width(dataset)
        self.views = list(config["llm4sbr_views"])
        table_views = list(getattr(dataset, "intent_views", []) or [])
        missing = [v for v in self.views if v not in table_views]
        if missing:
            raise ValueError(
                f"llm4sbr_views asks for {missing}, but the dataset's intent table has views {table_views}. "
                "Fix: add them to intent_views (stage 1 reruns) or remove them from llm4sbr_views."
            )
        vectors = dataset.intent_vectors[:, [table_views.index(v) for v in self.views], :]
        # Frozen and rebuilt from the dataset: kept out of checkpoints to keep them small.
        self.register_buffer("intent_vectors", vectors.float().contiguous(), persistent=False)
        self._adapter = view_adapter(self.base_model_name)
        view_size, out_size = self._adapter.view_size(self), self._adapter.out_size(self)
        self.projection = nn.Linear(vectors.size(-1), view_size, bias=False)  # T, Eq. 7
        self.fusion = GatedFusion(view_size, self.views, config["view_behaviour"])
        if out_size != view_size:  # e.g. NARM: hidden_size views, embedding_size scores
            self.fusion.out = nn.Linear(self.fusion.out.in_features, out_size, bias=False)
        self.au_loss = AlignUniformLoss()
        self.au_weight = float(config["au_weight"])
        self._keys = None
        self._batch_seq = None
        self._au = None

    def _check_width(self, dataset):
        if self.base_model_name not in WIDTH_BOUND:
            return
        width = dataset.field2seqlen[self.ITEM_SEQ]
        if width != self.max_seq_length:
            raise ValueError(
                f"{PREFIX}{self.base_model_name}: {self.base_model_name} sizes its layers by "
                f"MAX_ITEM_LIST_LENGTH = {self.max_seq_length}, but the dataset's {self.ITEM_SEQ} is "
                f"{width} wide (its longest prefix). Fix: --MAX_ITEM_LIST_LENGTH={width}.")

    # -- the representation ------------------------------------------------------------------
    def intents(self, keys: torch.Tensor) -> Dict[str, torch.Tensor]:
        projected = self.projection(self.intent_vectors[keys])  # [B, V, view_size]
        return {view: projected[:, i] for i, view in enumerate(self.views)}

    def forward(self, *args, **kwargs):
        bound = self.forward_signature.bind(self, *args, **kwargs)
        by_role = {role: bound.arguments.get(name) for name, role in self.forward_roles.items()}
        item_seq = by_role["seq"]
        item_seq_len = by_role.get("len")
        if item_seq_len is None:
            item_seq_len = seq_len_of(item_seq)
        return self._fused(Call(args, kwargs, item_seq, item_seq_len, by_role.get("user")))

    def _call_keys(self, call: Call) -> torch.Tensor:
        """The prefix keys of the sessions in ``call`` (the batch's, row for row)."""
        if self._keys is None:
            raise RuntimeError(
                f"{type(self).__name__}.forward needs the batch's '{self.KEY_FIELD}'; call it through "
                "calculate_loss/predict/full_sort_predict with an interaction that carries that field."
            )
        if self._keys.size(0) != call.item_seq.size(0):
            raise RuntimeError(
                f"{type(self).__name__}.forward got {call.item_seq.size(0)} sequences for a batch of "
                f"{self._keys.size(0)} prefix keys.")
        return self._keys

    def _fused(self, call: Call) -> torch.Tensor:
        global_view, local_view = self._adapter.views(self, call)
        behaviour = {"global": global_view, "local": local_view}
        intents = self.intents(self._call_keys(call))
        if self.training and self.au_weight > 0 and self._au is None:  # the batch's first pass only
            self._au = sum(self.au_loss(behaviour[self.fusion.pairing[v]], intents[v]) for v in self.views)
        return self._adapter.finish(self, self.fusion(behaviour, intents))

    def _with_keys(self, interaction, method):
        if self.KEY_FIELD not in interaction:
            raise KeyError(
                f"The batch has no '{self.KEY_FIELD}' field. Fix: load data with LLM4SBRDataset "
                "(run_recbole_llm4sbr does) so every sample carries its prefix key."
            )
        self._keys, self._au = interaction[self.KEY_FIELD], None
        self._batch_seq = interaction[self.ITEM_SEQ] if self.ITEM_SEQ in interaction else None
        try:
            return method(interaction)
        finally:
            self._keys = self._batch_seq = None

    # -- RecBole's model interface -------------------------------------------------------------
    def _base_loss(self, interaction):
        return self.base_model_class.calculate_loss(self, interaction)

    def calculate_loss(self, interaction):
        loss = self._with_keys(interaction, self._base_loss)
        au, self._au = self._au, None
        if au is None:
            return loss
        return loss, self.au_weight * au

    def predict(self, interaction):
        return self._with_keys(interaction, self.base_model_class.predict.__get__(self))

    def full_sort_predict(self, interaction):
        return self._with_keys(interaction, self.base_model_class.full_sort_predict.__get__(self))


def make_class(base_class, mixins: tuple = None) -> type:
    """``LLM4SBR_<Base>``: (per-base mixins, ``LLM4SBRMixin``, base), registered in this module."""
    name = PREFIX + base_class.__name__
    mixins = base_mixins(base_class.__name__) if mixins is None else tuple(mixins)
    roles = forward_roles(base_class)
    cls = type(name, mixins + (LLM4SBRMixin, base_class), {
        "base_model_name": base_class.__name__,
        "base_model_class": base_class,
        "forward_signature": inspect.signature(base_class.forward),
        "forward_roles": roles,
        "__module__": __name__,
        "__doc__": f"LLM4SBR around RecBole's {base_class.__name__} (made by recbole_llm4sbr.model.wrapper).",
    })
    setattr(sys.modules[__name__], name, cls)  # so pickle finds it by module + name
    return cls


def __getattr__(name):  # unpickling a checkpoint's config re-creates LLM4SBR_<Base> on demand
    if name.startswith(PREFIX):
        from recbole_llm4sbr.model.registry import llm4sbr_class

        return llm4sbr_class(name[len(PREFIX):])
    raise AttributeError(name)
