"""The stage-1 backends and their facts, one registration each (``register_backend``).

A backend module registers itself once, at import, with everything the rest of stage 1 needs to know
about it without constructing it: its class (``module:Class``), the config keys that change its
answers (they name the table: ``identity.py``), the config key prefixes only it reads (stock RecBole
models ignore them: the benchmark's digests), its ``intent_backend: auto`` rule, whether an
up-to-date table of it is reused under ``auto``, its block size for sharded builds and any identity
entry of its own. ``REGISTRY`` and ``BACKEND_KEYS``
are views of these registrations (a test may put a stand-in class into ``REGISTRY``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..validation import refuse

#: the sampling settings every LLM backend honours (they change its answers)
SAMPLING_KEYS: Tuple[str, ...] = ("intent_max_tokens", "intent_temperature", "intent_top_p", "intent_seed")
#: the keys that name the table of a backend that registered none (a stand-in, a plugin's)
DEFAULT_KEYS: Tuple[str, ...] = ("intent_model",) + SAMPLING_KEYS


@dataclass(frozen=True)
class BackendSpec:
    """What stage 1 knows about a backend before constructing it."""

    name: str
    #: ``"module:Class"``, imported when the backend is first used
    target: str
    #: config keys its answers depend on (what its describe() reports, read from the config so the tag
    #: is known without loading a model): a backend that starts reading another key that changes its
    #: answers must list it, or an old table would be reused for it
    keys: Tuple[str, ...] = DEFAULT_KEYS
    #: config keys only this backend reads, by prefix (``vllm_``): stock RecBole models ignore them
    key_prefixes: Tuple[str, ...] = ()
    #: ``intent_backend: auto``: ``auto(settings, machine)`` says why it is picked on this machine, or None
    #: (``machine.cuda()``: torch sees a CUDA GPU; ``machine.packaged_model(name)``: the packaged model
    #: is installed); the rules are tried by ``auto_order``
    auto: Optional[Callable[[Mapping[str, Any], Any], Optional[str]]] = None
    auto_order: int = 100
    #: under ``auto``, an up-to-date table of this backend is used before another is built (lower first);
    #: None: never (the LLM-free ``text``)
    reuse_order: Optional[int] = None
    #: prompts per block of a sharded build: what it takes per call (None: ``intent_batch_size``)
    block_rows: Optional[Callable[[Mapping[str, Any]], int]] = None
    #: entries of its own in the table identity (e.g. the dtype ``auto`` resolves to here)
    identity: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None


#: name -> registration
SPECS: Dict[str, BackendSpec] = {}
#: name -> ``"module:Class"`` (a view of ``SPECS``; a test may register a stand-in class here)
REGISTRY: Dict[str, str] = {}
#: name -> the config keys that change its answers (a view of ``SPECS``)
BACKEND_KEYS: Dict[str, Tuple[str, ...]] = {}


def _builtins() -> Dict[str, BackendSpec]:
    """``SPECS`` with the built-in backends registered (importing ``intent.backends`` registers them;
    once imported, a look-up in ``sys.modules``)."""
    importlib.import_module("recbole_llm4sbr.intent.backends")
    return SPECS


def register_backend(name: str, target: str, **facts: Any) -> BackendSpec:
    """Register (or replace) the backend ``name``: its class and facts (``BackendSpec``'s fields)."""
    spec = BackendSpec(name=name, target=target, **facts)
    SPECS[name] = spec
    REGISTRY[name] = target
    BACKEND_KEYS[name] = spec.keys
    return spec


def spec(name: str) -> BackendSpec:
    """The registration of ``name``; a name put into ``REGISTRY`` alone gets the default facts."""
    return _builtins().get(name) or BackendSpec(name=name, target=REGISTRY.get(name, ""))


def backend_keys(name: str) -> Tuple[str, ...]:
    _builtins()
    return BACKEND_KEYS.get(name, DEFAULT_KEYS)


def backend_identity(name: str, settings: Mapping[str, Any]) -> Dict[str, Any]:
    hook = spec(name).identity
    return dict(hook(settings)) if hook is not None else {}


def auto_reuse() -> Tuple[str, ...]:
    """With ``intent_backend: auto``, the backends whose up-to-date table is used (strongest first)."""
    reused = [s for s in _builtins().values() if s.reuse_order is not None]
    return tuple(s.name for s in sorted(reused, key=lambda s: s.reuse_order))


def only_key_prefixes() -> Tuple[str, ...]:
    """Config key prefixes that only stage 1 reads: ``intent_`` and every backend's own."""
    return tuple(dict.fromkeys(("intent_",) + tuple(p for s in _builtins().values() for p in s.key_prefixes)))


def check_backend_name(settings: Mapping[str, Any]) -> None:
    """``intent_backend`` is ``auto`` or a name in ``REGISTRY`` (a plugin may register more): checked
    where a config is built, next to ``validation.validate``, so a typo stops a run before any data
    is read."""
    _builtins()
    try:
        name = settings["intent_backend"]
    except (KeyError, TypeError):
        return
    if name is None or str(name).strip().lower() in ("auto", *REGISTRY):
        return
    raise refuse("intent_backend", name, "auto or a registered backend: " + ", ".join(sorted(REGISTRY)), "auto")


def default_block_rows(settings: Mapping[str, Any], backend: str) -> int:
    """Prompts per block when ``--block_rows`` is not given: what the backend takes per call (at least
    ``intent_batch_size``)."""
    batch = int(settings["intent_batch_size"])
    hook = spec(backend).block_rows
    return max(batch, int(hook(settings))) if hook is not None else batch
