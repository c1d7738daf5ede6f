"""Latency of the HTTP server (``recbole_llm4sbr.server``) next to direct ``recommend`` calls (a script).

One run, one checkpoint, one machine: the same sessions are answered

* ``direct``: ``ServedModel.recommend`` in this process, sequentially, then from C threads at once;
* ``http``: ``POST /recommend`` to the server on 127.0.0.1 (in this process, its own threads), from
  1 client and from C concurrent clients (one keep-alive connection each).

Latency is per request, measured by the caller (for HTTP: JSON encoding, the loopback round trip and
the server's parsing included); p50 / p99 / mean and the throughput of each mode. Every answer is
checked against the sequential one (items, order and scores): ``mismatches`` must be 0.

Without ``--checkpoint`` a synthetic session dataset (``--sessions`` sessions over ``--items`` items,
with item texts) is written under ``--workdir`` and ``LLM4SBR_SRGNN`` trained on it for one epoch,
stage 1 with the ``text`` backend (the answer is the prefix's item names; the encoder is real), so
the script needs no download and a couple of minutes on a small CPU box.

    python benchmarks/serving_http.py --clients=4 --requests=300

Writes a JSON report (``--out``, default ``benchmarks/results/serving_http.json``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving_latency import percentile, test_prefixes  # noqa: E402


def write_sessions(folder: Path, name: str, n_sessions: int, n_items: int, seed: int = 0) -> None:
    """Sessions drawn from a few topics (some signal to learn), the plugin's files and item texts."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    topics = [list(range(1, n_items + 1))[i::5] for i in range(5)]
    rows = []
    for s in range(n_sessions):
        topic = topics[s % len(topics)]
        start, length = rng.randrange(len(topic)), rng.randint(3, 10)
        seq = [str(1000 + topic[(start + j) % len(topic)]) for j in range(length)]
        rows.append((f"s{s}", seq[:-1], seq[-1]))
    cut1, cut2 = int(n_sessions * 0.8), int(n_sessions * 0.9)
    header = "session_id:token\titem_id_list:token_seq\titem_id:token\n"
    for part, chunk in (("train", rows[:cut1]), ("valid", rows[cut1:cut2]), ("test", rows[cut2:])):
        with open(folder / f"{name}.{part}.inter", "w", encoding="utf-8") as f:
            f.write(header + "".join(f"{sid}\t{' '.join(p)}\t{t}\n" for sid, p, t in chunk))
    genres = ["Drama", "Comedy", "Horror", "Western", "Documentary"]
    with open(folder / f"{name}.itemtext", "w", encoding="utf-8") as f:
        f.write("item_id\ttext\n")
        f.writelines(f"{1000 + i}\tFilm {i} ({1970 + i % 40}), {genres[i % 5]}\n" for i in range(1, n_items + 1))


def train(workdir: Path, dataset: str) -> str:
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    result = run_recbole_llm4sbr("LLM4SBR_SRGNN", dataset, read_cmd_line=False, config_dict={
        "data_path": str(workdir / "data"), "epochs": 1, "show_progress": False, "state": "WARNING",
        "checkpoint_dir": str(workdir / "saved"), "embedding_size": 32, "intent_backend": "text",
        "torch_num_threads": 1})
    return result["model_file"]


def summary(times, wall_s):
    return {"requests": len(times), "p50_ms": 1e3 * percentile(times, 0.50), "p99_ms": 1e3 * percentile(times, 0.99),
            "mean_ms": 1e3 * statistics.mean(times), "throughput_rps": len(times) / wall_s}


def timed_direct(served, calls, threads):
    def one(call):
        t0 = time.perf_counter()
        rec = served.recommend(*call)
        return time.perf_counter() - t0, rec.items, rec.scores

    start = time.perf_counter()
    if threads == 1:
        out = [one(c) for c in calls]
    else:
        with ThreadPoolExecutor(threads) as pool:
            out = list(pool.map(one, calls))
    return out, time.perf_counter() - start


def timed_http(port, calls, clients):
    parts = [list(range(i, len(calls), clients)) for i in range(clients)]
    out = [None] * len(calls)

    def client(indices):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for i in indices:
                items, k = calls[i]
                t0 = time.perf_counter()
                conn.request("POST", "/recommend", body=json.dumps({"items": items, "k": k}),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = json.loads(response.read())
                elapsed = time.perf_counter() - t0
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {body}")
                out[i] = (elapsed, [r["item"] for r in body["items"]], [r["score"] for r in body["items"]])
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, parts))
    return out, time.perf_counter() - start


def mismatches(out, expected):
    bad = 0
    for (_, items, scores), (want_items, want_scores) in zip(out, expected):
        if items != want_items or any(abs(a - b) > 1e-5 * max(1.0, abs(b)) for a, b in zip(scores, want_scores)):
            bad += 1
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a trained .pth (default: train one on synthetic sessions)")
    parser.add_argument("--data_path", default=None, help="folder holding the checkpoint's dataset")
    parser.add_argument("--sessions", type=int, default=1500, help="synthetic sessions (without --checkpoint)")
    parser.add_argument("--items", type=int, default=300, help="synthetic catalogue size (without --checkpoint)")
    parser.add_argument("--requests", type=int, default=300, help="requests per mode")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients / threads")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--workdir", default=None,
                        help="where the synthetic data, checkpoint and RecBole's log go (default: a temporary folder, removed)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving_http.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from recbole_llm4sbr.serve import ServedModel
    from recbole_llm4sbr.server import make_server

    temporary = tempfile.TemporaryDirectory(prefix="serving_http_") if args.workdir is None else None
    workdir = Path(args.workdir or temporary.name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out).resolve()
    here = os.getcwd()
    os.chdir(workdir)  # RecBole's log/ lands here
    checkpoint, data_path, trained_s = args.checkpoint, args.data_path, None
    if checkpoint is None:
        name = "synthetic"
        write_sessions(workdir / "data" / name, name, args.sessions, args.items)
        print(f"== training LLM4SBR_SRGNN on {args.sessions} synthetic sessions (stage 1: text backend)", flush=True)
        t0 = time.perf_counter()
        checkpoint = train(workdir, name)
        trained_s = time.perf_counter() - t0
    served = ServedModel(checkpoint, data_path)
    dataset = str(served.config["dataset"])
    sessions = test_prefixes(os.path.dirname(served.config["data_path"]), dataset)
    rng = random.Random(0)
    calls = [(rng.choice(sessions), args.k) for _ in range(args.requests)]
    server = make_server(served, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    report = {"model": served.model_name, "dataset": dataset, "semantic_at_inference": bool(served.semantic),
              "catalogue": int(served.dataset.item_num - 1), "k": args.k, "requests_per_mode": args.requests,
              "clients": args.clients, "train_s": trained_s,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1, "
                         f"load average {os.getloadavg()[0]:.1f} at start",
              "note": "in-table sessions (intent table rows); latency measured by the caller", "modes": {}}
    try:
        timed_direct(served, calls[:20], 1)  # warm-up, not timed
        timed_http(port, calls[:20], 1)
        baseline, wall = timed_direct(served, calls, 1)
        expected = [(items, scores) for _, items, scores in baseline]
        runs = {"direct, 1 thread": (baseline, wall)}
        runs[f"direct, {args.clients} threads"] = timed_direct(served, calls, args.clients)
        runs["http, 1 client"] = timed_http(port, calls, 1)
        runs[f"http, {args.clients} clients"] = timed_http(port, calls, args.clients)
        for mode, (out, wall) in runs.items():
            report["modes"][mode] = {**summary([t for t, _, _ in out], wall), "mismatches": mismatches(out, expected)}
            print(f"   {mode}: done", flush=True)
    finally:
        server.shutdown()
        server.server_close()
        os.chdir(here)
        if temporary is not None:
            temporary.cleanup()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_path)
    print(f"\n{report['model']} on {dataset} ({report['catalogue']} items), top-{args.k}, {report['machine']}")
    print("| mode | requests | p50 (ms) | p99 (ms) | mean (ms) | throughput (req/s) | answers unlike sequential |")
    print("|---|---|---|---|---|---|---|")
    for mode, m in report["modes"].items():
        print(f"| {mode} | {m['requests']} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['mean_ms']:.2f} | "
              f"{m['throughput_rps']:.0f} | {m['mismatches']} |")
    print(f"\nreport: {out_path}")
    return 0 if all(m["mismatches"] == 0 for m in report["modes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
