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


def resolve_dtype_as(monkeypatch, name):
    """What ``intent_dtype: auto`` resolves to, as on a machine of that kind (CPU flags, GPU)."""
    from recbole_llm4sbr.intent.backends import transformers_backend

    monkeypatch.setattr(transformers_backend, "resolved_dtype_name",
                        lambda settings: "float32" if settings.get("intent_dtype") == "float32" else name)


@pytest.mark.parametrize("backend,overrides,tag", PINNED)
def test_table_tag_is_stable(backend, overrides, tag, monkeypatch):
    resolve_dtype_as(monkeypatch, "float32")  # the pins are float32 machines' tags (no bf16 hardware)
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


def test_a_bf16_machine_names_another_table(monkeypatch):
    """`intent_dtype: auto` is bf16 on a GPU or a bf16 CPU and float32 elsewhere, and greedy answers
    differ between them: one tag must not name both tables (a benchmark resumed on another machine
    would mix them)."""
    s = load_settings(dataset="tiny", overrides={"intent_device": "cpu"})
    resolve_dtype_as(monkeypatch, "float32")
    fp32 = table_tag(s, "transformers")
    assert "resolved_dtype" not in table_identity(s, "transformers")
    resolve_dtype_as(monkeypatch, "bfloat16")
    assert table_identity(s, "transformers")["resolved_dtype"] == "bfloat16"
    assert table_tag(s, "transformers") != fp32
    assert table_tag(s, "text") == "text-50d28be2"  # no LLM, no dtype

