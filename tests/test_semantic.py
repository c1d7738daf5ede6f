"""semantic_at_inference (LLM-free serving, EIMF) and the behaviour-side text target loss
(``text_target_weight``, formerly ``semantic_pred_weight``), on synthetic intents."""

import numpy as np
import pytest
import torch

from recbole_llm4sbr.data import intents as intents_module
from recbole_llm4sbr.model.semantic import text_target_loss
from tinydata import build_tiny_model, synthetic_intents, use_synthetic_intents, write_tiny_dataset


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return use_synthetic_intents(tmp_path, monkeypatch)


build_model = build_tiny_model


def test_defaults_keep_llm4sbr_unchanged(tiny):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path)
    assert model.semantic_at_inference is True and model.text_target_weight == 0.0 and model.eimf_weight == 0.0
    assert model.text_target_head is None and model.eimf is None and model.item_text_vectors is None
    model.train()
    terms = model.calculate_loss(next(iter(train)))
    assert len(terms) == 2  # CE + tau * alignment-uniformity, as in the paper


def test_text_target_loss_matches_the_formula():
    z = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # row 0 = padding
    targets = torch.tensor([1, 3])
    expected = []
    for b in range(2):
        logits = [float(z[b] @ e[j]) for j in range(1, 4)]  # padding left out
        log_norm = np.log(np.sum(np.exp(logits)))
        expected.append(log_norm - logits[targets[b] - 1])
    assert text_target_loss(z, e, targets).item() == pytest.approx(np.mean(expected), rel=1e-6)


@pytest.mark.parametrize("semantic_at_inference", [True, False])
def test_text_target_is_its_own_loss_term(tiny, semantic_at_inference):
    tmp_path, table = tiny
    dataset, (train, _, _), model, _ = build_model(
        tmp_path, semantic_at_inference=semantic_at_inference, text_target_weight=0.5)
    batch = next(iter(train))
    model.train()
    torch.manual_seed(0)
    ce, au, sp = model.calculate_loss(batch)
    assert torch.isfinite(sp) and sp.item() > 0
    # the catalogue's text embeddings in the dataset's item-id order, padding zero
    tokens = dataset.field2id_token["item_id"]
    assert np.allclose(model.item_text_vectors[0].numpy(), 0)
    row = table.item_tokens.index(tokens[5])
    assert np.allclose(model.item_text_vectors[5].numpy(), table.item_vectors[row])
    # the term is weight * CE(P s, E_text) of the fused session vector s, by the direct formula
    model.eval()  # SR-GNN has no dropout: the same s as in training
    with model.call_state(batch):
        s = model.forward(batch["item_id_list"], batch["item_length"])
    z = model.text_target_head(s).detach().numpy().astype(np.float64)
    e = model.item_text_vectors.numpy().astype(np.float64)
    logits = z @ e[1:].T
    target = batch["item_id"].numpy() - 1
    direct = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(target)), target])
    assert sp.item() == pytest.approx(0.5 * direct, rel=1e-4)
    # and it trains the head
    sp.backward()
    assert model.text_target_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("semantic_at_inference", [True, False])
def test_both_modes_train(tiny, semantic_at_inference):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(
        tmp_path, semantic_at_inference=semantic_at_inference, text_target_weight=0.5)
    batch = next(iter(train))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        terms = model.calculate_loss(batch)
        loss = sum(terms)
        assert len(terms) == 3 and all(torch.isfinite(t) for t in terms)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.projection.weight.grad.abs().sum() > 0  # the intents still train T through L_au


def test_llm_free_forward_never_reads_intents(tiny):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path, semantic_at_inference=False, text_target_weight=0.5)
    batch = next(iter(train))
    # training: the fused vector (what the loss scores) does not depend on the intents
    model.train()
    ce, au, sp = model.calculate_loss(batch)
    model.intent_vectors.mul_(-3.0).add_(1.0)
    ce2, au2, sp2 = model.calculate_loss(batch)
    assert torch.allclose(ce, ce2) and torch.allclose(sp, sp2) and not torch.allclose(au, au2)
    # prediction: no prefix key needed, no intent read (even when there are none)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        batch_without_key = batch.copy() if hasattr(batch, "copy") else batch
        del batch_without_key.interaction["prefix_key"]
        model.intent_vectors = None
        assert torch.equal(model.full_sort_predict(batch_without_key), scores)
        assert model.predict(batch_without_key).shape == (len(batch),)


def test_semantic_model_still_needs_its_intents(tiny):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path)
    batch = next(iter(train))
    model.eval()
    del batch.interaction["prefix_key"]
    with pytest.raises(KeyError, match="prefix_key"):
        model.full_sort_predict(batch)


@pytest.mark.parametrize("model_name", ["LLM4SBR_NARM", "LLM4SBR_BERT4Rec", "LLM4SBR_GRU4Rec"])
def test_llm_free_other_bases(tiny, model_name):
    tmp_path, _ = tiny
    dataset, (train, _, _), model, _ = build_model(
        tmp_path, model=model_name, semantic_at_inference=False, text_target_weight=0.5,
        n_layers=1, n_heads=1, inner_size=32, hidden_size=24 if model_name != "LLM4SBR_BERT4Rec" else 16)
    batch = next(iter(train))
    model.train()
    terms = model.calculate_loss(batch)
    assert len(terms) == 3 and all(torch.isfinite(t) for t in terms)
    model.eval()
    del batch.interaction["prefix_key"]
    with torch.no_grad():
        assert model.full_sort_predict(batch).shape == (len(batch), dataset.item_num)


def test_text_target_needs_catalogue_embeddings(tmp_path, monkeypatch):
    folder = write_tiny_dataset(tmp_path)
    table = synthetic_intents(folder)
    table.item_tokens = table.item_vectors = None  # an older table
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    with pytest.raises(ValueError, match="items.npy"):
        build_model(tmp_path, text_target_weight=0.5)
