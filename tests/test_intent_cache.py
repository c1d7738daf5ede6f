"""Answer cache + generation: de-duplication, cache keys, retries, and a real kill -9 mid-run."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List, Sequence

import pytest
import torch

from intent_helpers import REPO, subprocess_env

from recbole_llm4sbr.intent.backends.base import Backend
from recbole_llm4sbr.intent.cache import AnswerCache, answer_key
from recbole_llm4sbr.intent.generation import answer_prompts

torch.set_num_threads(1)


class Counting(Backend):
    """Upper-cases prompts; records what it was sent; its describe() carries the sampling settings."""

    name = "counting"

    def __init__(self, settings: Dict[str, Any]):
        super().__init__(settings)
        self.sent: List[str] = []
        self.calls = 0

    def describe(self) -> Dict[str, Any]:
        return {"backend": "slow", "temperature": self.settings.get("t", 0.0)}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        self.calls += 1
        self.sent.extend(prompts)
        return [p.upper() for p in prompts]


def _run(backend, prompts, db, tv="tv1", batch_size=2):
    with AnswerCache(db, backend.describe(), tv) as cache:
        return answer_prompts(backend, prompts, cache, batch_size, progress=False)


def test_identical_prompts_are_sent_once_and_cached(tmp_path):
    db = tmp_path / "answers.sqlite"
    b = Counting({})
    prompts = ["a", "b", "a", "c", "b", "a"]
    answers, st = _run(b, prompts, db)
    assert answers == ["A", "B", "A", "C", "B", "A"]
    assert sorted(b.sent) == ["a", "b", "c"] and b.calls == 2  # chunks of 2
    assert (st.total, st.unique, st.from_cache, st.sent, st.failed) == (6, 3, 0, 3, 0)
    b2 = Counting({})
    answers2, st2 = _run(b2, prompts, db)
    assert answers2 == answers and b2.sent == [] and (st2.from_cache, st2.sent) == (3, 0)


def test_sampling_or_template_change_resends(tmp_path):
    db = tmp_path / "answers.sqlite"
    _run(Counting({"t": 0.0}), ["a", "b"], db)
    hot = Counting({"t": 0.7})
    _, st = _run(hot, ["a", "b"], db)
    assert sorted(hot.sent) == ["a", "b"] and st.from_cache == 0
    other_template = Counting({"t": 0.0})
    _run(other_template, ["a", "b"], db, tv="tv2")
    assert sorted(other_template.sent) == ["a", "b"]
    again = Counting({"t": 0.0})
    _run(again, ["a", "b"], db)
    assert again.sent == []
    assert answer_key({"m": 1}, "t", "p") != answer_key({"m": 2}, "t", "p")
    assert answer_key({"m": 1}, "t", "p") != answer_key({"m": 1}, "u", "p")


def test_cache_bound_to_another_backend_is_refused(tmp_path):
    with AnswerCache(tmp_path / "a.sqlite", {"backend": "x"}, "tv") as cache:
        with pytest.raises(ValueError, match="describe"):
            answer_prompts(Counting({}), ["a"], cache, 2, progress=False)


class Flaky(Counting):
    def __init__(self, settings, fail_calls):
        super().__init__(settings)
        self.fail_calls = set(fail_calls)

    def generate(self, prompts):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError(f"boom {self.calls}")
        return [p.upper() for p in prompts]


def test_failed_chunk_is_retried_once(tmp_path, caplog):
    b = Flaky({}, fail_calls={1})
    with caplog.at_level(logging.WARNING, logger="recbole_llm4sbr.intent"):
        answers, st = _run(b, ["a", "b", "c"], tmp_path / "db.sqlite")
    assert answers == ["A", "B", "C"] and st.failed == 0 and b.calls == 3
    assert "retrying once" in caplog.text


def test_chunk_failing_twice_is_counted_not_cached(tmp_path, caplog):
    db = tmp_path / "db.sqlite"
    b = Flaky({}, fail_calls={1, 2})  # the first chunk (a, b) fails twice; (c) works
    with caplog.at_level(logging.WARNING, logger="recbole_llm4sbr.intent"):
        answers, st = _run(b, ["a", "b", "c"], db)
    assert answers == [None, None, "C"] and st.failed == 2 and st.sent == 3
    assert "2 of 3 prompts sent got no answer" in caplog.text
    retry = Counting({})
    answers, st = _run(retry, ["a", "b", "c"], db)
    assert sorted(retry.sent) == ["a", "b"] and answers == ["A", "B", "C"]


class WrongLength(Counting):
    def generate(self, prompts):
        return ["x"]


def test_wrong_number_of_answers_is_a_failure(tmp_path):
    answers, st = _run(WrongLength({}), ["a", "b"], tmp_path / "db.sqlite")
    assert answers == [None, None] and st.failed == 2


CHILD = textwrap.dedent(
    """
    import sys, time, json
    from recbole_llm4sbr.intent.backends.base import Backend
    from recbole_llm4sbr.intent.cache import AnswerCache
    from recbole_llm4sbr.intent.generation import answer_prompts

    counter, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Slow(Backend):
        name = "slow"
        def describe(self):
            return {"backend": "slow", "temperature": 0.0}
        def generate(self, prompts):
            with open(counter, "a") as f:
                f.writelines(p + "\\n" for p in prompts)
            time.sleep(0.25)
            return [p.upper() for p in prompts]

    b = Slow({})
    with AnswerCache(db, b.describe(), "tv1") as cache:
        answer_prompts(b, [f"p{i}" for i in range(n)], cache, 2, progress=False)
    print("finished")
    """
)


def test_kill_9_mid_run_then_rerun_sends_only_the_missing(tmp_path):
    n = 20
    counter, db, script = tmp_path / "sent.txt", tmp_path / "answers.sqlite", tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(counter), str(db), str(n)],
                             env=subprocess_env(), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until the 4th chunk is in flight
        if counter.exists() and len(counter.read_text().splitlines()) >= 8:
            break
        if child.poll() is not None:
            pytest.fail(f"child ended early: {child.communicate()}")
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    sent_before = counter.read_text().splitlines()
    assert 8 <= len(sent_before) < n

    prompts = [f"p{i}" for i in range(n)]
    b = Counting({})  # same describe() as the child's backend
    with AnswerCache(db, b.describe(), "tv1") as cache:
        cached = set(cache.lookup(prompts))
    assert 6 <= len(cached) < n  # the committed chunks survived the kill
    answers, st = _run(b, prompts, db)
    assert set(b.sent) == set(prompts) - cached and len(b.sent) == n - len(cached)
    assert st.from_cache == len(cached) and st.sent == n - len(cached)
    assert answers == [p.upper() for p in prompts]

    third = Counting({})
    _, st3 = _run(third, prompts, db)
    assert third.sent == [] and st3.sent == 0 and st3.from_cache == n


def test_cache_key_is_answer_key_byte_for_byte(tmp_path):
    """The cache's fast key (serialised head) must equal answer_key, or every existing cache is lost."""
    info = {"backend": "transformers", "model": "m", "temperature": 0.7, "nested": {"b": 1, "a": [1, 2]}, "x": None}
    cache = AnswerCache(tmp_path / "a.sqlite", info, "tv-1")
    try:
        for prompt in ["", "plain", 'quotes " and \\ backslash', "ünïcødé — 映画\n2. line", "]", "\t\x00"]:
            assert cache.key(prompt) == answer_key(info, "tv-1", prompt)
    finally:
        cache.close()
