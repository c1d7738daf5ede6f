"""Model lookup for the plugin: ``LLM4SBR_<Base>`` classes first, stock RecBole names fall through."""
from __future__ import annotations

import importlib
import importlib.util

from recbole.utils import ModelType

PREFIX = "LLM4SBR_"


def find_recbole_model(name: str):
    """RecBole's own model class called ``name``, or None (no lightgbm/xgboost import on a miss)."""
    for sub in ("sequential_recommender", "general_recommender", "context_aware_recommender",
                "knowledge_aware_recommender"):
        path = f"recbole.model.{sub}.{name.lower()}"
        if importlib.util.find_spec(path) is not None:
            return getattr(importlib.import_module(path), name, None)
    return None


def get_model(name):
    """The model class for ``name``: ``LLM4SBR_<Base>`` (made from RecBole's ``<Base>``) or a stock model.

    A class passes through unchanged, so RecBole-style code that hands over classes keeps working.
    """
    if not isinstance(name, str):
        return name
    if name.startswith(PREFIX):
        from recbole_llm4sbr.model import llm4sbr_class

        return llm4sbr_class(name[len(PREFIX):])
    model = find_recbole_model(name)
    if model is None:
        raise ValueError(
            f"Unknown model '{name}': it is neither a RecBole 1.2.1 model nor LLM4SBR_<Base>. "
            "Fix: pass --model=<RecBole model name> (e.g. SRGNN) or --model=LLM4SBR_<Base> (e.g. LLM4SBR_SRGNN)."
        )
    return model


def is_sequential(model_class) -> bool:
    return getattr(model_class, "type", None) == ModelType.SEQUENTIAL
