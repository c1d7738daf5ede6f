"""Stage 2 on 1 and N processes, side by side in one run (a script, not a test).

For each ``--nprocs`` value the same training (``run_recbole_llm4sbr``, ``--nproc=N``; gloo on the
CPU, nccl with ``--gpu_id=0,1,...``) on the same data and seed: wall time of the whole run (spawn, data
loading in every rank, training, the launcher's one-process test), mean training-epoch time (rank 0's
clock), test Recall/MRR@20 of the best checkpoint (one-process evaluation), and for N > 1 the
validation score early stopping saw (RecBole's distributed average: padded shards, ranks weighed by
batch count) next to the one-process validation of the same checkpoint. Each value of N trains from
the same seed, but the ranks shard every batch (``train_batch_size`` is split over them) and shuffle
with torch's DistributedSampler, so N > 1 is another sample order, not the same run. Ratios are
measured side by side; on a shared machine the ``load`` column says how busy it was.

    python benchmarks/ddp_scaling.py --dataset=ml-100k-session --data_path=/tmp/data --epochs=2 \\
        --intent_backend=text [--nprocs=1,2] [--key=value ...]

Writes a JSON report (``--out``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(model, dataset, nproc, overrides, workdir):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    config = {**overrides, "nproc": nproc, "port": free_port(),
              "checkpoint_dir": str(Path(workdir) / f"saved-nproc{nproc}")}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_recbole_llm4sbr(model, dataset, read_cmd_line=False, config_dict=config)
    wall = time.perf_counter() - start
    times = result["epoch_times"]
    test = result["test_result"]
    return {"nproc": nproc, "wall_s": round(wall, 2), "epoch_s": round(sum(times) / len(times), 3),
            "epochs": len(times), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "recall@20": float(test["recall@20"]), "mrr@20": float(test["mrr@20"]),
            "valid_one_process": float(result["best_valid_score"]),
            "valid_ddp": result.get("ddp_best_valid_score"), "model_file": result["model_file"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="LLM4SBR_SRGNN")
    parser.add_argument("--dataset", default="ml-100k-session")
    parser.add_argument("--nprocs", default="1,2", help="comma separated process counts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_scaling.json"))
    parser.add_argument("--workdir", default="ddp_scaling_runs", help="checkpoints of every run")
    args, rest = parser.parse_known_args(argv)
    overrides = {"show_progress": False, "state": "WARNING"}
    for arg in rest:
        key, _, value = arg[2:].partition("=")
        overrides[key] = value
    rows = [one(args.model, args.dataset, int(n), overrides, args.workdir) for n in args.nprocs.split(",")]
    base = rows[0]
    for row in rows:
        row["epoch_speedup"] = round(base["epoch_s"] / row["epoch_s"], 3)
        row["wall_speedup"] = round(base["wall_s"] / row["wall_s"], 3)
    report = {"model": args.model, "dataset": args.dataset, "overrides": overrides, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    print("| nproc | epoch s | epoch speed-up | wall s | test R@20 | test MRR@20 | valid (1 proc) | valid (DDP) | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nproc']} | {r['epoch_s']} | {r['epoch_speedup']} | {r['wall_s']} | {r['recall@20']:.4f} | "
              f"{r['mrr@20']:.4f} | {r['valid_one_process']:.4f} | {r['valid_ddp'] if r['valid_ddp'] is not None else '-'} "
              f"| {r['load_before']}-{r['load_after']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
