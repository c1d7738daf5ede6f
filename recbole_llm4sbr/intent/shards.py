"""Stage 1 across many workers: ``plan`` -> ``generate`` -> ``merge`` -> ``table``.

``plan`` (one process, no model loaded) writes the prompts the normal build would send and the answer
cache lacks as Parquet shards of ``(key, prompt)``, in ``generation.send_order`` (the two views of a
prefix side by side, the prefixes of a session in order, so a prefix cache finds them warm). The key
is the answer cache's (``AnswerCache.key``), from the backend's settings-only description
(``Backend.describe_settings``); every worker checks its engine describes itself the same.
``generate`` (``intent/executors.py``) answers the plan in blocks, each written as its own Parquet
file of ``(key, prompt, answer)`` (a lost worker loses only its block). ``merge`` (one process)
folds the blocks into ``answers.sqlite`` with ``INSERT OR IGNORE``; the normal build (``table``)
then finds every answer cached.

Layout: ``<data_path>/<ds>/intent/stage1-<backend>-<8 hex>/`` (the hex names the backend
description and template: another model gets another folder), holding ``plan/plan.json`` +
``plan/shard-NNNNN.parquet`` and ``blocks/block-<hash>.parquet``. The folder may be on a network file
system (workers on other hosts read the plan and, with ``--shard``, write blocks there);
``answers.sqlite`` must not (SQLite's WAL needs one host): only ``merge`` and the build open it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .backends import REGISTRY, backend_class, resolve_backend_name
from .cache import CACHE_FILE, AnswerCache, AnswerKeys
from .errors import IntentError
from .generation import send_order
from .prompts import template_version
from .settings import dataset_dir, normalize_settings

_log = logging.getLogger("recbole_llm4sbr.intent")

PLAN_DIR = "plan"
BLOCKS_DIR = "blocks"
MANIFEST = "plan.json"
PLAN_FORMAT = 1
#: prompts per plan shard (a Ray read task reads one shard; workers take blocks of their own size)
ROWS_PER_SHARD = 4096
#: file systems where ``answers.sqlite`` must not live (WAL's shared-memory index needs one host)
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "lustre", "gpfs", "ceph", "fuse.s3fs",
              "fuse.gcsfuse", "9p")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise IntentError("stage 1 across many workers writes Parquet: install pyarrow "
                          "(`pip install pyarrow`)") from None
    return pa, pq


# ---- what the plan is keyed on ---------------------------------------------------------------------


def planned_backend_info(settings: Mapping[str, Any], backend_name: str) -> Dict[str, Any]:
    """``describe()`` of the backend these settings start, without loading it (JSON-normalized, as a
    manifest stores it). Refuses a backend that cannot tell before it is started."""
    info = backend_class(backend_name).describe_settings(settings)
    if info is None:
        raise IntentError(f"intent_backend {backend_name!r} cannot describe itself without loading its model, so "
                          "its answer-cache keys cannot be planned: build with `python -m recbole_llm4sbr.intent` "
                          "(one process) instead, or give the backend a describe_settings()")
    return json.loads(json.dumps(info, sort_keys=True, ensure_ascii=False, default=str))


def work_dir(settings: Mapping[str, Any], backend_name: str, info: Mapping[str, Any], template_v: str,
             override: Optional[str] = None) -> Path:
    """Where the plan and blocks of these settings live (``override``: ``--work_dir``)."""
    if override:
        return Path(str(override)).expanduser()
    digest = hashlib.sha1(AnswerKeys(info, template_v).head.encode("utf-8")).hexdigest()[:8]
    return dataset_dir(settings) / "intent" / f"stage1-{backend_name}-{digest}"


def cache_path(settings: Mapping[str, Any]) -> Path:
    return dataset_dir(settings) / "intent" / CACHE_FILE


def network_fs(path: Path) -> Optional[str]:
    """The type of the network file system ``path`` is on (``/proc/mounts``), or None."""
    try:
        lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    target = str(Path(path).resolve())
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind if kind in NETWORK_FS else None


def warn_network_cache(path: Path, logger: logging.Logger) -> None:
    kind = network_fs(path.parent if not path.exists() else path)
    if kind:
        logger.warning(f"{path} is on a network file system ({kind}): SQLite's WAL mode needs every process "
                       "that opens it on one host, and may corrupt it otherwise; keep data_path's intent/ "
                       "folder on a local disk (the stage-1 work folder may be shared: --work_dir)")


# ---- plan -------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A written plan: its folder (the work dir), manifest and how many prompts it holds."""

    folder: Path
    manifest: Dict[str, Any]

    @property
    def planned(self) -> int:
        return int(self.manifest["planned"])


def _atomic_write_parquet(table, path: Path) -> None:
    _, pq = _pyarrow()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plan(settings: Any, logger: Optional[logging.Logger] = None, backend_name: Optional[str] = None,
               rows_per_shard: int = ROWS_PER_SHARD, work: Optional[str] = None) -> Plan:
    """Merge any finished blocks, then write the prompts still missing from the answer cache as the
    new plan (replacing the old one whole: a plan folder that exists is complete)."""
    from .pipeline import plan_llm_prompts

    log = logger or _log
    pa, _ = _pyarrow()
    settings = normalize_settings(settings)
    backend_name = backend_name or resolve_backend_name(settings, log)
    info = planned_backend_info(settings, backend_name)
    prompts, template = plan_llm_prompts(settings, backend_name, log, settings.show_progress)
    tv = template_version(template)
    folder = work_dir(settings, backend_name, info, tv, work)
    folder.mkdir(parents=True, exist_ok=True)
    if list_blocks(folder):
        merge_blocks(settings, folder, log, backend_name=backend_name)
    unique = list(dict.fromkeys(prompts))
    cache = AnswerCache(cache_path(settings), info, tv)
    try:
        cached = cache.lookup(unique)
        missing = send_order([p for p in unique if p not in cached])
        keys = [cache.key(p) for p in missing]
    finally:
        cache.close()

    rows_per_shard = max(1, int(rows_per_shard))
    tmp = Path(tempfile.mkdtemp(prefix=f".{PLAN_DIR}.", dir=str(folder)))
    try:
        shards = []
        for n, i in enumerate(range(0, len(missing), rows_per_shard)):
            name = f"shard-{n:05d}.parquet"
            table = pa.table({"key": pa.array(keys[i:i + rows_per_shard], pa.string()),
                              "prompt": pa.array(missing[i:i + rows_per_shard], pa.string())})
            _atomic_write_parquet(table, tmp / name)
            shards.append(name)
        manifest = {
            "format": PLAN_FORMAT,
            "dataset": str(settings["dataset"]),
            "backend": backend_name,
            "backend_class": REGISTRY[backend_name],
            "backend_info": info,
            "template_version": tv,
            "prompts": len(unique),
            "cached": len(cached),
            "planned": len(missing),
            "shards": shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        old = folder / PLAN_DIR
        if old.exists():
            trash = Path(tempfile.mkdtemp(prefix=".old-plan.", dir=str(folder)))
            os.replace(old, trash / PLAN_DIR)
            _rmtree(trash)
        os.replace(tmp, old)
    except BaseException:
        _rmtree(tmp)
        raise
    log.info(f"stage-1 plan for {settings['dataset']} ({backend_name}): {len(unique)} unique prompts, "
             f"{len(cached)} cached, {len(missing)} to generate in {len(shards)} shard(s) -> {folder / PLAN_DIR}")
    return Plan(folder, manifest)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def locate_work(settings: Any, logger: Optional[logging.Logger] = None, backend_name: Optional[str] = None,
                work: Optional[str] = None) -> Path:
    """The work folder these settings plan into (``--work_dir`` wins), without reading the data."""
    settings = normalize_settings(settings)
    if work:
        return Path(str(work)).expanduser()
    backend_name = backend_name or resolve_backend_name(settings, logger)
    info = planned_backend_info(settings, backend_name)
    return work_dir(settings, backend_name, info, template_version(settings.template))


def read_manifest(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / PLAN_DIR / MANIFEST
    if not path.is_file():
        raise IntentError(f"no stage-1 plan in {folder}: run `python -m recbole_llm4sbr.intent plan` with the "
                          "same settings first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != PLAN_FORMAT:
        raise IntentError(f"{path} has plan format {manifest.get('format')!r}, this version reads {PLAN_FORMAT}: "
                          "run plan again")
    return manifest


def shard_paths(folder: Path, manifest: Mapping[str, Any]) -> List[Path]:
    return [Path(folder) / PLAN_DIR / name for name in manifest["shards"]]


def read_plan(folder: Path) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """``(manifest, keys, prompts)`` of the plan in ``folder``, in plan order."""
    _, pq = _pyarrow()
    manifest = read_manifest(folder)
    keys: List[str] = []
    prompts: List[str] = []
    for path in shard_paths(folder, manifest):
        t = pq.read_table(path, columns=["key", "prompt"])
        keys.extend(t.column("key").to_pylist())
        prompts.extend(t.column("prompt").to_pylist())
    return manifest, keys, prompts


def parse_shard(text: Any) -> Tuple[int, int]:
    """``--shard=i/N`` -> ``(i, N)``, 0 <= i < N."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise IntentError(f"--shard={text!r}: write --shard=i/N, e.g. --shard=0/4 for the first of 4 "
                          "processes") from None
    if n < 1 or not 0 <= i < n:
        raise IntentError(f"--shard={text!r}: needs 0 <= i < N (e.g. --shard=0/4 ... --shard=3/4)")
    return i, n


def shard_slice(count: int, shard: Tuple[int, int]) -> slice:
    """Rows of shard ``i`` of ``N`` over a plan of ``count`` rows: one contiguous run (prompts that
    share a beginning stay together), sizes differing by at most one."""
    i, n = shard
    return slice(i * count // n, (i + 1) * count // n)


# ---- blocks ------------------------------------------------------------------------------------------


def list_blocks(folder: Path) -> List[Path]:
    d = Path(folder) / BLOCKS_DIR
    return sorted(d.glob("block-*.parquet")) if d.is_dir() else []


def block_keys(folder: Path) -> Set[str]:
    """Keys already answered in blocks not yet merged (a rerun of generate skips them)."""
    _, pq = _pyarrow()
    keys: Set[str] = set()
    for path in list_blocks(folder):
        keys.update(pq.read_table(path, columns=["key"]).column("key").to_pylist())
    return keys


def write_block(folder: Path, keys: Sequence[str], prompts: Sequence[str], answers: Sequence[str]) -> Path:
    """One finished block as its own Parquet file, named by its keys (a block answered twice, e.g.
    retried after a lost worker, replaces itself), written to a temp sibling and renamed."""
    pa, _ = _pyarrow()
    if not (len(keys) == len(prompts) == len(answers)):
        raise ValueError("a block needs one prompt and one answer per key")
    d = Path(folder) / BLOCKS_DIR
    d.mkdir(parents=True, exist_ok=True)
    name = "block-" + hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()[:20] + ".parquet"
    table = pa.table({"key": pa.array(list(keys), pa.string()), "prompt": pa.array(list(prompts), pa.string()),
                      "answer": pa.array(list(answers), pa.string())})
    path = d / name
    _atomic_write_parquet(table, path)
    return path


def check_keys(head: AnswerKeys, keys: Iterable[str], prompts: Iterable[str], where: str) -> None:
    for k, p in zip(keys, prompts):
        if head.key(p) != k:
            raise IntentError(f"{where}: a key does not match its prompt under this plan's backend description "
                              "and template: the plan was made with other settings or package versions; run "
                              "plan again with the workers' settings")


# ---- merge -------------------------------------------------------------------------------------------


@dataclass
class MergeStats:
    blocks: int = 0
    rows: int = 0
    inserted: int = 0  # rows new to the cache (rows - inserted were already there)


def merge_blocks(settings: Any, folder: Optional[Path] = None, logger: Optional[logging.Logger] = None,
                 backend_name: Optional[str] = None, keep: bool = False) -> MergeStats:
    """Fold every block in ``folder`` into ``answers.sqlite`` (one process; ``INSERT OR IGNORE``, one
    transaction per block, each block's keys re-checked against its prompts), then delete the
    merged blocks (``keep``: leave them)."""
    log = logger or _log
    _, pq = _pyarrow()
    settings = normalize_settings(settings)
    folder = Path(folder) if folder is not None else locate_work(settings, log, backend_name)
    manifest = read_manifest(folder)
    path = cache_path(settings)
    warn_network_cache(path, log)
    stats = MergeStats()
    head = AnswerKeys(manifest["backend_info"], manifest["template_version"])
    cache = AnswerCache(path, manifest["backend_info"], manifest["template_version"])
    try:
        for block in list_blocks(folder):
            t = pq.read_table(block)
            keys, prompts, answers = (t.column(c).to_pylist() for c in ("key", "prompt", "answer"))
            check_keys(head, keys, prompts, f"block {block.name}")
            stats.inserted += cache.merge(list(zip(keys, answers)))
            stats.rows += len(keys)
            stats.blocks += 1
            if not keep:
                block.unlink()
    finally:
        cache.close()
    log.info(f"merged {stats.blocks} block(s), {stats.rows} answers ({stats.inserted} new) into {path}")
    return stats


__all__ = ["Plan", "MergeStats", "planned_backend_info", "work_dir", "locate_work", "write_plan",
           "read_manifest", "read_plan", "parse_shard", "shard_slice", "list_blocks", "block_keys",
           "write_block", "merge_blocks", "network_fs"]
