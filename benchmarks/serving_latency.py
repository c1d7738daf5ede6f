"""Serving latency of LLM4SBR_SRGNN with and without intents at inference (a script, not a test).

Trains (or takes) two checkpoints on ``ml-100k-session`` (default):

* ``semantic``: ``semantic_at_inference: True``, LLM4SBR as in the paper (every session needs its
  intent: a table row, or stage 1 online for a new session);
* ``llm-free``: ``semantic_at_inference: False`` (EIMF): behaviour-only forward, the semantics in the
  training losses only (alignment-uniformity + ``--text_target_weight``).

For each: test Recall@20 / MRR@20 from RecBole's evaluator (best validation epoch), the one-off
loading time of ``recbole_llm4sbr.serve.load``, and the latency of ``recommend`` per test session
(model loaded once; median / p95 / mean over the test prefixes). For the semantic model also the
latency of sessions absent from the intent table (stage 1 online: prompt -> backend -> clean ->
encode -> localize; with ``--intent_backend=text`` that has no LLM cost, only the encoder's).

    python benchmarks/serving_latency.py --epochs=3 --intent_backend=text

Writes a JSON report (``--out``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def test_prefixes(data_path: str, dataset: str):
    path = Path(data_path) / dataset / f"{dataset}.test.inter"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[1].split() for line in lines if line.strip()]


def train(args, name, overrides):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    config_dict = {"epochs": args.epochs, "show_progress": False, "state": "INFO",
                   "checkpoint_dir": str(Path(args.workdir) / "saved" / name),
                   "intent_backend": args.intent_backend, "torch_num_threads": 1, **overrides}
    if args.data_path:
        config_dict["data_path"] = args.data_path
    start = time.perf_counter()
    result = run_recbole_llm4sbr("LLM4SBR_SRGNN", args.dataset, config_dict=config_dict, read_cmd_line=False)
    test = result["test_result"]
    return {"checkpoint": result["model_file"], "train_s": time.perf_counter() - start,
            "epochs": len(result["epoch_times"]), "epoch_s": statistics.mean(result["epoch_times"]),
            "recall@20": float(test["recall@20"]), "mrr@20": float(test["mrr@20"])}


def evaluate(checkpoint, data_path):
    """Test metrics of an existing checkpoint with RecBole's evaluator."""
    import torch

    from recbole_llm4sbr.quick_start import build

    config = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
    if data_path:
        config["data_path"] = os.path.join(data_path, config["dataset"])
    _, (_, _, test_data), _, trainer = build(config)
    test = trainer.evaluate(test_data, load_best_model=True, model_file=str(checkpoint), show_progress=False)
    return {"checkpoint": str(checkpoint), "recall@20": float(test["recall@20"]), "mrr@20": float(test["mrr@20"])}


def latency(checkpoint, sessions, k, data_path):
    from recbole_llm4sbr import serve

    start = time.perf_counter()
    served = serve.load(checkpoint, data_path)
    load_s = time.perf_counter() - start
    recommend = served.recommend
    recommend(sessions[0], k)  # warm-up (answers index, backend/encoder for stage 1 online), not timed
    times, sources = [], {}
    for session in sessions[1:]:
        t0 = time.perf_counter()
        rec = recommend(session, k)
        times.append(time.perf_counter() - t0)
        sources[rec.intent_source or "none"] = sources.get(rec.intent_source or "none", 0) + 1
    return {"load_s": load_s, "sessions": len(times), "sources": sources,
            "median_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * percentile(times, 0.95),
            "mean_ms": 1e3 * statistics.mean(times)}


def novel_sessions(sessions, n):
    """Sessions absent from the table: test prefixes reversed (and de-duplicated against the originals)."""
    seen = {tuple(s) for s in sessions}
    out = []
    for s in sessions:
        r = list(reversed(s))
        if len(r) > 1 and tuple(r) not in seen:
            out.append(r)
            seen.add(tuple(r))
        if len(out) >= n:
            break
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k-session")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the plugin's dataset/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--intent_backend", default="text")
    parser.add_argument("--text_target_weight", type=float, default=0.1,
                        help="EIMF semantic prediction weight of the LLM-free model")
    parser.add_argument("--semantic_checkpoint", default=None, help="skip training the semantic model")
    parser.add_argument("--free_checkpoint", default=None, help="skip training the LLM-free model")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--max_sessions", type=int, default=0, help="0 = every test prefix")
    parser.add_argument("--online_sessions", type=int, default=50,
                        help="unseen sessions timed through stage 1 online (semantic model); 0 = skip")
    parser.add_argument("--workdir", default=str(ROOT / "results" / "serving"))
    parser.add_argument("--out", default=None, help="JSON report (default: <workdir>/serving_latency.json)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from recbole_llm4sbr.paths import default_data_path

    data_root = args.data_path or str(default_data_path())
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)  # RecBole's log/ and log_tensorboard/ land here
    variants = {
        "semantic": ({"semantic_at_inference": True}, args.semantic_checkpoint),
        "llm-free": ({"semantic_at_inference": False, "text_target_weight": args.text_target_weight},
                     args.free_checkpoint),
    }
    report = {"dataset": args.dataset, "intent_backend": args.intent_backend, "k": args.k,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1",
              "variants": {}}
    for name, (overrides, checkpoint) in variants.items():
        print(f"== {name}: {'training' if checkpoint is None else 'evaluating ' + checkpoint}", flush=True)
        trained = train(args, name, overrides) if checkpoint is None else evaluate(checkpoint, args.data_path)
        report["variants"][name] = {"settings": overrides, **trained}

    sessions = test_prefixes(data_root, args.dataset)
    if args.max_sessions:
        sessions = sessions[: args.max_sessions]
    for name, entry in report["variants"].items():
        print(f"== {name}: serving {len(sessions)} test sessions", flush=True)
        entry["serving"] = latency(entry["checkpoint"], sessions, args.k, args.data_path)
        if name == "semantic" and args.online_sessions:
            novel = novel_sessions(sessions, args.online_sessions)
            entry["serving_unseen"] = latency(entry["checkpoint"], novel, args.k, args.data_path)

    out = Path(args.out or Path(args.workdir) / "serving_latency.json")
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(f"dataset {args.dataset}, intent backend {args.intent_backend}, top-{args.k}, {report['machine']}")
    print("| model | test Recall@20 | test MRR@20 | load (s) | sessions | median (ms) | p95 (ms) | mean (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, entry in report["variants"].items():
        rows = [(name + " (table rows)" if name == "semantic" else name, entry["serving"])]
        if "serving_unseen" in entry:
            rows.append((name + " (unseen: stage 1 online)", entry["serving_unseen"]))
        for label, s in rows:
            print(f"| {label} | {entry['recall@20']:.4f} | {entry['mrr@20']:.4f} | {s['load_s']:.2f} | "
                  f"{s['sessions']} | {s['median_ms']:.2f} | {s['p95_ms']:.2f} | {s['mean_ms']:.2f} |")
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
