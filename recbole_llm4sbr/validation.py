"""Types and ranges of the config keys the plugin reads, checked once where a config is built.

RecBole passes a value it cannot parse through as a string (``--epochs=abc`` reaches the Trainer as
``'abc'`` and fails there with a TypeError) and accepts out-of-range values silently
(``--intent_topr=-1``). ``validate(config)`` checks every key of ``RULES`` that the config holds and
raises one ``ConfigError`` naming the key, the value, what is allowed and the fix. Called by the
training config (``recbole_llm4sbr.config.Config``) and by stage 1's own settings
(``python -m recbole_llm4sbr.intent``). No RecBole import: stage 1 runs without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from recbole_llm4sbr.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """``check(value)`` returns True when the value is allowed; ``allowed`` says what is, in words;
    ``example`` is a valid value for the fix."""

    check: Callable[[Any], bool]
    allowed: str
    example: str


def _number(value, kind):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            return None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) else None


def integer(low: Optional[int] = None, high: Optional[int] = None, example: str = "1") -> Rule:
    def check(v):
        n = _number(v, int)
        return n is not None and (low is None or n >= low) and (high is None or n <= high)

    bounds = (f" >= {low}" if low is not None else "") + (f" and <= {high}" if high is not None else "")
    return Rule(check, f"an integer{bounds}", example)


def real(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
         high_open: bool = False, example: str = "0.1") -> Rule:
    def check(v):
        x = _number(v, float)
        if x is None or x != x:  # NaN
            return False
        if low is not None and (x <= low if low_open else x < low):
            return False
        return not (high is not None and (x >= high if high_open else x > high))

    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return Rule(check, "a number" + (" " + " and ".join(parts) if parts else ""), example)


def choice(*options: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v.strip().lower() in options, "one of " + ", ".join(options),
                options[0])


def flag() -> Rule:
    ok = {"true", "false", "1", "0", "yes", "no", "on", "off"}
    return Rule(lambda v: isinstance(v, bool) or v in (0, 1) or (isinstance(v, str) and v.strip().lower() in ok),
                "True or False", "True")


def text(non_empty: bool = True) -> Rule:
    return Rule(lambda v: isinstance(v, str) and (bool(v.strip()) or not non_empty), "a non-empty string", "name")


def _structured(v):
    """A list or mapping may arrive as its YAML text (RecBole leaves ``--key={a: b}`` a string; stage 1
    reads it as YAML)."""
    if isinstance(v, str):
        import yaml

        try:
            return yaml.safe_load(v)
        except yaml.YAMLError:
            return v
    return v


def names() -> Rule:
    def check(v):
        v = _structured(v)
        return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) and x for x in v)

    return Rule(check, "a non-empty list of names", "[long,short]")


def mapping_of(values: Optional[Sequence[str]] = None) -> Rule:
    def check(v):
        v = _structured(v)
        if not isinstance(v, Mapping) or not v:
            return False
        return all(isinstance(k, str) and isinstance(x, str) and (values is None or x in values) for k, x in v.items())

    what = "a non-empty mapping name -> " + ("one of " + "/".join(values) if values else "text")
    return Rule(check, what, "{long: global, short: local}" if values else "{long: long-term}")


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r.check(v) for r in rules), " or ".join(r.allowed for r in rules), rules[0].example)


def strength_off(value) -> bool:
    """Whether an ``intent_strength`` value is ``off``: the word (any case) or YAML's reading of an
    unquoted ``off`` (False). ``0`` is a number, not off: the intents still act through the training losses."""
    return value is False or (isinstance(value, str) and value.strip().lower() == "off")


def intents_off(config) -> bool:
    """Whether ``config`` (a RecBole Config or a dict) turns the intents off: ``intent_strength: off``
    under the residual fusion (the key is the residual's alone; the paper's fusion ignores it)."""
    fusion = str(_get(config, "fusion") or "residual").strip().lower()
    return fusion == "residual" and strength_off(_get(config, "intent_strength"))


def intent_strength(value):
    """``intent_strength`` as the model and the benchmark read it: ``"off"`` or a float (None -> 1.0)."""
    if value is None:
        return 1.0
    return "off" if strength_off(value) else float(value)


def template() -> Rule:
    return Rule(lambda v: isinstance(v, str) and "{items}" in v and "{qualifier}" in v,
                "a prompt template containing {items} and {qualifier}", "'... {items} ... {qualifier} ...'")


def device() -> Rule:
    return Rule(lambda v: isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda")),
                "auto, cpu, cuda or cuda:N", "auto")


POSITIVE = integer(1, example="30")
NON_NEGATIVE = integer(0, example="0")

#: every key with a rule; keys a config does not hold are not checked
RULES: Dict[str, Rule] = {
    # RecBole's training keys the plugin's users set most (a bad value fails late and obscurely)
    "epochs": POSITIVE,
    "train_batch_size": integer(1, example="100"),
    "eval_batch_size": integer(1, example="1024"),
    "learning_rate": real(0, low_open=True, example="0.001"),
    "weight_decay": real(0, example="0.00001"),
    "stopping_step": integer(1, example="5"),
    "seed": integer(example="2020"),
    "MAX_ITEM_LIST_LENGTH": integer(1, example="50"),
    # the plugin's trainer and environment
    "torch_num_threads": NON_NEGATIVE,
    "lr_step_size": integer(0, example="3"),
    "lr_gamma": real(0, 1, low_open=True, example="0.1"),
    # distributed stage 2 (RecBole's keys; quick_start.distributed checks how they fit together)
    "nproc": integer(1, example="2"),
    "world_size": Rule(lambda v: _number(v, int) is not None and (_number(v, int) == -1 or _number(v, int) >= 1),
                       "-1 (= nproc) or an integer >= 1", "-1"),
    "offset": integer(0, example="0"),
    "ip": text(),
    "port": integer(1, 65535, example="5678"),
    # stage 1 (properties/overall.yaml)
    "intent_backend": text(),  # and a registered name: intent.backends.check_backend_name
    "intent_model": text(),
    "intent_views": mapping_of(),
    "intent_template": template(),
    "intent_max_tokens": integer(1, example="32"),
    "intent_temperature": real(0, example="0.0"),
    "intent_top_p": real(0, 1, low_open=True, example="1.0"),
    "intent_seed": integer(example="2024"),
    "intent_batch_size": integer(1, example="32"),
    "intent_device": device(),
    "intent_dtype": choice("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half"),
    "intent_num_threads": either(choice("auto"), integer(1, example="1")),
    "intent_prefix_sharing": flag(),
    "intent_greedy_loop": flag(),
    "intent_prompts_per_call": integer(1, example="256"),
    "intent_encoder": text(),
    "intent_encoder_batch_size": integer(1, example="256"),
    "intent_topr": integer(0, example="5"),
    "intent_faiss_threshold": integer(0, example="200000"),
    "intent_ann": choice("exact", "ivf", "hnsw"),
    "intent_storage_dtype": choice("float32", "float16"),
    "intent_samples": choice("auto", "all", "typical"),
    "intent_budget": either(integer(1, example="64"), real(0, 1, low_open=True, high_open=True)),
    "intent_prompt_max_items": either(choice("auto"), integer(0, example="10")),
    "intent_short_items": integer(0, example="3"),
    "vllm_tensor_parallel_size": integer(1, example="1"),
    "vllm_gpu_memory_utilization": real(0, 1, low_open=True, example="0.9"),
    "vllm_max_model_len": integer(1, example="4096"),
    "vllm_dtype": text(),
    "vllm_enforce_eager": flag(),
    "vllm_prompts_per_call": integer(1, example="1024"),
    "openai_concurrency": integer(1, example="8"),
    "openai_timeout": real(0, low_open=True, example="60"),
    "openai_max_retries": integer(0, example="4"),
    # stage 2 (properties/model/LLM4SBR.yaml)
    "load_intent": flag(),
    "llm4sbr_views": names(),
    "view_behaviour": mapping_of(("global", "local")),
    "au_weight": real(0, example="0.1"),
    "fusion": choice("residual", "paper"),
    "intent_strength": either(real(0, example="1.0"), Rule(strength_off, "off", "off")),
    "intent_localization": flag(),
    "intent_mmap": either(choice("auto"), flag()),
    "intent_buffer_dtype": choice("float16", "float32"),
    "semantic_at_inference": flag(),
    "text_target_weight": real(0, example="0.1"),
    "eimf_weight": real(0, example="0.1"),
    "intent_control": choice("none", "constant", "shuffled"),
    "intent_shuffle_seed": integer(0, example="0"),
    "intent_dropout": Rule(real(0, 1).check, "a probability in [0, 1]", "0.0"),
}


def _get(config, key):
    try:
        return config[key]
    except (KeyError, TypeError):
        return None


def refuse(key: str, value: Any, allowed: str, example: str) -> ConfigError:
    """The one wording of a bad config value: key, value, what is allowed, the fix."""
    return ConfigError(f"config key '{key}' = {value!r} (from --{key}=... or a yaml file) must be {allowed}. "
                       f"Fix: --{key}={example} or the same in your yaml file.")


def choose(settings, key: str, choices, default: str) -> str:
    """The value of ``key`` in ``settings``, one of ``choices`` (lower-cased; ``default`` when unset), else
    ``refuse``. (``choice`` above is the ``Rule`` of such a key in ``RULES``.)"""
    value = settings.get(key)
    name = default if value is None else str(value).strip().lower()
    if name not in choices:
        raise refuse(key, value, " or ".join(choices), default)
    return name


def validate(config) -> None:
    """Raise ``ConfigError`` for the first key of ``RULES`` whose value ``config`` holds and breaks
    its rule. ``None`` (a yaml ``~``) means "unset" and is left to the code that reads the key.
    Whether ``intent_backend`` names a registered backend is stage 1's to say
    (``intent.backends.check_backend_name``, called next to this)."""
    for key, rule in RULES.items():
        value = _get(config, key)
        if value is None or rule.check(value):
            continue
        raise refuse(key, value, rule.allowed, rule.example)
