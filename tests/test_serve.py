"""Serving trained checkpoints (recbole_llm4sbr.serve): end to end on a tiny dataset with the real
stage 1 (``text`` backend + the packaged MiniLM encoder), LLM-free and semantic models, bad inputs, CLI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm4sbr import serve
from recbole_llm4sbr.serve import ServeError, recommend
from tinydata import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent


def train(root, name, **overrides):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    config_dict = {"data_path": str(root / "data"), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(root / "saved" / name), "embedding_size": 16,
                   "intent_backend": "text", **overrides}
    result = run_recbole_llm4sbr("LLM4SBR_SRGNN", "tiny", config_dict=config_dict, read_cmd_line=False)
    return result["model_file"]


def train_both(root):
    """``(root, LLM-free checkpoint, semantic checkpoint)`` trained on a tiny dataset under ``root``."""
    torch.set_num_threads(1)
    write_tiny_dataset(root / "data", n_sessions=90)
    free = train(root, "free", semantic_at_inference=False, text_target_weight=0.5)
    semantic = train(root, "semantic")
    return root, free, semantic


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    yield train_both(tmp_path_factory.mktemp("serve"))
    serve.clear_cache()


def session_prefixes(root):
    lines = (root / "data" / "tiny" / "tiny.test.inter").read_text().splitlines()[1:]
    return [line.split("\t")[1].split() for line in lines]


def copy_without_table(root, name):
    """The dataset's benchmark files and item texts in a new data_path, no intent table."""
    target = root / name
    if not target.exists():
        shutil.copytree(root / "data", target)
        shutil.rmtree(target / "tiny" / "intent")
    assert not (target / "tiny" / "intent").exists()
    return target


def test_llm_free_serving_needs_no_intent_table(trained):
    root, free, _ = trained
    session = session_prefixes(root)[0]
    with_table = recommend(free, session, k=10)
    assert with_table.intents is None and with_table.semantic_at_inference is False
    serve.clear_cache()
    bare = copy_without_table(root, "bare")
    without = recommend(free, session, k=10, data_path=str(bare))
    assert without.items == with_table.items
    assert np.allclose(without.scores, with_table.scores, atol=1e-6)
    # a session the dataset never saw: no LLM, no table, still served
    novel = recommend(free, ["130", "101", "117"], k=5, data_path=str(bare))
    assert len(novel.items) == 5


def test_llm_free_serving_matches_the_model_in_the_evaluator(trained):
    """The served scores are the full_sort_predict of the checkpoint's model on the test batch."""
    from recbole.data import data_preparation

    from recbole_llm4sbr.data.dataset import LLM4SBRDataset
    from recbole_llm4sbr.utils import get_model

    root, free, _ = trained
    state = torch.load(free, map_location="cpu", weights_only=False)
    config = state["config"]
    dataset = LLM4SBRDataset(config)
    _, _, test = data_preparation(config, dataset)
    model = get_model(config["model"])(config, dataset)
    model.load_state_dict(state["state_dict"])
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        expected = model.full_sort_predict(interaction)[0]
    tokens = dataset.id2token("item_id", interaction["item_id_list"][0][: interaction["item_length"][0]].numpy())
    got = recommend(free, list(tokens), k=5)
    expected[0] = float("-inf")
    top = torch.topk(expected, 5)
    assert got.items == list(dataset.id2token("item_id", top.indices.numpy()))
    assert np.allclose(got.scores, top.values.numpy(), atol=1e-5)


def test_a_checkpoint_whose_config_holds_a_retired_key_still_serves(trained, tmp_path):
    """Checkpoints saved before ``semantic_pred_weight`` was retired carry it (0) in their config."""
    root, free, _ = trained
    state = torch.load(free, map_location="cpu", weights_only=False)
    state["config"].final_config_dict["semantic_pred_weight"] = 0.0
    old = tmp_path / "old.pth"
    torch.save(state, old)
    session = session_prefixes(root)[0]
    assert recommend(str(old), session, k=10).items == recommend(free, session, k=10).items


def test_recommend_returns_k_sorted_tokens_never_padding(trained):
    root, free, semantic = trained
    catalogue = {line.split("\t")[0] for line in (root / "data" / "tiny" / "tiny.itemtext").read_text().splitlines()[1:]}
    for ckpt in (free, semantic):
        rec = recommend(ckpt, session_prefixes(root)[1], k=7)
        assert len(rec.items) == 7 == len(rec.scores) == len(set(rec.items))
        assert rec.scores == sorted(rec.scores, reverse=True)
        assert "[PAD]" not in rec.items and set(rec.items) <= catalogue
    # the whole catalogue, still no padding
    rec = recommend(free, "101 104", k=len(catalogue))
    assert set(rec.items) == catalogue


def test_semantic_model_explains_with_its_intents(trained):
    root, _, semantic = trained
    session = session_prefixes(root)[2]
    rec = recommend(semantic, session, k=5)
    assert rec.semantic_at_inference is True and rec.intent_source == "table"
    assert set(rec.intents) == {"long", "short"}
    for entry in rec.intents.values():
        assert entry["answer"].strip()  # text backend: the prefix's own item names
        assert len(entry["items"]) == 5 and len(entry["sims"]) == 5  # r = 5 grounded items
    texts = dict(line.split("\t") for line in (root / "data" / "tiny" / "tiny.itemtext").read_text().splitlines()[1:])
    assert texts[session[-1]] in rec.intents["short"]["answer"]


def test_semantic_model_runs_stage1_for_an_unseen_session(trained):
    from recbole_llm4sbr.intent import load_intent_table

    root, _, semantic = trained
    unseen = ["130", "101", "117", "104"]
    rec = recommend(semantic, unseen, k=5)
    assert rec.intent_source == "online" and set(rec.intents) == {"long", "short"}
    assert all(len(e["items"]) == 5 for e in rec.intents.values())
    # online stage 1 reproduces the table's row for a prefix the table has
    served = serve.load(semantic)
    known = session_prefixes(root)[0]
    found = served.online().infer(known)
    table = load_intent_table(served.dataset.intent_table_path)
    assert np.allclose(found.vectors, table.vectors[table.row(found.key)], atol=1e-5)
    # and the scores match those of the table's row
    via_table = recommend(semantic, known, k=5)
    ids = served.session_ids(known)[1]
    with torch.no_grad():
        online_scores = served.model.full_sort_predict_with_intents(
            served.interaction(ids, None), torch.from_numpy(found.vectors).unsqueeze(0))[0]
    assert np.allclose(sorted(online_scores[1:].numpy(), reverse=True)[:5], via_table.scores, atol=1e-4)
    with pytest.raises(ServeError, match="not in the intent table"):
        recommend(semantic, unseen, k=5, online=False)


def test_semantic_checkpoint_without_its_table_says_how_to_build_it(trained):
    root, _, semantic = trained
    bare = copy_without_table(root, "bare")
    with pytest.raises(ServeError, match="python -m recbole_llm4sbr.intent") as err:
        recommend(semantic, session_prefixes(root)[0], k=5, data_path=str(bare))
    assert "semantic_at_inference" in str(err.value)


def test_bad_inputs(trained, tmp_path):
    root, free, _ = trained
    with pytest.raises(ServeError, match=r"unknown item tokens \['999', 'nope'\]"):
        recommend(free, ["101", "999", "nope"], k=5)
    with pytest.raises(ServeError, match="not found"):
        recommend(tmp_path / "missing.pth", ["101"], k=5)
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("not a checkpoint")
    with pytest.raises(ServeError, match="cannot be read"):
        recommend(bogus, ["101"], k=5)
    for k in (0, -3):
        with pytest.raises(ServeError, match="at least 1"):
            recommend(free, ["101"], k=k)
    with pytest.raises(ServeError, match="exceeds the catalogue"):
        recommend(free, ["101"], k=10_000)
    with pytest.raises(ServeError, match="empty"):
        recommend(free, [], k=5)


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "recbole_llm4sbr.serve", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_end_to_end(trained):
    root, free, semantic = trained
    session = " ".join(session_prefixes(root)[0])
    out = run_cli([f"--checkpoint={free}", f"--items={session}", "--items=101,104", "--k=3", "--json"], cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert len(first["items"]) == 3 and first["intents"] is None and second["session"] == ["101", "104"]
    assert first["items"] == recommend(free, session, k=3).items
    texts = dict(line.split("\t") for line in (root / "data" / "tiny" / "tiny.itemtext").read_text().splitlines()[1:])
    assert first["titles"] == [texts[t] for t in first["items"]]  # from <ds>.itemtext
    out = run_cli([f"--checkpoint={semantic}", f"--items={session}", "--k=4"], cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "intents (table)" in out.stdout and "grounded items" in out.stdout and "Movie number" in out.stdout
    assert len([line for line in out.stdout.splitlines() if line[:1].isdigit()]) == 4


@pytest.mark.parametrize("args, needle", [
    (["--items=101 999", "--k=3"], "unknown item tokens ['999']"),
    (["--items=101", "--k=0"], "k must be at least 1"),
    (["--items=101", "--k=x"], "k must be a positive integer"),
])
def test_cli_bad_input_is_one_clear_line(trained, args, needle):
    root, free, _ = trained
    out = run_cli([f"--checkpoint={free}", *args], cwd=root)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr


def test_cli_missing_checkpoint(tmp_path):
    out = run_cli([f"--checkpoint={tmp_path / 'no.pth'}", "--items=1 2"], cwd=tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_online_stage1_imports_no_recbole_and_no_torch():
    code = ("import sys; import recbole_llm4sbr.intent.online; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('recbole', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_stock_model_checkpoint_serves_too(tmp_path):
    """Any checkpoint the plugin's trainer saved: here stock SR-GNN (no intents at all)."""
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    torch.set_num_threads(1)
    write_tiny_dataset(tmp_path / "data", n_sessions=60)
    result = run_recbole_llm4sbr("SRGNN", "tiny", read_cmd_line=False, config_dict={
        "data_path": str(tmp_path / "data"), "epochs": 1, "show_progress": False, "state": "WARNING",
        "checkpoint_dir": str(tmp_path / "saved"), "embedding_size": 16})
    rec = recommend(result["model_file"], ["101", "104", "107"], k=4)
    assert len(rec.items) == 4 and rec.intents is None and rec.model == "SRGNN"
    assert rec.scores == sorted(rec.scores, reverse=True)
