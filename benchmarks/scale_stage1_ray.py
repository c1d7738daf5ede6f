"""Stage-1 throughput with 1 vs 2 Ray workers (``generate --executor=ray``), side by side in one run.

    .venv-vllm/bin/python benchmarks/scale_stage1_ray.py                  # defaults below
    .venv-vllm/bin/python benchmarks/scale_stage1_ray.py --sessions 60 --max-tokens 16 --reps 2

Runs where Ray Data is installed (the vLLM environment, ``.ci/vllm_env.sh``). The model is the tests'
tiny random chat model (2-layer Llama, built offline in seconds: ``tests/conftest.build_tiny_chat_model``),
the transformers backend, greedy, one torch thread per worker; the dataset a synthetic one of
``--sessions`` sessions over the tests' 8 items (every prefix asked, 2 views). A local two-node Ray
cluster (1 CPU each, loopback) runs the actor pool; the one-process ``local`` executor is measured
too. Each variant answers the whole plan from an empty block folder (its own actor start and model
load included: that is what a run pays), best of ``--reps``, variants alternating. Reported:
prompts/s per variant and the ratios, with this machine's load average (the CPU is shared: the
ratio, not the absolute figures, is the result).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def dataset_rows(sessions: int, seed: int = 0):
    """``split -> [(session, prefix, target)]``: every prefix of random sessions of 3-6 items."""
    from intent_helpers import ITEMS

    rng = random.Random(seed)
    items = list(ITEMS)
    rows = {"train": [], "valid": [], "test": []}
    for s in range(sessions):
        seq = [rng.choice(items) for _ in range(rng.randint(3, 6))]
        split = "train" if s % 5 < 3 else ("valid" if s % 5 == 3 else "test")
        for k in range(1, len(seq)):
            rows[split].append((str(s), " ".join(seq[:k]), seq[k]))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--block-rows", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_stage1_ray.txt"))
    args = ap.parse_args(argv)

    os.environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0",
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    import ray
    from ray.cluster_utils import Cluster

    from conftest import build_tiny_chat_model
    from intent_helpers import base_settings, write_dataset
    from recbole_llm4sbr.intent.executors import generate_local, generate_ray
    from recbole_llm4sbr.intent.shards import BLOCKS_DIR, write_plan

    work = Path(tempfile.mkdtemp(prefix="scale_stage1_"))
    try:
        model = str(build_tiny_chat_model(work / "model"))
        write_dataset(work / "data", rows=dataset_rows(args.sessions))
        settings = base_settings(work / "data", intent_backend="transformers", intent_model=model,
                                 intent_max_tokens=args.max_tokens, intent_temperature=0.0, intent_samples="all",
                                 intent_device="cpu", intent_num_threads=1, intent_batch_size=args.block_rows)
        plan = write_plan(settings)
        n = plan.planned
        node = {"num_cpus": 1, "object_store_memory": 100 * 1024 ** 2, "node_ip_address": "127.0.0.1"}
        cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False))
        cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            variants = {
                "local (1 process)": lambda: generate_local(settings, plan.folder, block_rows=args.block_rows),
                "ray, 1 worker": lambda: generate_ray(settings, plan.folder, workers=1, block_rows=args.block_rows,
                                                      num_cpus=0.75),
                "ray, 2 workers": lambda: generate_ray(settings, plan.folder, workers=2, block_rows=args.block_rows,
                                                       num_cpus=0.75),
            }
            best = {k: float("inf") for k in variants}
            for _ in range(max(1, args.reps)):
                for name, run in variants.items():
                    shutil.rmtree(plan.folder / BLOCKS_DIR, ignore_errors=True)
                    t0 = time.perf_counter()
                    st = run()
                    dt = time.perf_counter() - t0
                    assert st.written == n and st.failed == 0, (name, st)
                    best[name] = min(best[name], dt)
        finally:
            ray.shutdown()
            cluster.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "stage 1 across Ray workers: tiny random chat model (2-layer Llama), transformers backend, greedy, "
        f"{n} prompts ({args.sessions} sessions x every prefix x 2 views), max_new_tokens {args.max_tokens}, "
        f"blocks of {args.block_rows}, best of {args.reps}",
        f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        "two-node local Ray cluster, 1 CPU per node, one torch thread per worker; times include actor start "
        "and model load",
    ]
    for name, dt in best.items():
        lines.append(f"  {name:<18} {dt:7.2f} s  {n / dt:7.1f} prompts/s")
    r1, r2, loc = best["ray, 1 worker"], best["ray, 2 workers"], best["local (1 process)"]
    lines.append(f"  2 workers vs 1: {r1 / r2:.2f}x the throughput; ray 1 worker vs local: {loc / r1:.2f}x")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
