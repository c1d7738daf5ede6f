"""The stage-1 backends: ``intent_backend`` name -> class, and what ``auto`` means here.

Each backend module registers itself once (``registry.register_backend``: its class, the keys that
name its tables, its ``auto`` rule and defaults); the built-in ones are imported at
the end of this module. They import their heavy stack (transformers, vLLM, an HTTP client) only when
constructed, which the other backends' environments may not have. ``auto`` picks the strongest backend this machine can
run and says so in one log line; ``resolve_samples`` says what ``intent_samples: auto`` means for
the backend chosen (``typical`` for an LLM on a CPU, else ``all``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Tuple

from ..errors import IntentError
from .base import Backend
from ..registry import (BACKEND_KEYS, REGISTRY, SPECS, BackendSpec, auto_reuse, backend_identity, backend_keys,
                       check_backend_name, default_block_rows, only_key_prefixes,
                       register_backend, spec)

_log = logging.getLogger("recbole_llm4sbr.intent")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _packaged_model_available(model: Any) -> bool:
    try:
        from ..models import packaged_model_available
    except ImportError:
        return False
    try:
        return bool(packaged_model_available(model))
    except Exception:  # a broken optional package must not break the fallback to `text`
        return False


def choose_auto(settings: Mapping[str, Any]) -> Tuple[str, str]:
    """What ``auto`` means here: (backend name, why): the first registered backend, by ``auto_order``,
    whose ``auto`` rule picks it on this machine (vllm on a GPU with vLLM installed; else the
    transformers backend when the configured model is the packaged one; else the LLM-free ``text``)."""
    machine = SimpleNamespace(cuda=_cuda_available, packaged_model=_packaged_model_available)
    for s in sorted((s for s in SPECS.values() if s.auto is not None), key=lambda s: s.auto_order):
        why = s.auto(settings, machine)
        if why is not None:
            return s.name, why
    raise IntentError("intent_backend auto: no registered backend can run here. Fix: --intent_backend=<name>")


def _llm_device_is_cpu(settings: Mapping[str, Any]) -> bool:
    """Where the transformers backend would run: ``intent_device`` (auto = CUDA when torch sees one)."""
    dev = str(settings.get("intent_device") or "auto").strip().lower()
    if dev in ("", "auto", "none"):
        return not _cuda_available()
    return dev == "cpu"


#: what ``intent_samples`` may say
SAMPLES = ("auto", "all", "typical")


def resolve_samples(settings: Mapping[str, Any], backend: str) -> Tuple[str, str]:
    """``intent_samples`` for the resolved ``backend``: (``all`` | ``typical``, why).

    ``auto`` = ``typical`` (EIMF: LLM calls for cluster exemplars only, ``intent_budget`` per view)
    when the LLM runs on a CPU (the transformers backend on ``intent_device`` cpu, or auto without
    CUDA), where asking about every prefix would take hours; ``all`` (every prefix, the paper) with
    vLLM or transformers on a GPU, an OpenAI-compatible server, or the LLM-free ``text`` backend.
    """
    mode = str(settings.get("intent_samples") or "all").strip().lower()
    if mode not in SAMPLES:
        raise IntentError(f"unknown intent_samples {mode!r}: choose auto, all or typical")
    if mode != "auto":
        return mode, "set explicitly"
    if backend == "transformers" and _llm_device_is_cpu(settings):
        return "typical", "the LLM runs on a CPU: only cluster exemplars are asked (intent_budget per view)"
    return "all", f"backend {backend} asks the LLM (or the text rule) about every prefix"


def resolve_backend_name(settings: Mapping[str, Any], logger: Optional[logging.Logger] = None) -> str:
    """The concrete backend for ``intent_backend`` (resolving ``auto``). One log line says what
    ``auto`` picked and why, for the backend and for ``intent_samples`` alike."""
    name = str(settings.get("intent_backend") or "auto").strip().lower()
    said = []
    if name == "auto":
        name, why = choose_auto(settings)
        said.append(f"intent_backend auto -> {name}: {why}")
    elif name not in REGISTRY:
        raise IntentError(
            f"unknown intent_backend {name!r}: choose one of auto, {', '.join(sorted(REGISTRY))}"
        )
    if str(settings.get("intent_samples") or "all").strip().lower() == "auto":
        samples, why = resolve_samples(settings, name)
        said.append(f"intent_samples auto -> {samples}: {why}")
    if said:
        log = logger or _log
        fell_back = said[0].startswith("intent_backend auto -> text")  # no real LLM: worth a warning
        (log.warning if fell_back else log.info)("; ".join(said))
    return name


def backend_class(name: str) -> type:
    """The class registered as ``name`` (imports its module now)."""
    if name not in REGISTRY:
        raise IntentError(f"unknown intent_backend {name!r}: choose one of auto, {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise IntentError(
            f"intent_backend {name!r} needs the package {e.name!r}, which is not installed here: "
            f"install it or choose another backend"
        ) from None
    return getattr(mod, cls)


def get_backend(settings: Mapping[str, Any], logger: Optional[logging.Logger] = None, name: Optional[str] = None) -> Backend:
    """Construct the configured backend with the full settings dict (``auto`` resolved first).

    ``name`` skips resolution when the caller already resolved it (so ``auto`` logs once).
    """
    name = name or resolve_backend_name(settings, logger)
    cls = backend_class(name)
    if name != "text":  # loading a model can take a minute on a CPU: say what the wait is
        (logger or _log).info(f"starting intent_backend {name}"
                              + (f" ({settings.get('intent_model')})" if settings.get("intent_model") else ""))
    try:
        return cls(dict(settings))
    except (OSError, ImportError, ValueError, RuntimeError) as e:
        # a model that is not there, a missing package, a bad setting, no GPU: the user's to fix,
        # and the backend's message says how (LLM4SBR_DEBUG=1 shows the chained traceback)
        raise IntentError(f"intent_backend {name!r} could not start: {e}") from e


# the built-in backends register themselves (a plugin's backend module calls register_backend the same way)
from . import openai_backend, text, transformers_backend, vllm_backend  # noqa: E402,F401

__all__ = ["Backend", "BackendSpec", "REGISTRY", "BACKEND_KEYS", "register_backend", "spec", "backend_keys",
           "backend_identity", "auto_reuse", "only_key_prefixes",
           "default_block_rows", "choose_auto", "resolve_backend_name", "resolve_samples", "backend_class",
           "get_backend", "check_backend_name"]
