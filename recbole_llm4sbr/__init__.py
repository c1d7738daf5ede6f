"""recbole-llm4sbr: LLM4SBR as a RecBole plugin.

Importing the package applies the RecBole compatibility shims (``compat``) where RecBole is
installed, before any RecBole module loads. The shims import only numpy and pandas, and the stage-1
subpackage ``recbole_llm4sbr.intent`` imports no RecBole, so stage 1 also runs in an LLM-only
environment (vLLM's own torch and transformers).
"""
import importlib.util as _ilu

__version__ = "0.1.0"

if _ilu.find_spec("recbole") is not None:
    from recbole_llm4sbr import compat as _compat

    _compat.apply()
