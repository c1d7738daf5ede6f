"""LLM4SBR_SRGNN: one training step lowers the loss; predict/full_sort_predict shapes; ablations."""
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm4sbr.data import intents as intents_module
from tinydata import as_if_trained, synthetic_intents, write_tiny_dataset


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    folder = write_tiny_dataset(tmp_path)
    table = synthetic_intents(folder)
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    return tmp_path, table


def build_model(tmp_path, **overrides):
    from recbole_llm4sbr.quick_start import build, make_config

    config_dict = {"data_path": str(tmp_path), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(tmp_path / "saved"), "train_batch_size": 32,
                   "intent_strength": 1.0}  # the intent term in use (SR-GNN ships 0: alignment only)
    config_dict.update(overrides)
    config = make_config("LLM4SBR_SRGNN", "tiny", config_dict=config_dict, read_cmd_line=False)
    return build(config)


def test_one_training_step_lowers_the_loss(tiny):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path)
    batch = next(iter(train))
    opt = torch.optim.SGD(model.parameters(), lr=0.001)  # plain gradient step: must descend
    model.train()
    ce, au = model.calculate_loss(batch)
    assert torch.isfinite(ce) and torch.isfinite(au) and au.item() != 0.0
    (ce + au).backward()
    opt.step()
    ce_after, au_after = model.calculate_loss(batch)
    assert ce_after.item() < ce.item()  # the recommendation loss descends
    assert au_after.item() != au.item()  # the alignment term moves (its gradient is steep at the start)
    assert model.projection.weight.grad is not None
    assert not any(name.startswith("intent_vectors") for name, _ in model.named_parameters())


def test_predict_and_full_sort_predict_shapes(tiny):
    tmp_path, _ = tiny
    dataset, (train, valid, test), model, _ = build_model(tmp_path)
    model.eval()
    batch = next(iter(train))
    n = len(batch)
    with torch.no_grad():
        assert model.predict(batch).shape == (n,)
        assert model.full_sort_predict(batch).shape == (n, dataset.item_num)
        # the base's own scoring on the fused representation: one pass, one matmul
        with model.call_state(batch):
            fused = model.forward(batch["item_id_list"], batch["item_length"])
        assert fused.shape == (n, model.embedding_size)
        assert torch.allclose(model.full_sort_predict(batch), fused @ model.item_embedding.weight.t(), atol=1e-5)


def test_intents_change_the_scores(tiny):
    tmp_path, table = tiny
    _, (train, _, _), model, _ = build_model(tmp_path)
    as_if_trained(model).eval()
    batch = next(iter(train))
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        model.intent_vectors.zero_()
        assert not torch.allclose(scores, model.full_sort_predict(batch))


def test_ablation_switches(tiny):
    tmp_path, table = tiny
    _, (train, _, _), no_au, _ = build_model(tmp_path, au_weight=0.0)
    no_au.train()
    assert torch.is_tensor(no_au.calculate_loss(next(iter(train))))  # CE only
    _, _, short_only, _ = build_model(tmp_path, llm4sbr_views=["short"])
    assert short_only.views == ["short"] and short_only.fusion.unpaired == ["global"]
    dataset, _, raw, _ = build_model(tmp_path, intent_localization=False)
    token = dataset.field2id_token["prefix_key"][1]
    raw_row = raw._gather_intents(torch.tensor([1]))[0].numpy()
    assert np.array_equal(raw_row, table.raw[table.index[token]].astype(np.float16).astype(np.float32))
    assert not np.allclose(raw_row, table.vectors[table.index[token]], atol=1e-2)
    with pytest.raises(ValueError, match="llm4sbr_views"):
        build_model(tmp_path, llm4sbr_views=["mid"])


def test_trains_end_to_end_with_recbole_trainer(tiny):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    tmp_path, _ = tiny
    result = run_recbole_llm4sbr(
        "LLM4SBR_SRGNN", "tiny", read_cmd_line=False,
        config_dict={"data_path": str(tmp_path), "epochs": 2, "show_progress": False, "state": "WARNING",
                     "checkpoint_dir": str(tmp_path / "saved")})
    assert set(result["test_result"]) >= {"recall@10", "recall@20", "mrr@10", "mrr@20", "ndcg@10", "ndcg@20"}
    assert len(result["epoch_times"]) == 2
    assert Path(result["model_file"]).is_file()


def test_no_call_leaves_its_state_behind(tiny):
    """The per-call state (keys, given vectors, loss terms) is cleared even when the call fails, so
    a later forward cannot read an earlier batch's keys or vectors."""
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path)
    model.eval()
    batch = next(iter(train))
    seq, lengths = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        reference = model.full_sort_predict(batch)
        wrong = torch.zeros(len(batch), len(model.views), model.projection.in_features + 1)
        with pytest.raises(RuntimeError):  # the projection rejects the width, mid-call
            model.full_sort_predict_with_intents(batch, wrong)
        assert model._state is None
        with pytest.raises(RuntimeError, match="needs the batch's 'prefix_key'"):
            model.forward(seq, lengths)  # outside any call: no keys left over
        assert torch.equal(model.full_sort_predict(batch), reference)  # not the failed call's vectors
    model.train()
    real = model._adapter

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def views(self, model, call):
            raise ValueError("boom")

    model._adapter = Failing()
    with pytest.raises(ValueError, match="boom"):
        model.calculate_loss(batch)
    model._adapter = real
    assert model._state is None
    with pytest.raises(RuntimeError, match="needs the batch's 'prefix_key'"):
        model.forward(seq, lengths)
    # states nest: an inner call restores the outer one
    with model.call_state(batch) as outer:
        model.full_sort_predict(batch)
        assert model._state is outer


@pytest.mark.parametrize("base", ["STAMP", "SRGNN"])
def test_the_training_loss_is_the_per_view_alignment_uniformity_definition(tiny, base):
    # calculate_loss's alignment-uniformity term (fused over the views, model/alignment.py) equals the
    # per-view definition on the same batch (float32, fixed seed), and so does its gradient
    from recbole_llm4sbr.model.alignment import AlignUniformLoss
    from recbole_llm4sbr.model.views import Call

    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model_of(tmp_path, "LLM4SBR_" + base)
    batch = next(iter(train))
    model.train()
    torch.manual_seed(0)
    base_loss, au = model.calculate_loss(batch)
    with model.call_state(batch):
        seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
        call = Call((seq, lengths), {}, seq, lengths, None)
        global_view, local_view = model._adapter.views(model, call)
        behaviour = {"global": global_view, "local": local_view}
        intents = model._call_intents(call)
    ref = model.au_weight * sum(AlignUniformLoss()(behaviour[model.fusion.pairing[v]], intents[v]) for v in model.views)
    torch.testing.assert_close(au, ref, rtol=1e-5, atol=1e-7)
    got = torch.autograd.grad(au, model.projection.weight)[0]
    want = torch.autograd.grad(ref, model.projection.weight)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def build_model_of(tmp_path, model_name, **overrides):
    from recbole_llm4sbr.quick_start import build, make_config

    config_dict = {"data_path": str(tmp_path), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(tmp_path / "saved"), "train_batch_size": 32}
    config_dict.update(overrides)
    return build(make_config(model_name, "tiny", config_dict=config_dict, read_cmd_line=False))


def test_the_in_memory_intent_buffer_is_float16_and_gathers_the_tables_rows_rounded(tiny):
    # intent_buffer_dtype: float16 (default) halves the buffer; each batch's rows are float32, equal to
    # the float32 table's rows rounded to float16; intent_buffer_dtype: float32 keeps them exact
    tmp_path, table = tiny
    dataset, _, model, _ = build_model(tmp_path)
    assert dataset.intent_vectors.dtype == model.intent_vectors.dtype == torch.float16
    tokens = dataset.field2id_token["prefix_key"]
    keys = torch.arange(1, len(tokens))
    exact = torch.from_numpy(table.vectors[[table.index[t] for t in tokens[1:]]])
    assert exact.dtype == torch.float32
    gathered = model._gather_intents(keys)
    assert gathered.dtype == torch.float32
    assert torch.equal(gathered, exact.half().float())
    assert torch.allclose(gathered, exact, rtol=1e-3, atol=1e-4) and not torch.equal(gathered, exact)
    assert torch.equal(model._gather_intents(torch.tensor([0])), torch.zeros(1, *exact.shape[1:]))
    dataset32, _, model32, _ = build_model(tmp_path, intent_buffer_dtype="float32")
    assert dataset32.intent_vectors.dtype == model32.intent_vectors.dtype == torch.float32
    assert torch.equal(model32._gather_intents(keys), exact)
    assert model32.intent_vectors.nbytes == 2 * model.intent_vectors.nbytes


def test_the_intent_table_is_held_once_in_memory(tiny):
    # the model's buffer shares the dataset's storage when it reads every view in table order, and
    # takes its own copy only when it must differ (a subset of views, a control)
    tmp_path, _ = tiny
    dataset, _, model, _ = build_model(tmp_path)
    assert model.intent_vectors.data_ptr() == dataset.intent_vectors.data_ptr()
    dataset, _, model, _ = build_model(tmp_path, llm4sbr_views=["short"])
    assert model.intent_vectors.data_ptr() != dataset.intent_vectors.data_ptr()
    assert torch.equal(model.intent_vectors[:, 0], dataset.intent_vectors[:, 1].float())
    dataset, _, model, _ = build_model(tmp_path, intent_control="shuffled")
    assert model.intent_vectors.data_ptr() != dataset.intent_vectors.data_ptr()
