"""Stage 1's user errors, in a module of their own so that every stage-1 module (settings, backends,
prompts, typical, ...) can raise them without importing another one that imports it back."""
from __future__ import annotations

from ..errors import LLM4SBRError


class IntentError(LLM4SBRError):
    """A user error in stage 1 (bad input, missing file, bad setting): the message names it and the fix.

    A ``ValueError`` (via ``LLM4SBRError``), so ``recbole_llm4sbr.errors.run_command`` prints it as one
    line with no traceback.
    """


class TableDamagedError(IntentError):
    """An intent table's file does not match the size or checksum its ``meta.json`` recorded (copied
    from another build, reordered, truncated, deleted) or holds NaN/inf: the message names the file and
    the fix (rebuild with ``--force``, which keeps the answer cache)."""


class DiskFullError(IntentError):
    """Not enough free space for a table or for the answer cache: names the folder and the bytes needed."""


class CacheDamagedError(IntentError):
    """``answers.sqlite`` is not a readable SQLite database: names the file and the recovery command."""


__all__ = ["IntentError", "TableDamagedError", "DiskFullError", "CacheDamagedError"]
