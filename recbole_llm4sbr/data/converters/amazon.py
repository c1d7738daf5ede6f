"""Amazon Beauty (5-core reviews + metadata, McAuley's 2014 release) -> a session dataset, the
paper's way: a session is one reviewer's reviews in time order (ties: file order) and every prefix
is a sample. Item text: the product title; items without one are dropped before sessions form."""
from __future__ import annotations

import ast
import json
import re

import pandas as pd

from recbole_llm4sbr.data.converters.common import (
    LOGGER, ConversionError, build_dataset, data_path_or_default, duplicate_item, find_raw,
    group_clicks, malformed, read_lines)

REVIEWS = "reviews_Beauty_5.json"
META = "meta_Beauty.json"
HOW = ("download reviews_Beauty_5.json.gz and meta_Beauty.json.gz from "
       "https://jmcauley.ucsd.edu/data/amazon/links.html into that folder (gzipped is fine), or "
       "pass --raw_dir=<folder holding them>")
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def parse_record(line: str):
    """One metadata/review line: strict JSON, else a Python dict literal (the 2014 metadata dump
    is written with repr()); None when neither parses to a dict."""
    for parse in (json.loads, ast.literal_eval):
        try:
            rec = parse(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(rec, dict):
            return rec
    return None


def read_reviews(path):
    """(reviewerID, asin, unixReviewTime) per line, in file order."""
    users, items, times = [], [], []
    for n, line in read_lines(path):
        rec = parse_record(line)
        try:
            users.append(str(rec["reviewerID"]).strip())
            items.append(str(rec["asin"]).strip())
            times.append(int(rec["unixReviewTime"]))
        except (TypeError, KeyError, ValueError):
            raise malformed(path, n, line, "a JSON object with reviewerID, asin and "
                                           "unixReviewTime (integer)") from None
    return users, items, times


def read_titles(path, wanted: set) -> dict:
    """asin -> title for the `wanted` asins. Lines whose asin is visibly unwanted are skipped
    unparsed: the full metadata file is ~10x larger than what the 5-core set needs."""
    titles, where = {}, {}
    for n, line in read_lines(path):
        m = _ASIN.search(line)
        if m and m.group(1) not in wanted:
            continue
        rec = parse_record(line)
        if rec is None or "asin" not in rec:
            raise malformed(path, n, line, "one JSON object or Python dict literal with an asin")
        asin = str(rec["asin"]).strip()
        if asin in where:
            raise duplicate_item(path, asin, where[asin], n)
        if asin in wanted:
            where[asin] = n
        if asin in wanted and isinstance(rec.get("title"), str) and rec["title"].strip():
            titles[asin] = rec["title"]
    return titles


def convert_beauty(raw_dir, data_path=None, dataset: str = "beauty-session", *,
                   split=(0.8, 0.1, 0.1), min_item_count: int = 5, max_len: int = 50,
                   samples: str = "every") -> dict:
    """Beauty -> `<data_path>/<dataset>/` (protocol `every` unless `samples`); returns the statistics."""
    reviews = find_raw(raw_dir, REVIEWS, HOW)
    meta = find_raw(raw_dir, META, HOW)
    users, items, times = read_reviews(reviews)
    titles = read_titles(meta, set(items))
    keep = [i in titles for i in items]
    no_title = {i for i, k in zip(items, keep) if not k}
    if no_title:
        LOGGER.info("%s: %d item(s) have no title in %s; dropped with their %d review(s)",
                    reviews, len(no_title), meta, len(keep) - sum(keep))
    df = pd.DataFrame({"session": users, "item": items, "time": times})[keep]
    raw = {"reviews": len(items), "items_without_title": len(no_title),
           "reviews_dropped_without_title": len(keep) - sum(keep)}
    if df.empty:
        raise ConversionError(f"{meta}: none of the {len(set(items))} reviewed items has a title; "
                              f"check that it is the metadata of the same category as {reviews}")
    return build_dataset(group_clicks(df), titles, data_path_or_default(data_path), dataset,
                         samples, split=split, min_item_count=min_item_count, max_len=max_len,
                         clicks_file=str(reviews), text_file=str(meta), raw=raw)
