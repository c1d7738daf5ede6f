"""Where the plugin's own files live (no RecBole import: stage 1 uses it too).

RecBole's conventions: property files ship inside the package (``recbole_llm4sbr/properties/`` in an
installed wheel, mapped from the checkout's top-level ``properties/`` by setup.py), and datasets live
in ``dataset/`` of the *working directory* (RecBole's ``data_path``), never inside site-packages.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the checkout (or source tree) root; only meaningful when running from a checkout
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: where an installed wheel has its property files (setup.py maps ``properties/`` here)
PACKAGED_PROPERTIES = Path(__file__).resolve().parent / "properties"


def properties_dir() -> Path:
    """The plugin's property files: ``LLM4SBR_PROPERTIES`` if set, else the installed package's,
    else the checkout's ``properties/`` (an editable install or a source tree)."""
    if os.environ.get("LLM4SBR_PROPERTIES"):
        return Path(os.environ["LLM4SBR_PROPERTIES"])
    return PACKAGED_PROPERTIES if PACKAGED_PROPERTIES.is_dir() else PROJECT_ROOT / "properties"


def default_data_path() -> Path:
    """``dataset/`` of the working directory (RecBole's ``data_path`` convention), absolute;
    ``LLM4SBR_DATA_PATH`` or ``--data_path`` point elsewhere."""
    return Path(os.environ.get("LLM4SBR_DATA_PATH") or Path.cwd() / "dataset").absolute()
