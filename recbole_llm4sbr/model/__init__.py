"""Stage 2: alignment-uniformity and fusion layers, the LLM4SBR_<Base> wrapper, view adapters."""
from recbole_llm4sbr.model.registry import UNSUPPORTED, llm4sbr_class

__all__ = ["llm4sbr_class", "UNSUPPORTED"]
