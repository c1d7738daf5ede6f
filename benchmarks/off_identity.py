"""Does ``intent_strength: off`` give the stock base back at full size? Train LLM4SBR_<Base> with the
intents off and the exact config of a stock benchmark cell, and compare with that cell.

The benchmark never trains a wrapped run whose intents are off: it reads the stock base's run instead
(``Cell.stands_for`` in recbole_llm4sbr/benchmark/plan.py), on the strength of
tests/test_intents_off.py (every supported base, tiny data). This script checks the same claim on a
benchmark's own data and settings:

    OMP_NUM_THREADS=1 python benchmarks/off_identity.py --dataset=ml-100k-session --base=SASRec --seed=2020

It reads the stock base's final cell for that seed from ``results/<dataset>/cells.csv``, trains
``LLM4SBR_<base>`` with that cell's ``config_dict`` plus ``intent_strength=off`` and appends one record
to ``benchmarks/results/off_identity.json``: both runs' best validation score, best epoch, test
metrics and whether they are equal (exactly, as stored to 6 decimals).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recbole_llm4sbr.benchmark.store import write_json_atomic  # noqa: E402
from recbole_llm4sbr.quick_start import run_recbole_llm4sbr  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "off_identity.json"


def stock_cell(dataset: str, base: str, seed: int) -> dict:
    """The stock base's final cell of ``seed`` (the one the report uses), read whole."""
    folder = ROOT / "results" / dataset
    with open(folder / "cells.csv", encoding="utf-8") as f:
        ids = [r["id"] for r in csv.DictReader(f)
               if r["base"] == base and r["variant"] == "base" and int(r["seed"]) == seed]
    if not ids:
        sys.exit(f"no stock {base} cell of seed {seed} in {folder / 'cells.csv'}. Fix: run the benchmark first.")
    with open(folder / "cells" / f"{ids[0]}.json", encoding="utf-8") as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k-session")
    parser.add_argument("--base", default="SASRec")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    cell = stock_cell(args.dataset, args.base, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = {**cell["config_dict"], "checkpoint_dir": tmp, "intent_strength": "off", "show_progress": False}
        start = time.perf_counter()
        result = run_recbole_llm4sbr(f"LLM4SBR_{args.base}", args.dataset, config_dict=config, read_cmd_line=False)
        seconds = time.perf_counter() - start
    digits = int(config.get("metric_decimal_place") or 6)
    off_test = {k: round(float(v), digits) for k, v in result["test_result"].items()}
    off_valid = round(float(result["best_valid_score"]), digits)
    off_epoch = result["built"].trainer.best_epoch
    record = {
        "dataset": args.dataset, "base": args.base, "seed": args.seed, "stock_cell": cell["id"],
        "setting": cell.get("setting"), "train_s": round(seconds, 1),
        "stock": {"best_valid_score": cell["best_valid_score"], "best_epoch": cell["best_epoch"],
                  "test_result": cell["test_result"]},
        "off": {"best_valid_score": off_valid, "best_epoch": off_epoch, "test_result": off_test},
    }
    record["equal"] = (off_valid == cell["best_valid_score"] and off_epoch == cell["best_epoch"]
                       and off_test == {k: float(v) for k, v in cell["test_result"].items()})
    records = json.loads(OUT.read_text()) if OUT.is_file() else []
    records = [r for r in records if (r["dataset"], r["base"], r["seed"]) != (args.dataset, args.base, args.seed)]
    write_json_atomic(OUT, records + [record])
    print(json.dumps(record, indent=1))
    return 0 if record["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
