"""The backend registry: names, lazy imports, and what ``auto`` picks (one log line saying why)."""
from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

import recbole_llm4sbr.intent.backends as backends
from recbole_llm4sbr.intent.backends import REGISTRY, backend_class, get_backend, resolve_backend_name
from recbole_llm4sbr.intent.backends.base import Backend
from recbole_llm4sbr.intent.backends.text import TextBackend
from recbole_llm4sbr.intent.errors import IntentError

torch.set_num_threads(1)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(IntentError) as e:
        resolve_backend_name({"intent_backend": "gpt5"})
    msg = str(e.value)
    assert "'gpt5'" in msg and all(n in msg for n in ("auto", "text", "transformers", "vllm", "openai"))


def test_text_backend_by_name():
    b = get_backend({"intent_backend": "text"})
    assert isinstance(b, TextBackend) and b.name == "text"


@pytest.mark.parametrize("name", ["transformers", "openai"])
def test_llm_backends_are_registered_subclasses(name):
    assert issubclass(backend_class(name), Backend)


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setitem(REGISTRY, "ghost", "no_such_package_xyz.mod:Ghost")
    with pytest.raises(IntentError, match="no_such_package_xyz"):
        backend_class("ghost")


@pytest.fixture
def machine(monkeypatch):
    """Pretend hardware: set .cuda, .vllm, .packaged."""

    class M:
        cuda = vllm = packaged = False

    m = M()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(backends, "_cuda_available", lambda: m.cuda)
    monkeypatch.setattr(backends, "_packaged_model_available", lambda model: m.packaged)
    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name, *a: object() if (name == "vllm" and m.vllm) else (None if name == "vllm" else real_find_spec(name, *a)))
    return m


@pytest.mark.parametrize(
    "cuda,vllm,packaged,want",
    [
        (True, True, True, "vllm"),
        (True, False, True, "transformers"),
        (False, True, True, "transformers"),
        (False, False, True, "transformers"),
        (True, False, False, "text"),
        (False, False, False, "text"),
    ],
)
def test_auto(machine, caplog, cuda, vllm, packaged, want):
    machine.cuda, machine.vllm, machine.packaged = cuda, vllm, packaged
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        assert resolve_backend_name({"intent_backend": "auto", "intent_model": "smollm2-135m-instruct"}) == want
    lines = [r for r in caplog.records if "auto ->" in r.getMessage()]
    assert len(lines) == 1 and f"auto -> {want}" in lines[0].getMessage()
    if want == "text":
        assert lines[0].levelno == logging.WARNING and "LLM-free" in lines[0].getMessage()


def test_auto_survives_a_missing_models_module(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_models(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "models" and level == 2 or name.endswith("intent.models"):
            raise ImportError("not there")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_models)
    assert backends._packaged_model_available("smollm2-135m-instruct") is False


class Broken(Backend):
    name = "broken"

    def __init__(self, settings):
        raise OSError("intent_model='x' could not be loaded from local files")

    def describe(self):
        return {}

    def generate(self, prompts):
        return []


def test_a_backend_that_cannot_start_is_a_user_error(monkeypatch):
    monkeypatch.setitem(REGISTRY, "broken", f"{__name__}:Broken")
    with pytest.raises(IntentError, match="'broken' could not start: intent_model='x'"):
        get_backend({"intent_backend": "broken"})


def test_stage1_imports_no_recbole_and_no_torch():
    """Stage 1 runs in an LLM-only environment: importing it must not pull in RecBole (or torch,
    which only the encoder and the LLM backends load, when a table is built)."""
    import subprocess
    import sys

    from intent_helpers import REPO, subprocess_env

    code = ("import sys, recbole_llm4sbr.intent, recbole_llm4sbr.intent.pipeline, recbole_llm4sbr.intent.show, "
            "recbole_llm4sbr.intent.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('recbole', 'torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
