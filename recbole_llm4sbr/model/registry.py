"""Which RecBole bases can be wrapped, and the one place ``LLM4SBR_<Base>`` classes are made."""
from __future__ import annotations

from typing import Dict

from recbole_llm4sbr.model.wrapper import PREFIX, make_class

_CLASSES: Dict[str, type] = {}

#: bases that cannot be wrapped, with the reason given to the user
UNSUPPORTED: Dict[str, str] = {}


def llm4sbr_class(base_name: str) -> type:
    """``LLM4SBR_<base_name>``, made once and cached."""
    if base_name in _CLASSES:
        return _CLASSES[base_name]
    from recbole_llm4sbr.utils import find_recbole_model, is_sequential

    if base_name in UNSUPPORTED:
        raise ValueError(f"{PREFIX}{base_name} is not supported: {UNSUPPORTED[base_name]}")
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
    _CLASSES[base_name] = make_class(base)
    return _CLASSES[base_name]
