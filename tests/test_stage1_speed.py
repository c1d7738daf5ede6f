"""Stage-1 speed settings of the transformers backend and the send order: what they resolve to, and
that the fast paths give the plain path's answers (no timings here: benchmarks/stage1_throughput.py)."""
from __future__ import annotations

import pytest
import torch

from recbole_llm4sbr.intent.backends import transformers_backend as tb
from recbole_llm4sbr.intent.backends.transformers_backend import (TransformersBackend, _pick_dtype,
                                                                  prefix_tree, resolve_num_threads)
from recbole_llm4sbr.intent.generation import send_order
from recbole_llm4sbr.intent.prompts import build_prompt

TEMPLATE = ("The order in which users click on items is as follows:\n{items}\n"
            "Please guess an item that the user is interested in in the {qualifier}.\n"
            "(Only output the item name without any explanation.)")
ITEMS = {"1": "Toy Story (1995)", "2": "Heat (1995)", "3": "Jumanji (1995)", "4": "Casino (1995)",
         "5": "GoldenEye (1995)"}
VIEWS = ("long-term", "short-term")
# every-prefix prompts of two sessions, both views, as stage 1 builds them (pipeline order)
SESSIONS = [["1", "2", "3", "4"], ["5", "3", "1"]]
PROMPTS = [build_prompt(TEMPLATE, s[:k], ITEMS, q) for s in SESSIONS for k in range(1, len(s) + 1)
           for q in VIEWS] + ["short one", "1. Jumanji (1995)"]


@pytest.fixture
def flags(monkeypatch):
    """Pretend CPU flags for ``intent_dtype: auto``."""
    def use(*names):
        monkeypatch.setattr(tb, "_cpu_flags", lambda: frozenset(names))
    return use


@pytest.mark.parametrize("cpu_flags", [("avx2", "fma"), ("avx2", "avx512f", "avx512_bf16"),
                                       ("avx2", "amx_tile", "amx_bf16")])
def test_auto_dtype_on_cpu_is_float32_even_with_bf16_units(flags, cpu_flags):
    """bf16 answers depend on how prompts are batched, so auto never picks it on a CPU: one table tag
    names one table (bf16 stays available when asked for)."""
    flags(*cpu_flags)
    assert _pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert _pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # explicit wins
    assert _pick_dtype("float16", torch.device("cpu")) == torch.float16
    # what a table identity can record without loading the model
    assert tb.resolved_dtype_name({"intent_device": "cpu"}) == "float32"
    assert tb.resolved_dtype_name({"intent_device": "cpu", "intent_dtype": "bfloat16"}) == "bfloat16"


def test_dtype_reaches_describe_and_the_log(flags, tiny_chat_model, caplog):
    """The resolved dtype is in describe(), i.e. in the answer-cache key: bf16 answers are never
    served for a float32 backend or the other way round. Asking for bf16 warns that its answers
    depend on the batches; auto on a bf16 CPU says what it leaves unused."""
    flags("amx_bf16")
    base = dict(intent_model=tiny_chat_model, intent_device="cpu", intent_max_tokens=4)
    with caplog.at_level("INFO", logger="recbole_llm4sbr.intent"):
        auto = TransformersBackend(base)
    try:
        assert auto.describe()["dtype"] == "float32" and auto.model.dtype == torch.float32
        assert "intent_dtype auto -> float32" in caplog.text and "bfloat16" in caplog.text
        assert "WARNING" not in [r.levelname for r in caplog.records]
    finally:
        auto.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="recbole_llm4sbr.intent"):
        bf16 = TransformersBackend(dict(base, intent_dtype="bfloat16"))
    try:
        assert bf16.describe()["dtype"] == "bfloat16" and bf16.model.dtype == torch.bfloat16
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and "depend on which prompts are decoded together" in warned[0]
    finally:
        bf16.close()


def test_num_threads_resolution(monkeypatch):
    monkeypatch.setattr(tb, "_usable_cores", lambda: 6)
    monkeypatch.setattr(tb, "_busy_cores", lambda: 0.2)
    assert resolve_num_threads("auto") == 6  # an idle machine: every core
    assert resolve_num_threads(None) == 6
    monkeypatch.setattr(tb, "_busy_cores", lambda: 2.6)
    assert resolve_num_threads("auto") == 3  # the cores others are not using
    monkeypatch.setattr(tb, "_busy_cores", lambda: 9.0)
    assert resolve_num_threads("auto") == 1  # oversubscribed: one thread, never zero
    assert resolve_num_threads(3) == 3  # a count is taken as given
    with pytest.raises(ValueError, match="intent_num_threads"):
        resolve_num_threads(-2)
    with pytest.raises(ValueError, match="intent_num_threads"):
        resolve_num_threads("many")


def test_generation_threads_do_not_leak(tiny_chat_model):
    """Stage 1 runs on intent_num_threads but hands training its own torch_num_threads back."""
    before = torch.get_num_threads()
    seen = []
    b = TransformersBackend(dict(intent_model=tiny_chat_model, intent_device="cpu", intent_max_tokens=2,
                                 intent_num_threads=before + 1))
    try:
        real = b.model.forward

        def spy(*a, **k):
            seen.append(torch.get_num_threads())
            return real(*a, **k)

        b.model.forward = spy  # every forward of the call: prefill and decode
        b.generate(PROMPTS[:3])
    finally:
        b.close()
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before


def test_prefix_tree_holds_each_shared_token_once():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2], [1, 2, 3, 4, 6], [7], [], [1, 2, 3, 4]]
    nodes, end = prefix_tree(seqs)
    # every sequence is its end node's path
    def path(i):
        out = []
        while i >= 0:
            out = nodes[i].tokens + out
            i = nodes[i].parent
        return out
    assert [path(e) for e in end] == seqs
    # unique (position, prefix) tokens: 1,2 | 3 | 4 | 5 | 6 | 7 -> 7
    assert sum(len(n.tokens) for n in nodes) == 7
    assert all(nodes[n.parent].depth == n.depth - 1 for n in nodes if n.parent >= 0)


def test_send_order_puts_views_and_extensions_of_a_prefix_side_by_side():
    order = send_order(PROMPTS)
    assert sorted(order) == sorted(PROMPTS)
    for s in SESSIONS:
        for k in range(1, len(s) + 1):
            long_, short = (build_prompt(TEMPLATE, s[:k], ITEMS, q) for q in VIEWS)
            assert abs(order.index(long_) - order.index(short)) == 1  # the two views are neighbours
    # a session's prompts form one run (prefix k+1 extends prefix k)
    first = [i for i, p in enumerate(order) if p.startswith(build_prompt(TEMPLATE, ["1"], ITEMS, "")[:70])]
    assert first == list(range(first[0], first[0] + len(first)))


def _backend(model, **over):
    s = dict(intent_model=model, intent_max_tokens=6, intent_temperature=0.0, intent_top_p=1.0,
             intent_seed=2024, intent_batch_size=3, intent_device="cpu", intent_num_threads=1,
             intent_dtype="float32")  # exact equalities: bf16 (auto on a bf16 CPU) has near-ties
    s.update(over)
    return TransformersBackend(s)


@pytest.fixture(scope="module")
def plain_and_shared(tiny_chat_model):
    plain, shared = (_backend(tiny_chat_model, intent_prefix_sharing=flag) for flag in (False, True))
    yield plain, shared
    plain.close()
    shared.close()


def test_prefix_sharing_gives_the_plain_answers(plain_and_shared):
    plain, shared = plain_and_shared
    want = plain.generate(PROMPTS)
    got = shared.generate(PROMPTS)
    assert got == want
    assert len(set(want)) > 2  # the answers follow the prompts: a broken cache would show
    # shared prefixes were computed once: fewer prefill tokens than prompt tokens
    stats = shared.last_prefill
    assert stats["computed_tokens"] < 0.6 * stats["prompt_tokens"]
    # order and duplicates
    perm = list(reversed(range(len(PROMPTS))))
    assert shared.generate([PROMPTS[i] for i in perm] + PROMPTS[:1]) == [want[i] for i in perm] + want[:1]


def test_prefix_sharing_sampling_is_seeded(tiny_chat_model):
    b = _backend(tiny_chat_model, intent_temperature=1.0, intent_top_p=0.9, intent_seed=3)
    try:
        first = b.generate(PROMPTS)
        assert first == b.generate(PROMPTS)
    finally:
        b.close()


def test_answer_prompts_hands_whole_trees_to_the_backend(tiny_chat_model, tmp_path):
    """prompts_per_call > intent_batch_size: a chunk holds many batches, so shared prefixes meet."""
    from recbole_llm4sbr.intent.cache import AnswerCache
    from recbole_llm4sbr.intent.generation import answer_prompts, chunk_size

    b = _backend(tiny_chat_model, intent_prompts_per_call=64)
    try:
        assert chunk_size(b, 3) == 64
        calls = []
        real = b.generate
        b.generate = lambda ps: calls.append(list(ps)) or real(ps)
        with AnswerCache(tmp_path / "c.sqlite", b.describe(), "t") as cache:
            answers, stats = answer_prompts(b, PROMPTS, cache, 3, progress=False)
        assert len(calls) == 1 and calls[0] == send_order(PROMPTS)
        assert answers == real(PROMPTS)
    finally:
        b.close()


def test_greedy_loop_with_early_stops_matches_generate(tiny_chat_model):
    """The shared path's own greedy loop (cache written in place, finished rows dropped) stops
    where generate() stops: with many stop ids the answers end at different steps."""
    loop, hf = (_backend(tiny_chat_model, intent_max_tokens=10, intent_greedy_loop=flag) for flag in (True, False))
    try:
        full = hf.generate(PROMPTS)
        stops = sorted({t for a in full for t in hf.tokenizer(a, add_special_tokens=False)["input_ids"][1:3]})
        for b in (loop, hf):
            b.eos_token_ids = list(b.eos_token_ids) + stops
        want = hf.generate(PROMPTS)
        got = loop.generate(PROMPTS)
        assert got == want
        assert len({len(a) for a in want}) > 2 and want != full  # rows did stop early, at different steps
    finally:
        loop.close()
        hf.close()
