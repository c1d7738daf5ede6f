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
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

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


class AnswerCache:
    """Answers of ONE backend configuration and template: look up and store by prompt text."""

    def __init__(self, path: Path | str, backend_info: Mapping[str, Any], template_version: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.backend_info = dict(backend_info)
        self.template_version = template_version
        self._keys = AnswerKeys(self.backend_info, template_version)
        # isolation_level=None: we commit explicitly, one transaction per stored chunk
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (only an OS crash can lose the last commit)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def key(self, prompt: str) -> str:
        """``answer_key(backend_info, template_version, prompt)`` (``AnswerKeys``)."""
        return self._keys.key(prompt)

    def lookup(self, prompts: Iterable[str]) -> Dict[str, str]:
        """``{prompt: answer}`` for the prompts already answered."""
        by_key = {self.key(p): p for p in prompts}
        found: Dict[str, str] = {}
        keys = list(by_key)
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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def merge(self, rows: Sequence[Tuple[str, str]]) -> int:
        """Fold ``(key, answer)`` rows (keys already computed: ``intent/shards.py``'s blocks) in one
        transaction, ``INSERT OR IGNORE``: an answer already cached is kept, so merging the same
        block twice, or two blocks that overlap, changes nothing. Returns the rows inserted."""
        now = time.time()
        before = self._db.total_changes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR IGNORE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                                 [(k, a, now) for k, a in rows])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._db.total_changes - before

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
