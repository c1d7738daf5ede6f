"""The intent table on disk (docs/DESIGN.md, "Intent table"): stage 1's only output, stage 2's only input.

A table is a folder: ``meta.json``, ``keys.txt`` (row order), ``vectors.npy`` and ``raw.npy``
(float32 ``[n_keys, n_views, d_text]``), ``answers.jsonl`` (what the LLM said and where it was
grounded, for inspection), and the catalogue in the same text space: ``items.txt`` (item tokens, one
per line, catalogue order) and ``items.npy`` (float32 ``[n_items, d_text]``, unit-norm rows: the
embeddings localization grounded the answers in). ``answers.offsets.npy`` (int64 ``[n_keys + 1]``:
the byte offset of each key's ``answers.jsonl`` line in ``keys.txt`` order, -1 for a key without
one, then the file's size) is the table's index into ``answers.jsonl``; a table written before it
existed gets it built in memory on the first ``IntentTable.record`` (optional: no format bump). It is written into a temporary sibling folder and renamed into place, so
a reader sees the old table or the new one, never half of one, and a killed writer leaves the old
table intact.

``meta.json["files"]`` records each other file's (but the optional index's) size and sha256 (plus the sha256 of a few evenly
spread 64 KiB blocks, ``sample``): ``verify_table`` checks them when the table is judged up to date
and when it is loaded, so a file copied from another build, reordered, truncated or deleted is named
with the fix instead of training silently on the wrong rows (a table written before it is checked for
missing files only). A build checks the free space before writing (``DiskFullError``), removes its
temporary folder on any failure, and runs under ``table_lock`` (``fcntl.flock`` on ``.<tag>.lock``
beside the folder: one builder per table, released when its process dies), which also makes the
``.tmp-*``/``.old-*`` folders a killed builder left safe to remove (``remove_debris``).

``vectors.npy``/``raw.npy`` may be stored as float16 (``intent_storage_dtype: float16``: half the disk
and page cache; ``meta["storage_dtype"]`` says so, a float32 table's files and meta are as before).
They are written in row blocks and can be read memory-mapped (``load_intent_table(mmap=True)``):
stage 2 gathers each batch's rows from the mapping, and ranks on a node share the page cache.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import MissingFileError
from .errors import DiskFullError, IntentError, TableDamagedError

#: bump when the table files change shape (docs/DESIGN.md "Intent table"); 2: + items.npy / items.txt
#: (the catalogue's text embeddings) and answers.jsonl's "exemplar"
FORMAT_VERSION = 2

META, KEYS, VECTORS, RAW, ANSWERS = "meta.json", "keys.txt", "vectors.npy", "raw.npy", "answers.jsonl"
ITEMS_TXT, ITEMS_NPY = "items.txt", "items.npy"
ANSWERS_INDEX = "answers.offsets.npy"
STORAGE_DTYPES = ("float32", "float16")
#: rows per block when the intent arrays are written (bounded memory for a mapped or huge input)
WRITE_BLOCK_BYTES = 64 << 20
#: ``meta.json``'s per-file checksums, and the files every table has (``answers.offsets.npy`` is optional)
FILES = "files"
REQUIRED = (KEYS, VECTORS, RAW, ANSWERS, ITEMS_TXT, ITEMS_NPY)
#: ``verify_table(full=None)`` hashes a file whole up to this size (sha256 reads ~1 GB/s), above it the
#: ``sample`` (SAMPLE_BLOCKS blocks of SAMPLE_BYTES) only; ``full=True`` hashes everything
VERIFY_FULL_BYTES = 256 << 20
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 64 << 10
#: free space kept beyond a table's own size when a build checks the disk
SPACE_MARGIN = 64 << 10


def storage_dtype(settings: Mapping[str, Any]) -> str:
    """``intent_storage_dtype`` (float32 | float16; unset = float32)."""
    dtype = str(settings.get("intent_storage_dtype") or "float32").strip().lower()
    if dtype not in STORAGE_DTYPES:
        raise IntentError(f"intent_storage_dtype={dtype!r}: use one of {', '.join(STORAGE_DTYPES)}. "
                          "Fix: --intent_storage_dtype=float32")
    return dtype


def keys_sha1(keys: Iterable[str]) -> str:
    """sha1 of the sorted keys, newline-joined (``meta["keys_sha1"]``)."""
    return hashlib.sha1("\n".join(sorted(keys)).encode("utf-8")).hexdigest()


def write_intent_table(
    folder: Path | str,
    meta: Mapping[str, Any],
    keys: Sequence[str],
    vectors: np.ndarray,
    raw: np.ndarray,
    records: Iterable[Mapping[str, Any]],
    *,
    item_tokens: Sequence[str],
    item_vectors: np.ndarray,
    storage_dtype: str = "float32",
) -> Path:
    """Write the table atomically into ``folder`` (replacing an older one) and return it.

    ``item_tokens``/``item_vectors``: the catalogue (order of ``items.txt``) and its text embeddings
    ``[n_items, d_text]`` from the encoder that embedded the answers. ``meta`` is completed with
    ``n_keys``, ``keys_sha1``, ``d_text`` and ``n_items``; shapes and views are checked.
    ``vectors``/``raw`` may be memory-mapped (copied block by block, never whole in memory);
    ``storage_dtype`` float16 stores them rounded to half precision.
    """
    folder = Path(folder)
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype={storage_dtype!r}: use one of {', '.join(STORAGE_DTYPES)}")
    vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
    raw = raw if isinstance(raw, np.ndarray) else np.asarray(raw, dtype=np.float32)
    item_tokens = [str(t) for t in item_tokens]
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 3 or vectors.shape != raw.shape or vectors.shape[0] != len(keys):
        raise ValueError(f"vectors {vectors.shape} / raw {raw.shape} must both be [n_keys={len(keys)}, n_views, d]")
    if item_vectors.ndim != 2 or item_vectors.shape != (len(item_tokens), vectors.shape[2]):
        raise ValueError(
            f"item_vectors {item_vectors.shape} must be [n_items={len(item_tokens)}, d_text={vectors.shape[2]}]"
        )
    if any("\n" in t or not t.strip() or t != t.strip() for t in item_tokens) or len(set(item_tokens)) != len(item_tokens):
        raise ValueError("item tokens must be unique, non-empty, without surrounding spaces or newlines")
    if len(meta.get("views", ())) != vectors.shape[1]:
        raise ValueError(f"meta['views'] names {len(meta.get('views', ()))} views, the arrays hold {vectors.shape[1]}")
    if any("\n" in k or not k for k in keys) or len(set(keys)) != len(keys):
        raise ValueError("keys must be unique, non-empty and without newlines")
    meta = dict(meta)
    meta.update(n_keys=len(keys), keys_sha1=keys_sha1(keys), d_text=int(vectors.shape[2]), n_items=len(item_tokens))
    if storage_dtype != "float32":
        meta["storage_dtype"] = storage_dtype

    folder.parent.mkdir(parents=True, exist_ok=True)
    need = table_bytes(keys, vectors.shape, storage_dtype, item_tokens, item_vectors, records)
    check_free_space(folder, need)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        with open(tmp / KEYS, "w", encoding="utf-8") as f:
            f.writelines(k + "\n" for k in keys)
        save_rows(tmp / VECTORS, vectors, storage_dtype)
        save_rows(tmp / RAW, raw, storage_dtype)
        with open(tmp / ITEMS_TXT, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in item_tokens)
        np.save(tmp / ITEMS_NPY, item_vectors)
        np.save(tmp / ANSWERS_INDEX, _write_answers(tmp / ANSWERS, records, keys))
        # the answers index is optional and checks itself against answers.jsonl (IntentTable.answer_offsets)
        meta[FILES] = {p.name: file_sums(p) for p in sorted(tmp.iterdir()) if p.name != ANSWERS_INDEX}
        # meta last: a folder with meta.json is complete
        with open(tmp / META, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False, default=str)
        _fsync_dir_files(tmp)
        _swap_into_place(tmp, folder)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(folder, need, "the disk filled up while it was written") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the swap; on any failure, the half-written copy
    return folder


def table_bytes(keys: Sequence[str], shape: Sequence[int], storage_dtype: str, item_tokens: Sequence[str],
                item_vectors: np.ndarray, records: Any = None) -> int:
    """About what ``write_intent_table`` puts on disk: the arrays exactly, the text files from their
    lines (``answers.jsonl`` estimated from its first record when ``records`` is a list)."""
    arrays = 2 * int(np.prod(shape)) * np.dtype(storage_dtype).itemsize + int(item_vectors.nbytes)
    text = sum(len(k) + 1 for k in keys) + sum(len(t) + 1 for t in item_tokens) + 8 * (len(keys) + 1)
    if isinstance(records, list) and records:
        text += len(json.dumps(records[0], ensure_ascii=False)) * len(records)
    return arrays + text + 4 * 4096  # headers, meta.json


def disk_full(folder: Path, need: int, why: str) -> DiskFullError:
    free = shutil.disk_usage(folder.parent).free
    return DiskFullError(
        f"not enough free space in {folder.parent} for the intent table {folder.name}: {why}; it needs "
        f"{need} bytes, {free} are free. Fix: free at least {max(need - free, 1)} bytes there (or set data_path "
        f"to a larger disk) and rerun; cached answers are kept")


def check_free_space(folder: Path, need: int) -> None:
    """DiskFullError naming the folder and the bytes when ``need`` (+ a margin) does not fit."""
    if shutil.disk_usage(folder.parent).free < need + SPACE_MARGIN:
        raise disk_full(folder, need + SPACE_MARGIN, "the disk has too little room")


def file_sums(path: Path | str) -> Dict[str, Any]:
    """``{"size", "sha256", "sample"}`` of a file (``meta.json["files"]``)."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256_file(path), "sample": sample_sha256(path)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)


def sample_sha256(path: Path) -> str:
    """sha256 of ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BYTES`` spread evenly over the file (first and
    last included): what a huge file is checked with at load."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(SAMPLE_BLOCKS):
                f.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def rebuild_hint(folder: Path, meta: Optional[Mapping[str, Any]] = None) -> str:
    ds = (meta or {}).get("dataset") or folder.parent.parent.name
    return (f"Fix: rebuild it with python -m recbole_llm4sbr.intent --dataset={ds} --force and the settings that "
            f"built it (the answer cache is kept: no LLM call is repeated)")


def verify_table(folder: Path | str, meta: Optional[Mapping[str, Any]] = None, full: Optional[bool] = None) -> int:
    """Check the table's files against ``meta.json["files"]``; return how many were checked.

    ``full=False``: sizes only; ``None``: sizes, and the sha256 of each file up to
    ``VERIFY_FULL_BYTES`` (the ``sample`` above); ``True``: every sha256, and no NaN/inf in the intent
    arrays. A table written before the checksums is checked for missing files only (and for NaN/inf
    with ``full=True`` or small arrays). ``TableDamagedError`` names the first bad file and the fix.
    """
    folder = Path(folder)
    meta = read_meta(folder) if meta is None else meta
    if meta is None:
        raise MissingFileError(f"no intent table at {folder} (meta.json missing): build it with "
                               f"python -m recbole_llm4sbr.intent --dataset=<ds>")
    sums: Mapping[str, Mapping[str, Any]] = meta.get(FILES) or {}

    def damaged(name: str, what: str) -> TableDamagedError:
        return TableDamagedError(f"intent table {folder}: {name} {what}, so it does not belong to this table "
                                 f"(copied from another build, edited, truncated or deleted). {rebuild_hint(folder, meta)}")

    names = list(sums) or [n for n in REQUIRED]
    for name in names:
        p = folder / name
        if not p.is_file():
            raise damaged(name, "is missing")
        want = sums.get(name)
        if want is None:
            continue
        size = p.stat().st_size
        if size != want["size"]:
            raise damaged(name, f"has {size} bytes where meta.json records {want['size']}")
        whole = full or (full is None and size <= VERIFY_FULL_BYTES)
        if full is not False and (sha256_file(p) if whole else sample_sha256(p)) != want["sha256" if whole else "sample"]:
            raise damaged(name, "differs from the sha256 meta.json records")
    for name in (VECTORS, RAW):
        p = folder / name
        if full or (full is None and p.stat().st_size <= VERIFY_FULL_BYTES and not sums):
            bad = first_nonfinite_row(p)
            if bad is not None:
                raise damaged(name, f"holds NaN or inf (row {bad})")
    return len(names)


def first_nonfinite_row(path: Path) -> Optional[int]:
    """The first row of a ``.npy`` array holding NaN/inf (read mapped, in blocks), or None."""
    try:
        a = np.load(path, mmap_mode="r")
    except ValueError:  # truncated: the size check names it
        return None
    rows = max(1, WRITE_BLOCK_BYTES // max(1, int(np.prod(a.shape[1:])) * a.dtype.itemsize))
    for s in range(0, a.shape[0] if a.ndim else 0, rows):
        ok = np.isfinite(a[s : s + rows]).reshape(min(rows, a.shape[0] - s), -1).all(axis=1)
        if not ok.all():
            return s + int(np.argmin(ok))
    return None


#: the lock files this thread holds (``table_lock`` is re-entrant; another thread waits like another process)
_HELD = threading.local()


@contextlib.contextmanager
def table_lock(folder: Path | str, logger: Optional[logging.Logger] = None) -> Iterator[bool]:
    """Hold the build lock of ``folder`` (``fcntl.flock`` on ``.<name>.lock`` beside it; the kernel
    releases it when the holder dies). Waits for another builder, saying so, and yields whether it
    waited. The lock file is never removed (removing it would let two builders hold two locks).
    Re-entrant within a process (``ensure_intent_table`` holds it around ``build_intent_table``)."""
    import fcntl

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    key = str(path.resolve())
    held = _HELD.__dict__.setdefault("paths", set())
    if key in held:
        yield False
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            (logger or logging.getLogger("recbole_llm4sbr.intent")).info(
                f"another stage-1 build of {folder} is running: waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield waited
        finally:
            held.discard(key)
    finally:
        os.close(fd)  # releases the lock


def tidy(folder: Path | str, logger: Optional[logging.Logger] = None) -> None:
    """``remove_debris`` when no builder holds the table's lock (tried without waiting), else nothing:
    what a run that finds the table up to date does."""
    import fcntl

    folder = Path(folder)
    if not folder.parent.is_dir() or not any(
            p.name.startswith((f".{folder.name}.tmp-", f".{folder.name}.old-")) for p in folder.parent.iterdir()):
        return
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live builder owns them
        remove_debris(folder, logger)
    finally:
        os.close(fd)


def remove_debris(folder: Path | str, logger: Optional[logging.Logger] = None) -> int:
    """Remove the ``.<name>.tmp-*`` / ``.<name>.old-*`` folders killed builders left beside ``folder``
    (call it holding ``table_lock``: no live builder then owns one). A table moved aside by a builder
    killed between the two renames of its swap is put back first when ``folder`` is gone. Returns the
    bytes freed."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return 0
    debris = sorted(p for p in folder.parent.iterdir()
                    if p.name.startswith((f".{folder.name}.tmp-", f".{folder.name}.old-")) and p.is_dir())
    if not folder.exists():
        olds = [p for p in debris if ".old-" in p.name and read_meta(p) is not None]
        if olds:
            back = max(olds, key=lambda p: p.stat().st_mtime)
            os.replace(back, folder)
            debris.remove(back)
    freed = 0
    for p in debris:
        freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        shutil.rmtree(p, ignore_errors=True)
    if debris:
        (logger or logging.getLogger("recbole_llm4sbr.intent")).info(
            f"removed {len(debris)} folder(s) left by killed builds of {folder.name} ({freed} bytes)")
    return freed


def save_rows(path: Path, array: np.ndarray, dtype: str = "float32") -> None:
    """``np.save`` of ``array`` as ``dtype``, written in row blocks with plain writes (the same bytes
    as ``np.save``; a memory-mapped ``array`` is never read whole; a full disk raises ENOSPC, where
    writing through a memory map dies of SIGBUS). ValueError at the first row holding NaN/inf."""
    dt = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(array.shape)}
    rows = max(1, WRITE_BLOCK_BYTES // max(1, int(np.prod(array.shape[1:])) * 4))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for s in range(0, array.shape[0], rows):
            block = np.ascontiguousarray(array[s : s + rows], dtype=dt)
            finite = np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
            if not finite.all():
                raise ValueError(f"{path.name}: row {s + int(np.argmin(finite))} holds NaN or inf; the table is not written")
            f.write(block.tobytes())


def _write_answers(path: Path, records: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> np.ndarray:
    """Write ``answers.jsonl`` (one JSON line per record) and return its index (``ANSWERS_INDEX``)."""
    row = {k: i for i, k in enumerate(keys)}
    offsets = np.full(len(keys) + 1, -1, dtype=np.int64)
    pos = 0
    with open(path, "wb") as f:
        for rec in records:
            i = row.get(rec.get("key"))
            if i is None or offsets[i] >= 0:
                raise ValueError(f"answers record for key {rec.get('key')!r}: every record needs a key of the table, once")
            offsets[i] = pos
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            pos += len(line)
    offsets[-1] = pos
    return offsets


def scan_answer_offsets(path: Path | str, keys: Sequence[str]) -> np.ndarray:
    """The ``ANSWERS_INDEX`` of an ``answers.jsonl`` read from disk (a table written without one)."""
    row = {k: i for i, k in enumerate(keys)}
    offsets = np.full(len(keys) + 1, -1, dtype=np.int64)
    head = b'{"key": "'  # how write_intent_table starts every line; anything else is parsed
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(head):
                key = line[len(head): line.index(b'"', len(head))].decode("utf-8")
            else:
                key = json.loads(line).get("key") if line.strip() else None
            i = row.get(key)
            if i is not None and offsets[i] < 0:
                offsets[i] = pos
            pos += len(line)
    offsets[-1] = pos
    return offsets


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_meta(folder: Path | str) -> Optional[Dict[str, Any]]:
    """``meta.json`` of a table folder, or None when there is no complete table there."""
    try:
        with open(Path(folder) / META, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def read_keys(folder: Path | str) -> List[str]:
    with open(Path(folder) / KEYS, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def lookup_rows(folder: Path | str, wanted: Sequence[str]) -> np.ndarray:
    """The row of each of ``wanted`` in the table's ``keys.txt`` (int64, -1 where absent), read as a
    stream: memory follows ``len(wanted)``, not the table's size (a 5M-key table holds 5M strings)."""
    pos = {k: i for i, k in enumerate(wanted)}
    rows = np.full(len(wanted), -1, dtype=np.int64)
    row = 0
    with open(Path(folder) / KEYS, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            i = pos.get(line.rstrip("\n"))
            if i is not None:
                rows[i] = row
            row += 1
    return rows


class IntentTable:
    """A loaded intent table. ``row(key)`` is the row of a prefix key in ``vectors`` and ``raw``;
    ``item_tokens[i]`` is the item whose text embedding is ``item_vectors[i]`` (same space as ``raw``)."""

    def __init__(
        self,
        path: Path,
        meta: Dict[str, Any],
        keys: Optional[List[str]],
        vectors: np.ndarray,
        raw: np.ndarray,
        item_tokens: List[str],
        item_vectors: np.ndarray,
    ):
        self.path = Path(path)
        self.meta = meta
        self._keys = keys  # None: read from keys.txt on first use (a mapped table)
        self.views: List[str] = list(meta["views"])
        self.vectors = vectors
        self.raw = raw
        self.item_tokens = item_tokens
        self.item_vectors = item_vectors
        self._index_of: Optional[Dict[str, int]] = None
        self._answer_offsets: Optional[np.ndarray] = None

    @property
    def keys(self) -> List[str]:
        if self._keys is None:
            self._keys = read_keys(self.path)
        return self._keys

    @property
    def _index(self) -> Dict[str, int]:
        if self._index_of is None:
            self._index_of = {k: i for i, k in enumerate(self.keys)}
        return self._index_of

    def rows_of(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys`` (int64, -1 where absent) without holding every key of the table."""
        if self._index_of is not None:
            return np.array([self._index_of.get(k, -1) for k in keys], dtype=np.int64)
        return lookup_rows(self.path, keys)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def row(self, key: str) -> int:
        """Row index of ``key``; KeyError naming the table when the prefix is not in it."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"prefix key {key!r} is not in the intent table {self.path}: rebuild it (python -m recbole_llm4sbr.intent --dataset=... --force)") from None

    def view_index(self, view: str) -> int:
        try:
            return self.views.index(view)
        except ValueError:
            raise KeyError(f"view {view!r} is not in the intent table {self.path} (views: {', '.join(self.views)})") from None

    def answer_offsets(self, rescan: bool = False) -> np.ndarray:
        """The table's index into ``answers.jsonl`` (``ANSWERS_INDEX``), read once; built in memory for
        a table written without it, or whose index does not fit its ``answers.jsonl``."""
        if self._answer_offsets is None or rescan:
            offsets = None
            size = (self.path / ANSWERS).stat().st_size
            if not rescan and (self.path / ANSWERS_INDEX).is_file():
                offsets = np.load(self.path / ANSWERS_INDEX)
                if offsets.shape != (len(self.keys) + 1,) or int(offsets[-1]) != size:
                    offsets = None
            self._answer_offsets = offsets if offsets is not None else scan_answer_offsets(self.path / ANSWERS, self.keys)
        return self._answer_offsets

    def record(self, key: str) -> Optional[Dict[str, Any]]:
        """The ``answers.jsonl`` record of ``key`` (what the LLM said per view and where it was
        grounded): one seek. KeyError as ``row`` when the prefix is not in the table; None when the
        table holds no record for it."""
        i = self.row(key)
        for rescan in (False, True):
            pos = int(self.answer_offsets(rescan)[i])
            if pos < 0:
                return None
            with open(self.path / ANSWERS, "rb") as f:
                f.seek(pos)
                rec = json.loads(f.readline())
            if rec.get("key") == key:
                return rec
        raise TableDamagedError(f"intent table {self.path}: answers.jsonl has no line for {key!r} where it should be: rebuild it")

    def answers(self, keys: Optional[Iterable[str]] = None) -> Iterator[Dict[str, Any]]:
        """The ``answers.jsonl`` records (only those of ``keys`` when given), streamed."""
        wanted = None if keys is None else set(keys)
        prefilter = wanted is not None and len(wanted) <= 64  # substring test before parsing: show's case
        with open(self.path / ANSWERS, encoding="utf-8") as f:
            for line in f:
                if prefilter and not any(k in line for k in wanted):
                    continue
                rec = json.loads(line)
                if wanted is None or rec["key"] in wanted:
                    yield rec


def load_intent_table(path: Path | str, mmap: bool = False, verify: Optional[bool] = None) -> IntentTable:
    """Load the table folder ``path``. ``mmap=True`` maps the arrays read-only instead of reading them
    (as stored: float16 in a float16 table) and reads ``keys.txt`` only when asked (``rows_of``
    streams it); otherwise the arrays are read as float32. ``verify``: ``verify_table``'s ``full``
    (None: sizes, and checksums of files up to ``VERIFY_FULL_BYTES``)."""
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        raise MissingFileError(f"no intent table at {path} (meta.json missing): build it with python -m recbole_llm4sbr.intent --dataset=<ds>")
    if not (path / ITEMS_TXT).is_file() or not (path / ITEMS_NPY).is_file():
        raise IntentError(
            f"intent table {path} (format_version {meta.get('format_version')}) has no {ITEMS_TXT}/{ITEMS_NPY}: "
            f"it predates them; rebuild it (python -m recbole_llm4sbr.intent --dataset={meta.get('dataset', '<ds>')} --force)"
        )
    verify_table(path, meta, full=verify)
    keys = None if mmap else read_keys(path)
    mode = "r" if mmap else None
    vectors, raw = (_load_array(path, name, meta, mode) for name in (VECTORS, RAW))
    if mmap:
        _advise_random(vectors, raw)
    else:
        vectors, raw = vectors.astype(np.float32, copy=False), raw.astype(np.float32, copy=False)
    with open(path / ITEMS_TXT, encoding="utf-8") as f:
        item_tokens = [line.rstrip("\n") for line in f if line.strip()]
    item_vectors = np.load(path / ITEMS_NPY, mmap_mode=mode)
    n_keys = meta.get("n_keys", vectors.shape[0]) if keys is None else len(keys)
    if n_keys != meta.get("n_keys", n_keys) or vectors.shape[0] != n_keys or raw.shape != vectors.shape:
        raise TableDamagedError(f"intent table {path} is inconsistent (keys {n_keys}, vectors {vectors.shape}, raw {raw.shape}): rebuild it")
    if item_vectors.ndim != 2 or item_vectors.shape != (len(item_tokens), vectors.shape[2]):
        raise TableDamagedError(
            f"intent table {path} is inconsistent (items.txt {len(item_tokens)} tokens, items.npy {item_vectors.shape}, "
            f"d_text {vectors.shape[2]}): rebuild it"
        )
    return IntentTable(path, meta, keys, vectors, raw, item_tokens, item_vectors)


def _load_array(folder: Path, name: str, meta: Mapping[str, Any], mode: Optional[str]) -> np.ndarray:
    """``np.load`` of one intent array; a file that is not a whole ``.npy`` (a table without checksums,
    truncated) is a ``TableDamagedError`` naming it, not numpy's "mmap length is greater than file size"."""
    try:
        return np.load(folder / name, mmap_mode=mode)
    except (ValueError, EOFError, OSError) as e:
        raise TableDamagedError(f"intent table {folder}: {name} cannot be read ({' '.join(str(e).split())}). "
                                f"{rebuild_hint(folder, meta)}") from None


def _advise_random(*arrays: np.ndarray) -> None:
    """Tell the kernel a mapped table is read at random rows (no read-ahead of neighbours a batch
    does not use); a no-op where ``madvise`` is unavailable."""
    import mmap as _mmap

    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(_mmap, "MADV_RANDOM"):
            try:
                m.madvise(_mmap.MADV_RANDOM)
            except (OSError, ValueError):
                pass


def drop_resident_pages(array: np.ndarray) -> bool:
    """``madvise(MADV_DONTNEED)`` over the whole mapping behind ``array`` (a ``np.memmap`` or a view of
    one): its pages leave this process's RSS and stay in the page cache. False when ``array`` is not
    mapped or the platform has no ``madvise`` (nothing to do: an in-memory array is the process's own)."""
    import mmap as _mmap

    base = array
    while base is not None and getattr(base, "_mmap", None) is None:
        base = getattr(base, "base", None)
    handle = getattr(base, "_mmap", None) if base is not None else None
    if handle is None or not hasattr(handle, "madvise") or not hasattr(_mmap, "MADV_DONTNEED"):
        return False
    try:
        handle.madvise(_mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        return False
    return True
