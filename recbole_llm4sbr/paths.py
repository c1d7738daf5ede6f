"""Where the plugin's own files live (no RecBole import: stage 1 uses it too)."""
from __future__ import annotations

import os
from pathlib import Path

#: the checkout (or source tree) root: holds `properties/` and `dataset/`
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def properties_dir() -> Path:
    """`properties/` of the plugin; `LLM4SBR_PROPERTIES` points elsewhere (e.g. a non-editable install)."""
    return Path(os.environ.get("LLM4SBR_PROPERTIES", PROJECT_ROOT / "properties"))


def default_data_path() -> Path:
    """`dataset/` beside the package: where converters write and RecBole reads session datasets."""
    return Path(os.environ.get("LLM4SBR_DATA_PATH", PROJECT_ROOT / "dataset"))
