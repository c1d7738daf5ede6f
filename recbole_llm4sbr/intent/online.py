"""Stage 1 for one prefix at serving time: prompt -> backend -> clean -> encode -> localize.

Serving an LLM4SBR model (``semantic_at_inference: True``) needs the intent of every session it
scores. A prefix already in the intent table uses its row; for a new prefix ``OnlineIntents.infer``
runs the per-prefix steps ``pipeline.build_intent_table`` runs (``rows.py``, shared by both), with the same settings,
the same backend as the table (``meta["backend"]``), the same encoder, and the table's own catalogue
embeddings (``items.npy``) for the localization, so the vector is the one the table would hold.
Backend, encoder and catalogue load once per ``OnlineIntents`` (the serving process keeps one).
``infer`` may be called from many threads: the last ``cache_size`` prefixes' intents are kept (an LRU),
and stage 1 itself (set-up included) runs one prefix at a time under the instance's lock, since a
backend or an encoder is not assumed to be thread-safe.

Imports no RecBole (stage 1 runs in an LLM-only environment).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import encoder as enc
from .backends import get_backend, resolve_backend_name, resolve_samples
from .errors import IntentError
from .inputs import read_item_text
from .keys import prefix_key
from .localization import Search
from .rows import Grounding, PrefixPrompts, unique_texts
from .settings import normalize_settings
from .table import load_intent_table, read_meta

_log = logging.getLogger("recbole_llm4sbr.intent")


@dataclass
class OnlineIntent:
    """The intent of one prefix, as one row of an intent table would hold it."""

    key: str
    prefix: List[str]
    views: List[str]
    vectors: np.ndarray  # grounded (Eq. 4-5), [n_views, d_text]
    raw: np.ndarray  # the answer's own embedding, [n_views, d_text]
    record: Dict[str, Any]  # as a line of answers.jsonl: {"key", "prefix", "views": {view: {answer, items, sims}}}


class OnlineIntents:
    """Stage 1 for single prefixes with the settings (and, when given, the table) of a trained model.

    ``settings``: the stage-1 settings the table was built with (a dict; stage 2 passes
    ``data.intents.stage1_settings(config)``). ``table_path``: that table's folder, whose backend and
    catalogue embeddings are reused; without it the backend is resolved from the settings and the
    catalogue is encoded once. ``cache_size``: how many prefixes' intents are kept, the most
    recently used (0: none).
    """

    def __init__(self, settings: Mapping[str, Any], table_path: Optional[Path] = None,
                 logger: Optional[logging.Logger] = None, cache_size: int = 1024):
        self.log = logger or _log
        self.settings = normalize_settings(settings)
        self.views = dict(self.settings.views)  # ordered view -> qualifier
        self.table_path = Path(table_path) if table_path else None
        meta = read_meta(self.table_path) if self.table_path else None
        if meta is not None and list(meta.get("views", [])) != list(self.views):
            raise IntentError(
                f"intent table {self.table_path} has views {meta.get('views')}, the settings {list(self.views)}: "
                "serve with the settings the table was built with")
        if (meta or {}).get("representation", "text") != "text":  # LLM states, no longer produced
            raise IntentError(
                f"intent table {self.table_path} holds LLM hidden states (intent_representation: hidden, since "
                "removed), which no unseen prefix can get. Fix: rebuild the table and retrain the model on it")
        self.backend_name = (meta or {}).get("backend") or resolve_backend_name(self.settings, self.log)
        self.encoder_name = str((meta or {}).get("encoder") or self.settings.encoder)
        self.topr = int((meta or {}).get("topr", self.settings.topr) or 0)
        # the table's own prompt length (intent_prompt_max_items: auto = 10 with typical), so an unseen
        # prefix is asked exactly as the table's prefixes were
        max_items = ((meta or {}).get("prompt_max_items") if (meta or {}).get("prompt_max_items") is not None
                     else self.settings.prompt_items(resolve_samples(self.settings, self.backend_name)[0]))
        self.texts = read_item_text(self.settings)
        self.rows = PrefixPrompts.from_settings(self.settings, self.texts, int(max_items))
        self._backend = None
        self._encoder = None
        self._catalogue = None  # (tokens, vectors [n_items, d_text])
        self.cache_size = max(0, int(cache_size))
        self._cache: "OrderedDict[str, OnlineIntent]" = OrderedDict()  # LRU: most recent last
        self._cache_lock = threading.Lock()
        self._lock = threading.RLock()  # stage 1 (and the lazy loads it makes), one prefix at a time
        # the table's own search (intent_ann: an approximate index above the threshold, as the build
        # grounded it), its index built on the first unseen prefix and kept
        self._search = Search.from_settings(self.settings)

    # -- loaded once -----------------------------------------------------------------------------
    def backend(self):
        if self._backend is None:
            self._backend = get_backend(self.settings, self.log, name=self.backend_name)
        return self._backend

    def encoder(self):
        if self._encoder is None:
            enc.set_cpu_threads(self.settings.torch_num_threads)
            self._encoder = enc.load_encoder(self.encoder_name, self.settings.encoder_device)
        return self._encoder

    def catalogue(self):
        """``(item tokens, text embeddings)``: the table's ``items.npy`` when there is a table."""
        if self._catalogue is None:
            table = load_intent_table(self.table_path, mmap=True) if self.table_path else None
            tokens = getattr(table, "item_tokens", None) if table is not None else None
            if tokens is not None:
                self._catalogue = (list(tokens), np.asarray(table.item_vectors, dtype=np.float32))
            else:
                tokens = list(self.texts)
                bs = self.settings.encoder_batch_size
                texts = [self.texts[t] or t for t in tokens]
                vectors = enc.encode(self.encoder(), texts, bs, False)
                self._catalogue = (tokens, vectors)
        return self._catalogue

    # -- one prefix ------------------------------------------------------------------------------
    def infer(self, prefix: Sequence[str]) -> OnlineIntent:
        """The intent of ``prefix`` (item tokens, oldest first) for every view of the settings."""
        prefix = [str(t) for t in prefix]
        if not prefix:
            raise IntentError("an empty session has no intent: give at least one item token")
        unknown = [t for t in prefix if t not in self.texts]
        if unknown:
            raise IntentError(f"item tokens {unknown} have no text in {self.settings['dataset']}.itemtext")
        key = prefix_key(prefix)
        found = self._cached(key)
        if found is not None:
            return found
        with self._lock:
            found = self._cached(key)  # another thread may have just inferred it
            if found is None:
                found = self._infer(key, prefix)
                self._remember(found)
        return found

    def _cached(self, key: str) -> Optional[OnlineIntent]:
        with self._cache_lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def _remember(self, found: OnlineIntent) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[found.key] = found
            self._cache.move_to_end(found.key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _infer(self, key: str, prefix: List[str]) -> OnlineIntent:
        names = self.rows.view_names
        answers = self.rows.answers(prefix, self.backend().generate(self.rows.prompts(prefix)))
        texts = unique_texts(answers)
        bs = self.settings.encoder_batch_size
        tokens, items = self.catalogue()
        embeddings = enc.encode(self.encoder(), texts, bs, False)
        grounding = Grounding(texts, embeddings, tokens, items, self.topr, self._search.threshold, self.log,
                              search=self._search)
        vectors, raw, record = grounding.row(key, prefix, names, answers)
        return OnlineIntent(key, prefix, names, vectors, raw, record)

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
