"""Exact vs approximate localization at catalogue scale (a script, not a test).

A synthetic catalogue of clustered unit vectors (``n / 100`` topics, cosine ~0.7 to its topic) and
queries each near one item, at the text encoder's width (d = 384). For each catalogue size and each
search (``exact``: stage 1's chunked numpy search, or torch matmul + topk on a GPU with
``--device=cuda``; ``ivf`` / ``hnsw``: the faiss indexes of ``intent.localization.ANN_PARAMS``):
build and search time, recall@r against the exact top-r and the mean cosine between the approximate
and exact localized vectors (Eq. 5). One run, side by side; one thread unless ``--threads``.

    python benchmarks/scale_localization.py --sizes=200000,1000000 --queries=2000

Writes a JSON report (``--out``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clustered(n, d, m, seed=0, block=100_000):
    """Items (float32 [n, d], unit rows) generated in blocks, and ``m`` queries near random items."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = max(8, n // 100)
    topics = rng.normal(size=(k, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    items = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, block):
        b = min(block, n - s)
        x = topics[rng.integers(0, k, b)] + rng.standard_normal((b, d), dtype=np.float32) / np.float32(np.sqrt(d))
        items[s : s + b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = items[rng.integers(0, n, m)] + rng.standard_normal((m, d), dtype=np.float32) * np.float32(0.5 / np.sqrt(d))
    return items, q / np.linalg.norm(q, axis=1, keepdims=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--topr", type=int, default=5)
    parser.add_argument("--kinds", default="ivf,hnsw", help="approximate searches to compare with exact")
    parser.add_argument("--hnsw_max", type=int, default=200_000,
                        help="skip hnsw above this many items (its single-thread build is the slowest part)")
    parser.add_argument("--device", default="cpu", help="exact search device (cuda: torch matmul + topk)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_localization.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import faiss
    import numpy as np

    from recbole_llm4sbr.intent.localization import ANN_PARAMS, Search, build_index, localize, weighted_sum

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        t0 = time.perf_counter()
        items, queries = clustered(n, args.dim, args.queries)
        print(f"n={n}: catalogue generated in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        ev, ei, _ = localize(queries, items, args.topr, search=Search("exact", threshold=10**12, device=args.device))
        exact_s = time.perf_counter() - t0
        rows.append({"items": n, "search": f"exact ({args.device})", "build_s": 0.0, "search_s": round(exact_s, 2),
                     "recall": 1.0, "mean_cosine": 1.0})
        print(rows[-1], flush=True)
        for kind in [k for k in args.kinds.split(",") if k]:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"n={n}: hnsw skipped (--hnsw_max={args.hnsw_max})", flush=True)
                continue
            t0 = time.perf_counter()
            index = build_index(faiss, items, kind)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            sims, ai = index.search(queries, args.topr)
            search_s = time.perf_counter() - t0
            del index
            av = weighted_sum(items, ai, sims)  # Eq. 5, as localize does with these results
            recall = float(np.mean([len(set(a) & set(e)) / args.topr for a, e in zip(ai, ei)]))
            cosine = float(np.mean(np.sum(av * ev, 1) / (np.linalg.norm(av, axis=1) * np.linalg.norm(ev, axis=1))))
            rows.append({"items": n, "search": kind, "build_s": round(build_s, 2), "search_s": round(search_s, 2),
                         "recall": round(recall, 4), "mean_cosine": round(cosine, 5)})
            print(rows[-1], flush=True)
        del items, queries

    report = {"dim": args.dim, "queries": args.queries, "topr": args.topr, "threads": args.threads,
              "ann_params": ANN_PARAMS, "machine": platform.processor() or platform.machine(),
              "faiss": faiss.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n| items | search | build s | search s ({args.queries} queries) | recall@{args.topr} | mean cosine |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['items']:,} | {r['search']} | {r['build_s']} | {r['search_s']} | {r['recall']} | {r['mean_cosine']} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
