"""Stage 1's user error, in a module of its own so that every stage-1 module (settings, backends,
prompts, typical, ...) can raise it without importing another one that imports it back."""
from __future__ import annotations

from ..errors import LLM4SBRError


class IntentError(LLM4SBRError):
    """A user error in stage 1 (bad input, missing file, bad setting): the message names it and the fix.

    A ``ValueError`` (via ``LLM4SBRError``), so ``recbole_llm4sbr.errors.run_command`` prints it as one
    line with no traceback.
    """


__all__ = ["IntentError"]
