"""``intent_decoding: titles`` (intent/constrained.py): answers constrained to catalogue titles, on the
tiny random chat model (conftest) and the tiny dataset (tinydata), float32 for exact equalities."""
from __future__ import annotations

import pytest

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.intent import constrained
from recbole_llm4sbr.intent.backends.transformers_backend import catalogue_titles
from recbole_llm4sbr.intent.errors import IntentError

from test_backend_transformers import PROMPTS
from tinydata import write_tiny_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("constrained_data")
    write_tiny_dataset(root)
    return {"dataset": "tiny", "data_path": str(root)}


def _settings(model, data, **over):
    s = dict(intent_model=model, intent_max_tokens=24, intent_temperature=0.0, intent_top_p=1.0,
             intent_seed=2024, intent_batch_size=3, intent_device="cpu", intent_dtype="float32",
             intent_decoding="titles", intent_decoding_titles=2, **data)
    s.update(over)
    return s


def _backend(model, data, **over):
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    return TransformersBackend(_settings(model, data, **over))


def _is_title_list(answer, titles, limit):
    parts = answer.split(constrained.SEPARATOR)
    return 1 <= len(parts) <= limit and all(p in titles for p in parts)


def test_titles_come_from_the_itemtext(tiny_data):
    titles = catalogue_titles(tiny_data)
    assert len(titles) == 30 and titles[0] == "Movie number 1 (1991)"  # the text before " -- "
    assert constrained.title_of("Toy Story (1995) -- Animation, Comedy") == "Toy Story (1995)"


def test_trie_completes_answers_back_to_their_last_whole_title():
    # titles as token ids: A = [1, 2], AB = [1, 2, 3] (A is a prefix of AB), C = [4]; "; " + t = [9, ...]
    trie = constrained.TitleTrie([[1, 2], [1, 2, 3], [4]], [[9, 1, 2], [9, 1, 2, 3], [9, 4]], stop_ids=[0])
    assert trie.complete([1, 2, 3, 9, 4, 0, 7], limit=3) == [1, 2, 3, 9, 4]  # stop and after: dropped
    assert trie.complete([1, 2, 9, 1], limit=3) == [1, 2]  # a half second title is cut off
    assert trie.complete([4, 9, 4, 9, 4], limit=2) == [4, 9, 4]  # at most `limit` titles
    assert trie.complete([1], limit=3) == []  # no whole title
    assert trie.dist[trie.children[0][1]] == 1  # fewest tokens to a title's end


def test_constraint_mask_allows_continuations_separator_and_stop_as_the_state_says():
    import torch

    trie = constrained.TitleTrie([[1, 2], [1, 2, 3], [4]], [[9, 1, 2], [9, 1, 2, 3], [9, 4]], stop_ids=[0])
    c = constrained.TitleConstraint(trie, limit=2, rows=2, max_new_tokens=10, cache={})
    allowed = lambda m, r: sorted(torch.nonzero(m[r]).flatten().tolist())  # noqa: E731
    m = c.mask(12, "cpu")
    assert allowed(m, 0) == [1, 4]  # a title's first token; no stop before a title
    c.advance([1, 4])
    m = c.mask(12, "cpu")
    assert allowed(m, 0) == [2] and allowed(m, 1) == [0, 9]  # row 1: "C" done -> stop or separator
    c.advance([2, 9])
    m = c.mask(12, "cpu")
    assert allowed(m, 0) == [0, 3, 9] and allowed(m, 1) == [1, 4]
    c.advance([9, 4])
    m = c.mask(12, "cpu")
    assert allowed(m, 1) == [0]  # two titles: only a stop
    c.advance([4, 0])
    assert c.done == [False, True] and allowed(c.mask(12, "cpu"), 1) == list(range(12))  # finished: anything
    # length: with 2 tokens left at the root only C ([4], then a stop) fits, not A/AB
    short = constrained.TitleConstraint(trie, limit=2, rows=1, max_new_tokens=1, cache={})
    assert allowed(short.mask(12, "cpu"), 0) == [4]


@pytest.fixture(scope="module")
def plain_and_shared(tiny_chat_model, tiny_data):
    backends = [_backend(tiny_chat_model, tiny_data, intent_prefix_sharing=False),
                _backend(tiny_chat_model, tiny_data, intent_prefix_sharing=True),
                _backend(tiny_chat_model, tiny_data, intent_prefix_sharing=True, intent_greedy_loop=False)]
    yield backends
    for b in backends:
        b.close()


def test_every_answer_is_a_list_of_catalogue_titles(plain_and_shared, tiny_data):
    titles = set(catalogue_titles(tiny_data))
    answers = plain_and_shared[0].generate(PROMPTS)
    assert len(answers) == len(PROMPTS)
    assert all(_is_title_list(a, titles, 2) for a in answers), answers
    assert len(set(answers)) > 1  # the answer still follows the prompt


def test_plain_and_shared_paths_give_the_same_constrained_answers(plain_and_shared):
    plain, shared, shared_generate = plain_and_shared
    prompts = PROMPTS + [PROMPTS[0] + " again", PROMPTS[3][:40]]  # prefixes shared and extended
    want = plain.generate(prompts)
    assert shared.generate(prompts) == want  # the greedy loop (cache in place, finished rows dropped)
    assert shared_generate.generate(prompts) == want  # generate() from the pre-filled cache
    assert shared.last_prefill["computed_tokens"] < shared.last_prefill["prompt_tokens"]  # it did share


def test_answers_fit_the_token_budget_and_the_title_limit(tiny_chat_model, tiny_data):
    titles = set(catalogue_titles(tiny_data))
    tok_len = min(len(ids) for ids in plain_tokens(tiny_chat_model, titles))
    # room for exactly one (shortest) title: every answer is one whole title, none cut off
    b = _backend(tiny_chat_model, tiny_data, intent_max_tokens=tok_len, intent_decoding_titles=3)
    try:
        answers = b.generate(PROMPTS)
        assert all(_is_title_list(a, titles, 1) for a in answers), answers
    finally:
        b.close()
    b = _backend(tiny_chat_model, tiny_data, intent_max_tokens=40, intent_decoding_titles=1)
    try:
        assert all(_is_title_list(a, titles, 1) for a in b.generate(PROMPTS))
    finally:
        b.close()


def plain_tokens(model, titles):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    return tok(sorted(titles), add_special_tokens=False)["input_ids"]


def test_describe_names_the_decoding_only_when_constrained(plain_and_shared, tiny_chat_model, tiny_data):
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    info = plain_and_shared[0].describe()
    assert info["decoding"]["mode"] == "titles" and info["decoding"]["max_titles"] == 2
    assert info["decoding"]["titles"] == 30
    assert TransformersBackend.describe_settings(_settings(tiny_chat_model, tiny_data)) == info  # plannable
    free = TransformersBackend.describe_settings(_settings(tiny_chat_model, tiny_data, intent_decoding="free"))
    assert "decoding" not in free  # free keeps the answer-cache keys of earlier answers


def test_bad_values_and_backends_are_refused(tiny_data):
    with pytest.raises(ConfigError, match=r"'intent_decoding'.*Fix: --intent_decoding=free"):
        constrained.decoding({"intent_decoding": "beam"})
    with pytest.raises(ConfigError, match=r"'intent_decoding_titles'.*Fix: --intent_decoding_titles=3"):
        constrained.max_titles({"intent_decoding_titles": 0})
    s = dict(tiny_data, intent_decoding="titles")
    for backend in ("text", "openai", "vllm"):
        with pytest.raises(IntentError, match=rf"intent_decoding=titles.*'{backend}'.*--intent_backend=transformers"):
            constrained.check_backend(s, backend)
    with pytest.raises(IntentError, match="intent_representation=hidden"):
        constrained.check_backend(dict(s, intent_representation="hidden"), "transformers")
    constrained.check_backend(s, "transformers")
    constrained.check_backend(dict(tiny_data, intent_decoding="free"), "text")  # free: any backend

    from recbole_llm4sbr.intent.pipeline import build_intent_table

    with pytest.raises(IntentError, match="intent_decoding=titles"):  # before anything is read or built
        build_intent_table(dict(s, intent_backend="text"))
    with pytest.raises(IntentError, match="no dataset"):
        catalogue_titles({"intent_decoding": "titles"})


def test_sampled_answers_are_title_lists_too(tiny_chat_model, tiny_data):
    """The mask is a LogitsProcessor in generate(): sampling (plain and shared paths) stays inside it."""
    titles = set(catalogue_titles(tiny_data))
    for sharing in (False, True):
        b = _backend(tiny_chat_model, tiny_data, intent_temperature=1.5, intent_top_p=1.0, intent_decoding_titles=3,
                     intent_prefix_sharing=sharing)
        try:
            answers = b.generate(PROMPTS)
            assert all(_is_title_list(a, titles, 3) for a in answers), answers
        finally:
            b.close()
