"""``LLM4SBR_<Base>``: any RecBole sequential recommender with LLM4SBR's intent views.

The class is made from the base by name (``llm4sbr_class("SRGNN")``): ``LLM4SBRMixin`` sits before
the base in the MRO and overrides ``forward`` so that it returns the fused session representation
(same hidden size as the base's). The base's own ``calculate_loss``/``predict``/``full_sort_predict``
call ``self.forward(item_seq, item_seq_len)`` and so run unchanged: CE or BPR, RecBole's Trainer and
evaluator. The mixin hands the batch's prefix keys to ``forward`` around those calls and adds
``au_weight * (alignment + uniformity)`` to the loss as a second term (the Trainer sums and logs it).
"""
from __future__ import annotations

import sys
from typing import Dict

import torch
from torch import nn

from recbole_llm4sbr.model.alignment import AlignUniformLoss
from recbole_llm4sbr.model.fusion import GatedFusion
from recbole_llm4sbr.model.views import view_adapter

PREFIX = "LLM4SBR_"


def hidden_size_of(model, config) -> int:
    for attr in ("hidden_size", "embedding_size"):
        value = getattr(model, attr, None)
        if isinstance(value, int):
            return value
    for key in ("hidden_size", "embedding_size"):
        if config[key] is not None:
            return int(config[key])
    raise ValueError(f"{type(model).__name__}: cannot tell its hidden size (no hidden_size/embedding_size)")


class LLM4SBRMixin:
    """Stage 2 of LLM4SBR around a base recommender (METHOD.md steps 4-9)."""

    base_model_name: str = ""
    base_model_class: type = None

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.KEY_FIELD = config["PREFIX_KEY_FIELD"] or "prefix_key"
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
        hidden = hidden_size_of(self, config)
        self.projection = nn.Linear(vectors.size(-1), hidden, bias=False)  # T, Eq. 7
        self.fusion = GatedFusion(hidden, self.views, config["view_behaviour"])
        self.au_loss = AlignUniformLoss()
        self.au_weight = float(config["au_weight"])
        self._view_fn = view_adapter(self.base_model_name)
        self._keys = None
        self._au = None

    # -- the representation ------------------------------------------------------------------
    def intents(self, keys: torch.Tensor) -> Dict[str, torch.Tensor]:
        projected = self.projection(self.intent_vectors[keys])  # [B, V, hidden]
        return {view: projected[:, i] for i, view in enumerate(self.views)}

    def forward(self, item_seq, item_seq_len, *args, **kwargs):
        if self._keys is None:
            raise RuntimeError(
                f"{type(self).__name__}.forward needs the batch's '{self.KEY_FIELD}'; call it through "
                "calculate_loss/predict/full_sort_predict with an interaction that carries that field."
            )
        global_view, local_view = self._view_fn(self, item_seq, item_seq_len)
        behaviour = {"global": global_view, "local": local_view}
        intents = self.intents(self._keys)
        if self.training and self.au_weight > 0:
            self._au = sum(self.au_loss(behaviour[self.fusion.pairing[v]], intents[v]) for v in self.views)
        return self.fusion(behaviour, intents)

    def _with_keys(self, interaction, method):
        if self.KEY_FIELD not in interaction:
            raise KeyError(
                f"The batch has no '{self.KEY_FIELD}' field. Fix: load data with LLM4SBRDataset "
                "(run_recbole_llm4sbr does) so every sample carries its prefix key."
            )
        self._keys, self._au = interaction[self.KEY_FIELD], None
        try:
            return method(interaction)
        finally:
            self._keys = None

    # -- RecBole's model interface -------------------------------------------------------------
    def calculate_loss(self, interaction):
        loss = self._with_keys(interaction, super().calculate_loss)
        au, self._au = self._au, None
        if au is None:
            return loss
        return loss, self.au_weight * au

    def predict(self, interaction):
        return self._with_keys(interaction, super().predict)

    def full_sort_predict(self, interaction):
        return self._with_keys(interaction, super().full_sort_predict)


def make_class(base_class) -> type:
    name = PREFIX + base_class.__name__
    cls = type(name, (LLM4SBRMixin, base_class), {
        "base_model_name": base_class.__name__,
        "base_model_class": base_class,
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
