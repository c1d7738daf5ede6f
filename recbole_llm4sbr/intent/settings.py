"""Stage-1 configuration without RecBole.

Stage 1 runs in an LLM-only environment (vLLM ships its own torch), so it cannot use RecBole's
``Config``. This module layers the same files the same way (``properties/overall.yaml``, then
``properties/dataset/<ds>.yaml``, then the user's ``--config_files``, then ``--key=value``) into a
plain dict (``load_settings``), and types it once (``normalize_settings`` -> ``Stage1Settings``, a
frozen dataclass checked when built), whose attributes stage 1 reads. Which settings change the
table is ``identity.py``'s.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import yaml

from ..errors import ConfigError, read_yaml_file
from ..known_keys import warn_unknown
from ..paths import default_data_path, properties_dir
from ..validation import validate
from .registry import SAMPLING_KEYS, check_backend_name
from .errors import IntentError

#: default of ``intent_answer_max_chars`` (not in overall.yaml: cleaning detail, rarely changed)
DEFAULT_ANSWER_MAX_CHARS = 200



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


def normalize_settings(config: Any) -> "Stage1Settings":
    """The typed stage-1 settings of a dict or a RecBole ``Config`` (stage 2 calls
    ``ensure_intent_table(config)``); settings that are typed already are returned as they are, so the
    layering and the checks run once per build.

    Keys missing from ``config`` take ``properties/overall.yaml``'s defaults, so a caller that did not
    layer the plugin's properties still gets the documented behaviour.
    """
    if isinstance(config, Stage1Settings):
        return config
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
    return Stage1Settings(settings)


def _name(value: Any) -> str:
    return str(value).strip().lower()


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


#: typed field -> (config key, how its value is read). Every key here is in ``properties/overall.yaml``
#: (its default is there and nowhere else), except ``intent_answer_max_chars``.
FIELDS: Dict[str, Tuple[str, Any]] = {
    "dataset": ("dataset", str),
    "data_path": ("data_path", str),
    "backend": ("intent_backend", _name),
    "model": ("intent_model", _optional_text),
    "template": ("intent_template", _text),
    "max_tokens": ("intent_max_tokens", int),
    "temperature": ("intent_temperature", float),
    "top_p": ("intent_top_p", float),
    "seed": ("intent_seed", int),
    "batch_size": ("intent_batch_size", int),
    "device": ("intent_device", _name),
    "encoder": ("intent_encoder", str),
    "encoder_batch_size": ("intent_encoder_batch_size", int),
    "topr": ("intent_topr", int),
    "faiss_threshold": ("intent_faiss_threshold", int),
    "ann": ("intent_ann", _name),
    "storage_dtype": ("intent_storage_dtype", _name),
    "samples": ("intent_samples", _name),
    "budget": ("intent_budget", lambda v: v),
    "short_items": ("intent_short_items", int),
    "show_progress": ("show_progress", bool),
}


@dataclass(frozen=True, eq=False)
class Stage1Settings(Mapping):
    """Stage 1's settings, layered once (``load_settings`` / ``normalize_settings``) and checked once.

    Built from the layered dict (``properties/overall.yaml`` holds every default): ``__post_init__``
    checks its values (``validation.RULES``, a registered ``intent_backend``, ``intent_views``,
    ``intent_prompt_max_items``) and sets the typed fields, which stage 1 reads instead of the dict.
    It is also a read-only mapping of the whole layered dict, for what a backend reads of its own
    (``vllm_*``, ``openai_*``) and for ``dict(settings, key=value)``. Which of these change the table
    is ``identity.table_identity``'s, a projection of this object.
    """

    raw: Mapping[str, Any] = field(repr=False)
    dataset: str = field(init=False)
    data_path: str = field(init=False)
    #: ``intent_backend``, lower-case: ``auto`` or a registered backend
    backend: str = field(init=False)
    model: Optional[str] = field(init=False)
    #: ``intent_views``: ordered view -> qualifier
    views: Mapping[str, str] = field(init=False)
    template: str = field(init=False)
    max_tokens: int = field(init=False)
    temperature: float = field(init=False)
    top_p: float = field(init=False)
    seed: int = field(init=False)
    batch_size: int = field(init=False)
    device: str = field(init=False)
    encoder: str = field(init=False)
    #: ``intent_encoder_device``, else ``intent_device``
    encoder_device: Any = field(init=False)
    encoder_batch_size: int = field(init=False)
    torch_num_threads: Any = field(init=False)
    topr: int = field(init=False)
    faiss_threshold: int = field(init=False)
    ann: str = field(init=False)
    storage_dtype: str = field(init=False)
    #: ``intent_samples`` as written (``auto`` included: ``backends.resolve_samples`` resolves it)
    samples: str = field(init=False)
    budget: Any = field(init=False)
    #: ``intent_prompt_max_items`` as written: ``auto`` or a count (``prompt_items`` resolves it)
    prompt_max_items: Any = field(init=False)
    short_items: int = field(init=False)
    answer_max_chars: int = field(init=False)
    show_progress: bool = field(init=False)

    def __post_init__(self) -> None:
        raw = MappingProxyType(dict(self.raw))
        object.__setattr__(self, "raw", raw)
        validate(raw)
        check_backend_name(raw)
        for name, (key, read) in FIELDS.items():
            if raw.get(key) is None:
                raise ConfigError(f"config key '{key}' is unset and has no default in properties/overall.yaml. "
                                  f"Fix: --{key}=<value> or the same in your yaml file.")
            object.__setattr__(self, name, read(raw[key]))
        object.__setattr__(self, "views", MappingProxyType(intent_views(raw)))
        object.__setattr__(self, "encoder_device", raw.get("intent_encoder_device") or raw["intent_device"])
        object.__setattr__(self, "torch_num_threads", raw.get("torch_num_threads"))
        object.__setattr__(self, "answer_max_chars", int(raw.get("intent_answer_max_chars") or DEFAULT_ANSWER_MAX_CHARS))
        object.__setattr__(self, "prompt_max_items", _max_items(raw.get("intent_prompt_max_items")))

    # a read-only mapping of the layered dict
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def prompt_items(self, samples: Optional[str]) -> int:
        """``intent_prompt_max_items`` resolved: ``auto`` = ``TYPICAL_PROMPT_MAX_ITEMS`` when ``samples``
        (the RESOLVED ``intent_samples``) is ``typical``, else 0 (the whole prefix, the paper)."""
        if self.prompt_max_items == "auto":
            return TYPICAL_PROMPT_MAX_ITEMS if samples == "typical" else 0
        return int(self.prompt_max_items)

    def sampling(self) -> Dict[str, Any]:
        """The sampling settings recorded in every table."""
        return {k[len("intent_"):]: self.raw.get(k) for k in SAMPLING_KEYS}


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
    if isinstance(settings, Stage1Settings):
        return settings.answer_max_chars
    return int(settings.get("intent_answer_max_chars") or DEFAULT_ANSWER_MAX_CHARS)


#: ``intent_prompt_max_items: auto`` with ``intent_samples`` typical (a small LLM on a CPU): prompt
#: cost grows with its length, and 10 items keep a prompt near 200 tokens (docs/STAGE1.md, "Typical samples")
TYPICAL_PROMPT_MAX_ITEMS = 10


def prompt_max_items(settings: Mapping[str, Any], samples: Optional[str] = None) -> int:
    """``intent_prompt_max_items``: list only the last N items of a prefix in its prompt (0 = all).

    ``auto`` = ``TYPICAL_PROMPT_MAX_ITEMS`` when ``samples`` (the RESOLVED ``intent_samples``) is
    ``typical``, else 0 (the whole prefix, the paper), so ``all`` tables are unchanged.
    """
    if isinstance(settings, Stage1Settings):
        return settings.prompt_items(samples)
    value = _max_items(settings.get("intent_prompt_max_items"))
    if value == "auto":
        return TYPICAL_PROMPT_MAX_ITEMS if samples == "typical" else 0
    return value


def _max_items(value: Any) -> Any:
    """``intent_prompt_max_items`` as written: ``"auto"`` or a count (unset: 0)."""
    value = value or 0
    if _name(value) == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or isinstance(value, bool):
        raise IntentError(f"intent_prompt_max_items={value!r}: give auto, 0 (the whole prefix, the paper) or a "
                          f"positive count")
    return count
