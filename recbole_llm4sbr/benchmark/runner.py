"""The benchmark's cells: one (base, variant, seed) each, trained and tested in this process, saved as
its own JSON, skipped when already there.

A training run calls ``run_recbole_llm4sbr(model, dataset, config_files, config_dict, read_cmd_line=False)``
inside ``capture_run()``: RecBole's Trainer keeps the best epoch on the validation split and RecBole's
evaluator tests it; the plugin trainer records its own fit time, checkpoint times and per-sample test
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

Protocols (``protocol``): ``fair`` (default) lets every model, stock or wrapped, converge under one
rule chosen on the validation split only: per (base, variant) a grid over ``learning_rate`` x
``lr_step_size`` (``FAIR_GRID``; ``--grid_<key>=a,b`` replaces or adds an axis, a user's
``--<key>=`` fixes it) is trained on the FIRST seed with an epoch cap of 50 and early stopping after 5
epochs without gain; the setting with the best ``best_valid_score`` (never a test number) is chosen,
the first seed's final cell IS that grid run, and every other seed trains once with it. ``paper``: the
paper's schedule (lr 1e-3, x0.1 every 3 epochs, 30 epochs, early stop 5), no search. Each training run
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

Cell JSON, ``format`` ``CELL_FORMAT`` = 2 (other formats are ignored: those cells run again), written by
``cell_json`` (a list of plain values on one line; ``json.load`` reads it as it reads files written one
number per line, so both forms are read alike) with paths under the working directory made relative
(``portable_path``: a results folder names no machine's absolute paths). Every
run's file has: ``format, id, dataset, base, variant, seed, model, settings`` (what the digest is made
of), ``config_dict``, ``command, commit, finished``, ``protocol`` ("fair"|"paper"), ``setting``
(``{"learning_rate": ..., "lr_step_size": ...}``: what it trained with), ``setting_from`` (None, or
the variant whose chosen setting it reused), ``test_result,
best_valid_result, best_valid_score, valid_metric, valid_score_bigger, best_epoch`` (0-based),
``epochs_run, epochs_max, epoch_times, epoch_time_s, time_to_best_s, train_time_to_best_s,
fit_time_s, cell_time_s, inference_s, inference_runs_s, inference_reproduced, test_samples, params,
device, torch_threads, model_file, intent`` (the table: backend, model, encoder, summary; None for the
stock base), ``load_avg``, the memory keys (``peak_mem_mb, peak_mem_kind, peak_rss_mb``[, ``peak_cuda_mb``])
and ``per_sample`` (``{"order_sha1", "n", "recall@K", "mrr@K", "ndcg@K"}`` for every K of ``topk``:
the final test evaluation per sample, in evaluation order, for a paired bootstrap). A FINAL cell (one
per base, variant, seed; ``Benchmark.finished()`` returns exactly these, in plan order) adds
``grid`` (``[{"setting", "best_valid_score", "best_epoch", "epochs_run", "epochs_max"}, ...]``: the
tuning runs of its (base, variant), ``[]`` for paper), ``tuned_on_seed`` (the first seed, or None for
paper) and ``at_cap`` (``best_epoch + 1 >= epochs_max``: the cap, not convergence, ended it).
"""
from __future__ import annotations

import copy
import ctypes
import gc
import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from recbole_llm4sbr.errors import LLM4SBRError
from recbole_llm4sbr.benchmark.variants import VARIANTS, variant_config
from recbole_llm4sbr.model.bases import BASES

CELL_FORMAT = 2
#: overrides that never change a result (left out of the cell digest)
NEUTRAL_KEYS = {"show_progress", "state", "checkpoint_dir", "benchmark", "log_wandb", "debug"}
#: stage-1 keys: only LLM4SBR models read them (left out of the stock base's digest): ``intent_`` and the
#: prefixes each stage-1 backend registered (``vllm_``, ``openai_``: intent/registry.py)
from recbole_llm4sbr.intent.registry import only_key_prefixes  # noqa: E402
LLM4SBR_ONLY_PREFIXES = only_key_prefixes()
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

log = logging.getLogger("recbole_llm4sbr.benchmark")


class BenchmarkError(LLM4SBRError):
    """Bad benchmark input; the message names the fix."""


def llm4sbr_defaults() -> dict:
    """``properties/model/LLM4SBR.yaml`` (read each time: the file is the one source of truth)."""
    import yaml

    from recbole_llm4sbr.paths import properties_dir

    with open(properties_dir() / "model" / "LLM4SBR.yaml", encoding="utf-8") as f:
        return dict(yaml.safe_load(f) or {})


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
    defaults = llm4sbr_defaults()
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
            keep["intent_strength"] = float(strength) if isinstance(strength, (int, float)) else strength
        else:
            keep.pop("intent_strength", None)
    return {"dataset": dataset, "variant": variant, "overrides": keep,
            "config_files": [[str(p), _file_digest(str(p))] for p in config_files]}


def settings_digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Cell:
    """One training run; ``setting`` (sorted ``(key, value)`` pairs) is what it trains with."""

    base: str
    variant: str
    seed: int
    digest: str
    setting: Tuple[Tuple[str, object], ...] = ()

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
    with qs.capture_run() as run:
        result = qs.run_recbole_llm4sbr(model, dataset, config_file_list=config_files, config_dict=config_dict,
                                        saved=True, read_cmd_line=False)
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
    run.clear()
    del result, trainer, test
    release_memory()
    return out


# ---- the plan ------------------------------------------------------------------------------------------


def cell_json(obj, indent: int = 1, level: int = 0) -> str:
    """``obj`` as JSON, one key per line as ``json.dump(indent=1)`` writes it, except that a list of
    plain values (``per_sample``'s 643-long outcome lists, ``epoch_times``) stays on one line, with
    0.0 written as 0: a cell file is ~150 lines instead of ~6,000 and half the bytes. ``json.load``
    reads it as it read the old form, to equal values (readers take both forms)."""
    if isinstance(obj, dict) and obj:
        inner, pad = " " * indent * (level + 1), " " * indent * level
        items = [f"{inner}{json.dumps(str(k))}: {cell_json(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        inner, pad = " " * indent * (level + 1), " " * indent * level
        return "[\n" + ",\n".join(inner + cell_json(v, indent, level + 1) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, (list, tuple)):  # 0.0 as 0: most per-sample outcomes are misses (the same number)
        obj = [int(v) if isinstance(v, float) and v == 0 else v for v in obj]
        return json.dumps(obj, default=str, separators=(",", ":"))
    return json.dumps(obj, default=str)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cell_json(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CellLock:
    """A cell claimed by this process: ``<id>.lock`` under ``fcntl.flock`` for the whole training run.

    The kernel lets go of an flock when its process ends, however it ends (killed, crashed, the
    machine restarted), so the lock of a dead run is free at once, and a reused PID never holds one.
    The file's text (host, pid, when the claim was taken) only names the holder in messages: a lock
    file that no process holds is free whatever it says (e.g. one written by an older version, which
    held no flock). The holder deletes the file before it lets go, so whoever locks a file that is no
    longer at the path tries again with the one that is."""

    def __init__(self, path: Path, fd: int, previous: str = ""):
        self.path, self.fd = path, fd
        #: the holder the file named before this claim (a process that ended without cleaning up)
        self.previous = previous

    @staticmethod
    def holder(fd: int) -> str:
        """Who the lock file says holds it: ``process P on host H since T``; '' when it is empty."""
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""
        try:
            info = json.loads(text)
        except ValueError:
            return f"process {text}" if text.isdigit() else ""
        if not isinstance(info, dict):
            return f"process {info}"
        return f"process {info.get('pid')} on host {info.get('host')} since {info.get('since')}"

    @classmethod
    def acquire(cls, path: Path) -> Tuple[Optional["CellLock"], str]:
        """``(lock, "")`` when this process now holds ``path``; ``(None, who)`` when another live process
        (or another open of the file in this one) holds it."""
        import errno
        import fcntl
        import socket

        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                who = cls.holder(fd)
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise BenchmarkError(f"{path}: this file system does not support file locks ({e.strerror}), "
                                         "which keep two benchmark runs from training one cell. Fix: "
                                         "--results_dir=<a folder on a local disk>") from None
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                return None, who or "another benchmark process"
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(fd), current):
                os.close(fd)  # its holder finished and deleted it meanwhile: lock the file there now
                continue
            previous = cls.holder(fd)
            since = time.strftime("%Y-%m-%dT%H:%M:%S")
            text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
            return cls(path, fd, previous), ""
        return None, "another benchmark process (its lock file kept being replaced)"

    def release(self) -> None:
        """Delete the lock file, then let go of the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class Slot(NamedTuple):
    """One final cell of the plan: what the report gets for (base, variant, seed)."""

    base: str
    variant: str
    seed: int


class Benchmark:
    """A plan of final cells (seeds outermost, so every (base, variant) has a number early), and the
    training runs that produce them under the protocol (module doc), run in order."""

    def __init__(self, dataset: str, bases: Sequence[str], variants: Sequence[str], seeds: Sequence[int],
                 overrides: Optional[Dict[str, object]] = None, results_dir="results",
                 config_files: Optional[Sequence[str]] = None, command: str = "", commit: Optional[str] = None,
                 inference_repeats: int = 3, trainer: Callable[..., dict] = train_cell,
                 protocol: str = "fair", grid: Optional[Dict[str, Sequence]] = None, tune: str = "grid"):
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
        self.stage1: Dict[str, dict] = {}  # intent table path -> meta (from the preparation step)
        self._cells: Dict[tuple, Cell] = {}
        self._loaded: Dict[Path, dict] = {}
        self._announced: set = set()
        #: variant -> the intent table tag this run's settings use (set by ``run``; None: no check, as
        #: for ``--report_only``, which shows every finished cell with the table it recorded)
        self._table_tags: Optional[Dict[str, str]] = None
        #: cell -> the live process that held its lock when this run came to it (``claim``)
        self.held: Dict[Cell, str] = {}

    # -- cells ------------------------------------------------------------------------------------------

    def run_overrides(self, variant: str, setting: Dict[str, object]) -> Dict[str, object]:
        """Config keys of one run: protocol defaults < the user's overrides < the variant's < the setting."""
        out = dict(self.protocol.defaults)
        out.update(variant_config(variant, self.overrides))
        out.update(setting)
        return out

    def cell(self, base: str, variant: str, seed: int, setting: Dict[str, object]) -> Cell:
        key = (base, variant, seed, tuple(sorted(setting.items())))
        if key not in self._cells:
            settings = relevant_settings(self.dataset, variant, self.run_overrides(variant, setting),
                                         self.config_files)
            self._cells[key] = Cell(base, variant, seed, settings_digest(settings), key[3])
        return self._cells[key]

    def cell_settings(self, cell: Cell) -> dict:
        return relevant_settings(self.dataset, cell.variant, self.run_overrides(cell.variant, dict(cell.setting)),
                                 self.config_files)

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
        """Whether ``variant`` takes the tune source's chosen setting instead of a grid of its own."""
        return (self.source is not None and self.searched and VARIANTS[variant].wrapped
                and variant != self.source)

    def variant_grid(self, variant: str) -> List[Dict[str, object]]:
        """The settings a variant with a grid of its own searches: wrapped-only axes (e.g.
        ``intent_strength``) only for wrapped variants (the stock base would train one model twice)."""
        return grid_settings(self.grid if VARIANTS[variant].wrapped else self.base_axes)

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
                    for point in grid_settings(self.wrapped_axes)]
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
                setting.update(grid_settings(self.wrapped_axes)[0])
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
        return self.cell(slot.base, slot.variant, slot.seed, dict(choice.setting))

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

    def cell_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.json"

    def load(self, cell: Cell) -> Optional[dict]:
        path = self.cell_path(cell)
        if path in self._loaded:
            return self._loaded[path]
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError:
            log.warning(f"{path} is not valid JSON: that cell runs again")
            return None
        if data.get("format") != CELL_FORMAT:
            return None
        if self._trained_on_another_table(path, data):
            return None
        self._loaded[path] = data  # a finished cell's file never changes
        return data

    def with_bases_on_disk(self) -> "Benchmark":
        """This plan widened by the other bases with finished cells of it (same variants, seeds and
        overrides) in ``cells_dir``, so that the directory's report of a run of one base does not drop
        another base's results; ``self`` when there are none."""
        found = sorted({p.name.split("__", 1)[0] for p in self.cells_dir.glob("*__*__seed*__*.json")}
                       - set(self.bases))
        found = [b for b in found if b in BASES]  # a RecBole sequential model, not a stray file
        if not found:
            return self
        wide = copy.copy(self)
        wide.bases = self.bases + found
        wide._cells, wide._loaded, wide._announced = {}, {}, set()
        wide._table_tags = None  # a view for the report: it moves no cell (only a run checks tables)
        kept = {c["base"] for c in wide.finished()}
        if not kept - set(self.bases):
            return self
        wide.bases = self.bases + [b for b in found if b in kept]
        wide._cells = {}
        return wide

    def _trained_on_another_table(self, path: Path, data: dict) -> bool:
        """A finished cell whose recorded intent table is not the one this run's settings name (e.g.
        ``intent_dtype: auto`` is bf16 on this machine, float32 where the cell was trained: other
        answers) is moved to ``cells/stale/`` (kept, never overwritten) and trained again."""
        want = (self._table_tags or {}).get(str(data.get("variant")))
        got = (data.get("intent") or {}).get("tag")
        if not want or not got or got == want:
            return False
        stale = self.cells_dir / "stale"
        stale.mkdir(parents=True, exist_ok=True)
        target = stale / path.name
        for n in itertools.count(1):
            if not target.exists():
                break
            target = stale / f"{path.stem}.{n}{path.suffix}"
        os.replace(path, target)
        log.warning(f"{path.name} was trained on intent table {got}; this run's settings name {want}: moved "
                    f"to {target} and trained again")
        return True

    def grid_summary(self, base: str, variant: str) -> List[dict]:
        out = []
        for c in self.grid_cells(base, variant):
            data = self.load(c) or {}
            out.append({"setting": dict(c.setting), "best_valid_score": data.get("best_valid_score"),
                        "best_epoch": data.get("best_epoch"), "epochs_run": data.get("epochs_run"),
                        "epochs_max": data.get("epochs_max")})
        return out

    def final_record(self, cell: Cell, data: dict) -> dict:
        """A run's JSON as the final cell of its slot: with this benchmark's protocol, the setting, the
        grid it was chosen from, the tuning seed and whether the epoch cap ended it."""
        best, cap = data.get("best_epoch"), data.get("epochs_max")
        reused = self.reuses(cell.variant)
        return {**data, "protocol": self.protocol.name + (f" (setting reused from {self.source})" if reused else ""),
                "setting": dict(cell.setting), "setting_from": self.source if reused else None,
                "grid": self.grid_summary(cell.base, cell.variant),
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

    def total_runs(self) -> int:
        """Training runs the whole plan needs: the grid on the first seed + one per other seed."""
        if not self.searched:
            return len(self.bases) * len(self.variants) * len(self.seeds)
        n_seeds = len(self.seeds)
        around = len(grid_settings(self.wrapped_axes)) if self._around_source() else 1
        per_base = 0
        for variant in self.variants:
            own = around if self.reuses(variant) else len(self.variant_grid(variant))
            per_base += own + n_seeds - 1
        if any(self.reuses(v) for v in self.variants) and self.source not in self.variants:
            per_base += len(self.variant_grid(self.source))  # the source's grid, planned for its choice only
        return len(self.bases) * per_base

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
                             f"{_fmt_setting(dict(choice.setting))} (--tune={self.tune}; no grid of its own)")
                    continue
                grid = "; ".join(f"{_fmt_setting(g['setting'])}: {g['best_valid_score']}"
                                 for g in self.grid_summary(base, variant))
                log.info(f"{base} / {variant}: chose {_fmt_setting(dict(choice.setting))} on seed {choice.seed} "
                         f"by validation {data.get('valid_metric')} ({grid})")
                if data.get("best_epoch") is not None and data["best_epoch"] + 1 >= (data.get("epochs_max") or 0):
                    log.warning(f"{base} / {variant}: the chosen run's best epoch is the epoch cap "
                                f"({data.get('epochs_max')}); it may not have converged. Fix: a higher --epochs")

    def _left(self) -> List[Tuple[str, str]]:
        """(base, variant) of every run still to train, including the seeds of untuned pairs."""
        left = [(c.base, c.variant) for c in self.runs() if self.load(c) is None]
        left += [(s.base, s.variant) for s in self.slots() if self.final_cell(s) is None
                 and (s.seed != self.seeds[0] or self.reuses(s.variant))]
        return left

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
                f"protocol {self.protocol.name} ({_fmt_setting(self.settings_grid[0])}), ")
        pending = [c for c in self.runs() if self.load(c) is None]
        if pending:
            # with something to train, every table first (built when missing): a finished cell counts
            # only if it was trained on the table this run's settings name on this machine
            self._table_tags = self.prepare_stage1(self.runs())
            self._loaded.clear()  # read again, now checked against those tables
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
            role = _fmt_setting(dict(cell.setting))
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
                write_json_atomic(self.cell_path(cell), data)
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
        lock, who = CellLock.acquire(self.cell_path(cell).with_suffix(".lock"))
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

    def unfinished(self) -> List[Slot]:
        """The slots without a finished final cell (read from disk now)."""
        return [slot for slot, cell in zip(self.slots(), self.plan()) if self.load(cell) is None]

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


def _fmt_setting(setting: Dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return "python run_recbole_llm4sbr.py " + " ".join(shlex.quote(a) for a in args)
