"""The benchmark's cells: one (base, variant, seed) each, trained and tested in this process, saved as
its own JSON, skipped when already there.

A cell calls ``run_recbole_llm4sbr(model, dataset, config_files, config_dict, read_cmd_line=False)``:
RecBole's Trainer keeps the best epoch on the validation split and RecBole's evaluator tests it. Around
that call the runner measures, for the same process and machine as the other cells:

- ``epoch_time_s``: mean seconds of a training epoch (the quick start's per-epoch timer);
- ``time_to_best_s``: wall seconds from the start of ``fit`` to the end of the epoch whose checkpoint
  was kept (training + validation of every epoch up to the best one); ``best_epoch`` is 0-based;
- ``inference_s``: a full-sort evaluation of the test split with the best weights, timed on its own
  (best of ``inference_repeats`` runs; no checkpoint loading inside the timing);
- ``peak_mem_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the cell; on CPU the growth of
  the process's peak RSS over the cell (VmHWM, reset before each cell through /proc/self/clear_refs,
  after ``gc`` + ``malloc_trim``); ``peak_mem_kind`` says which;
- ``params``: trainable parameters of the model (the intent table is a buffer, not counted).

Cells are identified by base, variant, seed and an 8-hex digest of the settings that can change that
cell's result (dataset, config files' content, ``--key=value`` overrides with the variant's own laid
over them; for the stock base the
LLM4SBR and stage-1 keys are left out, so base cells are shared by runs that differ only in those).
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from recbole_llm4sbr.benchmark.variants import VARIANTS, variant_config

CELL_FORMAT = 1
#: overrides that never change a result (left out of the cell digest)
NEUTRAL_KEYS = {"show_progress", "state", "checkpoint_dir", "benchmark", "log_wandb", "debug"}
#: keys that only LLM4SBR models read (left out of the stock base's digest)
LLM4SBR_ONLY_PREFIXES = ("intent_", "vllm_", "openai_")
LLM4SBR_ONLY_KEYS = {"llm4sbr_views", "view_behaviour", "au_weight", "load_intent"}
#: what every cell gets unless the user overrides it
CELL_DEFAULTS = {"show_progress": False, "metric_decimal_place": 6}

log = logging.getLogger("recbole_llm4sbr.benchmark")


class BenchmarkError(ValueError):
    """Bad benchmark input; the message names the fix."""


def git_commit(root: Optional[Path] = None) -> str:
    """``git rev-parse --short HEAD`` of the checkout the code runs from; 'unknown' outside one."""
    from recbole_llm4sbr.paths import PROJECT_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(root or PROJECT_ROOT),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()[:12]
    except OSError:
        return "missing"


def relevant_settings(dataset: str, variant: str, overrides: Dict[str, object],
                      config_files: Sequence[str] = ()) -> dict:
    """What can change a cell's result besides base and seed (the cell digest is made from it)."""
    keep = {}
    for key, value in sorted(overrides.items()):
        if key in NEUTRAL_KEYS:
            continue
        if not VARIANTS[variant].wrapped and (key.startswith(LLM4SBR_ONLY_PREFIXES) or key in LLM4SBR_ONLY_KEYS):
            continue
        keep[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
    return {"dataset": dataset, "variant": variant, "overrides": keep,
            "config_files": [[str(p), _file_digest(str(p))] for p in config_files]}


def settings_digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Cell:
    base: str
    variant: str
    seed: int
    digest: str

    @property
    def id(self) -> str:
        return f"{self.base}__{self.variant}__seed{self.seed}__{self.digest}"

    @property
    def model(self) -> str:
        return VARIANTS[self.variant].model(self.base)


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


def intent_info(path, meta: dict) -> Optional[dict]:
    """What the report says about an intent table: backend, model, encoder, r, stage-1 summary."""
    if not path:
        return None
    info = meta.get("backend_info") or {}
    return {
        "path": str(path),
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

    captured: dict = {}
    original_build = qs.build

    def capturing_build(config):
        built = original_build(config)
        data, (train, valid, test), net, trainer = built
        captured.update(dataset=data, test=test, model=net, trainer=trainer, saves=[])
        fit, save = trainer.fit, trainer._save_checkpoint

        def timed_fit(*args, **kwargs):
            captured["fit_start"] = time.perf_counter()
            try:
                return fit(*args, **kwargs)
            finally:
                captured["fit_time"] = time.perf_counter() - captured["fit_start"]

        def recording_save(epoch, *args, **kwargs):
            out = save(epoch, *args, **kwargs)
            captured["saves"].append((epoch, time.perf_counter() - captured.get("fit_start", time.perf_counter())))
            return out

        trainer.fit, trainer._save_checkpoint = timed_fit, recording_save
        return built

    memory = PeakMemory()
    load_start = _loadavg()
    start = time.perf_counter()
    qs.build = capturing_build
    try:
        result = qs.run_recbole_llm4sbr(model, dataset, config_file_list=config_files, config_dict=config_dict,
                                        saved=True, read_cmd_line=False)
    finally:
        qs.build = original_build
    cell_time = time.perf_counter() - start
    config = result["config"]
    mem = memory.result(str(config["device"]))

    trainer, test = captured["trainer"], captured["test"]
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
    saves = [s for s in captured["saves"] if s[0] >= 0]
    best_epoch, time_to_best = (saves[-1] if saves else (None, None))
    params = sum(p.numel() for p in captured["model"].parameters() if p.requires_grad)
    path = getattr(captured["dataset"], "intent_table_path", None)
    meta = (known_meta or {}).get(str(path)) or read_intent_meta(path)
    out = {
        "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "best_valid_result": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "best_valid_score": float(result["best_valid_score"]),
        "valid_metric": str(config["valid_metric"]),
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_times),
        "epochs_max": int(config["epochs"]),
        "epoch_times": epoch_times,
        "epoch_time_s": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "time_to_best_s": time_to_best,
        "train_time_to_best_s": sum(epoch_times[: best_epoch + 1]) if best_epoch is not None else None,
        "fit_time_s": captured.get("fit_time"),
        "cell_time_s": cell_time,
        "inference_s": min(runs),
        "inference_runs_s": runs,
        "inference_reproduced": reproduced,
        "test_samples": len(test._dataset) if hasattr(test, "_dataset") else None,
        "params": int(params),
        "device": str(config["device"]),
        "torch_threads": torch.get_num_threads(),
        "model_file": result.get("model_file"),
        "intent": intent_info(path, meta),
        "load_avg": [load_start, _loadavg()],  # 1-min load average at start and end: other processes skew timings
        **mem,
    }
    captured.clear()
    del result, trainer, test
    release_memory()
    return out


# ---- the plan ------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class Benchmark:
    """A plan of cells (seeds outermost, so every (base, variant) has a number early), run in order."""

    def __init__(self, dataset: str, bases: Sequence[str], variants: Sequence[str], seeds: Sequence[int],
                 overrides: Optional[Dict[str, object]] = None, results_dir="results",
                 config_files: Optional[Sequence[str]] = None, command: str = "", commit: Optional[str] = None,
                 inference_repeats: int = 3, trainer: Callable[..., dict] = train_cell):
        self.dataset = dataset
        self.bases, self.variants, self.seeds = list(bases), list(variants), list(seeds)
        self.overrides = dict(overrides or {})
        self.config_files = list(config_files or [])
        self.folder = Path(results_dir) / dataset
        self.cells_dir = self.folder / "cells"
        self.command = command
        self.commit = commit or git_commit()
        self.inference_repeats = inference_repeats
        self.trainer = trainer
        self.settings = {v: relevant_settings(dataset, v, variant_config(v, self.overrides), self.config_files)
                         for v in self.variants}
        self.digests = {v: settings_digest(s) for v, s in self.settings.items()}
        self.stage1: Dict[str, dict] = {}  # intent table path -> meta (from the preparation step)

    def plan(self) -> List[Cell]:
        """Seeds outermost; within a seed, each base with all its variants, in the given order for the
        1st, 3rd, ... seed and reversed for the 2nd, 4th, ... (so the stock base is not always the first
        cell after a change of model, which would give it every warm-up cost)."""
        cells = []
        for i, seed in enumerate(self.seeds):
            order = self.variants if i % 2 == 0 else self.variants[::-1]
            cells += [Cell(b, v, seed, self.digests[v]) for b in self.bases for v in order]
        return cells

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.json"

    def load(self, cell: Cell) -> Optional[dict]:
        path = self.cell_path(cell)
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError:
            log.warning(f"{path} is not valid JSON: that cell runs again")
            return None
        return data if data.get("format") == CELL_FORMAT else None

    def finished(self) -> List[dict]:
        return [c for c in (self.load(cell) for cell in self.plan()) if c is not None]

    def config_dict(self, cell: Cell) -> dict:
        out = dict(CELL_DEFAULTS)
        out.update(variant_config(cell.variant, self.overrides))
        out["seed"] = cell.seed
        out["checkpoint_dir"] = str(self.cells_dir / "checkpoints" / cell.id)
        return out

    # -- stage 1, before any timed cell -----------------------------------------------------------------

    def prepare_stage1(self, cells: Sequence[Cell]) -> None:
        """Build (or find) every intent table the pending cells need, so that no cell's time or memory
        includes stage 1; keeps each table's meta for the report."""
        from recbole_llm4sbr.config import Config
        from recbole_llm4sbr.data import intents as intents_module
        from recbole_llm4sbr.quick_start.quick_start import prepare_dataset

        seen = set()
        for cell in cells:
            if not VARIANTS[cell.variant].wrapped or cell.variant in seen:
                continue
            seen.add(cell.variant)
            config = Config(model=cell.model, dataset=self.dataset, config_file_list=self.config_files or None,
                            config_dict=self.config_dict(cell), read_cmd_line=False)
            prepare_dataset(config, log)
            t0 = time.perf_counter()
            table = intents_module.load_dataset_intents(config, log)
            meta = dict(table.meta or {}) or read_intent_meta(table.path)
            self.stage1[str(table.path)] = meta
            backend = meta.get("backend", "unknown")
            model = (meta.get("backend_info") or {}).get("model")
            log.info(f"stage 1 for variant {cell.variant}: {table.path} (backend {backend}"
                     f"{', ' + str(model) if model else ''}; ready in {time.perf_counter() - t0:.1f} s)")
            del table
            release_memory()

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, report: Optional[Callable[["Benchmark"], None]] = None) -> List[dict]:
        plan = self.plan()
        todo = [c for c in plan if self.load(c) is None]
        done = len(plan) - len(todo)
        log.info(f"benchmark {self.dataset}: {len(self.bases)} bases x {len(self.variants)} variants x "
                 f"{len(self.seeds)} seeds = {len(plan)} cells; {done} already finished, {len(todo)} to run "
                 f"-> {self.cells_dir}")
        if todo:
            self.prepare_stage1(todo)
        durations: Dict[tuple, List[float]] = {}
        for i, cell in enumerate(todo):
            t0 = time.perf_counter()
            claim = self.claim(cell)
            if claim is None:  # finished or being trained by another benchmark process meanwhile
                continue
            log.info(f"[{done + i + 1}/{len(plan)}] {cell.base} / {cell.variant} / seed {cell.seed}: "
                     f"training {cell.model}")
            try:
                measured = self.trainer(cell.model, self.dataset, self.config_files or None, self.config_dict(cell),
                                        inference_repeats=self.inference_repeats, known_meta=self.stage1)
            finally:
                claim.unlink(missing_ok=True)
            data = {
                "format": CELL_FORMAT,
                "id": cell.id,
                "dataset": self.dataset,
                "base": cell.base,
                "variant": cell.variant,
                "seed": cell.seed,
                "model": cell.model,
                "settings": self.settings[cell.variant],
                "config_dict": self.config_dict(cell),
                "command": self.command,
                "commit": self.commit,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **measured,
            }
            write_json_atomic(self.cell_path(cell), data)
            elapsed = time.perf_counter() - t0
            durations.setdefault((cell.base, cell.variant), []).append(elapsed)
            left = todo[i + 1:]
            eta = self._eta(left, durations)
            res = data["test_result"]
            log.info(f"[{done + i + 1}/{len(plan)}] done {cell.base} / {cell.variant} / seed {cell.seed}: "
                     f"Recall@20 {res.get('recall@20', float('nan')):.4f}  MRR@20 {res.get('mrr@20', float('nan')):.4f}  "
                     f"(best epoch {data.get('best_epoch')}, {_fmt_duration(elapsed)}); "
                     f"ETA {_fmt_duration(eta)} for {len(left)} cells left")
            if report is not None:
                report(self)
        if report is not None and not todo:
            report(self)
        return self.finished()

    def claim(self, cell: Cell) -> Optional[Path]:
        """Claim ``cell`` for this process: its lock file (``<id>.lock``, holding the pid), or None when
        the cell is finished or another live benchmark process holds it. Several benchmark runs over
        the same results folder (e.g. ``--variants=base`` and ``--variants=text`` side by side on two
        cores) thus share the cells they have in common instead of training them twice; a lock left
        by a killed process (its pid is gone) is taken over."""
        if self.load(cell) is not None:
            log.info(f"{cell.id}: finished by another benchmark run meanwhile; skipped")
            return None
        lock = self.cell_path(cell).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid):
                    log.info(f"{cell.id}: being trained by process {pid}; skipped here")
                    return None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            if self.load(cell) is not None:  # finished between the first check and the claim
                lock.unlink(missing_ok=True)
                return None
            return lock
        return None

    @staticmethod
    def _eta(left: Sequence[Cell], durations: Dict[tuple, List[float]]) -> float:
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
        for cell in left:
            known = durations.get((cell.base, cell.variant)) or by_base.get(cell.base) or by_variant.get(cell.variant)
            total += sum(known) / len(known) if known else overall
        return total


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return "python run_recbole_llm4sbr.py " + " ".join(shlex.quote(a) for a in args)
