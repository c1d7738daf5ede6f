"""``LLM4SBR_<Base>``: any supported RecBole sequential recommender with LLM4SBR's intent views.

The class is made from the base by name (``llm4sbr_class("SRGNN")``, from the base's spec in
``bases.py``): ``LLM4SBRMixin`` sits before the base in the MRO and overrides ``forward`` so that
it returns the fused session representation (the width the base scores with). The base's own ``calculate_loss``/``predict``/``full_sort_predict``
call ``self.forward(...)`` with their usual arguments (``(item_seq, item_seq_len)``, ``(item_seq)``,
``(user, item_seq)``, ...: read from the base's signature) and so run unchanged: CE or BPR, RecBole's
Trainer and evaluator; prediction costs the fusion's small matmuls, not a second pass. The mixin
hands the batch's prefix keys to ``forward`` around those calls (``call_state``: set on the way in,
cleared on the way out, whatever happens; held per thread, so concurrent calls on one model never
read each other's keys) and adds ``au_weight * (alignment + uniformity)`` to the
loss as a second term (the Trainer sums and logs it). Per-base view adapters and the two per-base
mixins (BERT4Rec, FEARec) live in ``views.py``; the attribution controls (``intent_control``,
``intent_dropout``) in ``controls.py``.

Two serving modes (``semantic_at_inference`` in properties/model/LLM4SBR.yaml):

* ``True`` (default; LLM4SBR as in the paper): the gates read the session's intents in training and
  at prediction, so every session scored needs its stage-1 intent (an LLM answer).
* ``False`` (LLM-free serving, after EIMF, Qiao et al. arXiv 2411.09410): the forward path never
  reads intents, in training *or* at prediction (``GatedFusion`` gates on the behaviour views alone),
  so what is trained is exactly what is served and a new session needs no LLM call and no stage-1
  artefact. The semantics enter only through training losses: alignment-uniformity between the
  behaviour views and the projected intents (``au_weight``), the behaviour-side text target
  (``text_target_weight``: the fused session vector predicts the target item's text embedding) and
  EIMF's LLM-side losses (``eimf_weight``: the intents' target-queried readout predicts the target over
  the catalogue's text embeddings, and is aligned with the behaviour side; ``model/semantic.py``).
  ``predict``/``full_sort_predict`` then need no prefix key.

``calculate_loss`` returns ``(base, au_weight * L_au[, text_target_weight * L_tt][, eimf_weight *
L_eimf])``; a term whose weight is 0 is left out (so LLM4SBR's defaults give the same two terms as
before). The last two are training-only in both modes: their heads are never used to score.
"""
from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.model.alignment import align_uniform_views
from recbole_llm4sbr.model.bases import BaseSpec, base_of, resolve, wrapped_name
from recbole_llm4sbr.model.controls import IntentControl, controlled_buffer, drop_intents
from recbole_llm4sbr.model.fusion import FUSIONS, GatedFusion, IntentResidual
from recbole_llm4sbr.model.mapped_intents import MappedIntents
from recbole_llm4sbr.model.semantic import EIMFSemantic, EIMFTerms, text_target_loss
from recbole_llm4sbr.model.views import Call, seq_len_of
from recbole_llm4sbr.validation import intent_strength, intents_off

#: names the bases give the arguments of their ``forward``
SEQ_ARGS = ("item_seq", "seq_item")
LEN_ARGS = ("item_seq_len", "seq_item_len")
USER_ARGS = ("user",)


def forward_roles(base_class) -> Dict[str, str]:
    """Argument name -> role (``seq``/``len``/``user``) of the base's ``forward``; ValueError when
    an argument is none of these (such a base scores something other than a session)."""
    params = list(inspect.signature(base_class.forward).parameters)[1:]  # drop self
    name_of = wrapped_name(base_class.__name__)
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
                f"{name_of}: {base_class.__name__}.forward{tuple(params)} takes "
                f"'{name}', which is not a session's items, lengths or user; it cannot be wrapped.")
    if "seq" not in roles.values():
        raise ValueError(f"{name_of}: {base_class.__name__}.forward takes no item sequence.")
    return roles


@dataclass
class CallState:
    """What one ``calculate_loss``/``predict``/``full_sort_predict`` call hands to the base's
    ``forward`` passes it makes (the base calls ``self.forward`` with its own arguments only)."""

    keys: Optional[torch.Tensor] = None  # the batch's prefix keys [B]
    batch_seq: Optional[torch.Tensor] = None  # the batch's item_id_list (FEARec tells it from others)
    vectors: Optional[torch.Tensor] = None  # intent vectors given directly [B, V, d_text]
    losses: bool = False  # calculate_loss: the first pass also yields the auxiliary terms
    passes: int = 0
    au: Optional[torch.Tensor] = None  # alignment-uniformity of the first pass
    sem: Optional[torch.Tensor] = None  # the first pass's fused vector (text target, EIMF alignment)


#: the ``CallState`` of every model inside a ``call_state`` block, by ``id(model)``, in the current
#: context: each thread (and asyncio task) has its own, so threads sharing one model (a serving
#: process) never see each other's keys or vectors, and the model itself holds no per-call state
#: (it pickles, deep-copies and saves as before). The dict is replaced, never mutated in place.
_CALL_STATES: ContextVar[Optional[Dict[int, CallState]]] = ContextVar("llm4sbr_call_states", default=None)


class LLM4SBRMixin:
    """Stage 2 of LLM4SBR around a base recommender (docs/METHOD.md steps 4-9)."""

    base_model_name: str = ""
    base_model_class: type = None
    base_spec: BaseSpec = None
    forward_signature: inspect.Signature = None
    forward_roles: Dict[str, str] = {}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.KEY_FIELD = config["PREFIX_KEY_FIELD"] or "prefix_key"
        #: ``intent_strength: off``: the base alone. Nothing below is built (no parameter drawn from
        #: the RNG after the base's own), and forward/loss/scoring are the base's: the model trains and
        #: scores bit for bit as the stock base with the same seed (tests/test_intents_off.py).
        self.intents_off = intents_off(config)
        if self.intents_off:
            self._init_off(config)
            return
        self._check_width(dataset)
        self.views = list(config["llm4sbr_views"])
        self.semantic_at_inference = as_flag(config["semantic_at_inference"], default=True)
        self.au_weight = float(config["au_weight"] or 0.0)
        self.text_target_weight = float(config["text_target_weight"] or 0.0)
        self.eimf_weight = float(config["eimf_weight"] or 0.0)
        self.intent_control = IntentControl.from_config(config)
        vectors, constant = getattr(dataset, "intent_vectors", None), None
        # a mapped table (intent_mmap): rows gathered per batch; a plain attribute, not a buffer
        self._mapped_intents: Optional[MappedIntents] = None
        mapped = getattr(dataset, "intent_rows", None) is not None
        if vectors is not None or mapped or self.semantic_at_inference:
            table_views = list(getattr(dataset, "intent_views", []) or [])
            missing = [v for v in self.views if v not in table_views]
            if missing:
                raise ConfigError(
                    f"llm4sbr_views asks for {missing}, but the dataset's intent table has views {table_views}. "
                    "Fix: add them to intent_views (stage 1 reruns) or remove them from llm4sbr_views."
                )
            view_index = [table_views.index(v) for v in self.views]
            if mapped:
                self._mapped_intents = MappedIntents(dataset.intent_source, dataset.intent_rows, view_index,
                                                     self.intent_control)
                vectors, constant = None, self._mapped_intents.constant
                d_text: Optional[int] = self._mapped_intents.d_text
            else:
                if view_index != list(range(vectors.size(1))):  # else share the dataset's storage:
                    vectors = vectors[:, view_index, :]          # the table is not held twice in RAM
                # kept in the dataset's dtype (float16 by default: intent_buffer_dtype); gathered rows
                # are cast to float32 per batch (_gather_intents)
                vectors = vectors.contiguous()
                vectors, constant = controlled_buffer(vectors, self.intent_control)
                d_text = int(vectors.size(-1))
        else:  # LLM-free serving: no stage-1 artefact; the width comes from the checkpoint
            d_text = int(config["intent_d_text"]) if config["intent_d_text"] else None
        # Frozen and rebuilt from the dataset: kept out of checkpoints to keep them small.
        self.register_buffer("intent_vectors", vectors, persistent=False)
        self.register_buffer("intent_constant", constant, persistent=False)  # [V, d_text]
        self._adapter = self.base_spec.adapter
        view_size, out_size = self._adapter.view_size(self), self._adapter.out_size(self)
        # T, Eq. 7 (absent only for an LLM-free model that never saw intents)
        self.projection = nn.Linear(d_text, view_size, bias=False) if d_text else None
        self.fusion = GatedFusion(view_size, self.views, config["view_behaviour"])
        if out_size != view_size:  # e.g. NARM: hidden_size views, embedding_size scores
            self.fusion.out = nn.Linear(self.fusion.out.in_features, out_size, bias=False)
        self.fusion_mode = str(config["fusion"] or "residual").strip().lower()
        if self.fusion_mode not in FUSIONS:
            raise ConfigError(f"fusion = {config['fusion']!r}: expected one of {FUSIONS}. Fix: --fusion=residual")
        self.intent_strength = intent_strength(config["intent_strength"])
        self.residual = None
        if self.fusion_mode == "residual":  # R reads H_sess and, when the forward path has them, the intents
            n_intents = len(self.views) if self.semantic_at_inference else 0
            self.residual = IntentResidual(out_size + n_intents * view_size, out_size)
        self._init_semantic_prediction(dataset, out_size, d_text)
        self._state: Optional[CallState] = None

    def _init_off(self, config):
        """The attributes the wrapper's readers look at, for a model that is its base (no intents)."""
        self.views, self.semantic_at_inference, self.intent_strength = list(config["llm4sbr_views"] or []), False, "off"
        self.au_weight = self.text_target_weight = self.eimf_weight = 0.0
        self.intent_control, self._mapped_intents, self.fusion_mode = None, None, "off"
        self.projection = self.fusion = self.residual = self.text_target_head = self.eimf = None
        for name in ("intent_vectors", "intent_constant", "item_text_vectors"):
            self.register_buffer(name, None, persistent=False)

    def _init_semantic_prediction(self, dataset, out_size: int, d_text: Optional[int]):
        """The training-only text-side heads (``model/semantic.py``): the text target's ``P`` (``d ->
        d_text``; ``text_target_weight``), EIMF's readout and maps (``eimf_weight``), and the
        catalogue's text embeddings they predict over (a non-persistent buffer, rebuilt from the
        intent table)."""
        item_text = getattr(dataset, "item_text_vectors", None)
        self.text_target_head, self.eimf = None, None
        weights = {k: w for k, w in (("text_target_weight", self.text_target_weight),
                                     ("eimf_weight", self.eimf_weight)) if w > 0}
        if not weights:
            self.register_buffer("item_text_vectors", None, persistent=False)
            return
        named = " and ".join(f"{k} = {w}" for k, w in weights.items())
        if item_text is None and (getattr(dataset, "intent_vectors", None) is not None
                                  or getattr(dataset, "intent_rows", None) is not None):
            raise ConfigError(
                f"{named} needs the catalogue's text embeddings (items.npy in the intent table), but the "
                "dataset's intent table has none. Fix: rebuild the table (python -m recbole_llm4sbr.intent "
                f"--dataset={dataset.dataset_name} --force) or set {' and '.join(f'{k}: 0' for k in weights)}.")
        if item_text is not None:
            d_text = int(item_text.size(1))
        if not d_text:
            raise ConfigError(f"{named}: the width of the text embeddings is unknown (no intent table "
                              "loaded and no intent_d_text). Fix: load_intent: True, or set intent_d_text.")
        self.register_buffer("item_text_vectors", None if item_text is None else item_text.float().contiguous(),
                             persistent=False)
        if self.text_target_weight > 0:
            self.text_target_head = nn.Linear(out_size, d_text, bias=False)
        if self.eimf_weight > 0:
            self.eimf = EIMFSemantic(d_text, out_size, int(self.item_embedding.embedding_dim))

    def _check_width(self, dataset):
        if not self.base_spec.width_bound:
            return
        width = dataset.field2seqlen[self.ITEM_SEQ]
        if width != self.max_seq_length:
            raise ConfigError(
                f"{type(self).__name__}: {self.base_model_name} sizes its layers by "
                f"MAX_ITEM_LIST_LENGTH = {self.max_seq_length}, but the dataset's {self.ITEM_SEQ} is "
                f"{width} wide (its longest prefix). Fix: --MAX_ITEM_LIST_LENGTH={width}.")

    # -- per-call state -----------------------------------------------------------------------
    @property
    def _state(self) -> Optional[CallState]:
        """The state of this model's innermost ``call_state`` block in the current thread (None outside)."""
        return (_CALL_STATES.get() or {}).get(id(self))

    @_state.setter
    def _state(self, state: Optional[CallState]) -> None:
        states = {k: v for k, v in (_CALL_STATES.get() or {}).items() if k != id(self)}
        if state is not None:
            states[id(self)] = state
        _CALL_STATES.set(states)

    @contextmanager
    def call_state(self, interaction=None, vectors: Optional[torch.Tensor] = None,
                   losses: bool = False) -> Iterator[CallState]:
        """The state the ``forward`` passes inside the block read: the batch's prefix keys and
        sequences (from ``interaction``, when given), intent vectors given directly, and the first
        pass's auxiliary terms (``losses``). Cleared on the way out, exception or not, so no later
        call can read an earlier batch's keys; an enclosing state is restored. Per thread: another
        thread's block on the same model is invisible here."""
        state = CallState(vectors=vectors, losses=losses)
        if interaction is not None:
            state.keys = interaction[self.KEY_FIELD] if self.KEY_FIELD in interaction else None
            state.batch_seq = interaction[self.ITEM_SEQ] if self.ITEM_SEQ in interaction else None
        outer, self._state = self._state, state
        try:
            yield state
        finally:
            self._state = outer

    def _require_keys(self, interaction):
        if self.KEY_FIELD not in interaction:
            raise KeyError(
                f"The batch has no '{self.KEY_FIELD}' field. Fix: load data with LLM4SBRDataset "
                "(run_recbole_llm4sbr does) so every sample carries its prefix key."
            )

    # -- the representation ------------------------------------------------------------------
    def intents(self, keys: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The projected intents of prefix keys ``[B]`` (as ``intent_control`` made the buffer)."""
        return self.project_intents(self._gather_intents(keys))

    def _gather_intents(self, keys: torch.Tensor) -> torch.Tensor:
        """``[B, V, d_text]`` of prefix keys: from the mapped table, or the in-memory buffer."""
        if self._mapped_intents is not None:
            return self._mapped_intents.gather(keys)
        return self.intent_vectors[keys].float()

    def project_intents(self, vectors: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``T h`` per view for intent vectors ``[B, V, d_text]`` (V in ``self.views`` order)."""
        projected = self.projection(vectors)  # [B, V, view_size]
        return {view: projected[:, i] for i, view in enumerate(self.views)}

    def _call_intents(self, call: Call) -> Dict[str, torch.Tensor]:
        given = None if self._state is None else self._state.vectors
        if given is not None:
            vectors = given.to(call.item_seq.device).float()
            if self.intent_control.mode == "constant":
                vectors = self.intent_constant.expand(vectors.size(0), -1, -1).to(vectors)
        elif self.intent_vectors is None and self._mapped_intents is None:
            raise ConfigError(
                f"{type(self).__name__} has no intent vectors (an LLM-free model loaded without its intent "
                "table): alignment-uniformity needs them in training. Fix: train with load_intent: True.")
        else:
            vectors = self._gather_intents(self._call_keys(call))
        if self.training:
            vectors = drop_intents(vectors, self.intent_constant, self.intent_control.dropout)
        return self.project_intents(vectors)

    def forward(self, *args, **kwargs):
        if self.intents_off:
            return self.base_model_class.forward(self, *args, **kwargs)
        bound = self.forward_signature.bind(self, *args, **kwargs)
        by_role = {role: bound.arguments.get(name) for name, role in self.forward_roles.items()}
        item_seq = by_role["seq"]
        item_seq_len = by_role.get("len")
        if item_seq_len is None:
            item_seq_len = seq_len_of(item_seq)
        return self._fused(Call(args, kwargs, item_seq, item_seq_len, by_role.get("user")))

    def _call_keys(self, call: Call) -> torch.Tensor:
        """The prefix keys of the sessions in ``call`` (the batch's, row for row)."""
        keys = None if self._state is None else self._state.keys
        if keys is None:
            raise RuntimeError(
                f"{type(self).__name__}.forward needs the batch's '{self.KEY_FIELD}'; call it through "
                "calculate_loss/predict/full_sort_predict, or inside `with model.call_state(interaction)`, "
                "with an interaction that carries that field."
            )
        if keys.size(0) != call.item_seq.size(0):
            raise RuntimeError(
                f"{type(self).__name__}.forward got {call.item_seq.size(0)} sequences for a batch of "
                f"{keys.size(0)} prefix keys.")
        return keys

    def _fused(self, call: Call) -> torch.Tensor:
        """The fused session vector. With ``semantic_at_inference: False`` the fusion never sees the
        intents (train and serve alike); they are read only for the alignment-uniformity loss, on the
        batch's first pass in ``calculate_loss``."""
        global_view, local_view = self._adapter.views(self, call)
        behaviour = {"global": global_view, "local": local_view}
        intents = self._call_intents(call) if self.semantic_at_inference else None
        state = self._state
        first_loss_pass = state is not None and state.losses and state.passes == 0
        if state is not None:
            state.passes += 1
        if first_loss_pass and self.au_weight > 0:
            aligned = intents if intents is not None else self._call_intents(call)
            # sum over views of AlignUniformLoss, all views in one fused op (model/alignment.py)
            state.au = align_uniform_views(torch.stack([behaviour[self.fusion.pairing[v]] for v in self.views]),
                                           torch.stack([aligned[v] for v in self.views]))
        fused = self._adapter.finish(self, self._combine(call, behaviour, intents))
        if first_loss_pass and (self.text_target_head is not None or self.eimf is not None):
            state.sem = fused
        return fused

    def _combine(self, call: Call, behaviour: Dict[str, torch.Tensor],
                 intents: Optional[Dict[str, torch.Tensor]]) -> torch.Tensor:
        """The vector the base scores with (before ``finish``). ``fusion: paper``: the gated fusion
        ``H_sess`` replaces the base's output. ``fusion: residual``: the base's own output plus
        ``intent_strength * R[H_sess; T h_v ...]`` (``R`` starts at zero; strength 0 = the base's
        output alone, the intents then act only through the training losses)."""
        if self.residual is None:
            return self.fusion(behaviour, intents)
        base = self._adapter.base_output(self, call, behaviour["global"], behaviour["local"])
        if self.intent_strength == 0:
            return base
        fused = self.fusion(behaviour, intents)
        direct = None if intents is None else [intents[v] for v in self.views]
        return base + self.intent_strength * self.residual(fused, direct)

    # -- RecBole's model interface -------------------------------------------------------------
    def _base_loss(self, interaction):
        return self.base_model_class.calculate_loss(self, interaction)

    def _base_predict(self, interaction):
        return self.base_model_class.predict(self, interaction)

    def _base_full_sort_predict(self, interaction):
        return self.base_model_class.full_sort_predict(self, interaction)

    def _reads_intents_in_training(self) -> bool:
        return self.semantic_at_inference or self.au_weight > 0 or self.eimf_weight > 0

    def _require_item_text(self, key: str):
        if self.item_text_vectors is None:
            raise ConfigError(
                f"{type(self).__name__}: {key} > 0 needs the catalogue's text embeddings in training (the "
                "intent table's items.npy). Fix: train with load_intent: True.")

    def text_target_loss(self, session: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The behaviour-side text target of session vectors ``[B, d]`` for target item ids ``[B]``."""
        self._require_item_text("text_target_weight")
        return text_target_loss(self.text_target_head(session), self.item_text_vectors, targets)

    def eimf_terms(self, session: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor) -> EIMFTerms:
        """EIMF's semantic prediction + modality alignment for fused session vectors ``[B, d]``, the
        batch's prefix keys and target item ids. The interests are the V view vectors of each prefix's
        intent row, as the model's buffer holds them (grounded by default, the answers' own embeddings
        with intent_localization: False; intent_control applied, and intent_dropout in training)."""
        self._require_item_text("eimf_weight")
        if self.intent_vectors is None and self._mapped_intents is None:
            raise ConfigError(
                f"{type(self).__name__}: eimf_weight > 0 reads the intents in training, and this model has "
                "none (loaded LLM-free). Fix: train with load_intent: True.")
        interests = self._gather_intents(keys).float()
        if self.training:
            interests = drop_intents(interests, self.intent_constant, self.intent_control.dropout)
        return self.eimf(interests, self.item_text_vectors, targets, session, self.item_embedding(targets))

    def calculate_loss(self, interaction):
        if self.intents_off:
            return self.base_model_class.calculate_loss(self, interaction)
        reads = self._reads_intents_in_training()
        if reads:
            self._require_keys(interaction)
        with self.call_state(interaction if reads else None, losses=True) as state:
            loss = self._base_loss(interaction)
        terms = [loss]
        if state.au is not None:
            terms.append(self.au_weight * state.au)
        if state.sem is not None and self.text_target_head is not None:
            terms.append(self.text_target_weight * self.text_target_loss(state.sem, interaction[self.POS_ITEM_ID]))
        if state.sem is not None and self.eimf is not None:
            terms.append(self.eimf_weight * self.eimf_terms(state.sem, interaction[self.KEY_FIELD],
                                                            interaction[self.POS_ITEM_ID]).total)
        return terms[0] if len(terms) == 1 else tuple(terms)

    def _scoring(self, interaction, method, vectors: Optional[torch.Tensor] = None):
        """Run a scoring ``method``: with the batch's prefix keys (or intent vectors given directly),
        or, LLM-free, on behaviour alone (no keys needed)."""
        if not self.semantic_at_inference:
            with self.call_state():
                return method(interaction)
        if vectors is None:
            self._require_keys(interaction)
        with self.call_state(interaction, vectors=vectors):
            return method(interaction)

    def predict(self, interaction):
        if self.intents_off:
            return self.base_model_class.predict(self, interaction)
        return self._scoring(interaction, self._base_predict)

    def full_sort_predict(self, interaction):
        if self.intents_off:
            return self.base_model_class.full_sort_predict(self, interaction)
        return self._scoring(interaction, self._base_full_sort_predict)

    def full_sort_predict_with_intents(self, interaction, vectors: torch.Tensor):
        """``full_sort_predict`` with the sessions' intent vectors ``[B, V, d_text]`` given directly
        (V in ``self.views`` order): serving a prefix that is not in the intent table. With
        ``intent_control: constant`` they are replaced by the constant vector, as in training; with the
        intents off they are not read."""
        if self.intents_off:
            return self.base_model_class.full_sort_predict(self, interaction)
        return self._scoring(interaction, self._base_full_sort_predict, vectors=vectors)


def as_flag(value, default: bool) -> bool:
    """A yaml/CLI boolean (``True``/``False``/``"false"``/``0``); ``None`` -> ``default``."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


_CLASSES: Dict[str, type] = {}


def make_class(base_class, spec: Optional[BaseSpec] = None) -> type:
    """``LLM4SBR_<Base>``: (the spec's mixins, ``LLM4SBRMixin``, base), registered in this module.

    ``spec`` defaults to the base's entry in ``bases.BASES``; the class is set on this module so that
    pickle finds it by ``recbole_llm4sbr.model.wrapper.LLM4SBR_<Base>`` (checkpoints' configs)."""
    if spec is None:
        spec, _ = resolve(base_class.__name__)
    name = wrapped_name(base_class.__name__)
    roles = forward_roles(base_class)
    cls = type(name, tuple(spec.mixins) + (LLM4SBRMixin, base_class), {
        "base_model_name": base_class.__name__,
        "base_model_class": base_class,
        "base_spec": spec,
        "forward_signature": inspect.signature(base_class.forward),
        "forward_roles": roles,
        "__module__": __name__,
        "__doc__": f"LLM4SBR around RecBole's {base_class.__name__} (made by recbole_llm4sbr.model.wrapper).",
    })
    setattr(sys.modules[__name__], name, cls)
    return cls


def llm4sbr_class(base_name: str) -> type:
    """``LLM4SBR_<base_name>``, made once from the base's spec and cached; ValueError with the
    reason for a base that cannot be wrapped (before any data is read)."""
    if base_name not in _CLASSES:
        spec, base = resolve(base_name)
        _CLASSES[base_name] = make_class(base, spec)
    return _CLASSES[base_name]


def __getattr__(name):  # unpickling a checkpoint's config re-creates LLM4SBR_<Base> on demand
    base = base_of(name)
    if base is not None:
        return llm4sbr_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
