"""The bridge from a RecBole Config to stage 1: build the intent table when missing or stale, load it.

``intent_mmap`` (properties/model/LLM4SBR.yaml) says how stage 2 holds it: mapped (``True``; the
arrays stay on disk, each batch's rows are gathered from the mapping, ranks share the page cache),
copied into memory (``False``: the dataset's rows as float32, today's buffer), or ``auto``: mapped
when the dataset's rows as float32 would exceed ``MMAP_AUTO_BYTES``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from recbole_llm4sbr.intent.errors import IntentError

#: ``intent_mmap: auto`` maps the table when the dataset's rows would take more than this in float32
MMAP_AUTO_BYTES = 256 << 20


def stage1_settings(config) -> dict:
    """The plain dict stage 1 reads. RecBole's ``data_path`` already ends in the dataset's folder;
    stage 1's is the root above it (DESIGN.md)."""
    settings = dict(config.final_config_dict)
    settings["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))
    return settings


@dataclass
class DatasetIntents:
    path: Path
    keys: List[str]  # empty for a mapped table (rows_of streams keys.txt instead)
    views: List[str]
    vectors: np.ndarray  # grounded, [n_keys, n_views, d_text]; a read-only memmap when mapped
    raw: np.ndarray  # the answer's own embedding (no localization)
    meta: dict
    index: Dict[str, int] = field(default_factory=dict)
    #: the catalogue's text embeddings (stage 1's encoder; items.txt / items.npy), None in older tables
    item_tokens: Optional[List[str]] = None
    item_vectors: Optional[np.ndarray] = None  # [n_items, d_text]
    mapped: bool = False  # vectors/raw are memory-mapped: the model gathers rows from them

    def rows_of(self, tokens: Sequence[str]) -> np.ndarray:
        """The table row of each prefix key (int64, -1 where the table has none)."""
        if self.index or not self.mapped:
            return np.array([self.index.get(t, -1) for t in tokens], dtype=np.int64)
        from recbole_llm4sbr.intent.table import lookup_rows

        return lookup_rows(self.path, tokens)

    def item_text_matrix(self, id2token: Sequence[str]) -> Optional[np.ndarray]:
        """The text embeddings in the dataset's item-id order, ``[len(id2token), d_text]``; row 0
        (padding) zero. None when the table has no catalogue embeddings. ValueError naming the items
        the table lacks."""
        if self.item_vectors is None or self.item_tokens is None:
            return None
        row_of = {tok: i for i, tok in enumerate(self.item_tokens)}
        rows = [row_of.get(tok, -1) for tok in id2token[1:]]
        missing = [tok for tok, row in zip(id2token[1:], rows) if row < 0]
        if missing:
            raise IntentError(
                f"Intent table {self.path} has no text embedding for {len(missing)} of the dataset's items "
                f"(e.g. {missing[:5]}): it is stale. Fix: rerun stage 1 with --force.")
        vectors = np.asarray(self.item_vectors, dtype=np.float32)
        out = np.zeros((len(id2token), vectors.shape[1]), dtype=np.float32)
        out[1:] = vectors[np.asarray(rows, dtype=np.int64)]
        return out

    def array(self, config) -> np.ndarray:
        """Grounded intents, or the answers' own embeddings with ``intent_localization: False``."""
        localize = config["intent_localization"]
        return self.vectors if localize is None or localize else self.raw


def wants_mmap(config, n_rows: int, row_shape: Sequence[int]) -> bool:
    """``intent_mmap`` resolved for ``n_rows`` dataset rows of ``row_shape`` (module docstring)."""
    value = config["intent_mmap"]
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return n_rows * int(np.prod(row_shape)) * 4 > MMAP_AUTO_BYTES
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


def load_dataset_intents(config, logger=None, mmap: bool = True) -> DatasetIntents:
    """The table these settings use (built first when missing or stale). ``mmap``: map its arrays
    (read-only, float16 as stored) and stream its keys instead of reading them into memory."""
    from recbole_llm4sbr.intent import ensure_intent_table, load_intent_table

    path = ensure_intent_table(stage1_settings(config), logger=logger)
    table = load_intent_table(path, mmap=mmap)
    if logger is not None:
        meta = table.meta
        logger.info(
            f"Intent table {path}: {len(table)} prefixes, views {list(table.views)}, backend "
            f"{meta.get('backend')} ({meta.get('backend_info', {}).get('model', '-')}), encoder {meta.get('encoder')}, "
            f"r={meta.get('topr')}, {meta.get('storage_dtype', 'float32')}{', mapped' if mmap else ''}"
        )
    item_tokens = getattr(table, "item_tokens", None)
    item_vectors = getattr(table, "item_vectors", None)
    keys = [] if mmap else list(table.keys)
    return DatasetIntents(Path(path), keys, list(table.views), table.vectors if mmap else np.asarray(table.vectors),
                          table.raw if mmap else np.asarray(table.raw), dict(table.meta),
                          {k: i for i, k in enumerate(keys)},
                          None if item_tokens is None else list(item_tokens),
                          None if item_vectors is None else np.asarray(item_vectors, dtype=np.float32), mapped=mmap)
