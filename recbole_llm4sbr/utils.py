"""Model lookup for the plugin: ``LLM4SBR_<Base>`` classes first, stock RecBole names fall through.

``PREFIX``, ``find_recbole_model`` and ``is_sequential`` are re-exported from ``model/bases.py``
(where they live) for code that imported them from here.
"""
from __future__ import annotations

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.model.bases import PREFIX, base_of, find_recbole_model, is_sequential, wrapped_name
from recbole_llm4sbr.model.wrapper import llm4sbr_class

__all__ = ["PREFIX", "base_of", "find_recbole_model", "get_model", "is_sequential", "wrapped_name"]


def get_model(name):
    """The model class for ``name``: ``LLM4SBR_<Base>`` (made from RecBole's ``<Base>``) or a stock model.

    A class passes through unchanged, so RecBole-style code that hands over classes keeps working.
    """
    if not isinstance(name, str):
        return name
    base = base_of(name)
    if base is not None:
        return llm4sbr_class(base)
    model = find_recbole_model(name)
    if model is None:
        raise ConfigError(
            f"Unknown model '{name}': it is neither a RecBole 1.2.1 model nor {wrapped_name('<Base>')}. "
            f"Fix: pass --model=<RecBole model name> (e.g. SRGNN) or --model={wrapped_name('<Base>')} "
            f"(e.g. {wrapped_name('SRGNN')})."
        )
    return model
