"""The old import path of ``SUPPORTED``/``UNSUPPORTED``/``llm4sbr_class``, kept so that existing
imports keep working. Bases are declared in ``model/bases.py``; classes are made in ``model/wrapper.py``."""
from recbole_llm4sbr.model.bases import SUPPORTED, UNSUPPORTED
from recbole_llm4sbr.model.wrapper import llm4sbr_class

__all__ = ["SUPPORTED", "UNSUPPORTED", "llm4sbr_class"]
