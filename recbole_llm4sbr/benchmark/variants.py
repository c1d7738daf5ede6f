"""The benchmark's variants: stock base, full LLM4SBR, attribution controls and the paper's ablations,
each a config delta.

A variant is ``(wrapped, overrides, label, role)``: ``wrapped`` says whether the cell trains
``LLM4SBR_<Base>`` or the stock ``<Base>``; ``overrides`` are config keys laid over the user's own
``--key=value`` (the variant wins: ``text`` stays LLM-free whatever ``--intent_backend`` says);
``role`` (``ROLES``) is what the variant is for: the report finds its reference and controls by role
and fusion (``role_variant``), never by name.
``fusion`` (the model's default is ``residual``: the base's own vector plus a zero-started intent term)
enters every wrapped cell's digest; ``paper`` and ``paper_*`` train the paper's fusion, and every
ablation and investigation variant pins it (that is the fusion they were measured with).
Attribution controls (read by the model as ``intent_control``): ``arch`` gives every sample one
constant intent (what the wrapper's architecture alone adds), ``shuffled`` a fixed permutation of the
intent table's rows (intents of other sessions); both on the configured intent backend, like ``llm4sbr``.
Investigation (why do the intents add nothing over a constant?): ``train_only``
(EIMF's training-only use: the gates never read intents), ``eimf`` / ``train_only_eimf`` (EIMF's
LLM-side semantic loss + modality alignment, ``eimf_weight`` 0.1 as in EIMF), ``drop30`` (intent
dropout), ``au_hi`` / ``au_lo`` (the alignment weight; ``arch_au_hi``, ``shuffled_au_hi``, ``text_au_hi``: ``au_hi``'s
controls), ``short3`` (the short view's prompt lists only
the last 3 items, so the two views differ by construction; a stage-1 table of its own), ``all``
(every prefix asked). Cheap to run
with ``--tune=reuse`` (one run per seed, the setting chosen for ``llm4sbr``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from recbole_llm4sbr.errors import ConfigError

#: what a variant is for (``Variant.role``): the stock base; the full model (``intents``: the LLM's
#: intents, one per fusion); the attribution controls, each with the intents of the full model swapped
#: for a constant, another session's, or LLM-free text intents; the paper's ablations; investigations
ROLES = ("stock", "intents", "constant_control", "shuffled_control", "text_control", "ablation", "investigation")


@dataclass(frozen=True)
class Variant:
    name: str
    wrapped: bool
    label: str
    overrides: Dict[str, object] = field(default_factory=dict)
    role: str = field(kw_only=True)  # one of ROLES: how the report reads its cells

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"variant {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")

    def model(self, base: str) -> str:
        from recbole_llm4sbr.model.bases import wrapped_name  # RecBole: not at import (aggregate reads roles)

        return wrapped_name(base) if self.wrapped else base

    @property
    def fusion(self) -> Optional[str]:
        """The fusion the variant pins, None: the model's default (``residual``) or the user's ``--fusion``."""
        value = self.overrides.get("fusion")
        return None if value is None else str(value)


VARIANTS: Dict[str, Variant] = {v.name: v for v in [
    Variant("base", False, "without LLM (stock base)", role="stock"),
    Variant("llm4sbr", True, "LLM4SBR (intent backend as configured)", role="intents"),
    Variant("text", True, "LLM-free text intents", {"intent_backend": "text"}, role="text_control"),
    Variant("arch", True, "architecture only (one constant intent)", {"intent_control": "constant"}, role="constant_control"),
    Variant("shuffled", True, "shuffled intents (a fixed permutation of the table rows)",
            {"intent_control": "shuffled"}, role="shuffled_control"),
    # the paper's fusion (H_sess replaces the base's vector) and its controls; every variant below
    # them is an ablation or investigation of the paper's fusion and pins it
    Variant("paper", True, "LLM4SBR with the paper's fusion (gated views replace the base's vector)",
            {"fusion": "paper"}, role="intents"),
    Variant("paper_arch", True, "the paper's fusion, one constant intent",
            {"fusion": "paper", "intent_control": "constant"}, role="constant_control"),
    Variant("paper_shuffled", True, "the paper's fusion, shuffled intents",
            {"fusion": "paper", "intent_control": "shuffled"}, role="shuffled_control"),
    Variant("paper_text", True, "the paper's fusion, LLM-free text intents",
            {"fusion": "paper", "intent_backend": "text"}, role="text_control"),
    Variant("swapped", True, "views paired the other way (long-term intent with the local view)",
            {"fusion": "paper", "view_behaviour": {"long": "local", "short": "global"}}, role="ablation"),
    Variant("no_au", True, "without alignment-uniformity", {"fusion": "paper", "au_weight": 0.0}, role="ablation"),
    Variant("no_long", True, "without the long-term view", {"fusion": "paper", "llm4sbr_views": ["short"]}, role="ablation"),
    Variant("no_short", True, "without the short-term view", {"fusion": "paper", "llm4sbr_views": ["long"]}, role="ablation"),
    Variant("no_loc", True, "without intent localization", {"fusion": "paper", "intent_localization": False}, role="ablation"),
    Variant("r0", True, "r = 0 (answer embedding, no retrieval)", {"fusion": "paper", "intent_topr": 0}, role="ablation"),
    Variant("r1", True, "r = 1", {"fusion": "paper", "intent_topr": 1}, role="ablation"),
    Variant("r3", True, "r = 3", {"fusion": "paper", "intent_topr": 3}, role="ablation"),
    Variant("r5", True, "r = 5", {"fusion": "paper", "intent_topr": 5}, role="ablation"),
    Variant("train_only", True, "intents in training only (EIMF's use: no intent read at prediction)",
            {"fusion": "paper", "semantic_at_inference": False}, role="investigation"),
    Variant("eimf", True, "EIMF's semantic prediction + modality alignment (eimf_weight 0.1)",
            {"fusion": "paper", "eimf_weight": 0.1}, role="investigation"),
    Variant("train_only_eimf", True, "training-only intents with EIMF's losses",
            {"fusion": "paper", "semantic_at_inference": False, "eimf_weight": 0.1}, role="investigation"),
    Variant("drop30", True, "intent dropout 0.3 (training)", {"fusion": "paper", "intent_dropout": 0.3}, role="investigation"),
    Variant("au_hi", True, "alignment-uniformity weight 0.5", {"fusion": "paper", "au_weight": 0.5}, role="investigation"),
    Variant("au_lo", True, "alignment-uniformity weight 0.02", {"fusion": "paper", "au_weight": 0.02}, role="investigation"),
    # au_hi's controls: the same weight with a constant, another session's, or LLM-free intent
    Variant("arch_au_hi", True, "one constant intent, alignment-uniformity weight 0.5",
            {"fusion": "paper", "intent_control": "constant", "au_weight": 0.5}, role="investigation"),
    Variant("shuffled_au_hi", True, "shuffled intents, alignment-uniformity weight 0.5",
            {"fusion": "paper", "intent_control": "shuffled", "au_weight": 0.5}, role="investigation"),
    Variant("text_au_hi", True, "LLM-free text intents, alignment-uniformity weight 0.5",
            {"fusion": "paper", "intent_backend": "text", "au_weight": 0.5}, role="investigation"),
    Variant("short3", True, "short view prompted with the last 3 items only (views differ by construction)",
            {"fusion": "paper", "intent_short_items": 3}, role="investigation"),
    Variant("all", True, "every prefix asked (intent_samples: all), not typical samples' exemplars",
            {"fusion": "paper", "intent_samples": "all"}, role="investigation"),
]}

def role_variant(role: str, fusion: Optional[str] = None) -> str:
    """The one variant with ``role`` and ``fusion`` (None: the fusion as configured): how the report
    finds its reference (``stock``: ``base``) and controls (``constant_control``: ``arch``, ...)."""
    names = [name for name in role_variants(role) if VARIANTS[name].fusion == fusion]
    if len(names) != 1:
        raise LookupError(f"{len(names)} variants with role {role} and fusion {fusion}: {names}")
    return names[0]


def role_variants(role: str) -> List[str]:
    """The variants with ``role``, in ``VARIANTS``' order (``intents``: ``llm4sbr``, ``paper``)."""
    return [v.name for v in VARIANTS.values() if v.role == role]


#: the stock base's variant name (``base``): the reference of every comparison, the cell an ``off`` point is
STOCK = role_variant("stock")


ALIASES = {"full": "llm4sbr", "no_llm": "base", "no_localization": "no_loc", "no_alignment": "no_au"}


def parse_variants(text) -> List[str]:
    """``"llm4sbr,no_au"`` -> ``["base", "llm4sbr", "no_au"]``: ``base`` always first, order kept, no repeats."""
    names = text if isinstance(text, (list, tuple)) else ("llm4sbr" if text is None else str(text)).replace(" ", ",").split(",")
    out = ["base"]
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in VARIANTS:
            raise ConfigError(f"Unknown variant '{raw}'. Fix: choose from {', '.join(VARIANTS)}.")
        if name not in out:
            out.append(name)
    return out


#: a larger single number given to --seeds is taken for a seed, not a count, and refused
MAX_SEED_COUNT = 100


def parse_seeds(text, first: int = 2020) -> List[int]:
    """``"3"`` -> ``[first, first+1, first+2]``; ``"1,7,42"`` (or ``"2020,"``) -> exactly those seeds."""
    parts = [p for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds={text}: expected a count (3) or a comma separated list of integer seeds") from None
    if len(values) == 1 and "," not in str(text):
        if values[0] < 1:
            raise ConfigError(f"--seeds={text}: the number of seeds must be at least 1")
        if values[0] > MAX_SEED_COUNT:  # a seed typed as a count: --seeds=2020 would train 2020 seeds
            raise ConfigError(
                f"--seeds={text} asks for {values[0]} seeds (a single number is a count). Fix: --seeds=5 "
                f"(five seeds from --seed), or a list such as --seeds={values[0]}, for that one seed")
        return [first + i for i in range(values[0])]
    if len(set(values)) != len(values):
        raise ConfigError(f"--seeds={text}: repeated seed. Fix: name each seed once")
    return values


def parse_bases(text) -> List[str]:
    from recbole_llm4sbr.model.bases import base_of

    names = text if isinstance(text, (list, tuple)) else str(text or "").replace(" ", ",").split(",")
    out: List[str] = []
    for name in names:
        name = name.strip()
        if base_of(name) is not None:
            raise ConfigError(f"--base_models: give the stock base ('{base_of(name)}'), not '{name}'; "
                              f"the benchmark trains both sides itself. Fix: --base_models={base_of(name)}")
        if name and name not in out:
            out.append(name)
    if not out:
        raise ConfigError("--base_models is empty. Fix: e.g. --base_models=SRGNN,GRU4Rec")
    return out


def variant_config(variant: str, user_overrides: Dict[str, object]) -> Dict[str, object]:
    out = dict(user_overrides)
    out.update(VARIANTS[variant].overrides)
    return out

