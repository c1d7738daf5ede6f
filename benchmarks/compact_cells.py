"""Rewrite benchmark cell files written by an earlier version in the current compact form.

    python benchmarks/compact_cells.py results [--root=.]

Earlier versions wrote a cell JSON one number per line (~6,000 lines, its per-sample outcomes) and
named the intent table, the checkpoint and the packaged model by absolute paths. This rewrites every
``<dir>/**/cells/*.json`` with ``store.cell_json`` (lists on one line) and every absolute path under
``--root`` (default: the working directory, i.e. the checkout the cells were trained in) relative to it.
The values are otherwise unchanged (checked by reading each file back before it replaces the old one),
so reports rebuilt with ``--report_only`` give the same numbers. The benchmark reads both forms: this
only makes a results folder smaller and free of one machine's paths, e.g. before committing it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def relative_paths(obj, root: str):
    """``obj`` with every absolute path string under ``root`` made relative to it."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_paths(v, root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        rel = os.path.relpath(obj, root)
        return obj if rel.startswith(os.pardir) else rel
    return obj


def compact(folder: Path, root: str) -> int:
    """Rewrite the cells under ``folder``; returns how many files changed."""
    from recbole_llm4sbr.benchmark.store import cell_json, write_json_atomic

    changed = 0
    for path in sorted(folder.glob("**/cells/*.json")):
        text = path.read_text(encoding="utf-8")
        data = relative_paths(json.loads(text), root)
        new = cell_json(data) + "\n"
        if new == text:
            continue
        assert json.loads(new) == data, path
        write_json_atomic(path, data)
        changed += 1
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", help="a results folder (its */cells/*.json are rewritten)")
    ap.add_argument("--root", default=".", help="absolute paths under this folder become relative to it")
    args = ap.parse_args(argv)
    n = compact(Path(args.results_dir), os.path.abspath(args.root))
    print(f"{n} cell files rewritten under {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
