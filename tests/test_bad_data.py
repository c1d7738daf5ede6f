"""Bad data and bad config files are refused, never read silently: a duplicate item id in a raw item
file or in ``<ds>.itemtext`` (the last line would win and the item's text embedding change), a benchmark
line with a missing field on ANY line, bytes that are not UTF-8 (file, line and byte offset), and a
YAML syntax error in ``--config_files`` (file, line and column). Every case asserts the exit code (2),
the ONE message line with the fix, and that the files already there are left as they were."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from intent_helpers import DS, ITEMS, SPLIT_ROWS, write_dataset

from recbole_llm4sbr.data.converters import ConversionError, convert_beauty, convert_ml1m, convert_ml100k
from recbole_llm4sbr.data.converters.__main__ import main as convert_main
from recbole_llm4sbr.errors import ConfigError, read_yaml_file

ML100K_INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                "10\t1\t3\t1000.0", "10\t2\t4\t1100.0", "11\t2\t5\t2000", "11\t1\t5\t2000", "11\t3\t1\t2100",
                "12\t1\t4\t3000", "12\t2\t4\t3050", "13\t3\t2\t4000"]
ML100K_ITEM = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
               "1\tToy Story\t1995\tAnimation Children's Comedy",
               "2\tGoldenEye\t1995\tAction Adventure Thriller",
               "3\tFour Rooms\t1995\tThriller"]
SMALL = dict(split=(0.4, 0.3, 0.3), min_item_count=2)


def write(path: Path, lines, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x}\n" for x in lines), encoding=encoding)
    return path


def ml100k_raw(folder: Path, item=ML100K_ITEM) -> Path:
    write(folder / "ml-100k.inter", ML100K_INTER)
    write(folder / "ml-100k.item", item)
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    return lines[0]


# ---- raw item files (converters) ----------------------------------------------------------------------


def test_a_duplicate_item_id_in_each_raw_item_file_names_both_lines_and_the_fix(tmp_path):
    raw = ml100k_raw(tmp_path / "m", ML100K_ITEM + ["2\tGoldenEye II\t1997\tAction"])
    with pytest.raises(ConversionError) as e:
        convert_ml100k(raw, tmp_path / "out", "m", **SMALL)
    assert str(e.value) == (f"{raw / 'ml-100k.item'}: item id '2' is on line 3 and again on line 5; an item has "
                            "one line (its text). Fix: delete one of the two lines (or download the file again)")

    ml1m = tmp_path / "ml1m"
    write(ml1m / "ratings.dat", ["1::1::5::100", "1::2::5::200"], "latin-1")
    write(ml1m / "movies.dat", ["1::Toy Story (1995)::Comedy", "2::Heat (1995)::Action",
                                "1::Toy Story 2 (1999)::Comedy"], "latin-1")
    with pytest.raises(ConversionError, match=r"movies\.dat: item id '1' is on line 1 and again on line 3; "
                                              r".*Fix: delete one of the two lines"):
        convert_ml1m(ml1m, tmp_path / "out")

    beauty = tmp_path / "beauty"
    write(beauty / "reviews_Beauty_5.json",
          [json.dumps({"reviewerID": "U1", "asin": a, "unixReviewTime": t}) for a, t in (("B1", 1), ("B2", 2))])
    write(beauty / "meta_Beauty.json", [json.dumps({"asin": "B1", "title": "Soap"}),
                                        json.dumps({"asin": "B7", "title": "never reviewed"}),
                                        json.dumps({"asin": "B7", "title": "not read: no review"}),
                                        json.dumps({"asin": "B2", "title": "Comb"}),
                                        "{'asin': 'B1', 'title': 'Soap, 2nd edition'}"])
    with pytest.raises(ConversionError, match=r"meta_Beauty\.json: item id 'B1' is on line 1 and again on line 5"):
        convert_beauty(beauty, tmp_path / "out")


def test_the_converter_command_refuses_a_duplicate_and_keeps_the_dataset_it_had(tmp_path, capsys):
    raw = ml100k_raw(tmp_path / "raw")
    argv = ["ml-100k", f"--raw_dir={raw}", f"--data_path={tmp_path / 'out'}", "--dataset=m", "--split=0.4,0.3,0.3",
            "--min_item_count=2"]
    assert convert_main(argv) == 0
    before = snapshot(tmp_path / "out" / "m")
    assert set(before) == {"m.itemtext", "m.train.inter", "m.valid.inter", "m.test.inter", "m.stats.json"}
    capsys.readouterr()
    write(raw / "ml-100k.item", ML100K_ITEM + ["1\tToy Story\t1995\tAnimation"])
    assert convert_main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "ml-100k.item: item id '1' is on line 2 and again on line 5" in line and "Fix: " in line
    assert snapshot(tmp_path / "out" / "m") == before


def test_a_raw_file_that_is_not_utf8_names_line_byte_and_fix(tmp_path):
    raw = ml100k_raw(tmp_path / "m")
    item = raw / "ml-100k.item"
    item.write_bytes(item.read_bytes().replace(b"Four Rooms", b"Four R\xf6oms"))  # latin-1 o-umlaut
    offset = item.read_bytes().index(b"\xf6")
    with pytest.raises(ConversionError) as e:
        convert_ml100k(raw, tmp_path / "out", "m", **SMALL)
    assert str(e.value).startswith(f"{item}, line 4 (byte {offset}): b'\\xf6' is not UTF-8. Fix: save the file as "
                                   "UTF-8")
    # gzipped raw files: the line and offset in the uncompressed text
    beauty = tmp_path / "beauty"
    beauty.mkdir()
    lines = [json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}).encode(),
             b'{"reviewerID": "U\xff2", "asin": "B1", "unixReviewTime": 2}']
    with gzip.open(beauty / "reviews_Beauty_5.json.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    write(beauty / "meta_Beauty.json", [json.dumps({"asin": "B1", "title": "Soap"})])
    with pytest.raises(ConversionError, match=rf"reviews_Beauty_5\.json\.gz, line 2 \(byte {len(lines[0]) + 18}\): "
                                              r"b'\\xff' is not UTF-8\. Fix: "):
        convert_beauty(beauty, tmp_path / "out")


# ---- the benchmark files and the item text as stage 1 reads them --------------------------------------


def stage1(capsys, root: Path, *extra):
    from recbole_llm4sbr.intent.__main__ import main

    code = main([f"--dataset={DS}", f"--data_path={root}", "--intent_backend=text", "--show_progress=False", *extra])
    return code, capsys.readouterr().err


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)
    return write_dataset(tmp_path)


def test_stage1_refuses_a_duplicate_item_in_the_item_text(dataset, capsys):
    items = list(ITEMS.items())
    write(dataset / f"{DS}.itemtext", ["item_id\ttext", *(f"{k}\t{v}" for k, v in items), "3\tHeat 2 (2024) -- Action"])
    before = snapshot(dataset)
    code, err = stage1(capsys, dataset.parent)
    assert code == 2
    line = one_error_line(err)
    assert (f"item text file {dataset / f'{DS}.itemtext'}: item '3' is on line 4 and again on line {len(items) + 2}; "
            "one text per item. Fix: delete one of the two lines") in line
    assert snapshot(dataset) == before
    assert all(p.name.endswith(".lock") for p in (dataset / "intent").glob("*"))  # no table, no answer cache


@pytest.mark.parametrize("row,fields", [("3\t1 2", 2), ("3\t1 2\t7\textra", 4)], ids=["missing target", "extra field"])
def test_stage1_checks_every_lines_field_count_not_only_the_first(dataset, capsys, row, fields):
    lines = [f"{s}\t{p}\t{t}" for s, p, t in SPLIT_ROWS["train"]]
    lines[4] = row  # line 6 of the file: lines 2-5 are fine
    write(dataset / f"{DS}.train.inter", ["session_id:token\titem_id_list:token_seq\titem_id:token", *lines])
    code, err = stage1(capsys, dataset.parent)
    assert code == 2
    line = one_error_line(err)
    assert (f"{dataset / f'{DS}.train.inter'}, line 6: {fields} tab-separated fields, the header has 3 "
            "(session_id:token item_id_list:token_seq item_id:token). Fix: correct that line") in line
    written = [p.name for p in (dataset / "intent").glob("*")] if (dataset / "intent").exists() else []
    assert all(name.endswith(".lock") for name in written), written  # no table, no answer cache


@pytest.mark.parametrize("name", [f"{DS}.itemtext", f"{DS}.valid.inter"])
def test_stage1_names_line_and_byte_of_text_that_is_not_utf8(dataset, capsys, name):
    path = dataset / name
    data = path.read_bytes()
    cut = data.index(b"\n") + 1  # the bad byte on line 2
    path.write_bytes(data[:cut] + data[cut:cut + 2] + b"\xe9" + data[cut + 2:])
    code, err = stage1(capsys, dataset.parent)
    assert code == 2
    line = one_error_line(err)
    assert f"{path}, line 2 (byte {cut + 2}): b'\\xe9' is not UTF-8. Fix: save the file as UTF-8" in line


# ---- the benchmark files as training reads them ----------------------------------------------------------


def test_training_checks_every_line_of_the_benchmark_files(dataset):
    from recbole_llm4sbr.data.dataset import DatasetFileError, check_benchmark_files

    parts = ["train", "valid", "test"]
    check_benchmark_files(str(dataset), DS, parts)
    path = dataset / f"{DS}.train.inter"
    good = path.read_bytes()
    for bad, why in (("3\t1 2", "line 5: 2 tab-separated fields, the header 3"),
                     ("3\t1 2\t", "line 5: the item_id field is empty"),
                     ("3\t\t2", "line 5: the item_id_list field is empty")):
        lines = good.decode().splitlines()
        lines[4] = bad
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(DatasetFileError) as e:
            check_benchmark_files(str(dataset), DS, parts)
        assert f"{path}, {why}" in str(e.value) and "Fix: correct or delete that line" in str(e.value)
    path.write_bytes(good.replace(b"4 5\t6", b"4 5\t\xff6"))
    with pytest.raises(DatasetFileError) as e:
        check_benchmark_files(str(dataset), DS, parts)
    assert str(e.value).startswith(f"{path}, line 5 (byte {good.index(b'4 5' + bytes([9]) + b'6') + 4}): b'\\xff' is "
                                   "not UTF-8. Fix: ")
    check_benchmark_files(str(dataset), DS, parts, encoding="latin-1")  # the `encoding` key says how to read it


def test_the_training_command_refuses_a_train_line_without_its_target(dataset, capsys):
    from recbole_llm4sbr.cli import main

    path = dataset / f"{DS}.train.inter"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = snapshot(dataset)
    code = main(["--model=GRU4Rec", f"--dataset={DS}", f"--data_path={dataset.parent}", "--state=WARNING"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{path}, line 6: 2 tab-separated fields, the header 3" in line and "Fix: " in line
    assert snapshot(dataset) == before


# ---- --config_files: one helper for the three commands ------------------------------------------------


BROKEN_YAML = "epochs: 3\nlearning_rate 0.001: x: y\n"


def run_command_line(command: str, capsys, tmp_path, files: str):
    if command == "intent":
        from recbole_llm4sbr.intent.__main__ import main

        code = main([f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=text", f"--config_files={files}"])
    else:
        from recbole_llm4sbr.cli import main

        args = ["--benchmark", "--base_models=GRU4Rec", "--seeds=1", f"--results_dir={tmp_path / 'res'}"]
        code = main([*(args if command == "benchmark" else ["--model=GRU4Rec"]), f"--dataset={DS}",
                     f"--data_path={tmp_path}", f"--config_files={files}"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "benchmark", "intent"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_column_and_fix(dataset, tmp_path, capsys, command):
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 3\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN_YAML)
    code, err = run_command_line(command, capsys, tmp_path, f"{good},{bad}")
    assert code == 2
    line = one_error_line(err)
    assert line == (f"error: config file {bad}, line 2, column 23: not valid YAML (mapping values are not allowed "
                    "here). Fix: correct that line: one 'key: value' per line, a space after the colon, quotes and "
                    "brackets closed, spaces (not tabs) for indentation (rerun with --debug for the traceback)")
    assert not (tmp_path / "res").exists() and not (dataset / "intent").exists()


@pytest.mark.parametrize("command", ["run", "benchmark", "intent"])
def test_a_config_file_that_is_not_utf8_names_line_and_byte(dataset, tmp_path, capsys, command):
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"epochs: 3\nintent_template: 'caf\xe9 {items}'\n")
    code, err = run_command_line(command, capsys, tmp_path, str(bad))
    assert code == 2
    assert f"error: {bad}, line 2 (byte 31): b'\\xe9' is not UTF-8. Fix: save the file as UTF-8" in one_error_line(err)


def test_read_yaml_file_names_a_missing_file_a_list_and_an_unclosed_bracket(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml not found\. Fix: check the path"):
        read_yaml_file(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- epochs\n- 3\n")
    with pytest.raises(ConfigError, match=r"list\.yaml holds a list, not 'key: value' lines\. Fix: "):
        read_yaml_file(tmp_path / "list.yaml")
    (tmp_path / "open.yaml").write_text("epochs: 3\nintent_views: [long, short\n")
    with pytest.raises(ConfigError, match=r"open\.yaml, line 3, column 1: not valid YAML \(expected ',' or ']'.*; "
                                          r"while parsing a flow sequence at line 2, column 15\)\. Fix: "):
        read_yaml_file(tmp_path / "open.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert read_yaml_file(tmp_path / "empty.yaml") == {}
