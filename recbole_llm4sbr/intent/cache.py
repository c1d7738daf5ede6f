"""The durable answer cache: LLM calls are the expensive part of stage 1, never pay for one twice.

SQLite in WAL mode at ``<data_path>/<ds>/intent/answers.sqlite``. The key of an answer is sha256 over
(backend.describe(), template_version, prompt), so a change of model, model file, sampling settings
or template can never reuse an old answer, while any table built with the same backend and prompts
(another topr, encoder or view set) reuses all of them. Every chunk is committed as it arrives: a
run killed at any point loses at most the chunk in flight.

Keep it on a local disk: WAL mode needs every process that opens the file on ONE host (its shared
memory index does not work over NFS/SMB). Stage 1 across many workers (``intent/shards.py``) never
shares it: workers write Parquet blocks (which may live on a network file system) and one process
``merge``s them in.

A damaged file (truncated, overwritten in the middle: SQLite's "database disk image is malformed") is
a ``CacheDamagedError`` naming it and the fix, ``recover_cache`` (``python -m recbole_llm4sbr.intent
recover-cache --dataset=<ds>``) copies every readable row into a fresh database, swapped in, the
damaged file kept beside it as ``answers.sqlite.corrupt-<time>``. A full disk is a ``DiskFullError``;
every answer committed before it is kept.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import MissingFileError
from .errors import CacheDamagedError, DiskFullError

CACHE_FILE = "answers.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, created REAL NOT NULL)"
#: SQLite caps the number of ``?`` in one statement
_LOOKUP_CHUNK = 500


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def answer_key(backend_info: Mapping[str, Any], template_version: str, prompt: str) -> str:
    """sha256 hex over the three things an answer depends on."""
    return hashlib.sha256(_dumps([backend_info, template_version, prompt]).encode("utf-8")).hexdigest()


class AnswerKeys:
    """``answer_key`` of many prompts under ONE backend description and template, without
    re-serialising the first two for every prompt (that was nearly all the time of a fully cached
    rerun). Also what a stage-1 worker keys its blocks with, no database needed."""

    def __init__(self, backend_info: Mapping[str, Any], template_version: str):
        # answer_key's JSON up to the prompt, serialised once (the same bytes: key() == answer_key())
        self.head = _dumps([dict(backend_info), template_version])[:-1] + ", "

    def key(self, prompt: str) -> str:
        return hashlib.sha256((self.head + _dumps(prompt) + "]").encode("utf-8")).hexdigest()


#: SQLite's primary result codes for a damaged file, a full disk and an I/O error
_CORRUPT, _NOTADB, _FULL, _IOERR = 11, 26, 13, 10
#: below this many free bytes an I/O error while writing is taken for a full disk
_LOW_SPACE = 1 << 20
#: a cache up to this size gets SQLite's ``quick_check`` when opened (~0.5 s per 256 MiB)
QUICK_CHECK_BYTES = 256 << 20


def recover_command(path: Path) -> str:
    """The command line that recovers the cache at ``<data_path>/<ds>/intent/answers.sqlite``."""
    path = Path(path).resolve()
    return (f"python -m recbole_llm4sbr.intent recover-cache --dataset={path.parent.parent.name} "
            f"--data_path={path.parent.parent.parent}")


def user_error(path: Path, err: sqlite3.Error) -> Optional[Exception]:
    """The one-line user error a SQLite error on the cache ``path`` stands for, or None (a bug: re-raise)."""
    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(err)
    if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return CacheDamagedError(
            f"answer cache {path} is damaged ({text}). Fix: {recover_command(path)} copies every readable answer "
            f"into a fresh cache (the damaged file is kept as {path.name}.corrupt-<time>)")
    if code in (_FULL, _IOERR) or "disk is full" in text or "disk I/O error" in text:
        free = shutil.disk_usage(path.parent).free
        if code == _FULL or free < _LOW_SPACE:
            return DiskFullError(
                f"not enough free space in {path.parent} for the answer cache {path.name} ({text}; {free} bytes free). "
                f"Fix: free space there (or set data_path to a larger disk) and rerun; answers committed so far are kept")
    return None


@contextlib.contextmanager
def guarded(path: Path) -> Iterator[None]:
    """SQLite errors that are the user's to fix (a damaged file, a full disk) as one-line user errors."""
    try:
        yield
    except sqlite3.Error as err:
        mapped = user_error(path, err)
        if mapped is None:
            raise
        raise mapped from None


class AnswerCache:
    """Answers of ONE backend configuration and template: look up and store by prompt text."""

    def __init__(self, path: Path | str, backend_info: Mapping[str, Any], template_version: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.backend_info = dict(backend_info)
        self.template_version = template_version
        self._keys = AnswerKeys(self.backend_info, template_version)
        self._db = None
        with guarded(self.path):
            # isolation_level=None: we commit explicitly, one transaction per stored chunk
            self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL is durable against a killed process (only an OS crash can lose the last commit)
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                if self.path.stat().st_size <= QUICK_CHECK_BYTES:  # damage a lookup would not touch yet
                    problem = [r[0] for r in self._db.execute("PRAGMA quick_check")]
                    if problem != ["ok"]:
                        raise sqlite3.DatabaseError(" ".join(" ".join(problem[:2]).split())[:200]
                                                    + "; database disk image is malformed")
            except BaseException:
                self._db.close()
                raise

    def key(self, prompt: str) -> str:
        """``answer_key(backend_info, template_version, prompt)`` (``AnswerKeys``)."""
        return self._keys.key(prompt)

    def lookup(self, prompts: Iterable[str]) -> Dict[str, str]:
        """``{prompt: answer}`` for the prompts already answered."""
        by_key = {self.key(p): p for p in prompts}
        found: Dict[str, str] = {}
        keys = list(by_key)
        with guarded(self.path):
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                part = keys[i : i + _LOOKUP_CHUNK]
                rows = self._db.execute(
                    f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(part))})", part
                )
                for k, answer in rows:
                    found[by_key[k]] = answer
        return found

    def store(self, pairs: Sequence[Tuple[str, str]]) -> None:
        """Commit ``(prompt, answer)`` pairs in one transaction."""
        now = time.time()
        rows = [(self.key(p), a, now) for p, a in pairs]
        with guarded(self.path):
            self._transaction("INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)", rows)

    def _transaction(self, sql: str, rows: Sequence[Tuple[str, str, float]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back itself (a full disk)
                self._db.execute("ROLLBACK")
            raise

    def merge(self, rows: Sequence[Tuple[str, str]]) -> int:
        """Fold ``(key, answer)`` rows (keys already computed: ``intent/shards.py``'s blocks) in one
        transaction, ``INSERT OR IGNORE``: an answer already cached is kept, so merging the same
        block twice, or two blocks that overlap, changes nothing. Returns the rows inserted."""
        now = time.time()
        before = self._db.total_changes
        with guarded(self.path):
            self._transaction("INSERT OR IGNORE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                              [(k, a, now) for k, a in rows])
        return self._db.total_changes - before

    def __len__(self) -> int:
        with guarded(self.path):
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- a damaged cache --------------------------------------------------------------------------------

_KEY = re.compile(r"[0-9a-f]{64}")
#: rowids SQLite fails to read before the rowid walk gives up (the page scan still reads them)
_MAX_LOST = 4096


def check_cache(path: Path | str) -> Optional[str]:
    """SQLite's ``quick_check`` of the cache: None when it is sound, else what is wrong (one line)."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.DatabaseError as err:
        return str(err)
    return None if rows == ["ok"] else " ".join(" ".join(rows[:3]).split())


def _readable_rows(db: sqlite3.Connection, lo: int, hi: int, out: List[Tuple[str, str, float]]) -> int:
    """Append the readable rows with rowid in ``[lo, hi]`` to ``out``, halving a range that fails down
    to single rows; return the rowids that could not be read."""
    sql = "SELECT key, answer, created FROM answers WHERE rowid BETWEEN ? AND ?"
    stack, lost = [(lo, hi)], 0
    while stack:
        a, b = stack.pop()
        try:
            rows = db.execute(sql, (a, b)).fetchall()
        except sqlite3.DatabaseError:
            if lost >= _MAX_LOST:  # nothing reads: leave the rest to the page scan
                return lost
            if a == b:
                lost += 1
            else:
                mid = (a + b) // 2
                stack += [(mid + 1, b), (a, mid)]
            continue
        out.extend((k, v, c) for k, v, c in rows
                   if isinstance(k, str) and _KEY.fullmatch(k) and isinstance(v, str) and isinstance(c, (int, float)))
    return lost


def _max_rowid(db: sqlite3.Connection, path: Path) -> int:
    """The largest rowid, read from the table, else from the key index, else bounded by the file size
    (a row takes more than 64 bytes)."""
    try:
        return int(db.execute("SELECT max(rowid) FROM answers").fetchone()[0] or 0)
    except sqlite3.DatabaseError:
        pass
    top = 0
    try:
        for (rowid,) in db.execute("SELECT rowid FROM answers INDEXED BY sqlite_autoindex_answers_1"):
            top = max(top, rowid)
    except sqlite3.DatabaseError:
        pass
    return max(top, path.stat().st_size // 64 + 1)


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    """SQLite's big-endian varint at ``buf[i]``: ``(value, next index)``."""
    v = 0
    for n in range(9):
        b = buf[i + n]
        if n == 8:
            return (v << 8) | b, i + 9
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, i + n + 1
    raise IndexError


def _answer_record(payload: bytes) -> Optional[Tuple[str, str, float]]:
    """``(key, answer, created)`` when ``payload`` is a record of the answers table, else None."""
    import struct

    try:
        size, i = _varint(payload, 0)
        types = []
        while i < size and len(types) < 4:
            t, i = _varint(payload, i)
            types.append(t)
        if len(types) != 3 or types[0] < 13 or types[0] % 2 == 0 or types[1] < 13 or types[1] % 2 == 0:
            return None
        pos = size
        nk, na = (types[0] - 13) // 2, (types[1] - 13) // 2
        key = payload[pos : pos + nk].decode("utf-8")
        answer = payload[pos + nk : pos + nk + na].decode("utf-8")
        body = payload[pos + nk + na :]
        t = types[2]
        widths = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}
        if t == 7:
            created = struct.unpack(">d", body[:8])[0]
        elif t in widths:
            created = float(int.from_bytes(body[: widths[t]], "big", signed=True))
        elif t in (8, 9):
            created = float(t - 8)
        else:
            return None
        if len(payload) < pos + nk + na or not _KEY.fullmatch(key) or len(answer.encode("utf-8")) != na:
            return None
        return key, answer, created
    except (IndexError, UnicodeDecodeError, struct.error):
        return None


def _scan_pages(data: bytes, page_size: int, usable: int, first: bool, pages: Mapping[int, bytes],
                out: Dict[str, Tuple[str, str, float]]) -> None:
    """The answers in one page when it is a table leaf (type 13), overflow chains followed in ``pages``."""
    head = 100 if first else 0
    if len(data) < head + 8 or data[head] != 13:
        return
    n_cells = int.from_bytes(data[head + 3 : head + 5], "big")
    x = usable - 35
    m = (usable - 12) * 32 // 255 - 23
    for c in range(n_cells):
        try:
            ptr = int.from_bytes(data[head + 8 + 2 * c : head + 10 + 2 * c], "big")
            size, i = _varint(data, ptr)
            _, i = _varint(data, i)  # rowid
            if size <= x:
                payload = data[i : i + size]
            else:  # spilled: the local part, then the overflow chain
                local = m + (size - m) % (usable - 4)
                local = m if local > x else local
                payload = bytearray(data[i : i + local])
                nxt = int.from_bytes(data[i + local : i + local + 4], "big")
                hops = 0
                while nxt and len(payload) < size and nxt in pages and hops < 1000:
                    page = pages[nxt]
                    payload += page[4 : usable]
                    nxt, hops = int.from_bytes(page[:4], "big"), hops + 1
                payload = bytes(payload[:size])
            if len(payload) != size:
                continue
        except IndexError:
            continue
        rec = _answer_record(payload)
        if rec is not None:
            out.setdefault(rec[0], rec)


def scan_answer_pages(path: Path | str) -> Dict[str, Tuple[str, str, float]]:
    """Every answer whose row can be read from the raw pages of the cache file and of its ``-wal``
    (what SQLite cannot reach through a damaged b-tree page): ``{key: (key, answer, created)}``."""
    import mmap

    path = Path(path)
    out: Dict[str, Tuple[str, str, float]] = {}
    if path.stat().st_size == 0:
        return out
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        page_size = int.from_bytes(blob[16:18], "big") if len(blob) >= 100 else 0
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):  # the header is gone: SQLite's default
            page_size = 4096
        usable = page_size - (blob[20] if len(blob) >= 100 and blob[20] < 128 else 0)
        n_pages = len(blob) // page_size
        wal_pages: Dict[int, bytes] = {}
        frames: List[bytes] = []
        wal = Path(f"{path}-wal")
        if wal.is_file():
            wblob = wal.read_bytes()
            if len(wblob) >= 32 and int.from_bytes(wblob[8:12], "big") == page_size:
                for off in range(32, len(wblob) - 24 - page_size + 1, 24 + page_size):
                    frame = wblob[off + 24 : off + 24 + page_size]
                    frames.append(frame)
                    wal_pages[int.from_bytes(wblob[off : off + 4], "big")] = frame  # later frames are newer

        class Pages(dict):
            def __missing__(self, no: int) -> bytes:
                if no in wal_pages:
                    return wal_pages[no]
                if 1 <= no <= n_pages:
                    return blob[(no - 1) * page_size : no * page_size]
                raise KeyError(no)

            def __contains__(self, no: object) -> bool:
                return no in wal_pages or (isinstance(no, int) and 1 <= no <= n_pages)

        pages = Pages()
        for data in frames[::-1]:  # newest first: setdefault keeps the first seen
            _scan_pages(data, page_size, usable, False, pages, out)
        for no in range(1, n_pages + 1):
            _scan_pages(blob[(no - 1) * page_size : no * page_size], page_size, usable, no == 1, pages, out)
    return out


def recover_cache(path: Path | str) -> Dict[str, Any]:
    """Copy every readable answer of the cache ``path`` into a fresh database and swap it in; the old
    file (and its ``-wal``/``-shm``) is kept as ``<name>.corrupt-<time>``. Rows are read through SQLite
    (by rowid ranges, halving a range that fails) and from the raw pages (``scan_answer_pages``: a
    damaged interior page hides whole leaves from SQLite). Run it while no build uses the cache.
    Returns ``{"recovered", "kept"}`` (answers copied, where the damaged file went)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no answer cache at {path}: nothing to recover")
    rows: List[Tuple[str, str, float]] = []
    try:
        src = sqlite3.connect(str(path), isolation_level=None)
    except sqlite3.DatabaseError:
        src = None
    if src is not None:
        try:
            _readable_rows(src, 0, _max_rowid(src, path), rows)
        except sqlite3.DatabaseError:  # not even the schema can be read: the pages may still hold answers
            pass
        finally:
            src.close()
    found = {k: (k, v, c) for k, v, c in rows}
    for key, rec in scan_answer_pages(path).items():
        found.setdefault(key, rec)  # what SQLite read wins over a raw page (which may be a freed one)
    rows = list(found.values())
    fresh = path.with_name(f"{path.name}.recover-{os.getpid()}")
    for p in (fresh, Path(f"{fresh}-journal")):
        p.unlink(missing_ok=True)
    try:
        with guarded(path):
            db = sqlite3.connect(str(fresh), isolation_level=None)
            try:
                db.execute(_SCHEMA)
                db.execute("BEGIN")
                db.executemany("INSERT OR IGNORE INTO answers (key, answer, created) VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")
            finally:
                db.close()
        kept = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("-wal", "-shm", ""):  # the old WAL must not be replayed into the fresh file
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.replace(side, f"{kept}{suffix}")
        os.replace(fresh, path)
    finally:
        fresh.unlink(missing_ok=True)
    return {"recovered": len(rows), "kept": kept}
