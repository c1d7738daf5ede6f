"""The ``recbole-llm4sbr`` command and ``python run_recbole_llm4sbr.py``: one run, or ``--benchmark``.

The dispatch lives above both command lines so that neither imports the other (quick start <-
benchmark runner is the only direction).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--benchmark" in argv:  # stock vs LLM4SBR over bases, variants and seeds
        from recbole_llm4sbr.benchmark.cli import main as benchmark_main

        return benchmark_main(argv)
    from recbole_llm4sbr.quick_start.cli import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
