"""Which RecBole bases can be wrapped, and the one place ``LLM4SBR_<Base>`` classes are made.

Every model in RecBole 1.2.1's ``recbole/model/sequential_recommender/`` is classified here: it is
either in ``SUPPORTED`` or refused, with the reason, in ``UNSUPPORTED`` (tests/test_bases.py checks
that the two cover that package exactly). docs/BASES.md has the same tables for readers.
"""
from __future__ import annotations

from typing import Dict

from recbole_llm4sbr.model.wrapper import PREFIX, make_class

_CLASSES: Dict[str, type] = {}

#: bases that train on (item_id_list, item_length[, session id as user]) and score a session vector
SUPPORTED = (
    # session-based
    "SRGNN", "GCSAN", "NARM", "STAMP", "GRU4Rec", "SASRec", "BERT4Rec", "NextItNet", "LightSANs",
    "CORE", "FEARec", "SINE",
    # user-based sequential models: the session id stands in for the user
    "Caser", "FOSSIL", "HGN", "HRM", "NPE", "SHAN", "TransRec",
)

_FEATURES = ("it needs item feature fields (selected_features); session datasets carry only item ids "
             "(item texts reach the model through the intents)")
_KG = "it needs a knowledge graph and pretrained entity embeddings, which session datasets do not have"
_CPR = ("its Softmax-CPR output layer scores items from several projections of the last hidden "
        "states (context/pointer partitions over the session's own items, reranker partitions), not "
        "from one session vector, so the fused vector has no single place to go")
_CTR = ("it is a click-through-rate model: it scores (history, candidate) pairs against a label field "
        "with pointwise negative sampling and value metrics (AUC), not next-item ranking over all "
        "items, and has no session vector to fuse")

#: bases that cannot be wrapped, with the reason given to the user
UNSUPPORTED: Dict[str, str] = {
    "DIN": _CTR,
    "DIEN": _CTR,
    "FDSA": _FEATURES,
    "GRU4RecF": _FEATURES,
    "SASRecF": _FEATURES,
    "KSR": _KG,
    "GRU4RecKG": _KG,
    "S3Rec": ("it needs a separate pretraining stage (train_stage: pretrain, with item attributes) and a "
              "pre_model_path to fine-tune from; its pretraining objectives have no next-item session vector"),
    "GRU4RecCPR": _CPR,
    "SASRecCPR": _CPR,
    "RepeatNet": ("its forward returns a probability distribution over the catalogue (a repeat/explore "
                  "mixture of two decoders), not a session vector the fusion could replace"),
    "FPMC": ("it is a factorisation model that scores (user, last item, next item) triples directly; it has "
             "no session vector to fuse (and trains with BPR only)"),
}


def llm4sbr_class(base_name: str) -> type:
    """``LLM4SBR_<base_name>``, made once and cached."""
    if base_name in _CLASSES:
        return _CLASSES[base_name]
    from recbole_llm4sbr.utils import find_recbole_model, is_sequential

    if base_name in UNSUPPORTED:
        raise ValueError(f"{PREFIX}{base_name} is not supported: {UNSUPPORTED[base_name]}.")
    base = find_recbole_model(base_name)
    if base is None:
        raise ValueError(
            f"Unknown model '{PREFIX}{base_name}': RecBole 1.2.1 has no model '{base_name}'. "
            "Fix: use LLM4SBR_<Base> with a RecBole sequential model, e.g. LLM4SBR_SRGNN."
        )
    if not is_sequential(base):
        raise ValueError(
            f"{PREFIX}{base_name} is not supported: {base_name} is not a sequential recommender "
            "(LLM4SBR wraps session/sequential models)."
        )
    if base_name not in SUPPORTED:
        raise ValueError(
            f"{PREFIX}{base_name} is not supported: {base_name} has not been checked against the "
            f"wrapper (RecBole 1.2.1 models are listed in recbole_llm4sbr.model.registry). "
            f"Supported: {', '.join(SUPPORTED)}."
        )
    _CLASSES[base_name] = make_class(base)
    return _CLASSES[base_name]
