"""Stage 1 while it runs: answers committed as they finish (Ctrl-C keeps them, the rerun sends only
the rest), and progress a person can see (a log line with an ETA when there is no terminal)."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from intent_helpers import DS, HERE, REPO, SlowBackend, subprocess_env, write_dataset

from recbole_llm4sbr.intent.cache import CACHE_FILE, AnswerCache
from recbole_llm4sbr.intent.generation import Progress, answer_prompts

#: the stage-1 command line with the test backend registered first (a fresh interpreter cannot see
#: a monkeypatched registry) and a hash for the text encoder (what is tested happens around the LLM);
#: SIGINT gets Python's own handler even where the test runner's shell started this process with
#: SIGINT ignored
RUN_CLI = (
    "import runpy, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    f"sys.path.insert(0, {str(HERE)!r})\n"
    "from recbole_llm4sbr.intent.backends import REGISTRY\n"
    "REGISTRY['slow'] = 'intent_helpers:SlowBackend'\n"
    "import intent_helpers\n"
    "intent_helpers.use_hash_encoder()\n"
    "sys.argv = ['recbole_llm4sbr.intent', *sys.argv[1:]]\n"
    "runpy.run_module('recbole_llm4sbr.intent', run_name='__main__', alter_sys=True)\n"
)


def _rows(db) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:  # created, table not there yet
        return 0


def _sent(log) -> list:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def test_ctrl_c_keeps_committed_answers_and_the_rerun_sends_only_the_rest(tmp_path):
    write_dataset(tmp_path)
    db = tmp_path / DS / "intent" / CACHE_FILE
    args = [sys.executable, "-c", RUN_CLI, f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=slow",
            "--intent_samples=all", "--show_progress=False"]
    env = subprocess_env()
    first_log, second_log = tmp_path / "sent1.jsonl", tmp_path / "sent2.jsonl"
    env.update(SLOW_BACKEND_S="0.4", SLOW_BACKEND_LOG=str(first_log))
    child = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _rows(db) == 0:  # the first committed answer
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no answer was committed within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    kept = _rows(db)
    answered = _sent(first_log)
    total = 14  # 7 unique prefixes x 2 views
    assert 1 <= kept < total  # committed as they finished, and the run was cut short
    assert kept >= len(answered) - 1  # at most the answer in flight when the signal came is lost

    env.update(SLOW_BACKEND_S="0", SLOW_BACKEND_LOG=str(second_log))
    again = subprocess.run(args, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    resent = _sent(second_log)
    assert re.search(rf"^from cache +{kept}$", again.stdout, re.M), again.stdout
    assert re.search(rf"^sent +{total - kept}$", again.stdout, re.M), again.stdout
    assert len(resent) == total - kept and len(set(resent)) == len(resent)
    with AnswerCache(db, {"backend": "slow"}, "x") as cache:
        assert len(cache) == total


def test_answers_reported_during_a_call_are_committed_at_once(tmp_path):
    """The answer cache holds each answer as soon as the backend hands it over, before the call ends."""
    backend = SlowBackend({})
    prompts = [f"prompt {i}" for i in range(4)]
    seen = []
    with AnswerCache(tmp_path / "c.sqlite", backend.describe(), "t") as cache:
        real = backend.report_answers

        def spy(positions, answers):
            real(positions, answers)
            seen.append(len(cache))

        backend.report_answers = spy
        os.environ["SLOW_BACKEND_S"] = "0"
        try:
            answers, stats = answer_prompts(backend, prompts, cache, 8, progress=False)
        finally:
            os.environ.pop("SLOW_BACKEND_S")
    assert seen == [1, 2, 3, 4]  # one call of 4 prompts, each committed as it finished
    assert stats.sent == 4 and answers == [f"Answer: {p}" for p in prompts]


class _Lines:
    """A log handler that keeps the records' messages."""

    def __init__(self):
        self.lines = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())


def test_progress_without_a_terminal_logs_count_and_eta(monkeypatch):
    monkeypatch.setattr(Progress, "LOG_EVERY_S", 0.2)
    monkeypatch.setattr(Progress, "REDRAW_S", 0.05)
    log = logging.getLogger("test_stage1_progress")
    log.setLevel(logging.INFO)
    keep = _Lines()
    log.addHandler(keep.handler)
    try:
        shown = Progress(8, "LLM (slow)", True, log, stream=io.StringIO())  # a file: no bar
        assert shown.bar is None
        shown.step("batch 1/2, step 3/32")
        time.sleep(0.35)
        shown.advance(2)
        time.sleep(0.35)
        shown.close()
    finally:
        log.removeHandler(keep.handler)
    assert keep.lines, "no progress line while the call ran"
    assert "LLM (slow): 0/8 prompts" in keep.lines[0] and "ETA ?" in keep.lines[0]
    assert "(batch 1/2, step 3/32)" in keep.lines[0]
    later = [line for line in keep.lines[:-1] if "2/8 prompts" in line]
    assert later and re.search(r"ETA \d+ s", later[0])
    assert re.fullmatch(r"LLM \(slow\): 2/8 prompts answered in \d+ s", keep.lines[-1])


@pytest.fixture(scope="module")
def tiny_backend(tiny_chat_model):
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    b = TransformersBackend(dict(intent_model=tiny_chat_model, intent_max_tokens=10, intent_temperature=0.0,
                                 intent_top_p=1.0, intent_seed=2024, intent_batch_size=2, intent_device="cpu",
                                 intent_dtype="float32"))
    yield b
    b.close()


PROMPTS = [
    "The order in which users click on items is as follows:\n1. Toy Story (1995)\n2. Heat (1995)\nlong-term",
    "The order in which users click on items is as follows:\n1. Toy Story (1995)\n2. Heat (1995)\nshort-term",
    "The order in which users click on items is as follows:\n1. Jumanji (1995)\nlong-term",
    "short one",
    "def f(x): return x",
]


@pytest.mark.parametrize("sharing", [True, False])
def test_transformers_reports_every_answer_as_it_finishes_and_answers_do_not_change(tiny_backend, sharing):
    b = tiny_backend
    b.prefix_sharing = sharing
    try:
        plain = b.generate(PROMPTS)
        # stop ids that end answers at different steps, so some finish before their batch does
        stops = sorted({t for a in plain for t in b.tokenizer(a, add_special_tokens=False)["input_ids"][1:3]})
        ids = list(b.eos_token_ids)
        b.eos_token_ids = ids + stops
        want = b.generate(PROMPTS)
        reported, steps = {}, []
        b.on_answers = lambda positions, answers: reported.update(
            {p: reported.setdefault(p, a) for p, a in zip(positions, answers)})
        b.on_step = steps.append
        got = b.generate(PROMPTS)
    finally:
        b.on_answers = b.on_step = None
        b.eos_token_ids = ids
        b.prefix_sharing = True
    assert got == want  # reporting changes nothing that is decoded
    assert reported == dict(enumerate(want))  # every prompt, with its final answer the first time
    assert any("step 1/10" in s for s in steps) and any(s.startswith("batch 3/3") for s in steps)
    if sharing:
        assert any(s.startswith("prefill ") for s in steps)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_a_bar_that_moves_between_answers(monkeypatch):
    monkeypatch.setattr(Progress, "REDRAW_S", 0.05)
    screen = _Terminal()
    shown = Progress(4, "LLM (slow)", True, logging.getLogger("test_stage1_progress"), stream=screen)
    assert shown.bar is not None
    shown.step("prefill 10/99 tokens")
    time.sleep(0.3)
    drawn = screen.getvalue()
    assert "0/4" in drawn and "prefill 10/99 tokens" in drawn  # redrawn with the backend's note, no answer yet
    shown.step("batch 1/1, step 7/32")
    shown.advance(1)
    time.sleep(0.3)
    shown.close()
    assert "1/4" in screen.getvalue() and "step 7/32" in screen.getvalue()
    quiet = Progress(4, "LLM (slow)", False, logging.getLogger("test_stage1_progress"), stream=_Terminal())
    assert quiet.bar is None  # show_progress: False draws no bar
    quiet.close()
