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

Two serving modes (``semantic_at_inference`` in properties/model/LLM4SBR.yaml):

* ``True`` (default; LLM4SBR as in the paper): the gates read the session's intents in training and
  at prediction, so every session scored needs its stage-1 intent (an LLM answer).
* ``False`` (LLM-free serving, after EIMF, Qiao et al. arXiv 2411.09410): the forward path never
  reads intents, in training *or* at prediction (``GatedFusion`` gates on the behaviour views alone),
  so what is trained is exactly what is served and a new session needs no LLM call and no stage-1
  artefact. The semantics enter only through training losses: alignment-uniformity between the
  behaviour views and the projected intents (``au_weight``) and EIMF's semantic prediction task
  (``semantic_pred_weight``: the fused session vector predicts the target item's text embedding,
  ``model/semantic.py``). ``predict``/``full_sort_predict`` then need no prefix key.

``calculate_loss`` returns ``(base, au_weight * L_au[, semantic_pred_weight * L_sp])``; a term whose
weight is 0 is left out (so LLM4SBR's defaults give the same two terms as before).
"""
from __future__ import annotations

import inspect
import sys
from typing import Dict, Optional

import torch
from torch import nn

from recbole_llm4sbr.model.alignment import AlignUniformLoss
from recbole_llm4sbr.model.fusion import GatedFusion
from recbole_llm4sbr.model.semantic import semantic_prediction_loss
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
        self.semantic_at_inference = as_flag(config["semantic_at_inference"], default=True)
        self.au_weight = float(config["au_weight"] or 0.0)
        self.semantic_pred_weight = float(config["semantic_pred_weight"] or 0.0)
        vectors = getattr(dataset, "intent_vectors", None)
        if vectors is not None or self.semantic_at_inference:
            table_views = list(getattr(dataset, "intent_views", []) or [])
            missing = [v for v in self.views if v not in table_views]
            if missing:
                raise ValueError(
                    f"llm4sbr_views asks for {missing}, but the dataset's intent table has views {table_views}. "
                    "Fix: add them to intent_views (stage 1 reruns) or remove them from llm4sbr_views."
                )
            vectors = vectors[:, [table_views.index(v) for v in self.views], :].float().contiguous()
            d_text: Optional[int] = int(vectors.size(-1))
        else:  # LLM-free serving: no stage-1 artefact; the width comes from the checkpoint
            d_text = int(config["intent_d_text"]) if config["intent_d_text"] else None
        # Frozen and rebuilt from the dataset: kept out of checkpoints to keep them small.
        self.register_buffer("intent_vectors", vectors, persistent=False)
        self._adapter = view_adapter(self.base_model_name)
        view_size, out_size = self._adapter.view_size(self), self._adapter.out_size(self)
        # T, Eq. 7 (absent only for an LLM-free model that never saw intents)
        self.projection = nn.Linear(d_text, view_size, bias=False) if d_text else None
        self.fusion = GatedFusion(view_size, self.views, config["view_behaviour"])
        if out_size != view_size:  # e.g. NARM: hidden_size views, embedding_size scores
            self.fusion.out = nn.Linear(self.fusion.out.in_features, out_size, bias=False)
        self.au_loss = AlignUniformLoss()
        self._init_semantic_prediction(dataset, out_size, d_text)
        self._keys = None
        self._batch_seq = None
        self._au = None
        self._sem = None
        self._vectors = None  # [B, V, d_text] given directly (serving an unseen prefix)

    def _init_semantic_prediction(self, dataset, out_size: int, d_text: Optional[int]):
        """EIMF's semantic prediction head ``P`` (``d -> d_text``) and the catalogue's text embeddings
        (a non-persistent buffer: needed in training only, rebuilt from the intent table)."""
        item_text = getattr(dataset, "item_text_vectors", None)
        self.semantic_head = None
        if self.semantic_pred_weight <= 0:
            self.register_buffer("item_text_vectors", None, persistent=False)
            return
        if item_text is None and getattr(dataset, "intent_vectors", None) is not None:
            raise ValueError(
                f"semantic_pred_weight = {self.semantic_pred_weight} needs the catalogue's text embeddings "
                "(items.npy in the intent table), but the dataset's intent table has none. Fix: rebuild the "
                f"table (python -m recbole_llm4sbr.intent --dataset={dataset.dataset_name} --force) or set "
                "semantic_pred_weight: 0.")
        if item_text is not None:
            d_text = int(item_text.size(1))
        if not d_text:
            raise ValueError("semantic_pred_weight > 0 but the width of the text embeddings is unknown "
                             "(no intent table loaded and no intent_d_text).")
        self.register_buffer("item_text_vectors", None if item_text is None else item_text.float().contiguous(),
                             persistent=False)
        self.semantic_head = nn.Linear(out_size, d_text, bias=False)

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
        return self.project_intents(self.intent_vectors[keys])

    def project_intents(self, vectors: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``T h`` per view for intent vectors ``[B, V, d_text]`` (V in ``self.views`` order)."""
        projected = self.projection(vectors)  # [B, V, view_size]
        return {view: projected[:, i] for i, view in enumerate(self.views)}

    def _call_intents(self, call: Call) -> Dict[str, torch.Tensor]:
        if self._vectors is not None:
            return self.project_intents(self._vectors.to(call.item_seq.device))
        if self.intent_vectors is None:
            raise RuntimeError(
                f"{type(self).__name__} has no intent vectors (an LLM-free model loaded without its intent "
                "table): alignment-uniformity needs them in training. Fix: train with load_intent: True.")
        return self.intents(self._call_keys(call))

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
        """The fused session vector. With ``semantic_at_inference: False`` the fusion never sees the
        intents (train and serve alike); they are read only for the alignment-uniformity loss, on the
        batch's first pass in training."""
        global_view, local_view = self._adapter.views(self, call)
        behaviour = {"global": global_view, "local": local_view}
        intents = self._call_intents(call) if self.semantic_at_inference else None
        first_pass = self.training and self._au is None and self._sem is None
        if first_pass and self.au_weight > 0:
            aligned = intents if intents is not None else self._call_intents(call)
            self._au = sum(self.au_loss(behaviour[self.fusion.pairing[v]], aligned[v]) for v in self.views)
        fused = self._adapter.finish(self, self.fusion(behaviour, intents))
        if first_pass and self.semantic_head is not None:
            self._sem = fused
        return fused

    def _with_keys(self, interaction, method):
        if self.KEY_FIELD not in interaction and self._vectors is None:
            raise KeyError(
                f"The batch has no '{self.KEY_FIELD}' field. Fix: load data with LLM4SBRDataset "
                "(run_recbole_llm4sbr does) so every sample carries its prefix key."
            )
        self._keys = interaction[self.KEY_FIELD] if self.KEY_FIELD in interaction else None
        self._batch_seq = interaction[self.ITEM_SEQ] if self.ITEM_SEQ in interaction else None
        try:
            return method(interaction)
        finally:
            self._keys = self._batch_seq = None

    # -- RecBole's model interface -------------------------------------------------------------
    def _base_loss(self, interaction):
        return self.base_model_class.calculate_loss(self, interaction)

    def _reads_intents_in_training(self) -> bool:
        return self.semantic_at_inference or self.au_weight > 0

    def semantic_prediction_loss(self, session: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """EIMF's semantic prediction loss of session vectors ``[B, d]`` for target item ids ``[B]``."""
        if self.item_text_vectors is None:
            raise RuntimeError(
                f"{type(self).__name__}: semantic_pred_weight > 0 needs the catalogue's text embeddings "
                "in training (the intent table's items.npy). Fix: train with load_intent: True.")
        return semantic_prediction_loss(self.semantic_head(session), self.item_text_vectors, targets)

    def calculate_loss(self, interaction):
        self._au = self._sem = None
        if self._reads_intents_in_training():
            loss = self._with_keys(interaction, self._base_loss)
        else:
            loss = self._base_loss(interaction)
        au, sem = self._au, self._sem
        self._au = self._sem = None
        terms = [loss]
        if au is not None:
            terms.append(self.au_weight * au)
        if sem is not None:
            terms.append(self.semantic_pred_weight
                         * self.semantic_prediction_loss(sem, interaction[self.POS_ITEM_ID]))
        return terms[0] if len(terms) == 1 else tuple(terms)

    def _scoring(self, interaction, method):
        """Run a scoring ``method``: with the batch's prefix keys, or (LLM-free) on behaviour alone."""
        if not self.semantic_at_inference:
            self._keys = self._batch_seq = None
            return method(interaction)
        return self._with_keys(interaction, method)

    def predict(self, interaction):
        return self._scoring(interaction, self.base_model_class.predict.__get__(self))

    def full_sort_predict(self, interaction):
        return self._scoring(interaction, self.base_model_class.full_sort_predict.__get__(self))

    def full_sort_predict_with_intents(self, interaction, vectors: torch.Tensor):
        """``full_sort_predict`` with the sessions' intent vectors ``[B, V, d_text]`` given directly
        (V in ``self.views`` order): serving a prefix that is not in the intent table."""
        if not self.semantic_at_inference:
            return self.full_sort_predict(interaction)
        self._vectors = vectors
        try:
            return self.full_sort_predict(interaction)
        finally:
            self._vectors = None


def as_flag(value, default: bool) -> bool:
    """A yaml/CLI boolean (``True``/``False``/``"false"``/``0``); ``None`` -> ``default``."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


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
