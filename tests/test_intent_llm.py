"""Stage 1 through a real LLM backend: the transformers backend on the tiny random chat model
(tests/conftest.py), so the pipeline is exercised against the real Backend contract."""
from __future__ import annotations

import numpy as np
import pytest

from intent_helpers import base_settings, unique_prefix_count, write_dataset

from recbole_llm4sbr.intent import ensure_intent_table, load_intent_table

# the backend module always imports; what the backend (and the tiny model) need may not be installed
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

torch.set_num_threads(1)


def test_transformers_backend_end_to_end(tmp_path, tiny_chat_model):
    write_dataset(tmp_path)
    s = base_settings(tmp_path, intent_backend="transformers", intent_model=tiny_chat_model,
                      intent_device="cpu", intent_max_tokens=8, intent_batch_size=4,
                      intent_samples="all")  # auto would be typical here (an LLM on a CPU)
    folder = ensure_intent_table(s)
    t = load_intent_table(folder)
    n = unique_prefix_count()
    assert folder.name.startswith("transformers-")
    assert t.meta["backend_info"]["backend"] == "transformers"
    summ = t.meta["summary"]
    assert summ["sent"] == 2 * n and summ["failed"] == 0
    for rec in t.answers():  # random weights: gibberish, but cleaned or fallen back, never empty
        for v in rec["views"].values():
            assert v["answer"] and len(v["answer"]) <= 200 and len(v["items"]) == 5
    assert np.all(np.linalg.norm(t.vectors, axis=2) > 0)
    # the same settings again: up to date; forcing a rebuild sends nothing (all cached)
    assert ensure_intent_table(s) == folder
    from recbole_llm4sbr.intent import build_intent_table

    assert load_intent_table(build_intent_table(s)).meta["summary"]["sent"] == 0
