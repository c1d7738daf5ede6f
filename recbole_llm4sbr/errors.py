"""User errors, and the one handler the four command lines (run, benchmark, serve, intent) share.

A user error is an ``LLM4SBRError`` (or a subclass: ``ConfigError``, ``MissingDependencyError``,
``MissingFileError``, stage 1's ``IntentError``, ...) whose message names the bad input and the fix. A
command line prints it as ONE line on stderr, ``error: <message> (rerun with --debug for the
traceback)``, and exits 2; ``--debug`` in that command's own argv (or ``LLM4SBR_DEBUG=1``) re-raises
instead. Anything else, a plain ``ValueError`` included, is a bug and keeps its traceback. No
RecBole import: stage 1's command line runs in an LLM-only environment.

Two readers every command shares, so a bad file reads the same wherever it is met: ``read_yaml_file``
(a config file; a syntax error names file, line and column) and ``utf8_error`` (the first line of a
text file that is not UTF-8, with its byte offset).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Type

DEBUG_FLAG = "--debug"


class LLM4SBRError(ValueError):
    """Bad input to the plugin; the message names it and the fix."""


class ConfigError(LLM4SBRError):
    """A config key with a wrong type or value (``recbole_llm4sbr.validation``)."""


class MissingDependencyError(LLM4SBRError, ImportError):
    """An optional package the chosen feature needs is not installed (or not a version that works);
    the message names the ``pip install`` line. Also an ``ImportError``, for code that tries an
    import and falls back."""


class MissingFileError(LLM4SBRError, FileNotFoundError):
    """A file or folder the user named (or a command's earlier step should have written) is not
    there; the message names it and how to make it. Also a ``FileNotFoundError``."""


#: the fix of a file that is not UTF-8
UTF8_FIX = ("Fix: save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE > NEW`) or correct that line")


def utf8_error(path, error: Type[LLM4SBRError] = LLM4SBRError, opener: Callable = open) -> LLM4SBRError:
    """The error for ``path`` not being UTF-8: the first line that does not decode, the byte offset of
    the bad bytes in the file (in the uncompressed stream when ``opener`` is ``gzip.open``) and the fix.
    Call it where reading the file raised ``UnicodeDecodeError`` (the file is read again, in binary)."""
    offset = 0
    with opener(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):  # a UTF-8 sequence never holds a newline byte
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = line[e.start:e.end]
                return error(f"{path}, line {lineno} (byte {offset + e.start}): {bad!r} is not UTF-8. "
                             f"{UTF8_FIX}")
            offset += len(line)
    return error(f"{path} is not UTF-8 text. {UTF8_FIX}")


def _yaml_position(err, text: str) -> str:
    """``line L, column C`` (1-based) of a PyYAML error, or '' when it has none."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(err, "position", None)  # yaml.reader.ReaderError: a character index
    if isinstance(position, int):
        before = text[:position]
        return f"line {before.count(chr(10)) + 1}, column {position - before.rfind(chr(10))}"
    return ""


def read_yaml_file(path, loader=None, error: Type[LLM4SBRError] = ConfigError) -> Any:
    """A ``--config_files`` file as a mapping ({} when empty); a missing file, bytes that are not
    UTF-8, a YAML syntax error (with line and column) or a top level that is not ``key: value`` lines
    is ``error`` with ONE line naming the file and the fix. ``loader``: a PyYAML loader class
    (default ``yaml.SafeLoader``; stage 1 and RecBole add a float resolver, which changes types, not
    what parses)."""
    import yaml

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"config file {path} not found. Fix: check the path given to --config_files") from None
    except IsADirectoryError:
        raise error(f"config file {path} is a folder. Fix: name a .yaml file in --config_files") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise utf8_error(path, error) from None
    try:
        data = yaml.load(text, Loader=loader or yaml.SafeLoader)
    except yaml.YAMLError as e:
        where = _yaml_position(e, text)
        problem = getattr(e, "problem", None) or one_line(e)
        if isinstance(e, yaml.reader.ReaderError):
            char = chr(e.character) if isinstance(e.character, int) else e.character
            problem = f"the character {char!r} is not allowed"
        mark = getattr(e, "context_mark", None)
        if getattr(e, "context", None) and mark is not None and getattr(e, "problem_mark", None) is not None:
            problem += f"; {e.context} at line {mark.line + 1}, column {mark.column + 1}"
        raise error(f"config file {path}{', ' + where if where else ''}: not valid YAML ({problem}). Fix: "
                    f"correct that line: one 'key: value' per line, a space after the colon, quotes "
                    f"and brackets closed, spaces (not tabs) for indentation") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"config file {path} holds a {type(data).__name__}, not 'key: value' lines. Fix: write "
                    f"one 'key: value' per line (e.g. 'epochs: 30')")
    return data


def check_config_files(paths: Optional[Sequence[str]], error: Type[LLM4SBRError] = ConfigError) -> None:
    """Read every ``--config_files`` file as ``read_yaml_file`` does, before anything else runs (RecBole
    would print a traceback for a syntax error, and no file name for bytes that are not UTF-8)."""
    for path in [paths] if isinstance(paths, (str, Path)) else paths or ():
        read_yaml_file(path, error=error)


#: what a command line reports as one line instead of a traceback: the plugin's own errors only. A
#: plain ``ValueError``/``KeyError``/``FileNotFoundError`` from inside the code (or a library) is a bug
#: and keeps its traceback.
USER_ERRORS = (LLM4SBRError,)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a ``KeyError``'s without its quotes)."""
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
