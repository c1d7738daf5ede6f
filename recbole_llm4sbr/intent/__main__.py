"""Stage 1 from the command line (no RecBole needed).

    python -m recbole_llm4sbr.intent --dataset=<ds> [--config_files=a.yaml,b.yaml] [--key=value ...] [--force] [--debug]
    python -m recbole_llm4sbr.intent show --dataset=<ds> --session=<session_id> [--key=value ...] [--debug]
    python -m recbole_llm4sbr.intent verify --dataset=<ds> [--key=value ...]
    python -m recbole_llm4sbr.intent recover-cache --dataset=<ds> [--data_path=DIR]

    python -m recbole_llm4sbr.intent plan     <settings> [--work_dir=DIR] [--rows_per_shard=4096]
    python -m recbole_llm4sbr.intent generate <settings> [--executor=local|ray|ray-llm] [--workers=N]
        [--shard=i/N] [--block_rows=N] [--ray_address=auto] [--ray_num_gpus=1] [--ray_num_cpus=1] [--work_dir=DIR]
    python -m recbole_llm4sbr.intent merge    <settings> [--work_dir=DIR]
    python -m recbole_llm4sbr.intent table    <settings> [--force]

The first builds (or refreshes) the intent table for all splits and prints its path and summary; the
second prints what stage 1 made of one session; verify checks every file of the table against the
sha256 its meta.json records (and the arrays for NaN/inf); recover-cache copies every readable answer
of a damaged answers.sqlite into a fresh one (the damaged file is kept as answers.sqlite.corrupt-<time>;
run it while no build is running). plan -> generate -> merge -> table is the same build
across many workers (intent/shards.py, intent/executors.py): plan writes the prompts the answer cache
lacks as Parquet shards, generate answers them in blocks (one process, one --shard=i/N of N
processes, or a Ray actor pool), merge folds the blocks into answers.sqlite, table is the first
command (every answer then comes from the cache). A user error is one line on stderr and exit code 2
(``recbole_llm4sbr.errors.run_command``); ``--debug`` (or LLM4SBR_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from ..errors import run_command
from .errors import IntentError
from .settings import load_settings, normalize_settings, parse_cli

USAGE = "\n\n".join(__doc__.split("\n\n")[1:3])
#: options of the multi-worker commands (not settings: they change where answers are made, never which)
RUN_OPTIONS = {
    "plan": ("work_dir", "rows_per_shard"),
    "generate": ("work_dir", "executor", "workers", "shard", "block_rows", "ray_address", "ray_num_gpus",
                 "ray_num_cpus"),
    "merge": ("work_dir",),
}


def _run(argv: List[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = "build"
    if argv and not argv[0].startswith("-"):
        command, argv = argv[0], argv[1:]
    if command == "table":
        command = "build"
    if command not in ("build", "show", "verify", "recover-cache", *RUN_OPTIONS):
        raise IntentError(f"unknown command {command!r}: use show, verify, recover-cache, plan, generate, merge or "
                          f"table (no command builds the table)\n{USAGE}")
    overrides, flags = parse_cli(argv, flags=("force",) if command == "build" else ())
    session = overrides.pop("session", None)
    options = {k: overrides.pop(k) for k in RUN_OPTIONS.get(command, ()) if k in overrides}
    settings = normalize_settings(load_settings(overrides=overrides))  # typed once, for every command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    if command == "show":
        from .show import show_session

        if session is None:
            raise IntentError("show needs --session=<session_id>")
        show_session(settings, session)
        return 0

    if command in RUN_OPTIONS:
        return _run_stage(command, settings, options)
    if command == "verify":
        return _verify(settings)
    if command == "recover-cache":
        return _recover_cache(settings)

    from .pipeline import build_intent_table, ensure_intent_table
    from .table import read_meta

    _convert_bundled(settings)
    folder = build_intent_table(settings) if "force" in flags else ensure_intent_table(settings)
    summary = (read_meta(folder) or {}).get("summary", {})
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v:.2f} s" if k.startswith("time ") else f"{k:<{width}}  {v}")
    print(f"intent table: {folder}")
    return 0


def _convert_bundled(settings) -> None:
    """A dataset built from the MovieLens-100K inside RecBole's wheel (``ml-100k-session``,
    ``ml-100k-every``) is converted on first use, as training does, so stage 1 can run first."""
    from ..data.converters.movielens import BUNDLED, ensure_default_dataset
    from .settings import dataset_dir

    dataset = str(settings["dataset"])
    if dataset in BUNDLED:
        ensure_default_dataset(dataset_dir(settings).parent, dataset, log=logging.getLogger(__name__).info)


def _verify(settings) -> int:
    """The table these settings use, every file hashed whole: one line, exit 0, or the damaged file."""
    from .pipeline import locate_table
    from .table import verify_table

    folder, _, reason = locate_table(settings)  # a size or checksum mismatch already raises here
    if reason == "missing":
        raise IntentError(f"no intent table at {folder}: build it with python -m recbole_llm4sbr.intent "
                          f"--dataset={settings['dataset']}")
    n = verify_table(folder, full=True)
    print(f"intent table {folder}: {n} files match meta.json, no NaN/inf" + (f" ({reason})" if reason else ""))
    return 0


def _recover_cache(settings) -> int:
    from .cache import CACHE_FILE, check_cache, recover_cache
    from .settings import dataset_dir

    path = dataset_dir(settings) / "intent" / CACHE_FILE
    if not path.is_file():
        raise IntentError(f"no answer cache at {path}: nothing to recover (check --dataset and --data_path)")
    problem = check_cache(path)
    if problem is None:
        print(f"answer cache {path} is sound (SQLite quick_check ok): nothing to recover")
        return 0
    res = recover_cache(path)
    print(f"recovered {res['recovered']} answers into a fresh {path} ({problem}); the damaged file is kept as "
          f"{res['kept']}")
    return 0


def _run_stage(command: str, settings, options) -> int:
    """plan / generate / merge: one line of what was done on stdout."""
    from . import shards

    log = logging.getLogger("recbole_llm4sbr.intent")
    work = options.get("work_dir")
    if command == "plan":
        plan = shards.write_plan(settings, log, rows_per_shard=int(options.get("rows_per_shard")
                                                                   or shards.ROWS_PER_SHARD), work=work)
        m = plan.manifest
        print(f"planned {m['planned']} of {m['prompts']} prompts ({m['cached']} cached) in {len(m['shards'])} "
              f"shard(s): {plan.folder}")
        return 0
    folder = shards.locate_work(settings, log, work=work)
    if command == "merge":
        st = shards.merge_blocks(settings, folder, log)
        print(f"merged {st.blocks} block(s), {st.rows} answers ({st.inserted} new)")
        return 0
    from . import executors

    executor = str(options.get("executor") or "local").strip().lower()
    if executor not in executors.EXECUTORS:
        raise IntentError(f"--executor={executor!r}: choose one of {', '.join(executors.EXECUTORS)}")
    progress = settings.show_progress
    block_rows = int(options["block_rows"]) if options.get("block_rows") else None
    workers = int(options.get("workers") or 1)
    if "shard" in options:
        if executor != "local":
            raise IntentError("--shard=i/N runs one part of the plan in this process: use it without --executor "
                              "(or with --executor=local); Ray splits the plan itself")
        st = executors.generate_local(settings, folder, shards.parse_shard(options["shard"]), block_rows, log, progress)
    elif executor == "local":
        st = executors.generate_local(settings, folder, None, block_rows, log, progress)
    elif executor == "ray":
        st = executors.generate_ray(settings, folder, workers, block_rows,
                                    num_gpus=float(options.get("ray_num_gpus") or 0),
                                    num_cpus=float(options.get("ray_num_cpus") or 1),
                                    address=options.get("ray_address"), logger=log, progress=progress)
    else:
        st = executors.generate_ray_llm(settings, folder, workers, block_rows,
                                        num_gpus=float(options.get("ray_num_gpus") or 1),
                                        address=options.get("ray_address"), logger=log, progress=progress)
    print(f"generated {st.written} answers in {st.blocks} block(s), {st.failed} failed, {st.skipped} already "
          f"in blocks, {st.wall_s:.1f} s: {folder}")
    return 1 if st.failed else 0


#: Ctrl-C during a build: nothing answered is lost (the answer cache commits every chunk)
INTERRUPTED = "interrupted: answers received so far are cached; run again to continue"


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(_run, argv, interrupted=INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
