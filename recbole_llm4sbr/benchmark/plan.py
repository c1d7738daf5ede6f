"""The benchmark's plan, pure: which training runs make which final cells, and how each is named.

No training and no cell files: what a decision needs from a finished run (the setting chosen on
validation, what is left to train) comes through the ``load`` function the plan is given
(``store.CellStore.load`` in a benchmark). The settings digest reads what it is made of
(``properties/model/LLM4SBR.yaml`` and the config files' content).

Protocols (``protocol``): ``fair`` (default) lets every model, stock or wrapped, converge under one
rule chosen on the validation split only: per (base, variant) a grid over ``learning_rate`` x
``lr_step_size`` (``FAIR_GRID``; ``--grid_<key>=a,b`` replaces or adds an axis, a user's
``--<key>=`` fixes it) is trained on the FIRST seed with an epoch cap of 50 and early stopping after 5
epochs without gain; the setting with the best ``best_valid_score`` (never a test number) is chosen,
the first seed's final cell IS that grid run, and every other seed trains once with it. ``paper``: the
paper's schedule (lr 1e-3, x0.1 every 3 epochs, 30 epochs, early stopping after 5), no search. Each training run
(grid point or seed) is its own cell JSON, so a benchmark may span sessions and processes.

Tuning (``tune``): ``grid`` (default) tunes every (base, variant) as above. ``reuse`` tunes only the
stock base and ``llm4sbr`` (``TUNE_SOURCE``); every other variant trains with the setting chosen for
``llm4sbr`` of the same base (its grid runs are planned even when ``llm4sbr`` is not among the
variants), so an extra variant costs one run per seed instead of a grid. Such a final cell says so:
``setting_from: "llm4sbr"``, ``grid: []`` and ``protocol`` "<protocol> (setting reused from llm4sbr)".
A reused run that coincides with one of the variant's own grid runs (same setting) is that same cell.

Cells are identified by base, variant, seed and an 8-hex digest of the settings that can change that
run's result (dataset, config files' content, the protocol's keys, ``--key=value`` overrides, the
variant's own keys and the run's setting laid over them); for the stock base the LLM4SBR keys (those
of ``properties/model/LLM4SBR.yaml``) and the stage-1 keys (``intent_*``, ``vllm_*``, ``openai_*``)
are left out, so base cells are shared by runs that differ only in those.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from recbole_llm4sbr.benchmark.variants import STOCK, VARIANTS, variant_config
from recbole_llm4sbr.errors import LLM4SBRError
from recbole_llm4sbr.intent.registry import only_key_prefixes
from recbole_llm4sbr.validation import strength_off

#: a grid value standing for each base's own value of that key in the shipped property files (the fair
#: protocol's choice made on ml-100k-session): ``--grid_learning_rate=shipped --grid_lr_step_size=shipped``
#: trains every stock base with its shipped setting instead of searching one
SHIPPED = "shipped"
#: overrides that never change a result (left out of the cell digest)
NEUTRAL_KEYS = {"show_progress", "state", "checkpoint_dir", "benchmark", "log_wandb", "debug"}
#: stage-1 keys: only LLM4SBR models read them (left out of the stock base's digest): ``intent_`` and the
#: prefixes each stage-1 backend registered (``vllm_``, ``openai_``: intent/registry.py)
LLM4SBR_ONLY_PREFIXES = only_key_prefixes()
#: keys only the residual fusion reads: not an axis of a paper-fusion variant's grid
RESIDUAL_ONLY_KEYS = ("intent_strength",)
#: what every cell gets unless the user overrides it
CELL_DEFAULTS = {"show_progress": False, "metric_decimal_place": 6}
#: ``tune: reuse``: the variant whose chosen setting the other wrapped variants reuse
TUNE_SOURCE = "llm4sbr"
#: tune mode -> the variant whose chosen setting the other wrapped variants take (None: each its own grid).
#: ``base``: the wrapped variants train with the stock base's chosen setting and search only the
#: wrapped-only axes (``--grid_intent_strength=0,1``) around it: a residual wrapper keeps the base's
#: own path, so the base's training setting is its fair starting point and the intent term is what is tuned.
TUNE_SOURCES = {"grid": None, "reuse": TUNE_SOURCE, "base": "base"}
TUNE_MODES = tuple(TUNE_SOURCES)
#: keys of LLM4SBR.yaml whose resolved value always enters a wrapped cell's digest (a change of
#: their default must not let an old cell stand for a new model)
DIGEST_DEFAULTS = ("fusion", "intent_strength")


class BenchmarkError(LLM4SBRError):
    """Bad benchmark input; the message names the fix."""


def llm4sbr_defaults(base: Optional[str] = None) -> dict:
    """``properties/model/LLM4SBR.yaml`` (read each time: the file is the one source of truth), with
    the ``DIGEST_DEFAULTS`` the wrapped model's own property file sets (``properties/model/LLM4SBR_<base>.yaml``,
    which the config layers above LLM4SBR.yaml: e.g. SASRec's ``intent_strength``)."""
    import yaml

    from recbole_llm4sbr.paths import properties_dir

    with open(properties_dir() / "model" / "LLM4SBR.yaml", encoding="utf-8") as f:
        out = dict(yaml.safe_load(f) or {})
    own = properties_dir() / "model" / f"LLM4SBR_{base}.yaml"
    if base and own.is_file():
        with open(own, encoding="utf-8") as f:
            out.update({k: v for k, v in (yaml.safe_load(f) or {}).items() if k in DIGEST_DEFAULTS})
    return out


def llm4sbr_only_keys() -> frozenset:
    """The keys of ``properties/model/LLM4SBR.yaml``: only ``LLM4SBR_<Base>`` models read them, so the
    stock base's digest leaves them out."""
    return frozenset(llm4sbr_defaults())


def _value(text):
    """A ``--key=value`` string as the number or bool it spells (so "50" and 50 digest alike)."""
    if not isinstance(text, str):
        return text
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---- protocols ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How every cell is trained: ``defaults`` (config keys under the user's overrides) and the
    ``grid`` of settings tuned per (base, variant) on the first seed (one value per axis: no search)."""

    name: str
    defaults: Dict[str, object]
    grid: Dict[str, tuple]


FAIR_GRID = {"learning_rate": (0.001, 0.0003), "lr_step_size": (0, 3)}
PROTOCOLS = {
    "fair": Protocol("fair", {"epochs": 50, "stopping_step": 5, "lr_gamma": 0.1}, FAIR_GRID),
    "paper": Protocol("paper", {"epochs": 30, "stopping_step": 5, "lr_gamma": 0.1},
                      {"learning_rate": (0.001,), "lr_step_size": (3,)}),
}


def protocol_grid(protocol: str, overrides: Dict[str, object],
                  grid: Optional[Dict[str, Sequence]] = None) -> Dict[str, tuple]:
    """The protocol's grid with ``grid`` (``--grid_<key>=``) replacing or adding axes; an axis the
    user set explicitly (``--learning_rate=``) is fixed to that value."""
    if protocol not in PROTOCOLS:
        raise BenchmarkError(f"--protocol={protocol}: unknown. Fix: --protocol=fair (default) or --protocol=paper")
    axes = {k: tuple(v) for k, v in PROTOCOLS[protocol].grid.items()}
    for key, values in (grid or {}).items():
        values = tuple(_value(v) for v in values)
        if not values:
            raise BenchmarkError(f"--grid_{key} is empty. Fix: --grid_{key}=a,b")
        axes[key] = values
    for key in list(axes):
        if key in overrides:
            axes[key] = (_value(overrides[key]),)
    return axes


def grid_settings(axes: Dict[str, tuple]) -> List[Dict[str, object]]:
    """Every point of the grid, the first axis slowest (``learning_rate`` then ``lr_step_size``)."""
    keys = list(axes)
    return [dict(zip(keys, point)) for point in itertools.product(*(axes[k] for k in keys))]


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()[:12]
    except OSError:
        return "missing"


@functools.lru_cache(maxsize=None)
def shipped_value(base: str, key: str, dataset: str):
    """``key``'s value for ``base`` as the shipped property files layer it (``config.Config``'s order:
    RecBole's overall and model files, then the plugin's overall, ``model/<base>.yaml`` and
    ``dataset/<dataset>.yaml``); BenchmarkError when none sets it. Read as files: no RecBole import."""
    import importlib.util
    from pathlib import Path

    import yaml

    from recbole_llm4sbr.paths import properties_dir

    recbole = Path(importlib.util.find_spec("recbole").origin).parent / "properties"
    plugin = properties_dir()
    value = None
    for path in (recbole / "overall.yaml", recbole / "model" / f"{base}.yaml", plugin / "overall.yaml",
                 plugin / "model" / f"{base}.yaml", plugin / "dataset" / f"{dataset}.yaml"):
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                found = yaml.safe_load(f) or {}
            if key in found:
                value = found[key]
    if value is None:
        raise BenchmarkError(f"--grid_{key}={SHIPPED}: no property file sets {key} for {base}. Fix: give the "
                             f"values to try, e.g. --grid_{key}=a,b")
    return _value(str(value)) if isinstance(value, str) else value


def relevant_settings(dataset: str, variant: str, overrides: Dict[str, object],
                      config_files: Sequence[str] = (), base: Optional[str] = None) -> dict:
    """What can change a cell's result besides base and seed (the cell digest is made from it)."""
    keep = {}
    defaults = llm4sbr_defaults(base)
    only_llm4sbr = frozenset(defaults)
    for key, value in sorted(overrides.items()):
        if key in NEUTRAL_KEYS:
            continue
        if not VARIANTS[variant].wrapped and (key.startswith(LLM4SBR_ONLY_PREFIXES) or key in only_llm4sbr):
            continue
        value = _value(value)
        keep[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
    if VARIANTS[variant].wrapped:
        fusion = str(keep.get("fusion", defaults.get("fusion", "paper")))
        keep["fusion"] = fusion
        if fusion == "residual":
            strength = _value(keep.get("intent_strength", defaults.get("intent_strength", 1.0)))
            keep["intent_strength"] = ("off" if strength_off(strength) else
                                       float(strength) if isinstance(strength, (int, float)) else strength)
        else:
            keep.pop("intent_strength", None)
    return {"dataset": dataset, "variant": variant, "overrides": keep,
            "config_files": [[str(p), _file_digest(str(p))] for p in config_files]}


def settings_digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Cell:
    """One training run; ``setting`` (sorted ``(key, value)`` pairs) is what it trains with.

    ``stands_for`` (not part of the run's identity): ``(variant, setting)`` of the wrapped run this
    stock run stands for: a residual variant with ``intent_strength: off`` is its stock base, weight
    for weight (tests/test_intents_off.py), so its run is the stock base's, read, never trained twice."""

    base: str
    variant: str
    seed: int
    digest: str
    setting: Tuple[Tuple[str, object], ...] = ()
    stands_for: Optional[Tuple[str, Tuple[Tuple[str, object], ...]]] = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return f"{self.base}__{self.variant}__seed{self.seed}__{self.digest}"

    @property
    def model(self) -> str:
        return VARIANTS[self.variant].model(self.base)


def setting_of(cell: Cell) -> Tuple[Tuple[str, object], ...]:
    """What ``cell`` trains with, as its plan slot sees it (a stock run standing for a wrapped one: the
    wrapped setting, ``intent_strength: off`` included)."""
    return cell.stands_for[1] if cell.stands_for else cell.setting


class Slot(NamedTuple):
    """One final cell of the plan: what the report gets for (base, variant, seed)."""

    base: str
    variant: str
    seed: int


def fmt_setting(setting: Dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"


def _nothing_finished(cell: Cell) -> Optional[dict]:
    return None


class Plan:
    """A plan of final cells (seeds outermost, so every (base, variant) has a number early), and the
    training runs that produce them under the protocol (module doc). ``load(cell)``: the finished
    run's JSON or None (the plan reads no file itself)."""

    def __init__(self, dataset: str, bases: Sequence[str], variants: Sequence[str], seeds: Sequence[int],
                 overrides: Optional[Dict[str, object]] = None, config_files: Optional[Sequence[str]] = None,
                 protocol: str = "fair", grid: Optional[Dict[str, Sequence]] = None, tune: str = "grid",
                 load: Optional[Callable[[Cell], Optional[dict]]] = None):
        self.dataset = dataset
        self.bases, self.variants, self.seeds = list(bases), list(variants), list(seeds)
        self.overrides = dict(overrides or {})
        self.config_files = list(config_files or [])
        self.grid = protocol_grid(protocol, self.overrides, grid)  # raises on an unknown protocol
        self.protocol = PROTOCOLS[protocol]
        only_llm4sbr = llm4sbr_only_keys()
        #: axes every variant searches (training settings) and axes only wrapped variants read
        self.base_axes = {k: v for k, v in self.grid.items() if k not in only_llm4sbr}
        self.wrapped_axes = {k: v for k, v in self.grid.items() if k in only_llm4sbr}
        self.settings_grid = grid_settings(self.grid)
        self.searched = len(self.settings_grid) > 1
        if tune not in TUNE_MODES:
            raise BenchmarkError(f"--tune={tune}: unknown. Fix: --tune=grid (default: every variant its own "
                                 f"grid), --tune=reuse (variants reuse the setting chosen for {TUNE_SOURCE}) or "
                                 "--tune=base (wrapped variants take the stock base's setting and search only "
                                 "the wrapped-only axes, e.g. --grid_intent_strength=0,1)")
        self.tune = tune
        self.source = TUNE_SOURCES[tune]
        #: a cell's finished run (its JSON) or None
        self.load = load or _nothing_finished
        self._cells: Dict[tuple, Cell] = {}

    def run_overrides(self, variant: str, setting: Dict[str, object]) -> Dict[str, object]:
        """Config keys of one run: protocol defaults < the user's overrides < the variant's < the setting."""
        out = dict(self.protocol.defaults)
        out.update(variant_config(variant, self.overrides))
        out.update(setting)
        return out

    def cell(self, base: str, variant: str, seed: int, setting: Dict[str, object]) -> Cell:
        """The run of (base, variant, seed) with ``setting``; for a wrapped variant whose intents are
        off (``intent_strength: off``, by the setting or a default) the stock base's run with the same
        training setting, marked ``stands_for`` that variant and setting."""
        setting = {k: shipped_value(base, k, self.dataset) if v == SHIPPED else v for k, v in setting.items()}
        key = (base, variant, seed, tuple(sorted(setting.items())))
        if key not in self._cells:
            settings = relevant_settings(self.dataset, variant, self.run_overrides(variant, setting),
                                         self.config_files, base)
            if VARIANTS[variant].wrapped and settings["overrides"].get("intent_strength") == "off":
                stock = self.cell(base, STOCK, seed, {k: v for k, v in setting.items() if k not in self.wrapped_axes})
                self._cells[key] = replace(stock, stands_for=(variant, key[3]))
            else:
                self._cells[key] = Cell(base, variant, seed, settings_digest(settings), key[3])
        return self._cells[key]

    def cell_settings(self, cell: Cell) -> dict:
        return relevant_settings(self.dataset, cell.variant, self.run_overrides(cell.variant, dict(cell.setting)),
                                 self.config_files, cell.base)

    def slots(self) -> List[Slot]:
        """Seeds outermost; within a seed, each base with all its variants, in the given order for the
        1st, 3rd, ... seed and reversed for the 2nd, 4th, ... (so the stock base is not always the first
        cell after a change of model, which would give it every warm-up cost)."""
        out = []
        for i, seed in enumerate(self.seeds):
            order = self.variants if i % 2 == 0 else self.variants[::-1]
            out += [Slot(b, v, seed) for b in self.bases for v in order]
        return out

    def reuses(self, variant: str) -> bool:
        """Whether ``variant`` takes the tune source's chosen setting instead of a grid of its own.
        ``--tune=base`` holds for residual-fusion variants only: they keep the base's own path, so the
        base's setting is their fair start; the paper's fusion replaces it and keeps a grid of its own."""
        if self.source == "base" and self.fusion_of(variant) != "residual":
            return False
        return (self.source is not None and self.searched and VARIANTS[variant].wrapped
                and variant != self.source)

    @staticmethod
    def fusion_of(variant: str) -> str:
        """The fusion a wrapped variant trains with (its override, else LLM4SBR.yaml's default)."""
        return str(VARIANTS[variant].overrides.get("fusion") or llm4sbr_defaults().get("fusion", "paper"))

    def variant_grid(self, variant: str) -> List[Dict[str, object]]:
        """The settings a variant with a grid of its own searches: wrapped-only axes (e.g.
        ``intent_strength``) only for wrapped variants (the stock base would train one model twice),
        and the residual fusion's own axes only for residual variants (the paper's fusion ignores them)."""
        if not VARIANTS[variant].wrapped:
            return grid_settings(self.base_axes)
        if self.fusion_of(variant) != "residual":
            return grid_settings({k: v for k, v in self.grid.items() if k not in RESIDUAL_ONLY_KEYS})
        return self._with_stock_point(variant, grid_settings(self.grid))

    @staticmethod
    def _with_stock_point(variant: str, points: List[Dict[str, object]]) -> List[Dict[str, object]]:
        """``points`` as ``variant`` searches them: ``intent_strength: off`` (the stock base's run) is a
        candidate of the model a user runs (role ``intents``: ``llm4sbr``) only; a control (``arch``,
        ``shuffled``, ``text``) keeps its intents on, since what it measures is what they do."""
        if VARIANTS[variant].role == "intents":
            return points
        return [p for p in points if not strength_off(p.get("intent_strength"))] or points

    def wrapped_points(self, variant: str) -> List[Dict[str, object]]:
        """The wrapped-only axes' points ``variant`` searches around the source's setting."""
        return self._with_stock_point(variant, grid_settings(self.wrapped_axes))

    def _around_source(self) -> bool:
        """``--tune=base`` with wrapped-only axes: a reusing variant searches them around the source's setting."""
        return self.source == "base" and len(grid_settings(self.wrapped_axes)) > 1

    def grid_cells(self, base: str, variant: str) -> List[Cell]:
        """The tuning runs of (base, variant): every grid setting on the first seed ([] for no search
        and for a variant that reuses the source's setting; with ``--tune=base`` and wrapped-only axes,
        those axes around the base's chosen setting, once that is known)."""
        if not self.searched:
            return []
        if self.reuses(variant):
            source = self.chosen(base, self.source) if self._around_source() else None
            if source is None:
                return []
            return [self.cell(base, variant, self.seeds[0], {**dict(source.setting), **point})
                    for point in self.wrapped_points(variant)]
        return [self.cell(base, variant, self.seeds[0], s) for s in self.variant_grid(variant)]

    def chosen(self, base: str, variant: str) -> Optional[Cell]:
        """The first seed's grid run with the best ``best_valid_score`` (validation only; the first in
        grid order on a tie), or None while a grid run is unfinished. Without a search: the one setting."""
        if not self.searched:
            return self.cell(base, variant, self.seeds[0], self.variant_grid(variant)[0])
        if self.reuses(variant) and not self._around_source():
            source = self.chosen(base, self.source)
            if source is None:
                return None
            setting = dict(source.setting)
            if self.source == "base":  # the base's training setting, the wrapped-only axes' one value
                setting.update(self.wrapped_points(variant)[0])
            return self.cell(base, variant, self.seeds[0], setting)
        runs = [(c, self.load(c)) for c in self.grid_cells(base, variant)]
        if not runs or any(data is None for _, data in runs):
            return None
        bigger = runs[0][1].get("valid_score_bigger", True)
        best = None
        for c, data in runs:
            score = data.get("best_valid_score")
            if score is None:
                continue
            if best is None or (score > best[1] if bigger else score < best[1]):
                best = (c, score)
        return best[0] if best else runs[0][0]

    def final_cell(self, slot: Slot) -> Optional[Cell]:
        """The run that is ``slot``'s final cell, or None while its (base, variant) is being tuned."""
        choice = self.chosen(slot.base, slot.variant)
        if choice is None:
            return None
        if slot.seed == choice.seed:
            return choice
        return self.cell(slot.base, slot.variant, slot.seed, dict(setting_of(choice)))

    def plan(self) -> List[Cell]:
        """The final cells in slot order; one still being tuned stands as a placeholder cell (digest
        ``tuning``) that never loads. ``runs()`` is what gets trained."""
        return [self.final_cell(s) or Cell(s.base, s.variant, s.seed, "tuning") for s in self.slots()]

    def runs(self) -> List[Cell]:
        """The training runs known now, in order: every (base, variant)'s grid runs (first seed, in slot
        order), then the final cells of the other seeds whose (base, variant) is tuned."""
        out: List[Cell] = []
        for slot in self.slots():
            if slot.seed == self.seeds[0]:
                grid = self.grid_cells(slot.base, slot.variant)
                if self.reuses(slot.variant):  # the setting it reuses is chosen from these
                    grid = self.grid_cells(slot.base, self.source) + grid
                out += [c for c in grid if c not in out]
        for slot in self.slots():
            cell = self.final_cell(slot)
            if cell is not None and cell not in out:
                out.append(cell)
        return out

    def grid_summary(self, base: str, variant: str) -> List[dict]:
        out = []
        for c in self.grid_cells(base, variant):
            data = self.load(c) or {}
            out.append({"setting": dict(setting_of(c)), "best_valid_score": data.get("best_valid_score"),
                        "best_epoch": data.get("best_epoch"), "epochs_run": data.get("epochs_run"),
                        "epochs_max": data.get("epochs_max")})
        return out

    def final_record(self, cell: Cell, data: dict) -> dict:
        """A run's JSON as the final cell of its slot: with this benchmark's protocol, the setting, the
        grid it was chosen from, the tuning seed and whether the epoch cap ended it."""
        best, cap = data.get("best_epoch"), data.get("epochs_max")
        variant = cell.stands_for[0] if cell.stands_for else cell.variant
        reused = self.reuses(variant)
        if cell.stands_for:  # the stock run, as the wrapped variant with its intents off
            data = {**data, "variant": variant, "model": VARIANTS[variant].model(cell.base), "stock_run": cell.id}
        return {**data, "protocol": self.protocol.name + (f" (setting reused from {self.source})" if reused else ""),
                "setting": dict(setting_of(cell)), "setting_from": self.source if reused else None,
                "grid": self.grid_summary(cell.base, variant),
                "tuned_on_seed": self.seeds[0] if self.searched else None,
                "at_cap": bool(best is not None and cap and best + 1 >= cap)}

    def finished(self) -> List[dict]:
        """The finished final cells (one per base, variant, seed), in plan order."""
        out = []
        for cell in self.plan():
            data = self.load(cell)
            if data is not None:
                out.append(self.final_record(cell, data))
        return out

    def total_runs(self) -> int:
        """Training runs the whole plan needs: the grid on the first seed + one per other seed."""
        if not self.searched:
            return len(self.bases) * len(self.variants) * len(self.seeds)
        n_seeds = len(self.seeds)
        per_base = 0
        for variant in self.variants:
            around = len(self.wrapped_points(variant)) if self._around_source() else 1
            own = around if self.reuses(variant) else len(self.variant_grid(variant))
            per_base += own - self._stock_points(variant) + n_seeds - 1
        if any(self.reuses(v) for v in self.variants) and self.source not in self.variants:
            per_base += len(self.variant_grid(self.source))  # the source's grid, planned for its choice only
        return len(self.bases) * per_base

    def _stock_points(self, variant: str) -> int:
        """How many of ``variant``'s tuning points are its stock base's run (``intent_strength: off``)."""
        if not VARIANTS[variant].wrapped or self.fusion_of(variant) != "residual":
            return 0
        points = self.wrapped_points(variant) if self.reuses(variant) else self.variant_grid(variant)
        return sum(strength_off(p.get("intent_strength")) for p in points) if self.searched else 0

    def _left(self) -> List[Tuple[str, str]]:
        """(base, variant) of every run still to train, including the seeds of untuned pairs."""
        left = [(c.base, c.variant) for c in self.runs() if self.load(c) is None]
        left += [(s.base, s.variant) for s in self.slots() if self.final_cell(s) is None
                 and (s.seed != self.seeds[0] or self.reuses(s.variant))]
        return left

    def unfinished(self) -> List[Slot]:
        """The slots without a finished final cell (read from disk now)."""
        return [slot for slot, cell in zip(self.slots(), self.plan()) if self.load(cell) is None]
