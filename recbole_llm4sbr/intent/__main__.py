"""Stage 1 from the command line (no RecBole needed).

    python -m recbole_llm4sbr.intent --dataset=<ds> [--config_files=a.yaml,b.yaml] [--key=value ...] [--force] [--debug]
    python -m recbole_llm4sbr.intent show --dataset=<ds> --session=<session_id> [--key=value ...] [--debug]

The first builds (or refreshes) the intent table for all splits and prints its path and summary; the
second prints what stage 1 made of one session. A user error is one line on stderr and exit code 2
(``recbole_llm4sbr.errors.run_command``); ``--debug`` (or LLM4SBR_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from ..errors import run_command
from .errors import IntentError
from .settings import load_settings, parse_cli

USAGE = __doc__.split("\n\n")[1]


def _run(argv: List[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = "build"
    if argv and not argv[0].startswith("-"):
        command, argv = argv[0], argv[1:]
    if command not in ("build", "show"):
        raise IntentError(f"unknown command {command!r}: use show, or no command to build the table\n{USAGE}")
    overrides, flags = parse_cli(argv, flags=("force",) if command == "build" else ())
    session = overrides.pop("session", None)
    settings = load_settings(overrides=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    if command == "show":
        from .show import show_session

        if session is None:
            raise IntentError("show needs --session=<session_id>")
        show_session(settings, session)
        return 0

    from .pipeline import build_intent_table, ensure_intent_table
    from .table import read_meta

    folder = build_intent_table(settings) if "force" in flags else ensure_intent_table(settings)
    summary = (read_meta(folder) or {}).get("summary", {})
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v:.2f} s" if k.startswith("time ") else f"{k:<{width}}  {v}")
    print(f"intent table: {folder}")
    return 0


#: Ctrl-C during a build: nothing answered is lost (the answer cache commits every chunk)
INTERRUPTED = "interrupted: answers received so far are cached; run again to continue"


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(_run, argv, interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
