"""Stage-1 configuration without RecBole.

Stage 1 runs in an LLM-only environment (vLLM ships its own torch), so it cannot use RecBole's
``Config``. This module layers the same files the same way (``properties/overall.yaml``, then
``properties/dataset/<ds>.yaml``, then the user's ``--config_files``, then ``--key=value``) into a
plain dict, and reads the stage-1 keys from it (views, prompt length, answer length). Which settings
change the table is ``identity.py``'s.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..errors import read_yaml_file
from ..known_keys import warn_unknown
from ..paths import default_data_path, properties_dir
from ..validation import validate
from .backends import check_backend_name
from .errors import IntentError

#: default of ``intent_answer_max_chars`` (not in overall.yaml: cleaning detail, rarely changed)
DEFAULT_ANSWER_MAX_CHARS = 200

#: the sampling settings every LLM backend honours
SAMPLING_KEYS: Tuple[str, ...] = ("intent_max_tokens", "intent_temperature", "intent_top_p", "intent_seed")


def yaml_loader() -> type:
    """A safe YAML loader that, like RecBole's, reads ``1e-3`` as a float (plain YAML 1.1 says string)."""

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return _Loader


def _load_yaml_file(path: Path) -> Dict[str, Any]:
    return read_yaml_file(path, yaml_loader(), IntentError)


def parse_value(text: str) -> Any:
    """A ``--key=value`` value as RecBole would type it: YAML scalars, lists and mappings."""
    try:
        return yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError:
        return text


def split_config_files(value: Any) -> List[str]:
    """``--config_files`` may be comma or space separated (or already a list)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        items: Iterable[str] = value
    else:
        items = re.split(r"[,\s]+", str(value))
    return [str(x) for x in items if str(x).strip()]


#: values kept as written: names and ids, where YAML typing would turn "007" into 7
RAW_KEYS = ("config_files", "dataset", "session")


def parse_cli(argv: Sequence[str], flags: Sequence[str] = ()) -> Tuple[Dict[str, Any], List[str]]:
    """Split ``--key=value`` overrides (typed like RecBole, except ``RAW_KEYS``) from bare ``--flag``
    switches named in ``flags``.

    Anything else is a user error: RecBole silently ignores it, which hides typos.
    """
    overrides: Dict[str, Any] = {}
    seen_flags: List[str] = []
    for arg in argv:
        if not arg.startswith("--") or len(arg) == 2:
            raise IntentError(f"unrecognised argument {arg!r}: write settings as --key=value")
        body = arg[2:]
        if "=" not in body:
            if body in flags:
                seen_flags.append(body)
                continue
            raise IntentError(f"argument {arg!r} has no value: write --{body}=<value>")
        key, value = body.split("=", 1)
        if not key:
            raise IntentError(f"unrecognised argument {arg!r}: write settings as --key=value")
        overrides[key] = value if key in RAW_KEYS else parse_value(value)
    return overrides, seen_flags


def load_settings(
    dataset: Optional[str] = None,
    config_files: Any = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The stage-1 settings as a plain dict, layered like RecBole (later wins).

    ``overrides`` may carry ``dataset`` and ``config_files`` too (as the CLI passes them). Types and
    ranges are checked here, as the training config checks them (``recbole_llm4sbr.validation``).
    """
    overrides = dict(overrides or {})
    files = split_config_files(config_files) + split_config_files(overrides.pop("config_files", None))
    user: Dict[str, Any] = {}
    for f in files:
        user.update(_load_yaml_file(Path(f)))
    user.update(overrides)
    ds = user.get("dataset", dataset) if dataset is None else dataset
    if not ds:
        raise IntentError("no dataset given: pass --dataset=<name> (a folder under data_path)")

    settings: Dict[str, Any] = {}
    settings.update(_load_yaml_file(properties_dir() / "overall.yaml"))
    ds_yaml = properties_dir() / "dataset" / f"{ds}.yaml"
    if ds_yaml.is_file():
        settings.update(_load_yaml_file(ds_yaml))
    settings.update(user)
    settings["dataset"] = str(ds)
    settings["config_files"] = files
    if not settings.get("data_path"):
        settings["data_path"] = str(default_data_path())
    validate(settings)
    warn_unknown(user)  # --epoch=2 would be ignored silently
    check_backend_name(settings)
    return settings


def normalize_settings(config: Any) -> Dict[str, Any]:
    """A plain dict from a dict or a RecBole ``Config`` (stage 2 calls ``ensure_intent_table(config)``).

    Keys missing from ``config`` take ``properties/overall.yaml``'s defaults, so a caller that did not
    layer the plugin's properties still gets the documented behaviour.
    """
    if hasattr(config, "final_config_dict"):
        given = dict(config.final_config_dict)
    else:
        given = dict(config)
    settings = _load_yaml_file(properties_dir() / "overall.yaml")
    settings.update({k: v for k, v in given.items() if v is not None or k not in settings})
    if not settings.get("dataset"):
        raise IntentError("no dataset in the settings: pass --dataset=<name>")
    if not settings.get("data_path"):
        settings["data_path"] = str(default_data_path())
    return settings


def dataset_dir(settings: Mapping[str, Any]) -> Path:
    """``<data_path>/<ds>/``; also accepts a RecBole ``Config``'s data_path, which already ends in ``<ds>``."""
    ds = str(settings["dataset"])
    base = Path(str(settings.get("data_path") or default_data_path())).expanduser()
    if (base / ds / f"{ds}.train.inter").is_file():
        return base / ds
    if base.name == ds and (base / f"{ds}.train.inter").is_file():
        return base
    return base / ds


def intent_views(settings: Mapping[str, Any]) -> Dict[str, str]:
    """``intent_views`` as an ordered ``{view: qualifier}``; a view with no qualifier uses its name."""
    views = settings.get("intent_views")
    if isinstance(views, str):
        views = parse_value(views)
    if isinstance(views, (list, tuple)):
        views = {str(v): str(v) for v in views}
    if not isinstance(views, Mapping) or not views:
        raise IntentError(
            "intent_views must be a non-empty mapping view -> qualifier, e.g. "
            "--intent_views=\"{long: long-term, short: short-term}\""
        )
    return {str(k): (str(v) if v not in (None, "") else str(k)) for k, v in views.items()}


def sampling(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The sampling settings recorded in every table."""
    return {k[len("intent_"):]: settings.get(k) for k in SAMPLING_KEYS}


def answer_max_chars(settings: Mapping[str, Any]) -> int:
    return int(settings.get("intent_answer_max_chars") or DEFAULT_ANSWER_MAX_CHARS)


#: ``intent_prompt_max_items: auto`` with ``intent_samples`` typical (a small LLM on a CPU): prompt
#: cost grows with its length, and 10 items keep a prompt near 200 tokens (docs/STAGE1.md, "Typical samples")
TYPICAL_PROMPT_MAX_ITEMS = 10


def prompt_max_items(settings: Mapping[str, Any], samples: Optional[str] = None) -> int:
    """``intent_prompt_max_items``: list only the last N items of a prefix in its prompt (0 = all).

    ``auto`` = ``TYPICAL_PROMPT_MAX_ITEMS`` when ``samples`` (the RESOLVED ``intent_samples``) is
    ``typical``, else 0 (the whole prefix, the paper), so ``all`` tables are unchanged.
    """
    value = settings.get("intent_prompt_max_items") or 0
    if str(value).strip().lower() == "auto":
        return TYPICAL_PROMPT_MAX_ITEMS if samples == "typical" else 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, bool):
        raise IntentError(
            f"intent_prompt_max_items={value!r}: give auto, 0 (the whole prefix, the paper) or a positive count"
        )
    return n
