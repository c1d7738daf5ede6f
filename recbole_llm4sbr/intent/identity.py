"""Which table these settings need: its identity, tag and folder (docs/DESIGN.md, "Intent table").

``table_identity`` names every setting that changes the table, in one place (a projection of the
typed ``Stage1Settings``; the keys that change a backend's answers are the ones it registered), so the tag (the table's
folder name), the staleness check and ``meta.json["table_settings"]`` cannot disagree. Changing what
it returns for the same settings renames every user's tables (they would all be rebuilt):
``tests/test_intent_identity.py`` pins the tags of a few configs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping

from .backends import backend_identity, backend_keys, resolve_samples
from .clean import CLEAN_VERSION
from .localization import Search
from .prompts import template_version
from .rows import short_view_items
from .settings import dataset_dir, normalize_settings
from .table import FORMAT_VERSION
from .typical import TYPICAL_VERSION

def table_identity(settings: Mapping[str, Any], backend: str) -> Dict[str, Any]:
    """Every setting that changes the intent table, for the resolved backend name (never ``auto``): a
    projection of the typed settings (a plain dict is typed first, ``normalize_settings``).

    Hashed into the tag and stored in ``meta.json``; a table whose identity differs is stale.
    """
    s = normalize_settings(settings)
    samples, _ = resolve_samples(s, backend)
    ident: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "clean_version": CLEAN_VERSION,
        "backend": backend,
        "backend_settings": {k: s.get(k) for k in backend_keys(backend)},
        "views": [[v, q] for v, q in s.views.items()],  # a list: the order matters
        "template_version": template_version(s.template),
        "encoder": s.encoder,
        "topr": s.topr,
        "answer_max_chars": s.answer_max_chars,
        "samples": samples,
    }
    if samples == "typical":  # which prefixes got an answer of their own
        ident["budget"] = s.budget
        ident["typical"] = {"version": TYPICAL_VERSION, "seed": s.seed}
    max_items = s.prompt_items(samples)
    if max_items:  # off (0) keeps the identity of tables built before the key existed
        ident["prompt_max_items"] = max_items
    short_items = short_view_items(s)
    if short_items:  # likewise: off (0) keeps today's tags
        ident["short_items"] = short_items
    # what the backend itself adds (transformers: the dtype `auto` resolves to on this machine, bf16
    # or float32, whose greedy answers differ; float32 adds nothing, keeping older tags)
    ident.update(backend_identity(backend, s))
    ann = Search.from_settings(s).identity()
    if ann is not None:  # an approximate index changes results slightly; exact keeps today's tags
        ident["ann"] = ann
    if s.storage_dtype != "float32":  # float16 storage rounds the vectors
        ident["storage_dtype"] = s.storage_dtype
    # through JSON, so it compares equal to the copy read back from meta.json
    return json.loads(json.dumps(ident, default=str))


def table_tag(settings: Mapping[str, Any], backend: str) -> str:
    """``<backend>-<8 hex of sha1 over table_identity>`` (docs/DESIGN.md)."""
    blob = json.dumps(table_identity(settings, backend), sort_keys=True, default=str)
    return f"{backend}-{hashlib.sha1(blob.encode('utf-8')).hexdigest()[:8]}"


def table_folder(settings: Mapping[str, Any], backend: str) -> Path:
    """``<data_path>/<ds>/intent/<tag>/``: where the table of these settings lives, built or not."""
    return dataset_dir(settings) / "intent" / table_tag(settings, backend)


__all__ = ["table_identity", "table_tag", "table_folder"]
