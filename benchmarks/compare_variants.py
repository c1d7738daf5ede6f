"""One benchmark variant against chosen references, from finished cells (the report compares every
variant with ``base`` and ``arch`` only; an investigation variant needs its own controls, e.g.
``au_hi`` against ``arch_au_hi``, ``shuffled_au_hi`` and ``text_au_hi`` at the same weight).

    python benchmarks/compare_variants.py --results_dir=results/investigation --base=NARM \\
        --variant=au_hi --references=arch_au_hi,shuffled_au_hi,text_au_hi,llm4sbr

Per seed the cell is the one the fair protocol chose: of that (base, variant, seed)'s cells, the best
validation score (on the tuning seed the grid's winner; elsewhere the only run). The statistics are the
report's own (``benchmark.aggregate.compare``: mean ± std over seeds, paired t over seeds, the paired
bootstrap over test samples with its 95 % CI). Nothing here reads test numbers to choose.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def chosen_cells(cells_dir: Path, base: str, variant: str) -> dict:
    """``{seed: cell}``: per seed the cell with the best validation score (the protocol's choice)."""
    out: dict = {}
    for path in sorted(cells_dir.glob(f"{base}__{variant}__seed*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        if cell.get("base") != base or cell.get("variant") != variant or not cell.get("finished"):
            continue
        seed = int(cell["seed"])
        if seed not in out:
            out[seed] = cell
            continue
        score, best = cell["best_valid_score"], out[seed]["best_valid_score"]
        if (score > best) if cell.get("valid_score_bigger", True) else (score < best):
            out[seed] = cell
    return out


def main(argv=None) -> int:
    from recbole_llm4sbr.benchmark.aggregate import compare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results_dir", default="results")
    ap.add_argument("--dataset", default="ml-100k-session")
    ap.add_argument("--base", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--references", required=True, help="comma list of variants")
    ap.add_argument("--metrics", default="recall@20,mrr@20")
    args = ap.parse_args(argv)
    cells_dir = Path(args.results_dir) / args.dataset / "cells"
    mine = chosen_cells(cells_dir, args.base, args.variant)
    if not mine:
        print(f"no finished cells of {args.base} / {args.variant} in {cells_dir}", file=sys.stderr)
        return 2
    print(f"{args.base} / {args.variant}: seeds {sorted(mine)}; cells in {cells_dir}")
    print("| reference | metric | variant | reference | Δ [95 % CI] (bootstrap) | t p | seeds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for ref in [r.strip() for r in args.references.split(",") if r.strip()]:
        other = chosen_cells(cells_dir, args.base, ref)
        for metric in [m.strip() for m in args.metrics.split(",") if m.strip()]:
            c = compare(mine, other, metric)
            b = c.get("boot")
            ci = f"{b['diff']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}]" if b else c.get("boot_reason", "n/a")
            p = "n/a" if c["p"] is None else f"{c['p']:.3f}"
            ref_mean = "n/a" if c["ref mean"] is None else f"{c['ref mean']:.4f} ± {c['ref std'] or 0:.4f}"
            print(f"| {ref} | {metric} | {c['mean']:.4f} ± {c['std'] or 0:.4f} | {ref_mean} | {ci} | {p} | {c['pairs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
