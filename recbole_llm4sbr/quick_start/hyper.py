"""Hyper-parameter search with RecBole's ``HyperTuning``, for plugin and stock models (RecBole's
``run_hyper.py``, whose ``objective_function`` lives in ``recbole.quick_start`` and so is never
imported here: its ray breaks on this stack).

    python -m recbole_llm4sbr.quick_start.hyper --model=LLM4SBR_SRGNN --params_file=hyper.test \\
        [--dataset=ml-100k-session (default)] [--config_files=a.yaml] [--algo=exhaustive|random|bayes] \\
        [--max_evals=100] [--early_stop=10] [--output_file=hyper_LLM4SBR_SRGNN.result] [--key=value ...]

``--params_file``: RecBole's format, one line per parameter, e.g. ``learning_rate choice [0.001,0.0003]``
or ``embedding_size choice [64,100]``. Every trial is a full ``run_recbole_llm4sbr`` (best epoch on the
validation split); trials are ranked by ``best_valid_score`` (validation only); the output file lists each
trial's validation and test results. Any other ``--key=value`` is fixed for every trial. Needs
``hyperopt`` (installed with the plugin).
"""
from __future__ import annotations

import argparse
import sys
import os
from typing import List, Optional, Sequence

from recbole_llm4sbr.errors import ConfigError, MissingDependencyError, run_command


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for HyperTuning: train + test one configuration, return
    ``{model, best_valid_score, valid_score_bigger, best_valid_result, test_result}``.

    ``model`` and ``dataset`` come from ``config_dict`` or the config files, as in RecBole; unlike
    RecBole's, ``sys.argv`` is not read (a trial is exactly its dict + files)."""
    from recbole_llm4sbr.quick_start.quick_start import run_recbole_llm4sbr

    result = run_recbole_llm4sbr(config_dict=config_dict, config_file_list=config_file_list, saved=saved,
                                 read_cmd_line=False)
    return {key: result[key] for key in
            ("model", "best_valid_score", "valid_score_bigger", "best_valid_result", "test_result")}


def fixed_objective(fixed: dict):
    """``objective_function`` with ``fixed`` laid under each trial's own parameters."""

    def objective(config_dict=None, config_file_list=None, saved=True):
        return objective_function({**fixed, **(config_dict or {})}, config_file_list, saved)

    return objective


def exhaustive_search(new_ids, domain, trials, seed, nbMaxSucessiveFailures=1000):
    """RecBole's ``exhaustive_search`` (every point of a ``choice`` grid once) for hyperopt >= 0.2.7,
    whose samplers call ``rng.integers``: RecBole 1.2.1 hands them a legacy ``RandomState`` (pinned
    hyperopt 0.2.5, which no longer imports without ``pkg_resources``). Same loop, a ``Generator``."""
    import numpy as np
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    def key(vals):
        return hash(frozenset((k, v[0]) if len(v) > 0 else (k, None) for k, v in vals.items()))

    seen = {key(trial["misc"]["vals"]) for trial in trials.trials}
    rng = np.random.default_rng(seed)
    out = []
    for new_id in new_ids:
        failures = 0
        while True:
            idxs, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng})
            if key(vals) not in seen:
                break
            failures += 1
            if failures > nbMaxSucessiveFailures:
                return out  # the grid is exhausted
        seen.add(key(vals))
        misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([misc], idxs, vals)
        out.extend(trials.new_trial_docs([new_id], [None], [domain.new_result()], [misc]))
    return out


def run_hyper(model: str, params_file: str, dataset: Optional[str] = None, config_file_list=None,
              fixed: Optional[dict] = None, algo: str = "exhaustive", max_evals: int = 100,
              early_stop: int = 10, output_file: Optional[str] = None, display_file: Optional[str] = None):
    """Library entry point of the command: runs the search, writes ``output_file``, returns the
    ``HyperTuning`` (``best_params``, ``params2result``, ``params2str``)."""
    try:
        from recbole.trainer.hyper_tuning import HyperTuning
        import hyperopt  # noqa: F401 - HyperTuning imports it lazily, fail here with the fix
    except ImportError:
        raise MissingDependencyError("hyper-parameter search needs hyperopt. Fix: pip install hyperopt") from None
    fixed = {**(fixed or {}), "model": model}
    if dataset:
        fixed["dataset"] = dataset
    tuner = HyperTuning(fixed_objective(fixed), algo=algo, early_stop=early_stop, max_evals=max_evals,
                        params_file=params_file, fixed_config_file_list=config_file_list,
                        display_file=display_file)
    if algo == "exhaustive":  # RecBole's grid size, our Generator-safe sampler
        tuner.algo = exhaustive_search
    tuner.run()
    tuner.export_result(output_file=output_file or f"hyper_{model}.result")
    return tuner


def parse(argv: Sequence[str]):
    parser = argparse.ArgumentParser(prog="python -m recbole_llm4sbr.quick_start.hyper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="LLM4SBR_SRGNN")
    parser.add_argument("--dataset", "-d", default=None,
                        help="session dataset (default ml-100k-session, or the one --config_files or --dataset=... name)")
    parser.add_argument("--params_file", required=True, help="RecBole's search-space file")
    parser.add_argument("--config_files", default=None, help="space or comma separated yaml files")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100, help="trials for random/bayes")
    parser.add_argument("--early_stop", type=int, default=10, help="stop after this many trials without gain")
    parser.add_argument("--output_file", default=None, help="default hyper_<model>.result")
    parser.add_argument("--display_file", default=None, help="an HTML plot of the trials (needs plotly)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_known_args(list(argv))


def _files_name_dataset(files: Optional[List[str]]) -> bool:
    """Whether one of the yaml ``files`` sets ``dataset`` (then it is the search's dataset)."""
    import yaml

    for name in files or []:
        try:
            with open(name, encoding="utf-8") as f:
                if "dataset" in (yaml.safe_load(f) or {}):
                    return True
        except (OSError, yaml.YAMLError, TypeError):
            continue  # run_recbole_llm4sbr reports a missing or bad file with its fix
    return False


def _main(argv: List[str]) -> int:
    from recbole_llm4sbr.quick_start.cli import split_overrides

    args, rest = parse(argv)
    fixed = split_overrides(rest)
    files = args.config_files.replace(",", " ").split() if args.config_files else None


    if not os.path.isfile(args.params_file):
        raise ConfigError(f"--params_file={args.params_file} not found. Fix: a file of lines like "
                          "'learning_rate choice [0.001,0.0003]'")
    dataset = args.dataset
    if dataset is None and "dataset" not in fixed and not _files_name_dataset(files):
        from recbole_llm4sbr.quick_start.quick_start import DEFAULT_DATASET

        dataset = DEFAULT_DATASET  # as the main command
    tuner = run_hyper(args.model, args.params_file, dataset, files, fixed, args.algo, args.max_evals,
                      args.early_stop, args.output_file, args.display_file)
    best = tuner.params2result[tuner.params2str(tuner.best_params)]
    from recbole.utils import dict2str  # "recall@20 : 0.1695    mrr@20 : 0.0366", as RecBole logs results
    print("best params:", tuner.best_params)
    print("best valid score:", best["best_valid_score"])
    print("test result of the best params:", dict2str(best["test_result"]))
    print("all trials:", args.output_file or f"hyper_{args.model}.result")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
