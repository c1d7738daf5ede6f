"""`python -m recbole_llm4sbr.data.converters {ml-1m,ml-100k,beauty} [--raw_dir=DIR]
[--data_path=DIR] [--dataset=NAME] [--split=0.8,0.1,0.1] [--min_item_count=5] [--max_len=50]
[--samples=last|every|eval_every]`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recbole_llm4sbr.data.converters import CONVERTERS, ConversionError
from recbole_llm4sbr.data.converters.common import data_path_or_default


def _split(text: str):
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, e.g. "
                                         f"0.8,0.1,0.1; got {text!r}")
    return parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recbole_llm4sbr.data.converters",
                                description="Convert raw data into a RecBole session dataset.")
    p.add_argument("source", choices=sorted(CONVERTERS))
    p.add_argument("--raw_dir", default=None,
                   help="raw files (default: <data_path>/raw/<source>; ml-100k: RecBole's copy)")
    p.add_argument("--data_path", default=None, help="output root (default: the plugin's dataset/)")
    p.add_argument("--dataset", default=None, help="output name (default: <source>-session)")
    p.add_argument("--split", type=_split, default=(0.8, 0.1, 0.1),
                   help="train,valid,test fractions of the sessions in time order (0.8,0.1,0.1)")
    p.add_argument("--min_item_count", type=int, default=5,
                   help="drop items with fewer clicks (5)")
    p.add_argument("--max_len", type=int, default=50,
                   help="prefixes keep their last N items (50)")
    p.add_argument("--samples", default=None, choices=["last", "every", "eval_every"],
                   help="samples per session: last (ML-1M, the movielens default), every prefix (Beauty, "
                        "the beauty default), eval_every (train: last; valid/test: every prefix)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    data_path = data_path_or_default(a.data_path)
    raw_dir = a.raw_dir
    if raw_dir is None and a.source != "ml-100k":
        raw_dir = Path(data_path) / "raw" / a.source
    kwargs = dict(split=a.split, min_item_count=a.min_item_count, max_len=a.max_len)
    if a.samples is not None:
        kwargs["samples"] = a.samples
    try:
        CONVERTERS[a.source](raw_dir, data_path, a.dataset or f"{a.source}-session", **kwargs)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(data_path) / (a.dataset or f"{a.source}-session"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
