"""User errors, and the one handler the four command lines (run, benchmark, serve, intent) share.

A user error is an exception whose message names the bad input and the fix. A command line prints
it as ONE line on stderr, ``error: <message> (rerun with --debug for the traceback)``, and exits 2;
``--debug`` in that command's own argv (or ``LLM4SBR_DEBUG=1``) re-raises instead. Anything else is a
bug and keeps its traceback. No RecBole import: stage 1's command line runs in an LLM-only
environment.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_FLAG = "--debug"


class LLM4SBRError(ValueError):
    """Bad input to the plugin; the message names it and the fix."""


class ConfigError(LLM4SBRError):
    """A config key with a wrong type or value (``recbole_llm4sbr.validation``)."""


#: what a command line reports as one line instead of a traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ImportError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (``KeyError`` without its quotes)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split()) or type(err).__name__


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or bool(os.environ.get("LLM4SBR_DEBUG"))


def without_debug(argv: Sequence[str]) -> List[str]:
    """``argv`` less ``--debug`` (the handler's flag, not a config key)."""
    return [a for a in argv if a != DEBUG_FLAG]


def run_command(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
                interrupted: str = "interrupted") -> int:
    """Run ``main(argv without --debug)``; a user error becomes one stderr line and exit code 2,
    Ctrl-C exit code 130 with ``interrupted`` as its line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = main(without_debug(argv))
    except USER_ERRORS as err:
        if debug_requested(argv):
            raise
        print(f"error: {one_line(err)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
