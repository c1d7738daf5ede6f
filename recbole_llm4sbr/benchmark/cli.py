"""``python run_recbole_llm4sbr.py --benchmark --dataset=<ds> --base_models=SRGNN,GRU4Rec --seeds=3
[--variants=llm4sbr,text,arch,shuffled,swapped,no_au,no_long,no_short,no_loc,r0,r1,r3,r5] [--results_dir=results]
[--protocol=fair|paper] [--grid_learning_rate=0.001,0.0003 --grid_lr_step_size=0,3] [--tune=grid|reuse|base]
[--config_files=...] [--report_only] [--debug] [--key=value ...]``

For each base and seed: the stock RecBole model and every LLM4SBR variant on the same split and seed
(``base`` is always included). Any other ``--key=value`` is a config override for every cell (e.g.
``--epochs=10``, ``--intent_backend=transformers``, ``--intent_samples=typical``); ``--seed=S`` sets
the first seed. Finished cells are kept under ``<results_dir>/<ds>/cells/`` and skipped on a rerun;
the reports (``report.md``, ``summary.csv``, ``cells.csv``, ``relative_gain.png``) are rebuilt from them.
A cell another live benchmark process is training (its lock is held) is skipped; the run then ends
with one ``incomplete: ...`` line on stderr and exit code 3 (rerun once that process has finished).

Protocols: fair (default): per (base, variant) a grid of learning_rate x lr_step_size (0 = constant lr,
3 = x0.1 every 3 epochs) trained on the first seed with an epoch cap of 50 and early stopping after 5
epochs; the setting with the best validation score is chosen (never a test number), and the other
seeds train with it. ``--grid_<key>=a,b`` replaces or adds an axis; ``--learning_rate=X`` (any axis's
key) fixes it; ``--epochs=N`` sets the cap. paper: the paper's schedule (lr 1e-3, x0.1 every 3 epochs,
30 epochs, early stopping after 5), no search. ``--tune=reuse`` (fair): only ``base`` and ``llm4sbr`` get a grid;
every other variant trains with the setting chosen for ``llm4sbr`` of the same base (one run per seed;
its cells say "setting reused from llm4sbr"). ``--tune=base`` (fair): only the stock base gets the
training grid; every wrapped variant trains with the base's chosen setting and searches only the
wrapped-only axes around it (``--grid_intent_strength=0,1,off``: 0 = the base's own scoring path, off =
the stock base itself, whose cell is read, not trained again; a candidate of ``llm4sbr`` only), on the
first seed's validation split.

Variants: base (without LLM), llm4sbr (full; intent backend as configured), text (LLM-free text
intents), arch (architecture only: one constant intent), shuffled (the intent table's rows in a fixed
permutation), swapped (the views paired the other way round), no_au (without alignment-uniformity), no_long / no_short (without that view), no_loc
(without localization), r0 / r1 / r3 / r5 (intent_topr); investigation: train_only, eimf, train_only_eimf,
drop30, au_hi, au_lo, short3, all (intent_samples: all) (recbole_llm4sbr/benchmark/variants.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from recbole_llm4sbr.errors import check_config_files, run_command

log = logging.getLogger("recbole_llm4sbr.benchmark")


def parse(argv: Sequence[str]):
    parser = argparse.ArgumentParser(prog="run_recbole_llm4sbr.py --benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", action="store_true", help="run the benchmark (this command)")
    parser.add_argument("--dataset", "-d", default="ml-100k-session")
    parser.add_argument("--base_models", default="SRGNN,NARM,STAMP,GRU4Rec,SASRec",
                        help="comma separated stock RecBole sequential models")
    parser.add_argument("--seeds", default="3", help="a count (3 -> 2020, 2021, 2022) or a list (1,7,42)")
    parser.add_argument("--variants", default="llm4sbr", help="comma separated; base is always included")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--config_files", default=None, help="space or comma separated yaml files")
    parser.add_argument("--inference_repeats", type=int, default=3)
    parser.add_argument("--report_only", action="store_true", help="rebuild the reports from the cells; train nothing")
    parser.add_argument("--no_plot", action="store_true", help="skip relative_gain.png")
    parser.add_argument("--protocol", default="fair", choices=["fair", "paper"],
                        help="fair: tune learning_rate x lr_step_size per (base, variant) on the first seed's "
                             "validation split (default); paper: the paper's schedule, no search")
    parser.add_argument("--grid_learning_rate", default=None, metavar="A,B",
                        help="fair protocol: learning rates to try (default 0.001,0.0003)")
    parser.add_argument("--grid_lr_step_size", default=None, metavar="A,B",
                        help="fair protocol: step sizes to try, 0 = constant lr (default 0,3); "
                             "any --grid_<key>=a,b adds an axis")
    parser.add_argument("--tune", default="grid", choices=["grid", "reuse", "base"],
                        help="fair protocol: grid = every (base, variant) its own grid (default); reuse = only base "
                             "and llm4sbr are tuned, the other variants reuse llm4sbr's chosen setting; base = wrapped "
                             "variants take the stock base's chosen setting and search only wrapped-only axes "
                             "such as --grid_intent_strength=0,1,off (off: the stock base's own run)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--model", "-m", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(list(argv))  # --help exits here, before torch and RecBole load
    from recbole_llm4sbr.benchmark.runner import BenchmarkError

    overrides: Dict[str, str] = {}
    grid: Dict[str, list] = {}
    for name in ("learning_rate", "lr_step_size"):
        if getattr(args, f"grid_{name}") is not None:
            grid[name] = _values(getattr(args, f"grid_{name}"))
    for arg in rest:
        if arg.startswith("--grid_") and "=" in arg:
            key, value = arg[len("--grid_"):].split("=", 1)
            grid[key] = _values(value)
        elif arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            overrides[key] = value
        else:
            raise BenchmarkError(f"unexpected argument '{arg}'. Fix: config overrides are written --key=value.")
    if args.model:
        raise BenchmarkError("--model has no meaning with --benchmark. Fix: name the stock bases with "
                             "--base_models=SRGNN,GRU4Rec (each is run stock and as LLM4SBR_<Base>).")
    if args.tune != "grid" and args.protocol != "fair":
        raise BenchmarkError("--tune=reuse only applies to --protocol=fair (paper has no search to reuse)")
    if grid and args.protocol != "fair":
        raise BenchmarkError("--grid_* only applies to --protocol=fair (paper has no search)")
    args.grid = grid
    return args, overrides


def _values(text: str) -> list:
    return [v for v in str(text).replace(" ", ",").split(",") if v]


def setup_logging(folder: Path) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        if getattr(handler, "_benchmark", False):
            log.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s benchmark  %(message)s", "%d %b %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    folder.mkdir(parents=True, exist_ok=True)
    file = logging.FileHandler(folder / "benchmark.log", encoding="utf-8")
    for handler in (stream, file):
        handler.setFormatter(fmt)
        handler._benchmark = True
        log.addHandler(handler)


def run_benchmark(dataset: str, bases, variants="llm4sbr", seeds="3", overrides: Optional[dict] = None,
                  results_dir="results", config_files=None, command: str = "", report_only: bool = False,
                  plot: bool = True, inference_repeats: int = 3, commit: Optional[str] = None,
                  protocol: str = "fair", grid: Optional[Dict[str, Sequence]] = None, tune: str = "grid"):
    """Library entry point of the CLI; returns ``(benchmark, report paths)``. ``protocol``/``grid``/``tune``
    as ``--protocol``/``--grid_<key>``/``--tune`` (``grid={"learning_rate": [0.001, 0.0003]}``)."""
    from recbole_llm4sbr.benchmark.report import write_reports
    from recbole_llm4sbr.benchmark.runner import Benchmark
    from recbole_llm4sbr.intent.backends import check_backend_name
    from recbole_llm4sbr.intent.settings import parse_value
    from recbole_llm4sbr.validation import validate

    overrides = dict(overrides or {})
    check_config_files(config_files)  # a syntax error: file, line and column, before any cell or report
    # every cell's config is checked when it is built; check the overrides now, before any stage 1 or training
    typed = {k: parse_value(v) if isinstance(v, str) else v for k, v in overrides.items()}
    validate(typed)
    check_backend_name(typed)
    first = overrides.pop("seed", 2020)
    from recbole_llm4sbr.benchmark.variants import parse_bases, parse_seeds, parse_variants

    bench = Benchmark(dataset, parse_bases(bases), parse_variants(variants), parse_seeds(seeds, int(first)),
                      overrides, results_dir, config_files, command=command, commit=commit,
                      inference_repeats=inference_repeats, protocol=protocol, grid=grid, tune=tune)
    setup_logging(bench.cells_dir)
    if report_only:
        log.info(f"report only: {len(bench.finished())} of {len(bench.slots())} cells finished")
    else:
        bench.run(report=lambda b: write_reports(b.with_bases_on_disk(), plot=False, quiet=True))
    shown = bench.with_bases_on_disk()  # the directory's report keeps the other bases' finished cells
    if shown is not bench:
        log.info(f"the report also shows {', '.join(shown.bases[len(bench.bases):])}: finished cells of this "
                 f"plan already in {bench.cells_dir}")
    paths = write_reports(shown, plot=plot)
    return bench, paths


def _main(argv: List[str]) -> int:
    args, overrides = parse(argv)
    from recbole_llm4sbr.benchmark.runner import command_line

    files = args.config_files.replace(",", " ").split() if args.config_files else None
    bench, _ = run_benchmark(args.dataset, args.base_models, args.variants, args.seeds, overrides, args.results_dir,
                             files, command=command_line(argv), report_only=args.report_only, plot=not args.no_plot,
                             inference_repeats=args.inference_repeats, protocol=args.protocol, grid=args.grid,
                             tune=args.tune)
    return 0 if args.report_only else incomplete(bench)


#: the exit code of a run that ends with cells another live benchmark process is still training
INCOMPLETE = 3


def incomplete(bench) -> int:
    """0 when every cell of the plan is finished; else one stderr line saying which process holds what
    and ``INCOMPLETE`` (the report counts "cells finished: n of m")."""
    left = bench.unfinished()
    if not left:
        return 0
    held = [(cell, who) for cell, who in bench.held.items() if bench.load(cell) is None]
    if held:
        why = f"{held[0][1]} is training {held[0][0].id}" + (f", and {len(held) - 1} more held" if len(held) > 1 else "")
    else:
        why = "another benchmark process holds a run they wait for"
    print(f"incomplete: {len(left)} of {len(bench.slots())} cells are not finished ({why}); the report shows the "
          f"others. Fix: rerun this command once that process has finished", file=sys.stderr)
    return INCOMPLETE


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
