"""Stage 2: alignment-uniformity and fusion layers, the LLM4SBR_<Base> wrapper, view adapters.

Where things live: ``bases.py`` declares every RecBole sequential base (its adapter, mixins and
width rule, or why it is refused) and the ``LLM4SBR_`` name helpers; ``wrapper.py`` makes the
classes (``llm4sbr_class``); ``views.py`` has the adapters and per-base mixins; ``controls.py`` the
attribution controls; ``alignment.py``, ``fusion.py``, ``semantic.py`` the layers and losses.
"""
from recbole_llm4sbr.model.bases import BASES, SUPPORTED, UNSUPPORTED, base_of, is_wrapped, wrapped_name
from recbole_llm4sbr.model.wrapper import llm4sbr_class

__all__ = ["BASES", "SUPPORTED", "UNSUPPORTED", "base_of", "is_wrapped", "llm4sbr_class", "wrapped_name"]
