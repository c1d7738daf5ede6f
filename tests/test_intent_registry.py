"""A stage-1 backend is one registration: its class, the keys that name its tables, its ``auto`` rule
and defaults; every list the rest of the code reads is a view of the registrations."""
from __future__ import annotations

import pytest

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.intent import registry
from recbole_llm4sbr.intent.backends import REGISTRY, choose_auto, get_backend, resolve_samples
from recbole_llm4sbr.intent.identity import table_identity
from recbole_llm4sbr.intent.settings import load_settings


@pytest.fixture
def echo_backend(monkeypatch):
    """``echo`` registered for the test only, with keys, a prefix and block rows."""
    for name in ("SPECS", "REGISTRY", "BACKEND_KEYS"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    from recbole_llm4sbr.intent import backends

    monkeypatch.setattr(backends, "REGISTRY", registry.REGISTRY)
    monkeypatch.setattr(backends, "SPECS", registry.SPECS)
    return registry.register_backend(
        "echo", "intent_helpers:EchoBackend", keys=("intent_model", "echo_level"), key_prefixes=("echo_",),
        auto=lambda settings, machine: "always, first" if settings.get("echo_level") else None,
        auto_order=0, reuse_order=5, block_rows=lambda settings: 999)


def test_the_built_in_backends_and_their_facts():
    assert set(REGISTRY) >= {"text", "transformers", "vllm", "openai"}
    assert registry.auto_reuse() == ("vllm", "openai", "transformers")  # strongest first, never text
    assert set(registry.only_key_prefixes()) == {"intent_", "vllm_", "openai_"}
    from recbole_llm4sbr.benchmark.plan import LLM4SBR_ONLY_PREFIXES

    assert set(LLM4SBR_ONLY_PREFIXES) == {"intent_", "vllm_", "openai_"}
    s = load_settings(dataset="tiny")
    assert registry.default_block_rows(s, "transformers") == 256
    assert registry.default_block_rows(s, "vllm") == 1024
    assert registry.default_block_rows(s, "text") == registry.default_block_rows(s, "openai") == 32


def test_one_registration_is_all_a_new_backend_needs(echo_backend):
    s = load_settings(dataset="tiny", overrides={"intent_samples": "all"})
    # the table identity names the keys it registered, read from the settings
    assert table_identity(dict(s, echo_level=2), "echo")["backend_settings"] == {"intent_model": s["intent_model"],
                                                                                 "echo_level": 2}
    assert registry.auto_reuse()[-1] == "echo" and "echo_" in registry.only_key_prefixes()
    assert registry.default_block_rows(s, "echo") == 999
    assert choose_auto(dict(s, echo_level=1)) == ("echo", "always, first")
    assert choose_auto(s)[0] != "echo"  # its rule declines: the next one decides
    assert resolve_samples(s, "echo")[0] == "all"
    assert type(get_backend(s, name="echo")).__name__ == "EchoBackend"
    with pytest.raises(ConfigError, match="echo"):  # check_backend_name lists it
        load_settings(dataset="tiny", overrides={"intent_backend": "ech"})
