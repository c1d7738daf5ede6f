"""The bridge from a RecBole Config to stage 1: build the intent table when missing or stale, load it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

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
    return DatasetIntents(Path(path), keys, list(table.views), np.asarray(table.vectors),
                          np.asarray(table.raw), dict(table.meta), {k: i for i, k in enumerate(keys)})
