"""One per-prefix path (intent/rows.py): online stage 1 gives, for a prefix the table holds, exactly
that table's row (vectors, raw and answers.jsonl record), fallbacks included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from intent_helpers import base_settings, write_dataset

from recbole_llm4sbr.intent import build_intent_table, load_intent_table
from recbole_llm4sbr.intent.backends import REGISTRY
from recbole_llm4sbr.intent.online import OnlineIntents
from recbole_llm4sbr.intent.inputs import read_item_text
from recbole_llm4sbr.intent.rows import Answer, PrefixPrompts

torch.set_num_threads(1)


def same_record(a, b):
    def exact(rec):
        return {**rec, "views": {v: {k: x for k, x in e.items() if k != "sims"} for v, e in rec["views"].items()}}

    return exact(a) == exact(b) and all(
        np.allclose(a["views"][v]["sims"], b["views"][v]["sims"], atol=1e-5) for v in b["views"])


@pytest.mark.parametrize("backend", ["text", "empty"])  # empty: every answer falls back
def test_online_intent_is_the_tables_row(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(REGISTRY, "empty", "intent_helpers:EmptyBackend")
    write_dataset(tmp_path)
    settings = base_settings(tmp_path, intent_backend=backend, intent_samples="all", intent_prompt_max_items=1)
    table = load_intent_table(build_intent_table(settings))
    online = OnlineIntents(settings, table.path)
    try:
        for key in table.keys:
            record = table.record(key)
            found = online.infer(record["prefix"])
            assert found.key == key and found.views == table.views
            # the same record; sims up to the encoder's batch-size noise (the table encodes all at once)
            assert same_record(found.record, record), (found.record, record)
            np.testing.assert_allclose(found.vectors, table.vectors[table.row(key)], atol=1e-5)
            np.testing.assert_allclose(found.raw, table.raw[table.row(key)], atol=1e-5)
            if backend == "empty":
                assert all(v["fallback"] == "empty" for v in record["views"].values())
    finally:
        online.close()


def test_online_intent_grounds_with_the_tables_approximate_index_built_once(tmp_path, monkeypatch):
    """A table grounded with ``intent_ann: ivf`` must serve unseen prefixes through the same kind of
    index (not an exact search: other rows than the table's), and a server must not rebuild the index
    for every prefix."""
    pytest.importorskip("faiss")
    from recbole_llm4sbr.intent import localization

    built = []
    real_build = localization.build_index
    monkeypatch.setattr(localization, "build_index",
                        lambda faiss, items, kind: built.append(kind) or real_build(faiss, items, kind))
    write_dataset(tmp_path)
    settings = base_settings(tmp_path, intent_samples="all", intent_prompt_max_items=1, intent_ann="ivf",
                             intent_faiss_threshold=2, intent_topr=2)
    table = load_intent_table(build_intent_table(settings))
    assert built == ["ivf"]  # the build: one index for all its answers
    online = OnlineIntents(settings, table.path)
    try:
        for key in table.keys[:3]:
            record = table.record(key)
            np.testing.assert_allclose(online.infer(record["prefix"]).vectors, table.vectors[table.row(key)],
                                       atol=1e-5)
    finally:
        online.close()
    assert built == ["ivf", "ivf"]  # the server: one more, kept across its prefixes


def test_prompts_and_fallback_of_one_prefix():
    texts = {"1": "Toy Story", "2": "Heat"}
    rows = PrefixPrompts("{items}\n{qualifier}", {"long": "long-term", "short": "short-term"}, texts, max_items=1)
    assert rows.prompts(["1", "2"]) == ["1. Heat_2\nlong-term", "1. Heat_2\nshort-term"]
    assert rows.answers(["1", "2"], ["Answer: Toy Story_1", None]) == [
        Answer("Toy Story"), Answer("Heat", "failed")]


def test_short_items_shortens_only_the_short_views_prompt():
    from recbole_llm4sbr.intent import load_settings
    from recbole_llm4sbr.intent.errors import IntentError
    from recbole_llm4sbr.intent.identity import table_tag
    from recbole_llm4sbr.intent.rows import short_view_items

    texts = {str(i): f"Item {i}" for i in range(1, 8)}
    prefix = [str(i) for i in range(1, 8)]
    views = {"long": "long-term", "short": "short-term"}
    template = "{qualifier}:\n{items}"
    for max_items, long_n in ((0, 7), (5, 5)):
        long, short = PrefixPrompts(template, views, texts, max_items=max_items, short_items=2).prompts(prefix)
        assert long.count("\n") == long_n and short == "short-term:\n1. Item 6_6\n2. Item 7_7"
    assert PrefixPrompts(template, views, texts, max_items=1, short_items=3).prompts(prefix)[1].count("\n") == 1
    same = PrefixPrompts(template, views, texts, max_items=5).prompts(prefix)
    assert same[0].splitlines()[1:] == same[1].splitlines()[1:]  # off: both views list the same items
    # in the table's tag only when set (today's tags are pinned by test_intent_identity.py)
    settings = load_settings(dataset="tiny", overrides={"intent_device": "cpu"})
    assert table_tag(dict(settings, intent_short_items=0), "transformers") == table_tag(settings, "transformers")
    assert table_tag(dict(settings, intent_short_items=3), "transformers") != table_tag(settings, "transformers")
    assert short_view_items(dict(settings, intent_short_items=3)) == 3
    with pytest.raises(IntentError, match="no 'short' view|has \\['long'\\]"):
        short_view_items(dict(settings, intent_short_items=3, intent_views={"long": "long-term"}))
    with pytest.raises(IntentError, match="intent_short_items"):
        short_view_items(dict(settings, intent_short_items=-1))


def test_show_prints_each_views_own_prompt(tmp_path):
    """With intent_short_items the short-term prompt lists fewer items: `intent show` must print what
    each view was really asked, not the first view's prompt for all."""
    import io

    from recbole_llm4sbr.intent.show import show_session

    write_dataset(tmp_path)
    settings = base_settings(tmp_path, intent_samples="all", intent_short_items=1)
    build_intent_table(settings)
    out = io.StringIO()
    assert show_session(settings, "5", out) == 2
    text = out.getvalue()
    long_prompt, short_prompt = PrefixPrompts.from_settings(settings, read_item_text(settings), 0).prompts(["5", "6", "7"])
    assert long_prompt != short_prompt
    assert f"--- prompt (view long)\n{long_prompt}\n" in text and f"--- prompt (view short)\n{short_prompt}\n" in text
