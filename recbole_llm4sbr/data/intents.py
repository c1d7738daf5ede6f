"""The bridge from a RecBole Config to stage 1: build the intent table when missing or stale, load it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def stage1_settings(config) -> dict:
    """The plain dict stage 1 reads. RecBole's ``data_path`` already ends in the dataset's folder;
    stage 1's is the root above it (DESIGN.md)."""
    settings = dict(config.final_config_dict)
    settings["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))
    return settings


@dataclass
class DatasetIntents:
    path: Path
    keys: List[str]
    views: List[str]
    vectors: np.ndarray  # grounded, [n_keys, n_views, d_text]
    raw: np.ndarray  # the answer's own embedding (no localization)
    meta: dict
    index: Dict[str, int] = field(default_factory=dict)
    #: the catalogue's text embeddings (stage 1's encoder; items.txt / items.npy), None in older tables
    item_tokens: Optional[List[str]] = None
    item_vectors: Optional[np.ndarray] = None  # [n_items, d_text]

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
            raise ValueError(
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


def load_dataset_intents(config, logger=None) -> DatasetIntents:
    from recbole_llm4sbr.intent import ensure_intent_table, load_intent_table

    path = ensure_intent_table(stage1_settings(config), logger=logger)
    table = load_intent_table(path)
    keys = list(table.keys)
    if logger is not None:
        meta = table.meta
        logger.info(
            f"Intent table {path}: {len(keys)} prefixes, views {list(table.views)}, backend "
            f"{meta.get('backend')} ({meta.get('backend_info', {}).get('model', '-')}), encoder {meta.get('encoder')}, r={meta.get('topr')}"
        )
    item_tokens = getattr(table, "item_tokens", None)
    item_vectors = getattr(table, "item_vectors", None)
    return DatasetIntents(Path(path), keys, list(table.views), np.asarray(table.vectors),
                          np.asarray(table.raw), dict(table.meta), {k: i for i, k in enumerate(keys)},
                          None if item_tokens is None else list(item_tokens),
                          None if item_vectors is None else np.asarray(item_vectors, dtype=np.float32))
