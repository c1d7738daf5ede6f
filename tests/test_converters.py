"""Converters: tiny raw files in their original formats -> exact, hand-computed stats and files.

Every expected number below is worked out by hand in the fixture's comment, not read back from the
code. Whole file: a few seconds (the real ml-100k conversion is ~1 s).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_llm4sbr.data.converters import (
    ConversionError, Session, convert_beauty, convert_ml1m, convert_ml100k,
    ensure_default_dataset, filter_sessions, make_samples, ml100k_dir, split_sessions)
from recbole_llm4sbr.data.converters import common, movielens
from recbole_llm4sbr.data.converters.__main__ import main as cli_main

HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token"


def write(path: Path, lines, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines), encoding=encoding)
    return path


def read_inter(folder: Path, ds: str, part: str):
    lines = (folder / ds / f"{ds}.{part}.inter").read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER
    return [tuple(x.split("\t")) for x in lines[1:]]


def read_text(folder: Path, ds: str):
    lines = (folder / ds / f"{ds}.itemtext").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "item_id\ttext" and lines[-1] == ""
    return dict(x.split("\t") for x in lines[1:-1])


def table(stats):
    return {k: {c: stats[k][c] for c in ("sessions", "samples", "items", "clicks", "avg_len")}
            for k in ("train", "valid", "test", "all")}


def row(sessions, samples, items, clicks, avg_len):
    return {"sessions": sessions, "samples": samples, "items": items, "clicks": clicks,
            "avg_len": round(avg_len, 4)}


# ---------------------------------------------------------------------------------------------
# ML-1M fixture. Sessions = (user, ts // 600); with min_item_count=2 and split 0.6/0.2/0.2:
#   T1  1_0 [1,2,3]   lines written out of order (300, 100, 200): sorted by time
#   T2  2_1 [2,1]     both at ts 700: the tie keeps file order
#   T3  3_2 [3,10,4,1] -> [3,4,1]: 10 goes in the 2nd filter pass (X below leaves it 1 click)
#   T4  1_3 [4,5]     T5 2_4 [5,6,2,3]     T6 3_5 [6,1]        -> train (first 6 by last click)
#   T7  4_6 [1,2,4,5,6]    T8 4_7 [3,6]                         -> valid
#   T9  5_8 [8,1,8,2] -> [1,2] (8 never in train)   T10 6_9 [7,7,3] -> [3] dropped  -> test
#   X   7_30 [9,10]: 9 has 1 click -> [10] -> dropped;  Y 8_31 [1]: too short
# before filtering 12 sessions, 34 clicks, 10 items.
ML1M_RATINGS = [
    "1::3::5::300", "1::1::4::100", "1::2::3::200",
    "2::2::4::700", "2::1::4::700",
    "3::3::4::1300", "3::10::4::1310", "3::4::4::1320", "3::1::4::1330",
    "1::4::4::1900", "1::5::4::1950",
    "2::5::4::2500", "2::6::4::2510", "2::2::4::2520", "2::3::4::2530",
    "3::6::4::3100", "3::1::4::3110",
    "4::1::4::3700", "4::2::4::3710", "4::4::4::3720", "4::5::4::3730", "4::6::4::3740",
    "4::3::4::4300", "4::6::4::4310",
    "5::8::4::4900", "5::1::4::4910", "5::8::4::4920", "5::2::4::4930",
    "6::7::4::5500", "6::7::4::5510", "6::3::4::5520",
    "7::9::4::18000", "7::10::4::18010",
    "8::1::4::18600",
]
ML1M_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Misérables, Les (1995)::Drama|Musical",
    "3::Tab\tTitle (1996)::Drama",
    "4::Heat (1995)::Action|Crime|Thriller",
    "5::Casino (1995)::Drama|Thriller",
    "6::Sabrina (1995)::Comedy|Romance",
    "7::Seven (1995)::Crime",
    "8::Babe (1995)::Children's",
    "9::Nixon (1995)::Drama",
    "10::GoldenEye (1995)::Action",
    "99::Never Rated (2000)::Drama",
]
ML1M_STATS = {
    "train": row(6, 6, 6, 16, 10 / 6),      # prefixes 2,1,2,1,3,1
    "valid": row(2, 2, 6, 7, 5 / 2),        # prefixes 4,1
    "test": row(1, 1, 2, 2, 1.0),           # T9 -> [1] -> 2
    "all": row(9, 9, 6, 25, 16 / 9),
}


@pytest.fixture
def ml1m_raw(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "ratings.dat", ML1M_RATINGS, "latin-1")
    write(raw / "movies.dat", ML1M_MOVIES, "latin-1")
    return raw


def convert_small_ml1m(raw, out, **kw):
    kw = {"split": (0.6, 0.2, 0.2), "min_item_count": 2, **kw}
    return convert_ml1m(raw, out, "ml1m", **kw)


def test_ml1m_stats_and_files(ml1m_raw, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr"):
        stats = convert_small_ml1m(ml1m_raw, out)
    assert table(stats) == ML1M_STATS
    assert stats["raw"]["before_filter"] == {"sessions": 12, "clicks": 34, "items": 10}
    assert stats["dropped_unseen"] == {"valid": {"clicks": 0, "sessions": 0},
                                       "test": {"clicks": 4, "sessions": 1}}
    assert stats["protocol"] == "last"
    assert json.loads((out / "ml1m" / "ml1m.stats.json").read_text()) == stats
    # one sample per session, in session order; prefix never holds the target
    assert read_inter(out, "ml1m", "train") == [
        ("1_0", "1 2", "3"), ("2_1", "2", "1"), ("3_2", "3 4", "1"), ("1_3", "4", "5"),
        ("2_4", "5 6 2", "3"), ("3_5", "6", "1")]
    assert read_inter(out, "ml1m", "valid") == [("4_6", "1 2 4 5", "6"), ("4_7", "3", "6")]
    assert read_inter(out, "ml1m", "test") == [("5_8", "1", "2")]
    assert read_text(out, "ml1m") == {
        "1": "Toy Story (1995) -- Animation, Children's, Comedy",
        "2": "Misérables, Les (1995) -- Drama, Musical",   # latin-1 in, utf-8 out
        "3": "Tab Title (1996) -- Drama",                  # tab replaced
        "4": "Heat (1995) -- Action, Crime, Thriller",
        "5": "Casino (1995) -- Drama, Thriller",
        "6": "Sabrina (1995) -- Comedy, Romance",
    }
    assert sorted(os.listdir(out / "ml1m")) == sorted(
        f"ml1m.{x}" for x in ("itemtext", "train.inter", "valid.inter", "test.inter", "stats.json"))
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "recbole_llm4sbr")
    assert common.format_stats_table(stats) in logged
    assert common.format_stats_table(stats).splitlines()[1:6] == [
        "split  sessions  samples  items  clicks  avg_len",
        "train         6        6      6      16     1.67",
        "valid         2        2      6       7     2.50",
        "test          1        1      2       2     1.00",
        "all           9        9      6      25     1.78",
    ]


def test_eval_every_trains_as_last_and_tests_every_prefix(ml1m_raw, tmp_path):
    """`eval_every` (the `ml-100k-every` protocol): the training file is exactly `last`'s; the valid
    and test files hold every prefix of the same sessions, each prefix before its own target."""
    last = convert_small_ml1m(ml1m_raw, tmp_path / "last")
    every = convert_small_ml1m(ml1m_raw, tmp_path / "every", samples="eval_every")
    assert every["protocol"] == "eval_every"
    assert read_inter(tmp_path / "every", "ml1m", "train") == read_inter(tmp_path / "last", "ml1m", "train")
    for part in ("valid", "test"):
        lasts, rows = read_inter(tmp_path / "last", "ml1m", part), read_inter(tmp_path / "every", "ml1m", part)
        assert every[part]["sessions"] == last[part]["sessions"]
        assert every[part]["samples"] == sum(len(p.split()) for _, p, _ in lasts)  # n - 1 prefixes each
        assert set(lasts) <= set(rows)  # each session's last prefix is among them
        for sid, prefix, target in rows:
            full = next(p.split() + [t] for s, p, t in lasts if s == sid)
            n = len(prefix.split())
            assert full[:n] == prefix.split() and full[n] == target


def test_truncation_keeps_last_items(ml1m_raw, tmp_path):
    stats = convert_small_ml1m(ml1m_raw, tmp_path, max_len=2)
    assert read_inter(tmp_path, "ml1m", "train")[4] == ("2_4", "6 2", "3")   # from 5 6 2
    assert read_inter(tmp_path, "ml1m", "valid")[0] == ("4_6", "4 5", "6")   # from 1 2 4 5
    # avg_len is measured before truncation; items are those the files hold: valid has lost 1, 2
    assert table(stats) == {**ML1M_STATS, "valid": row(2, 2, 4, 7, 5 / 2)}
    assert [stats[k]["truncated"] for k in ("train", "valid", "test")] == [1, 1, 0]


# ---------------------------------------------------------------------------------------------
# the shared steps, directly
def S(sid, items, time):
    return Session(sid, tuple(items), float(time))


def test_filter_until_stable():
    # default min_item_count=5. a: 4 + 5 clicks, b: 4 + 1, c: 1. Pass 1 drops c, so s5 -> [b] is
    # too short; pass 2: b has 4 clicks left and goes, s1..s4 -> [a] too short; pass 3: a still
    # has 5 (s6): stable. One pass would have kept s1..s4.
    sessions = [S("s1", "ab", 1), S("s2", "ab", 2), S("s3", "ab", 3), S("s4", "ab", 4),
                S("s5", "bc", 5), S("s6", "aaaaa", 6)]
    assert filter_sessions(sessions) == [S("s6", "aaaaa", 6)]
    assert filter_sessions(sessions, min_item_count=4) == sessions[:4] + [sessions[5]]
    assert filter_sessions([S("x", "bcb", 9)], min_item_count=2) == [S("x", "bb", 9)]


def test_split_by_last_click_then_id():
    sessions = [S(f"s{k}", "xy", t) for k, t in enumerate([5, 3, 9, 1, 3, 7, 2, 8, 6, 4])]
    got = split_sessions(sessions)   # 10 sessions: 8 / 1 / 1
    assert [s.id for s in got["train"]] == ["s3", "s6", "s1", "s4", "s9", "s0", "s8", "s5"]
    assert [s.id for s in got["valid"]] == ["s7"] and [s.id for s in got["test"]] == ["s2"]
    got = split_sessions(sessions[:7], (0.8, 0.1, 0.1))   # 5.6 -> 6, 6.3 -> 6: valid empty
    assert [len(got[k]) for k in ("train", "valid", "test")] == [6, 0, 1]
    with pytest.raises(ValueError, match="summing to 1"):
        split_sessions(sessions, (0.8, 0.1, 0.2))


def test_make_samples_protocols():
    s = [S("u", ["a", "b", "a", "c"], 1)]
    assert make_samples(s, "last") == [("u", ("a", "b", "a"), "c")]
    assert make_samples(s, "every") == [("u", ("a",), "b"), ("u", ("a", "b"), "a"),
                                        ("u", ("a", "b", "a"), "c")]
    with pytest.raises(ValueError):
        make_samples(s, "first")


# ---------------------------------------------------------------------------------------------
# Beauty fixture, min_item_count=2, split 0.7/0.15/0.15 of 6 sessions -> 4 / 1 / 1:
#   U1 [B1,B2,B3] @100..300   U2 [B2,B1,B4] (B2, B1 tie at 150: file order)   U3 [B3,B4,B9,B1,B2]
#   -> [B3,B4,B1,B2] (B9 has no title: dropped before sessions)   U4 [B4,B3]        -> train
#   U5 [B1,B9,B3] -> [B1,B3]                                                       -> valid
#   U6 [B5,B2,B5,B1] -> [B2,B1] (B5: 2 clicks, never in train)                     -> test
#   U7 [B1]: too short. 21 reviews, 2 of them B9; before filtering 7 sessions, 19 clicks, 5 items
REVIEWS = [
    ("U1", "B3", 300), ("U1", "B1", 100), ("U1", "B2", 200),
    ("U2", "B2", 150), ("U2", "B1", 150), ("U2", "B4", 400),
    ("U3", "B3", 500), ("U3", "B4", 510), ("U3", "B9", 520), ("U3", "B1", 530), ("U3", "B2", 600),
    ("U4", "B4", 650), ("U4", "B3", 700),
    ("U5", "B1", 750), ("U5", "B9", 760), ("U5", "B3", 800),
    ("U6", "B5", 810), ("U6", "B2", 820), ("U6", "B5", 830), ("U6", "B1", 900),
    ("U7", "B1", 50),
]
META = [
    "{'asin': 'B1', 'title': 'Rose Oil\\n50 ml', 'categories': [['Beauty']]}",  # Python literal
    json.dumps({"asin": "B2", "title": "Lip Balm", "price": 3.5}),
    json.dumps({"asin": "B3", "title": "  Shampoo\tMint "}),
    "{'asin': 'B4', 'title': 'Soap', 'related': {'also_bought': ['B1']}}",
    json.dumps({"asin": "B5", "title": "Comb"}),
    json.dumps({"asin": "B9", "categories": [["Beauty"]]}),                    # no title
    "{'asin': 'B77', this line is never parsed: B77 has no review",
]
REVIEWS_LINES = [json.dumps({"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": t,
                            "reviewText": "ok"}) for u, a, t in REVIEWS]
BEAUTY_STATS = {
    "train": row(4, 8, 4, 12, 13 / 8),   # prefixes 1,2 | 1,2 | 1,2,3 | 1
    "valid": row(1, 1, 2, 2, 1.0),
    "test": row(1, 1, 2, 2, 1.0),
    "all": row(6, 10, 4, 16, 1.5),
}


@pytest.fixture
def beauty_raw(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "reviews_Beauty_5.json", REVIEWS_LINES)
    write(raw / "meta_Beauty.json", META)
    return raw


def convert_small_beauty(raw, out, **kw):
    return convert_beauty(raw, out, "beauty", split=(0.7, 0.15, 0.15), min_item_count=2, **kw)


def test_beauty_stats_and_files(beauty_raw, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr"):
        stats = convert_small_beauty(beauty_raw, tmp_path, max_len=2)
    assert table(stats) == BEAUTY_STATS
    assert stats["raw"] == {"reviews": 21, "items_without_title": 1,
                            "reviews_dropped_without_title": 2,
                            "before_filter": {"sessions": 7, "clicks": 19, "items": 5}}
    assert stats["dropped_unseen"]["test"] == {"clicks": 2, "sessions": 0}
    assert "1 item(s) have no title" in caplog.text
    assert read_inter(tmp_path, "beauty", "train") == [
        ("U1", "B1", "B2"), ("U1", "B1 B2", "B3"),
        ("U2", "B2", "B1"), ("U2", "B2 B1", "B4"),
        ("U3", "B3", "B4"), ("U3", "B3 B4", "B1"), ("U3", "B4 B1", "B2"),  # last 2 of B3 B4 B1
        ("U4", "B4", "B3")]
    assert read_inter(tmp_path, "beauty", "valid") == [("U5", "B1", "B3")]
    assert read_inter(tmp_path, "beauty", "test") == [("U6", "B2", "B1")]
    assert read_text(tmp_path, "beauty") == {"B1": "Rose Oil 50 ml", "B2": "Lip Balm",
                                             "B3": "Shampoo Mint", "B4": "Soap"}


def test_beauty_reads_gzip(beauty_raw, tmp_path):
    import gzip
    for name in ("reviews_Beauty_5.json", "meta_Beauty.json"):
        p = beauty_raw / name
        with gzip.open(str(p) + ".gz", "wb") as f:
            f.write(p.read_bytes())
        p.unlink()
    assert table(convert_small_beauty(beauty_raw, tmp_path)) == BEAUTY_STATS


# ---------------------------------------------------------------------------------------------
# a fake ml-100k folder (RecBole atomic format), min_item_count=2, split 0.4/0.3/0.3:
#   10_1 [1,2] train;  11_3 [2,1,3] (2, 1 tie at 2000) -> [2,1] once 13_6 [3] is gone -> valid;
#   12_5 [1,2] test
def fake_ml100k(folder: Path, item_header="item_id:token\tmovie_title:token_seq\t"
                "release_year:token\tclass:token_seq"):
    write(folder / "ml-100k.inter", [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        "10\t1\t3\t1000.0", "10\t2\t4\t1100.0",
        "11\t2\t5\t2000", "11\t1\t5\t2000", "11\t3\t1\t2100",
        "12\t1\t4\t3000", "12\t2\t4\t3050",
        "13\t3\t2\t4000"])
    write(folder / "ml-100k.item", [
        item_header,
        "1\tToy Story\t1995\tAnimation Children's Comedy",
        "2\tGoldenEye\t1995\tAction Adventure Thriller",
        "3\tFour Rooms\t1995\tThriller"])
    return folder


def test_ml100k_fake_folder(tmp_path):
    stats = convert_ml100k(fake_ml100k(tmp_path / "raw"), tmp_path, "m",
                           split=(0.4, 0.3, 0.3), min_item_count=2)
    one = row(1, 1, 2, 2, 1.0)
    assert table(stats) == {"train": one, "valid": one, "test": one, "all": row(3, 3, 2, 6, 1.0)}
    assert read_inter(tmp_path, "m", "train") == [("10_1", "1", "2")]
    assert read_inter(tmp_path, "m", "valid") == [("11_3", "2", "1")]
    assert read_inter(tmp_path, "m", "test") == [("12_5", "1", "2")]
    assert read_text(tmp_path, "m") == {"1": "Toy Story (1995) -- Animation, Children's, Comedy",
                                        "2": "GoldenEye (1995) -- Action, Adventure, Thriller"}
    with pytest.raises(ValueError, match="RecBole's own copy"):
        convert_ml100k(tmp_path / "raw", tmp_path, "ml-100k")


def test_cli(tmp_path, capsys):
    raw = fake_ml100k(tmp_path / "raw")
    assert cli_main(["ml-100k", f"--raw_dir={raw}", f"--data_path={tmp_path}",
                     "--split=0.4,0.3,0.3", "--min_item_count=2", "--max_len=3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ml-100k-session")
    assert json.loads((tmp_path / "ml-100k-session" / "ml-100k-session.stats.json").read_text())[
        "settings"] == {"min_item_count": 2, "max_len": 3, "split": [0.4, 0.3, 0.3]}
    assert cli_main(["ml-1m", f"--data_path={tmp_path}"]) == 2     # default raw dir: missing
    assert str(tmp_path / "raw" / "ml-1m" / "ratings.dat") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["ml-100k", "--split=0.5,0.5"])


# ---------------------------------------------------------------------------------------------
# atomic writing
def listing(folder: Path):
    return sorted(os.listdir(folder))


def test_crash_mid_write_leaves_no_partial_file(ml1m_raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = common.format_sample, []

    def crash_on_third(x, max_len):
        calls.append(x)
        if len(calls) == 3:           # train.inter already holds header + 2 lines in its temp file
            raise KeyboardInterrupt("simulated crash")
        return real(x, max_len)

    monkeypatch.setattr(common, "format_sample", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        convert_small_ml1m(ml1m_raw, out)
    assert listing(out / "ml1m") == ["ml1m.itemtext"]   # no temp file, no train.inter, no stats

    # a crash while rebuilding a complete dataset: stats.json goes first, old files stay whole
    monkeypatch.setattr(common, "format_sample", real)
    convert_small_ml1m(ml1m_raw, out)
    old = (out / "ml1m" / "ml1m.train.inter").read_bytes()
    calls.clear()
    monkeypatch.setattr(common, "format_sample", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        convert_small_ml1m(ml1m_raw, out, max_len=1)
    assert "ml1m.stats.json" not in listing(out / "ml1m")
    assert not [f for f in listing(out / "ml1m") if f.endswith(".tmp")]
    assert (out / "ml1m" / "ml1m.train.inter").read_bytes() == old


# ---------------------------------------------------------------------------------------------
# errors: each names the file and says how to fix it
def test_error_missing_raw_file(tmp_path):
    with pytest.raises(ConversionError) as e:
        convert_ml1m(tmp_path, tmp_path / "out")
    assert str(tmp_path / "ratings.dat") in str(e.value) and "grouplens" in str(e.value)
    with pytest.raises(ConversionError) as e:
        convert_beauty(tmp_path, tmp_path / "out")
    assert "reviews_Beauty_5.json" in str(e.value) and "--raw_dir" in str(e.value)


def test_error_empty_file(ml1m_raw, tmp_path):
    (ml1m_raw / "ratings.dat").write_text("\n  \n")
    with pytest.raises(ConversionError, match=r"ratings\.dat: the file is empty; download"):
        convert_small_ml1m(ml1m_raw, tmp_path)
    folder = fake_ml100k(tmp_path / "m")
    write(folder / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"])
    with pytest.raises(ConversionError, match=r"ml-100k\.inter: the file has a header but no data"):
        convert_ml100k(folder, tmp_path, "m")


@pytest.mark.parametrize("name,bad,line", [
    ("ratings.dat", "1::2::x::5", 3),
    ("movies.dat", "12 Title (1999) Drama", 2),
])
def test_error_malformed_movielens(ml1m_raw, tmp_path, name, bad, line):
    path = ml1m_raw / name
    lines = path.read_text(encoding="latin-1").splitlines()
    lines.insert(line - 1, bad)
    write(path, lines, "latin-1")
    with pytest.raises(ConversionError) as e:
        convert_small_ml1m(ml1m_raw, tmp_path)
    assert f"{path}, line {line}: malformed line {bad!r}" in str(e.value)
    assert "Fix or delete that line" in str(e.value)


def test_error_malformed_amazon_and_atomic(beauty_raw, tmp_path):
    path = beauty_raw / "reviews_Beauty_5.json"
    write(path, path.read_text().splitlines()[:4] + ['{"reviewerID": "U9", "asin": "B1"}'])
    with pytest.raises(ConversionError, match=r"reviews_Beauty_5\.json, line 5: malformed.*"
                                              r"unixReviewTime"):
        convert_small_beauty(beauty_raw, tmp_path)
    write(path, REVIEWS_LINES)
    path = beauty_raw / "meta_Beauty.json"
    write(path, META[:2] + ["{'asin': 'B3', 'title': 'unterminated}"])
    with pytest.raises(ConversionError, match=r"meta_Beauty\.json, line 3: malformed"):
        convert_small_beauty(beauty_raw, tmp_path)
    folder = fake_ml100k(tmp_path / "m", item_header="item_id:token\tmovie_title:token_seq")
    with pytest.raises(ConversionError, match=r"ml-100k\.item, line 1: malformed.*release_year"):
        convert_ml100k(folder, tmp_path, "m")


def test_error_nothing_left(ml1m_raw, tmp_path):
    with pytest.raises(ConversionError) as e:
        convert_small_ml1m(ml1m_raw, tmp_path, min_item_count=50)
    assert "ratings.dat: no session left after filtering" in str(e.value)
    assert "--min_item_count" in str(e.value)
    with pytest.raises(ConversionError, match=r"\['valid', 'test'\] are empty.*--split"):
        convert_small_ml1m(ml1m_raw, tmp_path, split=(0.85, 0.05, 0.1))


def test_error_item_without_text(ml1m_raw, tmp_path):
    write(ml1m_raw / "movies.dat", [m for m in ML1M_MOVIES if not m.startswith(("2::", "5::"))],
          "latin-1")
    with pytest.raises(ConversionError) as e:
        convert_small_ml1m(ml1m_raw, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{ml1m_raw / 'movies.dat'}: 2 item(s) clicked in")
    assert "['2', '5']" in msg and "add their lines to" in msg


# ---------------------------------------------------------------------------------------------
# the real ml-100k from RecBole's wheel, and the package's import contract
def test_real_ml100k(tmp_path, monkeypatch):
    if not (ml100k_dir() / "ml-100k.inter").is_file():
        pytest.skip("RecBole's ml-100k copy is not installed")
    assert ensure_default_dataset(tmp_path) == "ml-100k-session"
    ds = tmp_path / "ml-100k-session"
    stats = json.loads((ds / "ml-100k-session.stats.json").read_text())
    assert stats["raw"]["before_filter"]["clicks"] == 100_000
    texts = read_text(tmp_path, "ml-100k-session")
    seen, buckets = set(), []
    for part in ("train", "valid", "test"):
        rows = read_inter(tmp_path, "ml-100k-session", part)
        assert stats[part]["samples"] == stats[part]["sessions"] == len(rows)
        assert len({r[0] for r in rows}) == len(rows)           # `last`: one sample per session
        for _sid, prefix, target in rows:
            items = prefix.split(" ")
            assert 1 <= len(items) <= 50 and target not in items   # ml-100k rates a movie once
            seen.update(items + [target])
        buckets.append(sorted(int(r[0].split("_")[1]) for r in rows))
        assert stats[part]["items"] == len({i for r in rows for i in (*r[1].split(), r[2])})
    assert buckets[0][-1] <= buckets[1][0] and buckets[1][-1] <= buckets[2][0]   # time order
    assert set(texts) == seen and len(seen) == stats["all"]["items"]
    assert texts["1"] == "Toy Story (1995) -- Animation, Children's, Comedy"
    assert sum(stats[p]["samples"] for p in ("train", "valid", "test")) == stats["all"]["samples"]
    # present: cheap, no rebuild
    monkeypatch.setattr(movielens, "convert_ml100k", lambda *a, **k: pytest.fail("rebuilt"))
    assert ensure_default_dataset(tmp_path) == "ml-100k-session"


def test_imports_neither_recbole_nor_torch():
    code = ("import sys, recbole_llm4sbr.data.converters, recbole_llm4sbr.data.converters.__main__;"
            "print(sorted(m for m in ('recbole', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
