"""Shared helpers of the stage-1 tests: a tiny benchmark dataset and fake backends (no tests here,
hence no ``test_`` prefix; pytest puts ``tests/`` on the path, so test files import it by name)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from recbole_llm4sbr.intent.backends.base import Backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # lets the registry import fake backends as "intent_helpers:..." anywhere
    sys.path.insert(0, str(HERE))

DS = "tiny"
ITEMS: Dict[str, str] = {
    "1": "Toy Story (1995) -- Animation|Comedy",
    "2": "Jumanji (1995) -- Adventure|Children",
    "3": "Heat (1995) -- Action|Crime",
    "4": "Casino (1995) -- Crime|Drama",
    "5": "Sense and Sensibility (1995) -- Drama|Romance",
    "6": "Babe (1995) -- Children|Comedy",
    "7": "Se7en (1995) -- Crime|Thriller",
    "8": "Apollo 13 (1995) -- Drama",
}
#: split -> (session_id, prefix, target)
SPLIT_ROWS = {
    "train": [("1", "1", "2"), ("1", "1 2", "3"), ("2", "4", "5"), ("2", "4 5", "6"), ("3", "1", "2"), ("3", "1 2", "7")],
    "valid": [("4", "2 3", "8")],
    "test": [("5", "5 6", "7"), ("5", "5 6 7", "8")],
}
HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


def write_dataset(root: Path, ds: str = DS, items: Dict[str, str] = None, rows=None) -> Path:
    """``root/<ds>/`` with the three .inter files and the .itemtext (DESIGN.md format)."""
    folder = Path(root) / ds
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (rows or SPLIT_ROWS).items():
        with open(folder / f"{ds}.{split}.inter", "w", encoding="utf-8") as f:
            f.write(HEADER)
            f.writelines(f"{s}\t{p}\t{t}\n" for s, p, t in lines)
    with open(folder / f"{ds}.itemtext", "w", encoding="utf-8") as f:
        f.write("item_id\ttext\n")
        f.writelines(f"{k}\t{v}\n" for k, v in (ITEMS if items is None else items).items())
    return folder


def unique_prefix_count() -> int:
    return len({p for lines in SPLIT_ROWS.values() for _, p, _ in lines})


def base_settings(root: Path, **kw: Any) -> Dict[str, Any]:
    """Settings for the tiny dataset: text backend, no progress bars."""
    from recbole_llm4sbr.intent import load_settings

    over = {"data_path": str(root), "intent_backend": "text", "show_progress": False}
    over.update(kw)
    return load_settings(dataset=DS, overrides=over)


class EchoBackend(Backend):
    """Answers ``answer:<prompt's last line>``-ish strings and records every prompt it is sent."""

    name = "echo"
    sent: List[str] = []

    def describe(self) -> Dict[str, Any]:
        return {"backend": "echo", "temperature": self.settings.get("intent_temperature")}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        type(self).sent.extend(prompts)
        return [f"Answer: {p.splitlines()[0][:40]}" for p in prompts]


class EmptyBackend(Backend):
    """Answers nothing useful: every answer cleans to "" (exercises the fallback)."""

    name = "empty"

    def describe(self) -> Dict[str, Any]:
        return {"backend": "empty"}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        return ["assistant\n\n**1.** \"\"" for _ in prompts]


class FailingBackend(Backend):
    """Raises on every call (exercises retry-then-fallback)."""

    name = "failing"
    calls = 0

    def describe(self) -> Dict[str, Any]:
        return {"backend": "failing"}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        type(self).calls += 1
        raise RuntimeError("model fell over")


class SlowBackend(Backend):
    """Sleeps ``SLOW_BACKEND_S`` seconds (env, default 0.3) per prompt and hands each answer over as
    it finishes (``report_answers``, as the transformers backend does per decoded prompt); appends
    every prompt it finishes to the file named by ``SLOW_BACKEND_LOG`` (one JSON string a line)."""

    name = "slow"

    def describe(self) -> Dict[str, Any]:
        return {"backend": "slow"}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        delay = float(os.environ.get("SLOW_BACKEND_S", "0.3"))
        log = os.environ.get("SLOW_BACKEND_LOG")
        out = []
        for i, p in enumerate(prompts):
            self.report_step(f"prompt {i + 1}/{len(prompts)}")
            time.sleep(delay)
            out.append(f"Answer: {p.splitlines()[-1][:40]}")
            if log:
                with open(log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(p) + "\n")
            self.report_answers([i], [out[-1]])
        return out


def use_hash_encoder() -> None:
    """Stand the text encoder in with a hash of each text (unit rows, 16 dims), in this process: for
    tests of what happens around the LLM, where loading the real encoder would be most of the time."""
    import hashlib

    import numpy as np

    from recbole_llm4sbr.intent import encoder

    def encode(model, texts, batch_size=256, progress=True, desc="encode"):
        rows = [np.frombuffer(hashlib.sha256(t.encode("utf-8")).digest()[:16], dtype=np.uint8) for t in texts]
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), 16) - 127.5
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

    encoder.load_encoder = lambda name, device=None: None
    encoder.encode = encode


def subprocess_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env
