"""The benchmark's cells: one (base, variant, seed) each, trained and tested in this process, saved as
its own JSON, skipped when already there.

A training run calls ``run_recbole_llm4sbr(model, dataset, config_files, config_dict, read_cmd_line=False)``
and reads what it built from its result (``built``): RecBole's Trainer keeps the best epoch on the
validation split and RecBole's evaluator tests it; the plugin trainer records its own fit time, checkpoint times and per-sample test
outcomes. Around that call the runner measures, for the same process and machine as the other cells:

- ``epoch_time_s``: mean seconds of a training epoch (the quick start's per-epoch timer);
- ``time_to_best_s``: wall seconds from the start of ``fit`` to the end of the epoch whose checkpoint
  was kept (training + validation of every epoch up to the best one); ``best_epoch`` is 0-based;
- ``inference_s``: a full-sort evaluation of the test split with the best weights, timed on its own
  (best of ``inference_repeats`` runs; no checkpoint loading inside the timing);
- ``peak_mem_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the cell; on CPU the growth of
  the process's peak RSS over the cell (VmHWM, reset before each cell through /proc/self/clear_refs,
  after ``gc`` + ``malloc_trim``); ``peak_mem_kind`` says which;
- ``params``: trainable parameters of the model (the intent table is a buffer, not counted).

What is trained is the plan's (``plan``: protocols, grids, the cell digest, the choice of a setting);
where the cells are kept, and how two processes share them, the store's (``store``: cell JSON,
locks, stale cells). This module is the loop (``Benchmark.run``) and the measurement of one cell
(``train_cell``).
"""
from __future__ import annotations

import copy
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from recbole_llm4sbr.benchmark.plan import (  # noqa: F401 - the plan's names callers import from here
    CELL_DEFAULTS, FAIR_GRID, PROTOCOLS, TUNE_MODES, TUNE_SOURCE, TUNE_SOURCES, BenchmarkError, Cell, Plan, Protocol,
    Slot, fmt_setting, grid_settings, llm4sbr_defaults, llm4sbr_only_keys, protocol_grid, relevant_settings,
    settings_digest)
from recbole_llm4sbr.benchmark.store import (  # noqa: F401 - as for the plan's
    CELL_FORMAT, CellLock, CellStore, cell_json, write_json_atomic)
from recbole_llm4sbr.benchmark.variants import VARIANTS
from recbole_llm4sbr.model.bases import BASES

log = logging.getLogger("recbole_llm4sbr.benchmark")


def git_commit(root: Optional[Path] = None) -> str:
    """``git rev-parse --short HEAD`` of the checkout the code runs from; 'unknown' outside one."""
    from recbole_llm4sbr.paths import PROJECT_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(root or PROJECT_ROOT),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


# ---- memory ----------------------------------------------------------------------------------------


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA max allocated when CUDA is in use, else the growth of peak RSS."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        release_memory()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.rss_ok = True
        except OSError:
            self.rss_ok = False
        self.rss_start = _status_kb("VmRSS")

    def result(self, device: str = "cpu") -> Dict[str, object]:
        import torch

        out: Dict[str, object] = {}
        hwm = _status_kb("VmHWM")
        if self.rss_ok and hwm is not None and self.rss_start is not None:
            out["peak_rss_mb"] = max(0, hwm - self.rss_start) / 1024.0
        if self.cuda and str(device).startswith("cuda"):
            out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - self.cuda_start) / 2 ** 20
            out["peak_mem_mb"], out["peak_mem_kind"] = out["peak_cuda_mb"], "cuda max allocated"
        elif "peak_rss_mb" in out:
            out["peak_mem_mb"], out["peak_mem_kind"] = out["peak_rss_mb"], "peak RSS growth"
        else:
            out["peak_mem_mb"], out["peak_mem_kind"] = None, "unavailable"
        return out


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---- one cell ----------------------------------------------------------------------------------------


def read_intent_meta(path) -> dict:
    if not path:
        return {}
    try:
        with open(Path(path) / "meta.json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def portable_path(path) -> str:
    """``path`` relative to the working directory when it lies under it (a committed results folder
    names no machine's absolute paths); otherwise as given."""
    text = str(path)
    if os.path.isabs(text):
        try:
            rel = os.path.relpath(text)
        except ValueError:  # another drive
            return text
        if not rel.startswith(os.pardir):
            return rel
    return text


def intent_info(path, meta: dict) -> Optional[dict]:
    """What the report says about an intent table: backend, model, encoder, r, stage-1 summary."""
    if not path:
        return None
    info = dict(meta.get("backend_info") or {})
    if info.get("model_path"):
        info["model_path"] = portable_path(info["model_path"])
    return {
        "path": portable_path(path),
        "tag": Path(path).name,
        "backend": meta.get("backend", "unknown"),
        "model": info.get("model"),
        "backend_info": info,
        "encoder": meta.get("encoder"),
        "topr": meta.get("topr"),
        "intent_samples": meta.get("intent_samples"),
        "views": meta.get("views"),
        "created": meta.get("created"),
        "summary": meta.get("summary") or {},
    }


def train_cell(model: str, dataset: str, config_files: Optional[List[str]], config_dict: dict,
               inference_repeats: int = 3, known_meta: Optional[Dict[str, dict]] = None) -> dict:
    """Train + test one model with ``run_recbole_llm4sbr`` and measure its cost (see module doc)."""
    import torch

    import recbole_llm4sbr.quick_start.quick_start as qs

    memory = PeakMemory()
    load_start = _loadavg()
    start = time.perf_counter()
    result = qs.run_recbole_llm4sbr(model, dataset, config_file_list=config_files, config_dict=config_dict,
                                    saved=True, read_cmd_line=False)
    run = result.pop("built")
    cell_time = time.perf_counter() - start
    config = result["config"]
    mem = memory.result(str(config["device"]))

    trainer, test = run.trainer, run.test_data
    runs = []
    again = None
    for _ in range(max(1, int(inference_repeats))):
        t0 = time.perf_counter()
        again = trainer.evaluate(test, load_best_model=False, show_progress=False)
        if torch.cuda.is_available() and str(config["device"]).startswith("cuda"):
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - t0)
    reproduced = all(abs(float(again[k]) - float(v)) <= 1e-6 for k, v in result["test_result"].items())
    if not reproduced:
        log.warning(f"{model}: re-evaluating the test split with the best weights gave {dict(again)}, "
                    f"not {dict(result['test_result'])}")

    epoch_times = list(result["epoch_times"])
    saves = [s for s in trainer.saves if s[0] >= 0]
    best_epoch, time_to_best = (saves[-1] if saves else (None, None))
    params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    path = getattr(run.dataset, "intent_table_path", None)
    meta = (known_meta or {}).get(str(path)) or read_intent_meta(path)
    out = {
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "best_valid_result": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "best_valid_score": float(result["best_valid_score"]),
        "valid_metric": str(config["valid_metric"]),
        "valid_score_bigger": bool(result["valid_score_bigger"]),
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_times),
        "epochs_max": int(config["epochs"]),
        "epoch_times": epoch_times,
        "epoch_time_s": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "time_to_best_s": time_to_best,
        "train_time_to_best_s": sum(epoch_times[: best_epoch + 1]) if best_epoch is not None else None,
        "fit_time_s": trainer.fit_time_s,
        "cell_time_s": cell_time,
        "inference_s": min(runs),
        "inference_runs_s": runs,
        "inference_reproduced": reproduced,
        "test_samples": len(test._dataset) if hasattr(test, "_dataset") else None,
        "params": int(params),
        "device": str(config["device"]),
        "torch_threads": torch.get_num_threads(),
        "model_file": portable_path(result["model_file"]) if result.get("model_file") else None,
        "intent": intent_info(path, meta),
        "load_avg": [load_start, _loadavg()],  # 1-min load average at start and end: other processes skew timings
        **mem,
        "per_sample": result.get("per_sample"),
    }
    del result, run, trainer, test
    release_memory()
    return out


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class Benchmark(Plan):
    """The plan (``plan.Plan``) over the cell files of ``<results_dir>/<dataset>/cells`` (``store``), and
    the loop that trains its runs in order."""

    def __init__(self, dataset: str, bases: Sequence[str], variants: Sequence[str], seeds: Sequence[int],
                 overrides: Optional[Dict[str, object]] = None, results_dir="results",
                 config_files: Optional[Sequence[str]] = None, command: str = "", commit: Optional[str] = None,
                 inference_repeats: int = 3, trainer: Callable[..., dict] = train_cell,
                 protocol: str = "fair", grid: Optional[Dict[str, Sequence]] = None, tune: str = "grid"):
        self.folder = Path(results_dir) / dataset
        self.cells_dir = self.folder / "cells"
        self.command = command
        self.commit = commit or git_commit()
        self.inference_repeats = inference_repeats
        self.trainer = trainer
        #: the cell files; its ``table_tags`` (variant -> the intent table tag this run's settings use) is
        #: set by ``run``; None: no check, as for ``--report_only``
        self.store = CellStore(self.cells_dir)
        super().__init__(dataset, bases, variants, seeds, overrides, config_files, protocol, grid, tune,
                         load=self.store.load)
        self.stage1: Dict[str, dict] = {}  # intent table path -> meta (from the preparation step)
        self._announced: set = set()
        #: cell -> the live process that held its lock when this run came to it (``claim``)
        self.held: Dict[Cell, str] = {}

    def cell_path(self, cell: Cell) -> Path:
        return self.store.path(cell)

    def with_bases_on_disk(self) -> "Benchmark":
        """This plan widened by the other bases with finished cells of it (same variants, seeds and
        overrides) in ``cells_dir``, so that the directory's report of a run of one base does not drop
        another base's results; ``self`` when there are none."""
        found = sorted(self.store.bases_on_disk() - set(self.bases))
        found = [b for b in found if b in BASES]  # a RecBole sequential model, not a stray file
        if not found:
            return self
        wide = copy.copy(self)
        wide.bases = self.bases + found
        wide.store = CellStore(self.cells_dir)  # a view for the report: it moves no cell (only a run checks tables)
        wide.load = wide.store.load
        wide._cells, wide._announced = {}, set()
        kept = {c["base"] for c in wide.finished()}
        if not kept - set(self.bases):
            return self
        wide.bases = self.bases + [b for b in found if b in kept]
        wide._cells = {}
        return wide

    def config_dict(self, cell: Cell) -> dict:
        out = dict(CELL_DEFAULTS)
        out.update(self.run_overrides(cell.variant, dict(cell.setting)))
        out["seed"] = cell.seed
        out["checkpoint_dir"] = str(self.cells_dir / "checkpoints" / cell.id)
        return out

    # -- stage 1, before any timed cell -----------------------------------------------------------------

    def prepare_stage1(self, cells: Sequence[Cell]) -> Dict[str, str]:
        """Build (or find) every intent table the cells need, so that no cell's time or memory
        includes stage 1; keeps each table's meta for the report. Returns variant -> table tag."""
        from recbole_llm4sbr.config import Config
        from recbole_llm4sbr.data import intents as intents_module
        from recbole_llm4sbr.quick_start.quick_start import prepare_dataset

        tags: Dict[str, str] = {}
        for cell in cells:
            if not VARIANTS[cell.variant].wrapped or cell.variant in tags:
                continue
            config = Config(model=cell.model, dataset=self.dataset, config_file_list=self.config_files or None,
                            config_dict=self.config_dict(cell), read_cmd_line=False)
            prepare_dataset(config, log)
            t0 = time.perf_counter()
            table = intents_module.load_dataset_intents(config, log)
            meta = dict(table.meta or {}) or read_intent_meta(table.path)
            self.stage1[str(table.path)] = meta
            tags[cell.variant] = Path(table.path).name
            backend = meta.get("backend", "unknown")
            model = (meta.get("backend_info") or {}).get("model")
            log.info(f"stage 1 for variant {cell.variant}: {table.path} (backend {backend}"
                     f"{', ' + str(model) if model else ''}; ready in {time.perf_counter() - t0:.1f} s)")
            del table
            release_memory()
        return tags

    # -- the loop ---------------------------------------------------------------------------------------

    def _announce_choices(self) -> None:
        if not self.searched:
            return
        for base in self.bases:
            for variant in self.variants:
                choice = self.chosen(base, variant)
                if choice is None or (base, variant) in self._announced:
                    continue
                self._announced.add((base, variant))
                data = self.load(choice)
                if self.reuses(variant) and not self._around_source():
                    log.info(f"{base} / {variant}: reuses the setting chosen for {self.source}: "
                             f"{fmt_setting(dict(choice.setting))} (--tune={self.tune}; no grid of its own)")
                    continue
                grid = "; ".join(f"{fmt_setting(g['setting'])}: {g['best_valid_score']}"
                                 for g in self.grid_summary(base, variant))
                log.info(f"{base} / {variant}: chose {fmt_setting(dict(choice.setting))} on seed {choice.seed} "
                         f"by validation {data.get('valid_metric')} ({grid})")
                if data.get("best_epoch") is not None and data["best_epoch"] + 1 >= (data.get("epochs_max") or 0):
                    log.warning(f"{base} / {variant}: the chosen run's best epoch is the epoch cap "
                                f"({data.get('epochs_max')}); it may not have converged. Fix: a higher --epochs")

    def run(self, report: Optional[Callable[["Benchmark"], None]] = None) -> List[dict]:
        n_final = len(self.slots())
        total = self.total_runs()
        axes = self.base_axes if self.source == "base" else self.grid
        around = (f"; wrapped variants train with the base's choice and search "
                  f"{', '.join(f'{k} {list(v)}' for k, v in self.wrapped_axes.items()) or 'nothing'} around it"
                  if self.source == "base" else "")
        grid = (f"protocol {self.protocol.name}: a grid of {len(grid_settings(axes))} settings "
                f"({', '.join(f'{k} {list(v)}' for k, v in axes.items())}) per "
                f"{'stock base' if self.source == 'base' else '(base, variant)'} on seed {self.seeds[0]}{around}, "
                if self.searched else
                f"protocol {self.protocol.name} ({fmt_setting(self.settings_grid[0])}), ")
        pending = [c for c in self.runs() if self.load(c) is None]
        if pending:
            # with something to train, every table first (built when missing): a finished cell counts
            # only if it was trained on the table this run's settings name on this machine
            self.store.table_tags = self.prepare_stage1(self.runs())
            self.store.forget()  # read again, now checked against those tables
            pending = [c for c in self.runs() if self.load(c) is None]
        log.info(f"benchmark {self.dataset}: {len(self.bases)} bases x {len(self.variants)} variants x "
                 f"{len(self.seeds)} seeds = {n_final} cells; {grid}{total} training runs, "
                 f"{len(self._left())} to run -> {self.cells_dir}")
        self._announce_choices()
        durations: Dict[tuple, List[float]] = {}
        attempted: set = set()
        self.held = {}
        trained = 0
        while True:
            todo = [c for c in self.runs() if c.id not in attempted and self.load(c) is None]
            if not todo:
                break
            cell = todo[0]
            attempted.add(cell.id)
            t0 = time.perf_counter()
            claim = self.claim(cell)
            if claim is None:  # finished or being trained by another benchmark process meanwhile
                continue
            role = fmt_setting(dict(cell.setting))
            if self.reuses(cell.variant):
                role = f"setting reused from {self.source}: {role}"
            elif self.searched and cell.seed == self.seeds[0]:
                role = "grid run " + role
            position = total - len(self._left()) + 1
            log.info(f"[{position}/{total}] {cell.base} / {cell.variant} / seed {cell.seed}: "
                     f"training {cell.model} ({role})")
            try:
                measured = self.trainer(cell.model, self.dataset, self.config_files or None, self.config_dict(cell),
                                        inference_repeats=self.inference_repeats, known_meta=self.stage1)
            except BaseException:
                claim.release()
                raise
            data = {
                "format": CELL_FORMAT,
                "id": cell.id,
                "dataset": self.dataset,
                "base": cell.base,
                "variant": cell.variant,
                "seed": cell.seed,
                "model": cell.model,
                "settings": self.cell_settings(cell),
                "config_dict": self.config_dict(cell),
                "command": self.command,
                "commit": self.commit,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "protocol": self.protocol.name,
                "setting": dict(cell.setting),
                "setting_from": self.source if self.reuses(cell.variant) else None,
                **measured,
            }
            try:
                self.store.write(cell, data)
            finally:
                claim.release()  # after the cell's file is in place: the next claimant sees it finished
            trained += 1
            elapsed = time.perf_counter() - t0
            durations.setdefault((cell.base, cell.variant), []).append(elapsed)
            left = self._left()
            res = data["test_result"]
            log.info(f"[{total - len(left)}/{total}] done {cell.base} / {cell.variant} / seed {cell.seed}: "
                     f"Recall@20 {res.get('recall@20', float('nan')):.4f}  MRR@20 {res.get('mrr@20', float('nan')):.4f}  "
                     f"(best epoch {data.get('best_epoch')}, {_fmt_duration(elapsed)}); "
                     f"ETA {_fmt_duration(self._eta(left, durations))} for {len(left)} runs left")
            self._announce_choices()
            if report is not None:
                report(self)
        waiting = sorted({(s.base, s.variant) for s in self.slots() if self.final_cell(s) is None})
        for base, variant in waiting:
            log.info(f"{base} / {variant}: a grid run is held by another benchmark process; its other seeds "
                     "train once it has finished (rerun this command then)")
        for held, who in self.held.items():
            if self.load(held) is None:
                log.warning(f"{held.id}: not in this report: {who} is training it (rerun this command once that "
                            "process has finished)")
        if report is not None and not trained:
            report(self)
        return self.finished()

    def claim(self, cell: Cell) -> Optional[CellLock]:
        """Claim ``cell`` for this process: its held lock (``<id>.lock``, ``CellLock``), or None when the
        cell is finished or another live benchmark process holds it (recorded in ``held``). Several
        benchmark runs over the same results folder (e.g. ``--variants=base`` and ``--variants=text``
        side by side on two cores) thus share the cells they have in common instead of training them
        twice; the lock of a process that has ended, however, is free at once."""
        if self.load(cell) is not None:
            log.info(f"{cell.id}: finished by another benchmark run meanwhile; skipped")
            return None
        lock, who = self.store.lock(cell)
        if lock is None:
            self.held[cell] = who
            log.info(f"{cell.id}: being trained by {who}; skipped here")
            return None
        if lock.previous:
            log.info(f"{cell.id}: the lock left by {lock.previous} is free (that process has ended); taken over")
        if self.load(cell) is not None:  # finished between the first check and the claim
            lock.release()
            return None
        return lock


    @staticmethod
    def _eta(left: Sequence[Tuple[str, str]], durations: Dict[tuple, List[float]]) -> float:
        every = [d for ds in durations.values() for d in ds]
        if not every:
            return 0.0
        overall = sum(every) / len(every)
        by_variant: Dict[str, List[float]] = {}
        by_base: Dict[str, List[float]] = {}
        for (b, v), ds in durations.items():
            by_variant.setdefault(v, []).extend(ds)
            by_base.setdefault(b, []).extend(ds)
        total = 0.0
        for base, variant in left:
            known = durations.get((base, variant)) or by_base.get(base) or by_variant.get(variant)
            total += sum(known) / len(known) if known else overall
        return total


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return "python run_recbole_llm4sbr.py " + " ".join(shlex.quote(a) for a in args)
