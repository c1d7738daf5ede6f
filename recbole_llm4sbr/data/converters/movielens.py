"""MovieLens -> session datasets, the paper's ML-1M way: a session is one user's ratings inside one
10-minute clock bucket (timestamp // 600), ordered by timestamp (ties: file order), and gives one
sample, its prefix -> its last item. Item text: `Title (Year) -- Genre1, Genre2`."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pandas as pd

from recbole_llm4sbr.data.converters.common import (
    ConversionError, build_dataset, data_path_or_default, duplicate_item, find_raw, group_clicks,
    malformed, read_lines)

BUCKET_S = 600
ML1M_HOW = ("download ml-1m.zip from https://grouplens.org/datasets/movielens/1m/ and unzip it "
            "there, or pass --raw_dir=<folder holding ratings.dat and movies.dat>")
ML100K_HOW = ("it ships inside RecBole's wheel (pip install recbole==1.2.1), or pass "
              "--raw_dir=<folder holding ml-100k.inter and ml-100k.item>")
DEFAULT_ML100K = "ml-100k-session"
_RATING = re.compile(r"\s*(\d+)::(\d+)::[-+]?\d+(?:\.\d*)?::(\d+)\s*")


def _sessions(users, items, times):
    """One session per (user, 10-minute clock bucket); ids `<user>_<bucket>`."""
    times = [int(t) for t in times]
    sid = [f"{u}_{t // BUCKET_S}" for u, t in zip(users, times)]
    return group_clicks(pd.DataFrame({"session": sid, "item": items, "time": times}))


def movie_text(title: str, year: str = "", genres=()) -> str:
    """`Title (Year) -- Genre1, Genre2`; the year part only when `year` is given (ML-1M titles
    already carry it), the genre part only when there are genres."""
    text = title.strip()
    if year.strip():
        text += f" ({year.strip()})"
    genres = [g for g in genres if g]
    return f"{text} -- {', '.join(genres)}" if genres else text


# ---------------------------------------------------------------------------------------------
# ML-1M (GroupLens .dat files)
def read_ml1m(raw_dir):
    """Parse `ratings.dat` (UserID::MovieID::Rating::Timestamp) and `movies.dat`
    (MovieID::Title::Genres, latin-1, genres `|`-separated) -> (sessions, item texts, files)."""
    ratings = find_raw(raw_dir, "ratings.dat", ML1M_HOW)
    movies = find_raw(raw_dir, "movies.dat", ML1M_HOW)
    users, items, times = [], [], []
    for n, line in read_lines(ratings, "latin-1"):
        m = _RATING.fullmatch(line)
        if m is None:
            raise malformed(ratings, n, line, "UserID::MovieID::Rating::Timestamp (numbers)")
        users.append(m.group(1))
        items.append(m.group(2))
        times.append(int(m.group(3)))
    text, where = {}, {}
    for n, line in read_lines(movies, "latin-1"):
        head, sep, rest = line.partition("::")
        title, sep2, genres = rest.rpartition("::")
        if not (sep and sep2 and head.strip().isdigit()):
            raise malformed(movies, n, line, "MovieID::Title::Genres")
        if head.strip() in where:
            raise duplicate_item(movies, head.strip(), where[head.strip()], n)
        where[head.strip()] = n
        text[head.strip()] = movie_text(title, "", genres.split("|"))
    return _sessions(users, items, times), text, ratings, movies


def convert_ml1m(raw_dir, data_path=None, dataset: str = "ml-1m-session", *,
                 split=(0.8, 0.1, 0.1), min_item_count: int = 5, max_len: int = 50,
                 samples: str = "last") -> dict:
    """ML-1M -> `<data_path>/<dataset>/` (protocol `last` unless `samples`); returns the statistics."""
    sessions, text, ratings, movies = read_ml1m(raw_dir)
    return build_dataset(sessions, text, data_path_or_default(data_path), dataset, samples,
                         split=split, min_item_count=min_item_count, max_len=max_len,
                         clicks_file=str(ratings), text_file=str(movies))


# ---------------------------------------------------------------------------------------------
# MovieLens-100K (RecBole's atomic copy)
def ml100k_dir() -> Path:
    """RecBole's bundled ml-100k folder, found without importing RecBole (no torch needed)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"recbole: package not found, so its ml-100k copy is unavailable; "
                              f"{ML100K_HOW}")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def _atomic_rows(path: Path, need: tuple):
    """(line number, {column: value}) for the data rows of a RecBole atomic file, columns named
    by their header without the `:type` suffix; checks the header holds `need`."""
    lines = read_lines(path)
    _, head = next(lines)
    cols = [c.split(":")[0].strip() for c in head.split("\t")]
    if not set(need) <= set(cols):
        raise malformed(path, 1, head, f"a tab-separated header with columns {list(need)}")
    empty = True
    for n, line in lines:
        parts = line.split("\t")
        if len(parts) != len(cols):
            raise malformed(path, n, line, f"{len(cols)} tab-separated fields ({', '.join(cols)})")
        empty = False
        yield n, line, dict(zip(cols, parts))
    if empty:
        raise ConversionError(f"{path}: the file has a header but no data rows; restore it "
                              f"(reinstall recbole==1.2.1 or fix --raw_dir)")


def read_ml100k(raw_dir=None):
    """Parse `ml-100k.inter` (user_id, item_id, rating, timestamp) and `ml-100k.item` (item_id,
    movie_title, release_year, class) as raw text: RecBole would split titles into word tokens."""
    folder = Path(raw_dir) if raw_dir is not None else ml100k_dir()
    inter = find_raw(folder, "ml-100k.inter", ML100K_HOW)
    item = find_raw(folder, "ml-100k.item", ML100K_HOW)
    users, items, times = [], [], []
    for n, line, row in _atomic_rows(inter, ("user_id", "item_id", "timestamp")):
        try:
            times.append(int(float(row["timestamp"])))
        except ValueError:
            raise malformed(inter, n, line, "a numeric timestamp") from None
        users.append(row["user_id"].strip())
        items.append(row["item_id"].strip())
    text, where = {}, {}
    for n, _, row in _atomic_rows(item, ("item_id", "movie_title", "release_year", "class")):
        if row["item_id"].strip() in where:
            raise duplicate_item(item, row["item_id"].strip(), where[row["item_id"].strip()], n)
        where[row["item_id"].strip()] = n
        text[row["item_id"].strip()] = movie_text(row["movie_title"], row["release_year"],
                                                  row["class"].split())
    return _sessions(users, items, times), text, inter, item


def convert_ml100k(raw_dir=None, data_path=None, dataset: str = DEFAULT_ML100K, *,
                   split=(0.8, 0.1, 0.1), min_item_count: int = 5, max_len: int = 50,
                   samples: str = "last") -> dict:
    """MovieLens-100K (RecBole's copy unless `raw_dir`) -> `<data_path>/<dataset>/`, the ML-1M
    way (`samples`: `last`; `eval_every` tests on every prefix: `ml-100k-every`). The name must not
    be `ml-100k`: RecBole maps that name to its own copy."""
    if dataset == "ml-100k":
        raise ConversionError("dataset 'ml-100k' always resolves to RecBole's own copy; use another "
                         f"name (default {DEFAULT_ML100K!r})")
    sessions, text, inter, item = read_ml100k(raw_dir)
    return build_dataset(sessions, text, data_path_or_default(data_path), dataset, samples,
                         split=split, min_item_count=min_item_count, max_len=max_len,
                         clicks_file=str(inter), text_file=str(item))


#: the datasets built from the copy of MovieLens-100K inside RecBole's wheel (no download): name ->
#: sample protocol. `ml-100k-every`: the same sessions and training samples as `ml-100k-session`,
#: validated and tested on every prefix of the valid/test sessions (~8,500 test samples instead of 643)
BUNDLED = {DEFAULT_ML100K: "last", "ml-100k-every": "eval_every"}


def ensure_default_dataset(data_path=None, dataset: str = DEFAULT_ML100K, log=None) -> str:
    """Build a bundled dataset (``BUNDLED``; default `ml-100k-session`) into `data_path` unless its
    stats.json (written last) exists; returns the dataset name. Cheap when present: one stat() call.
    ``log`` (e.g. ``logger.info``) is told in one line when a conversion starts (training and stage 1
    say the same thing)."""
    data_path = data_path_or_default(data_path)
    if dataset not in BUNDLED:
        raise ConversionError(f"dataset {dataset!r} is not built from the bundled MovieLens-100K; "
                         f"those are {sorted(BUNDLED)}")
    if not os.path.exists(data_path / dataset / f"{dataset}.stats.json"):
        if log is not None:
            log(f"building {dataset} in {data_path} from the bundled MovieLens-100K (first use)")
        convert_ml100k(data_path=data_path, dataset=dataset, samples=BUNDLED[dataset])
    return dataset
