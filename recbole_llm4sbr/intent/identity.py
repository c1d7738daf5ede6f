"""Which table these settings need: its identity, tag and folder (docs/DESIGN.md, "Intent table").

``table_identity`` names every setting that changes the table, in one place, so the tag (the table's
folder name), the staleness check and ``meta.json["table_settings"]`` cannot disagree. Changing what
it returns for the same settings renames every user's tables (they would all be rebuilt):
``tests/test_intent_identity.py`` pins the tags of a few configs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from .backends import resolve_samples
from .clean import CLEAN_VERSION
from .constrained import identity as decoding_identity
from .hidden import POOLING, representation
from .localization import Search
from .prompts import template_version
from .rows import short_view_items
from .settings import SAMPLING_KEYS, answer_max_chars, dataset_dir, intent_views, prompt_max_items
from .table import FORMAT_VERSION, storage_dtype
from .typical import TYPICAL_VERSION

#: config keys each backend's answers depend on (what its describe() reports, read from the config
#: so the tag is known without loading a model). A backend that starts reading another key that
#: changes its answers must be added here, or an old table would be reused for it.
BACKEND_KEYS: Dict[str, Tuple[str, ...]] = {
    "text": (),
    "transformers": ("intent_model", "intent_dtype") + SAMPLING_KEYS,
    "vllm": ("intent_model", "vllm_dtype", "vllm_max_model_len") + SAMPLING_KEYS,
    "openai": ("intent_model", "openai_model", "openai_base_url") + SAMPLING_KEYS,
}
_DEFAULT_BACKEND_KEYS = ("intent_model",) + SAMPLING_KEYS


def table_identity(settings: Mapping[str, Any], backend: str) -> Dict[str, Any]:
    """Every setting that changes the intent table, for the resolved backend name (never ``auto``).

    Hashed into the tag and stored in ``meta.json``; a table whose identity differs is stale.
    """
    template = str(settings.get("intent_template") or "")
    samples, _ = resolve_samples(settings, backend)
    ident: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "clean_version": CLEAN_VERSION,
        "backend": backend,
        "backend_settings": {k: settings.get(k) for k in BACKEND_KEYS.get(backend, _DEFAULT_BACKEND_KEYS)},
        "views": [[v, q] for v, q in intent_views(settings).items()],  # a list: the order matters
        "template_version": template_version(template),
        "encoder": str(settings.get("intent_encoder")),
        "topr": int(settings.get("intent_topr") or 0),
        "answer_max_chars": answer_max_chars(settings),
        "samples": samples,
    }
    if samples == "typical":  # which prefixes got an answer of their own
        ident["budget"] = settings.get("intent_budget")
        ident["typical"] = {"version": TYPICAL_VERSION, "seed": settings.get("intent_seed")}
    max_items = prompt_max_items(settings, samples)
    if max_items:  # off (0) keeps the identity of tables built before the key existed
        ident["prompt_max_items"] = max_items
    short_items = short_view_items(settings)
    if short_items:  # likewise: off (0) keeps today's tags
        ident["short_items"] = short_items
    if backend == "transformers":  # `auto` is bf16 on a GPU or a bf16 CPU, float32 elsewhere: greedy
        # answers differ (44 of 128 on ml-100k-session), so a bf16 table is another table; float32
        # keeps the tags of every table built before this entry
        from .backends.transformers_backend import resolved_dtype_name

        resolved = resolved_dtype_name(dict(settings))
        if resolved != "float32":
            ident["resolved_dtype"] = resolved
    ann = Search.from_settings(settings).identity()
    if ann is not None:  # an approximate index changes results slightly; exact keeps today's tags
        ident["ann"] = ann
    if storage_dtype(settings) != "float32":  # float16 storage rounds the vectors
        ident["storage_dtype"] = storage_dtype(settings)
    if representation(settings) != "text":  # the LLM's hidden states, not its answers; text keeps today's tags
        ident["representation"] = dict(POOLING, kind=representation(settings))
    decoding = decoding_identity(settings)
    if decoding is not None:  # answers constrained to catalogue titles; free keeps today's tags
        ident["decoding"] = decoding
    # through JSON, so it compares equal to the copy read back from meta.json
    return json.loads(json.dumps(ident, default=str))


def table_tag(settings: Mapping[str, Any], backend: str) -> str:
    """``<backend>-<8 hex of sha1 over table_identity>`` (docs/DESIGN.md)."""
    blob = json.dumps(table_identity(settings, backend), sort_keys=True, default=str)
    return f"{backend}-{hashlib.sha1(blob.encode('utf-8')).hexdigest()[:8]}"


def table_folder(settings: Mapping[str, Any], backend: str) -> Path:
    """``<data_path>/<ds>/intent/<tag>/``: where the table of these settings lives, built or not."""
    return dataset_dir(settings) / "intent" / table_tag(settings, backend)


__all__ = ["BACKEND_KEYS", "table_identity", "table_tag", "table_folder"]
