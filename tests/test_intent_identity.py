"""The table tag is the name of every built table and part of its staleness check: the same settings
must give the same tag across refactorings, or every user's tables (and stage-2 runs) are rebuilt."""
from __future__ import annotations

import pytest

from recbole_llm4sbr.intent import load_settings
from recbole_llm4sbr.intent.identity import table_identity, table_tag

#: (backend, overrides of the packaged defaults, tag computed before identity.py existed)
PINNED = [
    ("text", {}, "text-50d28be2"),
    ("transformers", {"intent_device": "cpu"}, "transformers-4475454f"),  # auto -> typical
    ("transformers", {"intent_samples": "all"}, "transformers-2bd58811"),
    ("transformers", {"intent_device": "cpu", "intent_prompt_max_items": 20, "intent_budget": 16},
     "transformers-2f48f946"),
    ("vllm", {}, "vllm-57a4d797"),
    ("vllm", {"intent_samples": "typical", "intent_budget": 16}, "vllm-5de68acd"),
    ("openai", {"openai_model": "gpt-x", "openai_base_url": "http://localhost:8000/v1"}, "openai-8212d568"),
    ("text", {"intent_views": "{short: short-term}", "intent_topr": 3}, "text-937cc4a8"),
]


@pytest.mark.parametrize("backend,overrides,tag", PINNED)
def test_table_tag_is_stable(backend, overrides, tag):
    settings = load_settings(dataset="tiny", overrides=dict(overrides))
    assert table_tag(settings, backend) == tag, (
        "the table tag changed: every existing intent table would count as missing. If that is "
        "intended (the table's content changes), bump FORMAT_VERSION/CLEAN_VERSION and update the pin")


def test_identity_names_what_changes_the_table():
    s = load_settings(dataset="tiny", overrides={"intent_device": "cpu"})
    ident = table_identity(s, "transformers")
    assert ident["samples"] == "typical" and ident["prompt_max_items"] == 10
    assert table_tag(dict(s, intent_topr=3), "transformers") != table_tag(s, "transformers")
    # a setting outside the identity (batch size) keeps the table
    assert table_tag(dict(s, intent_batch_size=7), "transformers") == table_tag(s, "transformers")
