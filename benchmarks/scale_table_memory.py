"""Peak memory of training with a huge mapped intent table vs without intents (a script).

Writes a synthetic session dataset (``--sessions`` samples over ``--items`` items) and a synthetic
intent table of ``--prefixes`` rows (2 views x 384, float16: 5M rows are 7.7 GB on disk) holding the
dataset's prefixes at random rows among filler prefixes; the table is written by stage 1's own
writer (``write_intent_table``, in row blocks from a scratch memmap filled in chunks) with the meta
stage 1 would write, so training finds it up to date. Then, each in its own subprocess, one short
training (``--epochs``, RecBole's trainer, validation and test included) of:

* ``base``: the stock base model (``--base``, GRU4Rec by default) on the same files, no intents;
* ``mapped``: ``LLM4SBR_<base>`` with ``intent_mmap: True`` (the table mapped; batches gather rows);
* ``copied``: ``LLM4SBR_<base>`` with ``intent_mmap: False`` (the dataset's rows copied in float32).

Each child samples its own ``/proc/self/status`` every 10 ms: peak ``VmRSS`` (= ``VmHWM``: all
resident pages, including the table's file pages the process has mapped in; those live in the page
cache, shared by every rank on the node) and peak ``RssAnon`` (private memory: what each rank pays
alone). Ratios against ``base`` side by side in one run. The table is deleted afterwards.

    python benchmarks/scale_table_memory.py --prefixes=5000000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASET = "scalemem"
HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


def write_dataset(root: Path, sessions: int, items: int, seed: int = 0) -> Path:
    """Sessions walking a few hundred item topics; train/valid/test 80/10/10 and an itemtext file."""
    rng = random.Random(seed)
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    topics = [list(range(1, items + 1))[i::200] for i in range(200)]
    rows = []
    for s in range(sessions):
        topic = topics[rng.randrange(len(topics))]
        length = rng.randint(3, 12)
        start = rng.randrange(len(topic))
        seq = [str(topic[(start + k * rng.randint(1, 3)) % len(topic)]) for k in range(length)]
        rows.append((f"s{s}", seq[:-1], seq[-1]))
    cut1, cut2 = int(sessions * 0.8), int(sessions * 0.9)
    for part, chunk in (("train", rows[:cut1]), ("valid", rows[cut1:cut2]), ("test", rows[cut2:])):
        with open(folder / f"{DATASET}.{part}.inter", "w", encoding="utf-8") as f:
            f.write(HEADER)
            f.writelines(f"{sid}\t{' '.join(p)}\t{t}\n" for sid, p, t in chunk)
    with open(folder / f"{DATASET}.itemtext", "w", encoding="utf-8") as f:
        f.write("item_id\ttext\n")
        f.writelines(f"{i}\tItem {i} of topic {i % 200}\n" for i in range(1, items + 1))
    return folder


def config_dict(args, mmap=None):
    out = {"data_path": str(args.workdir), "show_progress": False, "state": "WARNING", "epochs": args.epochs,
           "train_batch_size": args.batch_size, "eval_batch_size": args.batch_size, "torch_num_threads": 1,
           "checkpoint_dir": str(Path(args.workdir) / "saved"), "intent_backend": "text",
           "intent_storage_dtype": "float16", "embedding_size": 64, "hidden_size": 64,
           "MAX_ITEM_LIST_LENGTH": 12}
    if mmap is not None:
        out["intent_mmap"] = mmap
    return out


def write_table(args) -> Path:
    """The synthetic table, where stage 2 looks for it; returns its folder."""
    import numpy as np

    from recbole_llm4sbr.data.intents import stage1_settings
    from recbole_llm4sbr.intent.identity import table_folder, table_identity
    from recbole_llm4sbr.intent.inputs import file_sha1, itemtext_path, read_samples, unique_prefixes
    from recbole_llm4sbr.intent.settings import intent_views, normalize_settings
    from recbole_llm4sbr.intent.table import FORMAT_VERSION, write_intent_table
    from recbole_llm4sbr.quick_start import make_config

    config = make_config(f"LLM4SBR_{args.base}", DATASET, config_dict=config_dict(args), read_cmd_line=False)
    settings = normalize_settings(stage1_settings(config))
    folder = table_folder(settings, "text")
    need = list(unique_prefixes(read_samples(settings)))
    n, views, d = args.prefixes, list(intent_views(settings)), 384
    if len(need) > n:
        raise SystemExit(f"--prefixes={n} is smaller than the dataset's {len(need)} prefixes")
    rng = np.random.default_rng(0)
    at = rng.choice(n, len(need), replace=False)  # the dataset's prefixes at random rows
    keys = [f"~filler{i}" for i in range(n)]
    for row, key in zip(at, need):
        keys[row] = key
    scratch_path = Path(args.workdir) / "scratch.npy"
    scratch = np.lib.format.open_memmap(scratch_path, mode="w+", dtype=np.float16, shape=(n, len(views), d))
    pool = rng.standard_normal((4096, len(views), d), dtype=np.float32).astype(np.float16) * np.float16(0.05)
    t0 = time.perf_counter()
    for s in range(0, n, 200_000):
        b = min(200_000, n - s)
        scratch[s : s + b] = pool[rng.integers(0, len(pool), b)]
    scratch.flush()
    item_tokens = [str(i) for i in range(1, args.items + 1)]
    item_vectors = rng.standard_normal((len(item_tokens), d), dtype=np.float32)
    item_vectors /= np.linalg.norm(item_vectors, axis=1, keepdims=True)
    meta = {"format_version": FORMAT_VERSION, "dataset": DATASET, "backend": "text", "views": views,
            "encoder": settings.get("intent_encoder"), "topr": settings.get("intent_topr"),
            "table_settings": table_identity(settings, "text"), "itemtext_sha1": file_sha1(itemtext_path(settings)),
            "synthetic": "benchmarks/scale_table_memory.py"}
    write_intent_table(folder, meta, keys, scratch, scratch, [], item_tokens=item_tokens, item_vectors=item_vectors,
                       storage_dtype="float16")
    del scratch
    scratch_path.unlink()
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"table {folder}: {n} prefixes ({len(need)} of the dataset's), {size / 1e9:.2f} GB, "
          f"written in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def existing_table(args):
    """The table of an earlier run in ``--workdir`` when stage 2 would use it as it is, else None."""
    if not (Path(args.workdir) / DATASET / f"{DATASET}.train.inter").is_file():
        return None
    from recbole_llm4sbr.data.intents import stage1_settings
    from recbole_llm4sbr.intent.pipeline import locate_table
    from recbole_llm4sbr.quick_start import make_config

    config = make_config(f"LLM4SBR_{args.base}", DATASET, config_dict=config_dict(args), read_cmd_line=False)
    folder, _, reason = locate_table(stage1_settings(config))
    print(f"reusing {folder}" if reason is None else f"no table to reuse ({reason})", flush=True)
    return folder if reason is None else None


class PeakSampler:
    """Peaks of VmRSS / RssAnon / RssFile of this process (kB), sampled every ``every`` s."""

    FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")

    def __init__(self, every=0.01):
        self.peak = dict.fromkeys(self.FIELDS, 0)
        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in self.peak:
                    self.peak[name] = max(self.peak[name], int(value.split()[0]))

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def child(args):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    model = args.base if args.child == "base" else f"LLM4SBR_{args.base}"
    mmap = {"base": None, "mapped": True, "copied": False}[args.child]
    t0 = time.perf_counter()
    with PeakSampler() as peaks:
        result = run_recbole_llm4sbr(model, DATASET, config_dict=config_dict(args, mmap), read_cmd_line=False)
    # VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak into ru_maxrss
    # across exec (the parent has just written gigabytes through a mapping)
    hwm = peaks.peak["VmHWM"]
    test = {k: round(float(v), 4) for k, v in (result.get("test_result") or {}).items()}
    print("RESULT " + json.dumps({"run": args.child, "model": model, "seconds": round(time.perf_counter() - t0, 1),
                                  "peak_rss_mb": round(max(hwm, peaks.peak["VmRSS"]) / 1024, 1),
                                  "peak_anon_mb": round(peaks.peak["RssAnon"] / 1024, 1),
                                  "peak_file_mb": round(peaks.peak["RssFile"] / 1024, 1), "test": test}), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefixes", type=int, default=5_000_000)
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--base", default="GRU4Rec")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--runs", default="base,mapped,copied")
    parser.add_argument("--workdir", default="/tmp/llm4sbr_scale_table")
    parser.add_argument("--keep", action="store_true", help="keep the table and dataset afterwards")
    parser.add_argument("--reuse", action="store_true", help="use the table and dataset of a --keep run")
    parser.add_argument("--parallel", action="store_true", help="run the trainings at the same time")
    parser.add_argument("--child", choices=("base", "mapped", "copied"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_table_memory.json"))
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        folder = existing_table(args) if args.reuse else None
        if folder is None:
            write_dataset(work, args.sessions, args.items)
            folder = write_table(args)
        results = []
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        runs = [r for r in args.runs.split(",") if r]
        flags = [a for a in (argv or sys.argv[1:]) if not a.startswith(("--runs", "--parallel", "--reuse"))]
        finished = []  # (run, stdout, stderr, returncode)

        def start(run):
            return subprocess.Popen([sys.executable, __file__, f"--child={run}"] + flags, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        if args.parallel:  # together: peaks are per process either way; the page cache is shared
            procs = [(run, start(run)) for run in runs]
            finished = [(run, *p.communicate(), p.returncode) for run, p in procs]
        else:
            for run in runs:
                p = start(run)
                finished.append((run, *p.communicate(), p.returncode))
        for run, stdout, stderr, rc in finished:
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if rc != 0 or not lines:
                raise SystemExit(f"{run} failed ({rc}):\n{stderr[-4000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(results[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = next((r for r in results if r["run"] == "base"), None)
    for r in results:
        if base is not None:
            r["rss_ratio"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
            r["anon_ratio"] = round(r["peak_anon_mb"] / base["peak_anon_mb"], 3)
    report = {"command": "python benchmarks/scale_table_memory.py " + " ".join(argv or sys.argv[1:]),
              "prefixes": args.prefixes, "sessions": args.sessions, "items": args.items, "base": args.base,
              "epochs": args.epochs, "table": str(folder), "runs": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n{args.prefixes:,}-prefix float16 table, {args.sessions:,} sessions, {args.base}, {args.epochs} epoch(s)")
    print("| run | peak RSS MB | x base | peak anon MB | x base | peak file-backed MB | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | {r['peak_rss_mb']} | {r.get('rss_ratio', '-')} | {r['peak_anon_mb']} | "
              f"{r.get('anon_ratio', '-')} | {r['peak_file_mb']} | {r['seconds']} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
