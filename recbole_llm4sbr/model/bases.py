"""Every RecBole sequential model, declared once: how ``LLM4SBR_<Base>`` is made from it, or why not.

One ``BaseSpec`` per model in RecBole 1.2.1's ``recbole/model/sequential_recommender/``: a supported
base names its view adapter (``views.py``; ``GenericViews`` unless it has a natural pair), its
per-base mixins (placed before ``LLM4SBRMixin`` in the MRO) and whether its layers are sized by
``MAX_ITEM_LIST_LENGTH``; a refused base carries the reason the user is told. Adding a base is one
entry in ``BASES`` (tests/test_bases.py parametrises over ``SUPPORTED`` and ``UNSUPPORTED`` and checks
that ``BASES`` covers that package exactly) plus its row in docs/BASES.md (supported or
refused) and, if supported, its name in README's base list.

The wrapped name ``LLM4SBR_<Base>`` is spelt here only: ``wrapped_name``/``base_of``.

Imports: torch and ``views`` only (plus ``recbole.utils`` for the model type); nothing of the plugin
imports back into here, so ``wrapper`` and ``utils`` can both depend on this module.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from recbole.utils import ModelType

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.model.views import (
    BERT4RecMixin, BERT4RecViews, COREViews, FEARecMixin, GCSANGraphMixin, GCSANViews, GenericViews,
    NARMViews, NextItNetViews, SRGNNGraphMixin, SRGNNViews, STAMPViews,
)

PREFIX = "LLM4SBR_"


def wrapped_name(base: str) -> str:
    """``"SRGNN"`` -> ``"LLM4SBR_SRGNN"``: the model name a user passes for the wrapped base."""
    return PREFIX + base


def base_of(name) -> Optional[str]:
    """``"LLM4SBR_SRGNN"`` -> ``"SRGNN"``; None for a stock model name (or a non-string)."""
    if isinstance(name, str) and name.startswith(PREFIX):
        return name[len(PREFIX):]
    return None


def is_wrapped(name) -> bool:
    """Whether ``name`` is an ``LLM4SBR_<Base>`` model name."""
    return base_of(name) is not None


@dataclass(frozen=True)
class BaseSpec:
    """What makes ``LLM4SBR_<name>`` (``refused`` is None) or the reason it cannot be made."""

    name: str
    adapter: GenericViews = GenericViews()
    mixins: Tuple[type, ...] = ()
    #: layers sized by MAX_ITEM_LIST_LENGTH: item_id_list must be exactly that wide (checked at build)
    width_bound: bool = False
    refused: Optional[str] = None

    @property
    def supported(self) -> bool:
        return self.refused is None


_FEATURES = ("it needs item feature fields (selected_features); session datasets carry only item ids "
             "(item texts reach the model through the intents)")
_KG = "it needs a knowledge graph and pretrained entity embeddings, which session datasets do not have"
_CPR = ("its Softmax-CPR output layer scores items from several projections of the last hidden "
        "states (context/pointer partitions over the session's own items, reranker partitions), not "
        "from one session vector, so the fused vector has no single place to go")
_CTR = ("it is a click-through-rate model: it scores (history, candidate) pairs against a label field "
        "with pointwise negative sampling and value metrics (AUC), not next-item ranking over all "
        "items, and has no session vector to fuse")

_SPECS = (
    # session-based: they train on (item_id_list, item_length) and score a session vector
    BaseSpec("SRGNN", SRGNNViews(), mixins=(SRGNNGraphMixin,)),
    BaseSpec("GCSAN", GCSANViews(), mixins=(GCSANGraphMixin,)),
    BaseSpec("NARM", NARMViews()),
    BaseSpec("STAMP", STAMPViews()),
    BaseSpec("GRU4Rec"),
    BaseSpec("SASRec"),
    BaseSpec("BERT4Rec", BERT4RecViews(), mixins=(BERT4RecMixin,)),
    BaseSpec("NextItNet", NextItNetViews()),
    BaseSpec("LightSANs", width_bound=True),
    BaseSpec("CORE", COREViews()),
    BaseSpec("FEARec", mixins=(FEARecMixin,), width_bound=True),
    BaseSpec("SINE", width_bound=True),
    # user-based sequential models: the session id stands in for the user
    BaseSpec("Caser", width_bound=True),
    BaseSpec("FOSSIL", width_bound=True),
    BaseSpec("HGN"),
    BaseSpec("HRM"),
    BaseSpec("NPE"),
    BaseSpec("SHAN"),
    BaseSpec("TransRec"),
    # refused, with the reason the user is given
    BaseSpec("DIN", refused=_CTR),
    BaseSpec("DIEN", refused=_CTR),
    BaseSpec("FDSA", refused=_FEATURES),
    BaseSpec("GRU4RecF", refused=_FEATURES),
    BaseSpec("SASRecF", refused=_FEATURES),
    BaseSpec("KSR", refused=_KG),
    BaseSpec("GRU4RecKG", refused=_KG),
    BaseSpec("S3Rec", refused=(
        "it needs a separate pretraining stage (train_stage: pretrain, with item attributes) and a "
        "pre_model_path to fine-tune from; its pretraining objectives have no next-item session vector")),
    BaseSpec("GRU4RecCPR", refused=_CPR),
    BaseSpec("SASRecCPR", refused=_CPR),
    BaseSpec("RepeatNet", refused=(
        "its forward returns a probability distribution over the catalogue (a repeat/explore mixture "
        "of two decoders), not a session vector the fusion could replace")),
    BaseSpec("FPMC", refused=(
        "it is a factorisation model that scores (user, last item, next item) triples directly; it has "
        "no session vector to fuse (and trains with BPR only)")),
)

#: base model name -> its spec, for every model of RecBole's sequential package
BASES: Dict[str, BaseSpec] = {spec.name: spec for spec in _SPECS}
#: bases that can be wrapped, in declaration order
SUPPORTED: Tuple[str, ...] = tuple(name for name, spec in BASES.items() if spec.supported)
#: bases that cannot be wrapped -> the reason given to the user
UNSUPPORTED: Dict[str, str] = {name: spec.refused for name, spec in BASES.items() if not spec.supported}


def supported_names() -> str:
    """``LLM4SBR_SRGNN, LLM4SBR_GCSAN, ...``: every base that can be wrapped, for refusals."""
    return ", ".join(wrapped_name(name) for name in SUPPORTED)


def find_recbole_model(name: str):
    """RecBole's own model class called ``name``, or None (no lightgbm/xgboost import on a miss)."""
    for sub in ("sequential_recommender", "general_recommender", "context_aware_recommender",
                "knowledge_aware_recommender"):
        path = f"recbole.model.{sub}.{name.lower()}"
        if importlib.util.find_spec(path) is not None:
            return getattr(importlib.import_module(path), name, None)
    return None


def is_sequential(model_class) -> bool:
    return getattr(model_class, "type", None) == ModelType.SEQUENTIAL


def resolve(base_name: str) -> Tuple[BaseSpec, type]:
    """The spec and RecBole class of a base that can be wrapped; ValueError saying why not."""
    wrapped = wrapped_name(base_name)
    spec = BASES.get(base_name)
    if spec is not None and not spec.supported:
        raise ConfigError(f"{wrapped} is not supported: {spec.refused}. Fix: one of {supported_names()}.")
    base = find_recbole_model(base_name)
    if base is None:
        raise ConfigError(
            f"Unknown model '{wrapped}': RecBole 1.2.1 has no model '{base_name}'. "
            f"Fix: use {wrapped_name('<Base>')} with a RecBole sequential model, e.g. {wrapped_name('SRGNN')}."
        )
    if not is_sequential(base):
        raise ConfigError(
            f"{wrapped} is not supported: {base_name} is not a sequential recommender "
            f"(LLM4SBR wraps session/sequential models). Fix: one of {supported_names()}."
        )
    if spec is None:
        raise ConfigError(
            f"{wrapped} is not supported: {base_name} has not been checked against the wrapper "
            f"(RecBole 1.2.1 models are declared in recbole_llm4sbr.model.bases). "
            f"Supported: {', '.join(SUPPORTED)}."
        )
    return spec, base
