"""``python run_recbole_llm4sbr.py --model=LLM4SBR_SRGNN [--dataset=...] [--config_files=...] [--key=value ...]``.

As RecBole's ``run_recbole.py``: any other ``--key=value`` overrides a config key. Bad input ends
with one clear line (exit 2), not a traceback.
"""
from __future__ import annotations

import argparse
import sys


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="run_recbole_llm4sbr.py", description=__doc__)
    parser.add_argument("--model", "-m", default="LLM4SBR_SRGNN", help="LLM4SBR_<Base> or a stock RecBole model")
    parser.add_argument("--dataset", "-d", default="ml-100k-session", help="session dataset name (folder under data_path)")
    parser.add_argument("--config_files", default=None, help="space or comma separated yaml files")
    return parser.parse_known_args(argv)


def main(argv=None):
    if "--benchmark" in (sys.argv[1:] if argv is None else argv):  # stock vs LLM4SBR over bases and seeds
        from recbole_llm4sbr.benchmark.cli import main as benchmark_main

        return benchmark_main(argv)
    args, _ = parse(argv)
    files = args.config_files.replace(",", " ").split() if args.config_files else None
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    try:
        run_recbole_llm4sbr(model=args.model, dataset=args.dataset, config_file_list=files)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        if "--debug" in sys.argv:
            raise
        print(f"error: {err}\n(rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
