"""The benchmark's cell files: where a cell lives (``<results_dir>/<ds>/cells/<id>.json``), reading
and caching finished cells, writing them whole (``write_json_atomic``: a temp name, then
``os.replace``), the per-cell lock two benchmark processes share a folder by (``CellLock``), and the
move of a cell trained on another intent table to ``cells/stale/``.

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

import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

from recbole_llm4sbr.benchmark.plan import BenchmarkError, Cell

CELL_FORMAT = 2

log = logging.getLogger("recbole_llm4sbr.benchmark")


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


class CellStore:
    """The cell files of one ``cells_dir``. ``table_tags`` (variant -> the intent table tag this run's
    settings use; None: no check, as for ``--report_only``, which shows every finished cell with the
    table it recorded) decides which finished cells stand (``load``)."""

    def __init__(self, cells_dir: Path, table_tags: Optional[Dict[str, str]] = None):
        self.cells_dir = Path(cells_dir)
        self.table_tags = table_tags
        self._loaded: Dict[Path, dict] = {}

    def path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.id}.json"

    def load(self, cell: Cell) -> Optional[dict]:
        """The finished run of ``cell`` (its JSON), or None: no file, not JSON, another format, or
        trained on another intent table (then moved to ``cells/stale/``)."""
        path = self.path(cell)
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

    def forget(self) -> None:
        """Read every cell again at its next ``load`` (after ``table_tags`` changed)."""
        self._loaded.clear()

    def write(self, cell: Cell, data: dict) -> None:
        write_json_atomic(self.path(cell), data)

    def lock(self, cell: Cell) -> Tuple[Optional[CellLock], str]:
        """``CellLock.acquire`` of the cell's ``<id>.lock``."""
        return CellLock.acquire(self.path(cell).with_suffix(".lock"))

    def bases_on_disk(self) -> Set[str]:
        """The base of every cell file in the folder (any plan's)."""
        return {p.name.split("__", 1)[0] for p in self.cells_dir.glob("*__*__seed*__*.json")}

    def _trained_on_another_table(self, path: Path, data: dict) -> bool:
        """A finished cell whose recorded intent table is not the one this run's settings name (e.g.
        ``intent_dtype: auto`` is bf16 on this machine, float32 where the cell was trained: other
        answers) is moved to ``cells/stale/`` (kept, never overwritten) and trained again."""
        want = (self.table_tags or {}).get(str(data.get("variant")))
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

