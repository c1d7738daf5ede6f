"""Every setting stage 1 knows, read through the typed settings, must name the same table folder as
before: the tag is the folder name of every built table and benchmark cells record it. The expected
tags were computed by the dict-reading identity code; a change here renames users' tables."""
from __future__ import annotations

import pytest

from recbole_llm4sbr.intent import load_settings
from recbole_llm4sbr.intent.identity import table_tag

#: (backend, overrides of the packaged defaults (@auto: what intent_dtype: auto resolves to
#: on the machine, float32 when absent), the tag)
TAGS = [
    ('text', {}, 'text-50d28be2'),
    ('text', {"intent_topr": 0}, 'text-a29aa6a3'),
    ('text', {"intent_topr": 1}, 'text-48d7b4c9'),
    ('text', {"intent_topr": 5}, 'text-50d28be2'),
    ('text', {"intent_samples": "typical"}, 'text-497f2889'),
    ('text', {"intent_samples": "all", "intent_short_items": 3}, 'text-f9054d93'),
    ('transformers', {"intent_device": "cpu"}, 'transformers-4475454f'),
    ('transformers', {"intent_device": "cpu", "intent_dtype": "float32"}, 'transformers-11b3408b'),
    ('transformers', {"intent_device": "cpu", "intent_dtype": "bfloat16"}, 'transformers-8e0f9b35'),
    ('transformers', {"intent_device": "cpu", "intent_dtype": "auto", "@auto": "bfloat16"}, 'transformers-83fb6ad9'),
    ('transformers', {"intent_samples": "all", "intent_device": "cpu"}, 'transformers-2bd58811'),
    ('transformers', {"intent_samples": "typical", "intent_device": "cpu", "intent_topr": 0}, 'transformers-4643db03'),
    ('transformers', {"intent_samples": "typical", "intent_device": "cpu", "intent_topr": 1}, 'transformers-a15ea886'),
    ('transformers', {"intent_device": "cpu", "intent_localization": False}, 'transformers-4475454f'),
    ('transformers', {"intent_device": "cpu", "intent_short_items": 3}, 'transformers-cb6dbe39'),
    ('transformers', {"intent_device": "cpu", "intent_storage_dtype": "float16"}, 'transformers-9fa10044'),
    ('transformers', {"intent_device": "cpu", "intent_ann": "hnsw"}, 'transformers-55a050f6'),
    ('vllm', {}, 'vllm-57a4d797'),
    ('vllm', {"intent_samples": "all", "vllm_dtype": "bfloat16", "vllm_max_model_len": 2048}, 'vllm-179b976e'),
    ('vllm', {"intent_samples": "typical", "intent_budget": 16}, 'vllm-5de68acd'),
    ('openai', {}, 'openai-3f534243'),
    ('openai', {"openai_model": "gpt-x", "openai_base_url": "http://localhost:8000/v1", "intent_seed": 7}, 'openai-27837602'),
    ('openai', {"intent_samples": "all", "intent_temperature": 0.7, "intent_top_p": 0.9, "intent_max_tokens": 64}, 'openai-c8c6f90f'),
]


@pytest.mark.parametrize("backend,overrides,tag", TAGS)
def test_tag_unchanged(backend, overrides, tag, monkeypatch):
    from recbole_llm4sbr.intent.backends import transformers_backend

    overrides = dict(overrides)
    auto = overrides.pop("@auto", "float32")

    def resolved(settings):
        requested = settings.get("intent_dtype")
        return auto if requested in (None, "auto") else str(requested)

    monkeypatch.setattr(transformers_backend, "resolved_dtype_name", resolved)
    settings = load_settings(dataset="tiny", overrides=overrides)
    assert table_tag(settings, backend) == tag
