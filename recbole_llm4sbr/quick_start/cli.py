"""``python run_recbole_llm4sbr.py --model=LLM4SBR_SRGNN [--dataset=...] [--config_files=...] [--key=value ...]``

As RecBole's ``run_recbole.py``: any other ``--key=value`` overrides a config key. Also:

  --eval_only --checkpoint=saved/X.pth   test a saved checkpoint, no training (model and dataset
                                         default to the checkpoint's; pass the settings it was trained with)
  --resume=saved/X.pth                   continue training from a checkpoint (RecBole's resume_checkpoint)
  --nproc=N [--port=P]                   train on N processes with RecBole's DDP (gloo on the CPU; nccl
                                         with --gpu_id=0,1,...); data and stage 1 once, the best
                                         checkpoint tested in one process. Several machines: also
                                         --world_size, --offset, --ip (README "Scaling out")
  --benchmark ...                        stock vs LLM4SBR over bases, variants and seeds
                                         (``run_recbole_llm4sbr.py --benchmark --help``)
  --debug                                a traceback instead of the one-line error

Hyper-parameter search: ``python -m recbole_llm4sbr.quick_start.hyper --help``. Bad input ends with one
clear line (exit 2), not a traceback.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from recbole_llm4sbr.errors import ConfigError, check_config_files, run_command


def split_overrides(rest: Sequence[str]) -> Dict[str, str]:
    """``--key=value`` arguments (RecBole's syntax; values still strings, RecBole converts them)."""
    out: Dict[str, str] = {}
    for arg in rest:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            out[key] = value
        else:
            raise ConfigError(f"unexpected argument '{arg}'. Fix: config overrides are written --key=value")
    return out


_ARITHMETIC = re.compile(r"[\d\s.+\-*/()eE]+")


def as_recbole_types(overrides: Dict[str, str]) -> Dict[str, Any]:
    """The overrides typed as RecBole's ``Config`` will type them (it ``eval``s each value: a number,
    list or dict literal, else ``true``/``false``, else the string), without RecBole; a value only
    ``eval`` could type (arithmetic, ``2*5``) is left out."""
    out: Dict[str, Any] = {}
    for key, text in overrides.items():
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if _ARITHMETIC.fullmatch(text):
                continue
            value = {"true": True, "false": False}.get(text.lower(), text)
        out[key] = value if value is None or isinstance(value, (str, int, float, list, tuple, dict, bool)) else text
    return out


def check_overrides(overrides: Dict[str, str]) -> None:
    """The command line's ``--key=value`` values checked against ``validation.RULES`` before torch
    and RecBole are imported, so ``--epochs=abc`` is answered in about a second (the full config is
    checked again once it is built, yaml files included)."""
    from recbole_llm4sbr.validation import validate

    validate(as_recbole_types(overrides))


def check_checkpoint_files(args) -> None:
    """The checkpoint a run reads (``--checkpoint`` with ``--eval_only``, or ``--resume``) must be a file:
    a missing one is one line naming it, before any data is read."""
    path = args.checkpoint if args.eval_only else args.resume
    if path and not (args.eval_only and args.resume) and not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path} not found. Fix: pass a .pth file the trainer saved "
                          "(saved/<model>-<time>.pth, or the path the log printed after 'Saving current')")


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="run_recbole_llm4sbr.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=None,
                        help="LLM4SBR_<Base> or a stock RecBole model (default LLM4SBR_SRGNN, or the checkpoint's)")
    parser.add_argument("--dataset", "-d", default=None,
                        help="session dataset name, a folder under data_path (default ml-100k-session, or the checkpoint's)")
    parser.add_argument("--config_files", default=None, help="space or comma separated yaml files")
    parser.add_argument("--eval_only", action="store_true", help="test --checkpoint; train nothing")
    parser.add_argument("--checkpoint", default=None, help="the .pth file --eval_only tests")
    parser.add_argument("--resume", default=None, help="a .pth file to continue training from")
    parser.add_argument("--benchmark", action="store_true",
                        help="stock vs LLM4SBR cells over bases and seeds (see --benchmark --help)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_known_args(argv)


def _main(argv: List[str]) -> int:
    args, rest = parse(argv)
    overrides = split_overrides(rest)
    check_overrides(overrides)
    files = args.config_files.replace(",", " ").split() if args.config_files else None
    check_config_files(files)  # a syntax error: file, line and column, before any data or checkpoint is read
    check_checkpoint_files(args)
    from recbole_llm4sbr.quick_start.quick_start import DEFAULT_DATASET, run_recbole_llm4sbr

    model, dataset = args.model, args.dataset
    if not (args.checkpoint or args.resume):  # with a checkpoint, both default to the checkpoint's
        model, dataset = model or "LLM4SBR_SRGNN", dataset or DEFAULT_DATASET
    run_recbole_llm4sbr(model=model, dataset=dataset, config_file_list=files,
                        config_dict=overrides or None, read_cmd_line=False, eval_only=args.eval_only,
                        checkpoint=args.checkpoint, resume=args.resume)
    return 0


#: Ctrl-C: stage 1 keeps every answer it received (the answer cache commits each as it arrives)
INTERRUPTED = ("interrupted: stage-1 answers received so far are cached, so a rerun continues from them; "
               "training restarts (--resume=<saved checkpoint> continues it)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """One run (train + test, or ``--eval_only``); ``recbole_llm4sbr.cli`` sends ``--benchmark`` elsewhere."""
    return run_command(_main, list(sys.argv[1:] if argv is None else argv), interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
