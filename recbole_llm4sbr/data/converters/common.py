"""Shared steps of every converter: clicks -> sessions -> filtered -> split -> samples -> files.

pandas/numpy/stdlib only (and the plugin's stdlib-only ``errors``): no RecBole, no torch (stage 1 reads these files in environments without
them). The on-disk contract is docs/DESIGN.md, "Session dataset on disk".
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from recbole_llm4sbr.errors import LLM4SBRError, utf8_error

LOGGER = logging.getLogger("recbole_llm4sbr")

PROTOCOLS = ("last", "every", "eval_every")
SPLITS = ("train", "valid", "test")
INTER_HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token"
TEXT_HEADER = "item_id\ttext"
STAT_COLUMNS = ("sessions", "samples", "items", "clicks", "avg_len")
_SPACE = re.compile(r"\s")


class ConversionError(LLM4SBRError):
    """Raw data that cannot be converted; the message names the file and how to fix it."""


class Session(NamedTuple):
    id: str
    items: tuple  # item tokens, oldest first
    time: float  # time of the session's last raw click: orders the split


class Sample(NamedTuple):
    session_id: str
    prefix: tuple  # item tokens before the target, oldest first, never the target itself
    target: str


# ---------------------------------------------------------------------------------------------
# raw files
def data_path_or_default(data_path=None) -> Path:
    """`data_path`, or the plugin's `dataset/` folder (recbole_llm4sbr.paths) when None."""
    if data_path is None:
        from recbole_llm4sbr.paths import default_data_path
        return default_data_path()
    return Path(data_path)


def find_raw(folder, name: str, how: str) -> Path:
    """`folder/name`, or `folder/name.gz` when only the compressed download is there; a clear error
    saying `how` to get it when neither exists."""
    path = Path(folder) / name
    for p in (path, path.with_name(name + ".gz")):
        if p.is_file():
            return p
    raise ConversionError(f"{path}: raw file not found; {how}")


def read_lines(path: Path, encoding: str = "utf-8"):
    """Yield (1-based line number, line without its newline) for every non-blank line, reading
    .gz transparently; an error naming the file when it holds no such line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    empty = True
    try:
        with opener(path, "rt", encoding=encoding, newline="\n") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    empty = False
                    yield n, line
    except UnicodeDecodeError:
        if encoding.replace("-", "").lower() != "utf8":
            raise ConversionError(f"{path} is not {encoding} text; download it again") from None
        raise utf8_error(path, ConversionError, opener) from None
    if empty:
        raise ConversionError(f"{path}: the file is empty; download it again (or point "
                              f"--raw_dir at a folder with the complete file)")


def malformed(path, lineno: int, line: str, expected: str) -> ConversionError:
    """The error for a line that does not parse: file, line number, the line, the format."""
    shown = line if len(line) <= 120 else line[:117] + "..."
    return ConversionError(f"{path}, line {lineno}: malformed line {shown!r}; expected {expected}. "
                           f"Fix or delete that line (or download the file again)")


def duplicate_item(path, item: str, first: int, again: int) -> ConversionError:
    """The error for an item id on two lines of an item file: its text (hence its embedding) would
    silently be the last line's."""
    return ConversionError(f"{path}: item id {item!r} is on line {first} and again on line {again}; an item "
                           f"has one line (its text). Fix: delete one of the two lines (or download the "
                           f"file again)")


# ---------------------------------------------------------------------------------------------
# sessions
def group_clicks(clicks: pd.DataFrame) -> list[Session]:
    """Clicks (columns `session`, `item`, `time`; rows in file order) -> sessions.

    Items are ordered by time, ties kept in file order (an explicit position key, so the order
    never depends on the sort algorithm's stability); a session's time is its last click's.
    """
    if clicks.empty:
        return []
    df = pd.DataFrame({
        "session": clicks["session"].astype(str).to_numpy(),
        "item": clicks["item"].astype(str).to_numpy(),
        "time": clicks["time"].to_numpy(),
        "pos": np.arange(len(clicks)),
    }).sort_values(["session", "time", "pos"])
    sid = df["session"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]).tolist()
    ends = starts[1:] + [len(sid)]
    items, times, sid = df["item"].tolist(), df["time"].tolist(), sid.tolist()
    return [Session(sid[a], tuple(items[a:b]), float(times[b - 1])) for a, b in zip(starts, ends)]


def filter_sessions(sessions: Iterable[Session], min_item_count: int = 5,
                    min_len: int = 2) -> list[Session]:
    """Drop items clicked fewer than `min_item_count` times (over all sessions) and sessions
    shorter than `min_len`, repeated until stable: dropping a session can push an item under the
    threshold and dropping an item can shorten a session, so one pass does not meet both rules.
    A session keeps the time of its last raw click."""
    sessions = list(sessions)
    while True:
        counts = Counter(i for s in sessions for i in s.items)
        rare = {i for i, c in counts.items() if c < min_item_count}
        kept = []
        for s in sessions:
            items = tuple(i for i in s.items if i not in rare) if rare else s.items
            if len(items) >= min_len:
                kept.append(s._replace(items=items))
        if not rare and len(kept) == len(sessions):
            return kept
        sessions = kept


def _check_split(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ConversionError(f"split must be three positive fractions summing to 1 "
                         f"(train, valid, test), e.g. 0.8,0.1,0.1; got {fractions!r}")
    return f  # type: ignore[return-value]


def split_sessions(sessions: Iterable[Session],
                   fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, list[Session]]:
    """Split by session order (last click time, ties by id): the first `fractions[0]` of the
    sessions train, the next valid, the rest test, so no split sees the future of a later one.
    Boundaries are round-half-up of n * cumulative fraction; a session never straddles splits."""
    f = _check_split(fractions)
    order = sorted(sessions, key=lambda s: (s.time, s.id))
    n = len(order)
    b1 = math.floor(n * f[0] + 0.5 + 1e-9)
    b2 = math.floor(n * (f[0] + f[1]) + 0.5 + 1e-9)
    return {"train": order[:b1], "valid": order[b1:b2], "test": order[b2:]}


def drop_unseen(splits: Mapping[str, list[Session]], min_len: int = 2):
    """The SR-GNN convention: remove from valid/test sessions every item never clicked in train
    (the model has no embedding for it), then drop the sessions left shorter than `min_len`;
    samples are made afterwards, so no sample has an unseen prefix item or target.
    Returns (new splits, {split: {"clicks": unseen removed, "sessions": dropped}})."""
    seen = {i for s in splits["train"] for i in s.items}
    out, dropped = {"train": list(splits["train"])}, {}
    for name in ("valid", "test"):
        kept, clicks = [], 0
        for s in splits[name]:
            items = tuple(i for i in s.items if i in seen)
            clicks += len(s.items) - len(items)
            if len(items) >= min_len:
                kept.append(s._replace(items=items))
        out[name] = kept
        dropped[name] = {"clicks": clicks, "sessions": len(splits[name]) - len(kept)}
    return out, dropped


def split_protocol(protocol: str, split: str) -> str:
    """The sample protocol of one split: `eval_every` trains on one sample per session (`last`) and
    validates and tests on every prefix (`every`): the same training as `last`, with an evaluation
    set about avg_len times larger (a test set that can separate models whose gap is ~.01)."""
    if protocol == "eval_every":
        return "last" if split == "train" else "every"
    return protocol


def make_samples(sessions: Iterable[Session], protocol: str) -> list[Sample]:
    """`last`: one sample per session, [i1..i(n-1)] -> in (the ML-1M protocol); `every`: every
    prefix [i1..it] -> i(t+1), t >= 1 (the Beauty protocol). A prefix never holds its target."""
    if protocol not in PROTOCOLS[:2]:
        raise ConversionError(f"protocol must be one of {PROTOCOLS[:2]}, got {protocol!r}")
    out = []
    for s in sessions:
        first = len(s.items) - 1 if protocol == "last" else 1
        for t in range(max(first, 1), len(s.items)):
            out.append(Sample(s.id, tuple(s.items[:t]), s.items[t]))
    return out


# ---------------------------------------------------------------------------------------------
# statistics
def _written_items(samples: Iterable[Sample], max_len: int) -> set:
    return {i for x in samples for i in (*x.prefix[-max_len:], x.target)}


def split_stats(sessions: Sequence[Session], samples: Sequence[Sample], max_len: int) -> dict:
    """The paper's table columns for one split: sessions, samples, distinct items in the written
    file, clicks (session lengths), average prefix length (before truncation), plus the number of
    samples whose prefix was truncated to `max_len`."""
    n = len(samples)
    return {
        "sessions": len(sessions),
        "samples": n,
        "items": len(_written_items(samples, max_len)),
        "clicks": sum(len(s.items) for s in sessions),
        "avg_len": round(sum(len(x.prefix) for x in samples) / n, 4) if n else 0.0,
        "truncated": sum(len(x.prefix) > max_len for x in samples),
    }


def format_stats_table(stats: Mapping) -> str:
    """A small aligned text table of the split statistics (what the converters log)."""
    s = stats.get("settings", {})
    title = (f"{stats.get('dataset', '?')}: protocol={stats.get('protocol', '?')} "
             f"min_item_count={s.get('min_item_count', '?')} max_len={s.get('max_len', '?')} "
             f"split={s.get('split', '?')}")
    rows = [("split", *STAT_COLUMNS)]
    for name in (*SPLITS, "all"):
        r = stats[name]
        rows.append((name, *(f"{r[c]:.2f}" if c == "avg_len" else f"{r[c]:,}"
                             for c in STAT_COLUMNS)))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = [title] + ["  ".join(c.ljust(w) if k == 0 else c.rjust(w)
                                 for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
    b = stats.get("raw", {}).get("before_filter")
    if b:
        lines.append(f"before filtering: {b['sessions']:,} sessions, {b['clicks']:,} clicks, "
                     f"{b['items']:,} items")
    d = stats.get("dropped_unseen")
    if d:
        lines.append("items unseen in train: " + "; ".join(
            f"{n} -{d[n]['clicks']:,} clicks, -{d[n]['sessions']:,} sessions" for n in d))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# writing
def clean_text(text) -> str:
    """One line of text: every whitespace run (tab, newline, unicode line separators) -> a space."""
    return " ".join(str(text).split()) if text is not None else ""


def atomic_write(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` (newline-terminated) to a temporary file in the same folder, fsync, then
    os.replace it into place: a crash leaves the old file or none, never a half-written one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def format_sample(x: Sample, max_len: int) -> str:
    """One .inter line; the prefix keeps its LAST `max_len` items (RecBole keeps the first)."""
    return f"{x.session_id}\t{' '.join(x.prefix[-max_len:])}\t{x.target}"


def _natural(token: str):
    return (0, int(token), token) if token.isdigit() else (1, 0, token)


def write_dataset(folder: Path, dataset: str, samples: Mapping[str, Sequence[Sample]],
                  item_text: Mapping[str, str], stats: Mapping, max_len: int) -> None:
    """Write `<ds>.itemtext`, `<ds>.{train,valid,test}.inter`, then `<ds>.stats.json` last, each
    atomically; an old stats.json is removed first, so its presence means a complete dataset."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / f"{dataset}.stats.json")
    items = set().union(*(_written_items(samples[n], max_len) for n in SPLITS))
    atomic_write(folder / f"{dataset}.itemtext",
                 [TEXT_HEADER] + [f"{i}\t{item_text[i]}" for i in sorted(items, key=_natural)])
    for name in SPLITS:
        atomic_write(folder / f"{dataset}.{name}.inter",
                     (INTER_HEADER, *(format_sample(x, max_len) for x in samples[name])))
    atomic_write(folder / f"{dataset}.stats.json", [json.dumps(stats, indent=1)])


# ---------------------------------------------------------------------------------------------
# the whole pipeline
def build_dataset(sessions: Iterable[Session], item_text: Mapping[str, str], data_path,
                  dataset: str, protocol: str, *, split: Sequence[float] = (0.8, 0.1, 0.1),
                  min_item_count: int = 5, max_len: int = 50, clicks_file: str = "the clicks file",
                  text_file: str = "the item text file", raw: Mapping | None = None) -> dict:
    """Filter, split, drop unseen, make samples, write `<data_path>/<dataset>/`; return the stats.

    `clicks_file` / `text_file` name the raw files in error messages; `raw` adds converter-side
    counts (e.g. rows read, items dropped for lack of text) to the stats.
    """
    split = _check_split(split)
    if max_len < 1 or min_item_count < 1:
        raise ConversionError(f"max_len and min_item_count must be >= 1, got {max_len}, "
                         f"{min_item_count}")
    sessions = list(sessions)
    tokens = {s.id for s in sessions} | {i for s in sessions for i in s.items}
    bad = sorted(t for t in tokens if not t or _SPACE.search(t))
    if bad:
        raise ConversionError(f"{clicks_file}: id {bad[0]!r} is empty or holds whitespace, which "
                              f"the space-separated .inter lists cannot carry; fix the ids in "
                              f"the file")
    before = {"sessions": len(sessions), "clicks": sum(len(s.items) for s in sessions),
              "items": len({i for s in sessions for i in s.items})}
    kept = filter_sessions(sessions, min_item_count)
    if not kept:
        raise ConversionError(
            f"{clicks_file}: no session left after filtering ({before['sessions']} sessions, "
            f"{before['clicks']} clicks read; items need >= {min_item_count} clicks and sessions "
            f">= 2 items): check the file, or lower --min_item_count")
    texts = {i: clean_text(item_text.get(i)) for i in {i for s in kept for i in s.items}}
    missing = sorted((i for i, t in texts.items() if not t), key=_natural)
    if missing:
        raise ConversionError(
            f"{text_file}: {len(missing)} item(s) clicked in {clicks_file} have no text, e.g. "
            f"{missing[:5]}; add their lines to {text_file} (or remove their clicks)")
    splits, dropped = drop_unseen(split_sessions(kept, split))
    empty = [n for n in SPLITS if not splits[n]]
    if empty:
        raise ConversionError(
            f"{clicks_file}: split(s) {empty} are empty after filtering ({len(kept)} sessions "
            f"kept): use more data or change --split (now {','.join(map(str, split))})")
    if protocol not in PROTOCOLS:
        raise ConversionError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    samples = {n: make_samples(splits[n], split_protocol(protocol, n)) for n in SPLITS}
    all_sessions = [s for n in SPLITS for s in splits[n]]
    all_samples = [x for n in SPLITS for x in samples[n]]
    stats = {
        "dataset": dataset,
        "protocol": protocol,
        "settings": {"min_item_count": min_item_count, "max_len": max_len, "split": list(split)},
        "raw": {**(raw or {}), "before_filter": before},
        "dropped_unseen": dropped,
        **{n: split_stats(splits[n], samples[n], max_len) for n in SPLITS},
        "all": split_stats(all_sessions, all_samples, max_len),
    }
    folder = Path(data_path) / dataset
    write_dataset(folder, dataset, samples, texts, stats, max_len)
    LOGGER.info("wrote %s\n%s", folder, format_stats_table(stats))
    return stats
