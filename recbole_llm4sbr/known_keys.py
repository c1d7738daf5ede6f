"""Config keys nobody reads: ``--epoch=2`` is accepted by RecBole and ignored, so say so.

A key is known when RecBole's property files (overall, every model, dataset) or the plugin's
(``properties/``) give it a default, when ``validation.RULES`` has a rule for it, or when it is one
of the few keys RecBole or the plugin read without a default (``READ_WITHOUT_DEFAULT``). Any other
key a user sets gets ONE warning line per process, naming the closest known key (``difflib``). No
RecBole import (the files are read as text), so stage 1's settings use it too; where RecBole is not
installed, its keys cannot be listed and nothing is warned.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import re
from pathlib import Path
from typing import FrozenSet, Iterable, List, Optional

from recbole_llm4sbr.paths import properties_dir
from recbole_llm4sbr.validation import RULES

#: keys read without a default in any property file: RecBole's (set by its Config or a model, or
#: optional), the plugin's optional ones, and the names the command lines take
READ_WITHOUT_DEFAULT = (
    # RecBole
    "model", "dataset", "config_files", "device", "local_rank", "world_size", "single_spec", "eval_type",
    "MODEL_TYPE", "MODEL_INPUT_TYPE", "test_neg_sample_args", "valid_neg_sample_args", "encoding",
    "use_filter", "token_num_threshold", "tail_ratio", "feature_num", "has_residual", "cin", "contrast",
    "eta", "norm", "sim", "xgb_early_stopping_rounds",
    # the plugin
    "intent_answer_max_chars", "intent_d_text", "intent_encoder_device", "openai_backoff",
    "openai_backoff_max", "openai_model", "vllm_gguf_cache_dir",
)

_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w\-]*)\s*:")
_log = logging.getLogger("recbole_llm4sbr")
_warned: set = set()


def _yaml_keys(folder: Path) -> set:
    """Top-level keys of every ``*.yaml`` under ``folder`` (read as text: fast, no YAML parse)."""
    keys: set = set()
    for path in folder.rglob("*.yaml"):
        try:
            with open(path, encoding="utf-8") as f:
                keys.update(m.group(1) for m in map(_TOP_LEVEL_KEY.match, f) if m)
        except OSError:
            continue
    return keys


def recbole_properties() -> Optional[Path]:
    """RecBole's ``properties/`` folder (found, not imported), or None where RecBole is absent."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "properties"
    return folder if folder.is_dir() else None


@functools.lru_cache(maxsize=1)
def known_keys() -> FrozenSet[str]:
    """Every key RecBole or the plugin knows (empty where RecBole's files cannot be found)."""
    recbole = recbole_properties()
    if recbole is None:
        return frozenset()
    return frozenset(_yaml_keys(recbole) | _yaml_keys(Path(properties_dir())) | set(RULES) | set(READ_WITHOUT_DEFAULT))


def closest(key: str) -> Optional[str]:
    """The known key ``key`` most likely misspells, or None."""
    found = difflib.get_close_matches(key, sorted(known_keys()), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_keys(keys: Iterable[str]) -> List[str]:
    """The keys among ``keys`` that neither RecBole nor the plugin reads (none where that is unknown)."""
    known = known_keys()
    if not known:
        return []
    return [str(k) for k in keys if str(k) not in known]


def warn_unknown(keys: Iterable[str], logger: Optional[logging.Logger] = None) -> List[str]:
    """One warning line per unknown key (once per process); returns the keys warned about now."""
    fresh = [k for k in unknown_keys(keys) if k not in _warned]
    for key in fresh:
        _warned.add(key)
        near = closest(key)
        hint = f"did you mean '{near}'? Fix: --{near}=..." if near else "Fix: check the spelling in the README's key list"
        (logger or _log).warning(f"config key '{key}' is not read by RecBole or the plugin and is ignored; {hint}")
    return fresh
