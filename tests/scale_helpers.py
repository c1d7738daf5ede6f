"""Helpers of tests/test_scale_stage1.py (no tests here): a transformers backend that records what
it is sent and can be made to fail, importable by name in Ray worker processes (``tests/`` is put on
their PYTHONPATH), and the answer cache read back as a dict."""
from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Dict, List, Sequence

from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

#: the registry entry a test puts under "transformers" while it plans (the plan names it for workers)
RECORDING = "scale_helpers:RecordingTransformers"


class RecordingTransformers(TransformersBackend):
    """The transformers backend (same ``name``, hence the same ``describe()`` and cache keys), which
    appends every prompt it is sent to a file under ``settings["record_dir"]`` and raises on any call
    holding a prompt that contains ``settings["fail_on"]`` (an injected worker failure)."""

    def generate(self, prompts: Sequence[str]) -> List[str]:
        prompts = list(prompts)
        record = self.settings.get("record_dir")
        if record:
            path = Path(record) / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"  # sorts by time
            path.write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
        fail = self.settings.get("fail_on")
        if fail and any(fail in p for p in prompts):
            raise RuntimeError(f"injected failure: a prompt contains {fail!r}")
        return super().generate(prompts)


def recorded(record_dir: Path) -> List[str]:
    """Every prompt sent to a RecordingTransformers with ``record_dir``, any process, in the order sent."""
    out: List[str] = []
    for path in sorted(Path(record_dir).glob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return out


def cache_rows(path: Path) -> Dict[str, str]:
    """``{key: answer}`` of an answers.sqlite."""
    db = sqlite3.connect(str(path))
    try:
        return dict(db.execute("SELECT key, answer FROM answers").fetchall())
    finally:
        db.close()
