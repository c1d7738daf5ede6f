"""EIMF's LLM-side semantic prediction + modality alignment (``eimf_weight``): the loss against a direct
numpy computation, its reach into the base's parameters, and that prediction never uses it."""

import numpy as np
import pytest
import torch

from recbole_llm4sbr.model.semantic import ALIGN_WEIGHTS, EIMFSemantic, info_nce
from tinydata import build_tiny_model, use_synthetic_intents


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return use_synthetic_intents(tmp_path, monkeypatch)


build_model = build_tiny_model


# ---- the loss on fixed tensors ----------------------------------------------------------------------


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _nce(a, b, temperature=0.1):
    sim = _unit(a) @ _unit(b).T / temperature
    return np.mean([np.log(np.exp(sim[i]).sum()) - sim[i, i] for i in range(len(a))])


def test_eimf_loss_matches_a_direct_computation():
    torch.manual_seed(3)
    B, V, d_text, d, d_item, n = 4, 3, 5, 6, 7, 9
    head = EIMFSemantic(d_text, d, d_item).double()
    interests = torch.randn(B, V, d_text, dtype=torch.float64)
    item_text = torch.nn.functional.normalize(torch.randn(n, d_text, dtype=torch.float64), dim=1)
    item_text[0] = 0
    targets = torch.tensor([1, 4, 8, 4])
    session = torch.randn(B, d, dtype=torch.float64)
    target_item = torch.randn(B, d_item, dtype=torch.float64)
    terms = head(interests, item_text, targets, session, target_item)

    W = {k: (getattr(head, k).weight.detach().numpy(), getattr(head, k).bias.detach().numpy())
         for k in ("wq", "wk", "wv", "to_session", "to_item")}
    lin = lambda k, x: x @ W[k][0].T + W[k][1]  # noqa: E731
    H, E, tgt = interests.numpy(), item_text.numpy(), targets.numpy()
    s, v = session.numpy(), target_item.numpy()
    t = np.zeros((B, d_text))
    for b in range(B):
        att = _softmax(lin("wq", H[b]) @ lin("wk", H[b]).T / np.sqrt(d_text)) @ lin("wv", H[b])  # [V, d_text]
        t[b] = att[np.argmax(att @ E[tgt[b]])]  # the interest closest to the target's text
    logits = t @ E[1:].T  # padding left out
    semantic = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(B), tgt - 1])
    gt, fe = lin("to_session", t), lin("to_item", E[tgt])
    cos = lambda a, b: np.mean(1 - np.sum(_unit(a) * _unit(b), axis=1))  # noqa: E731
    w = ALIGN_WEIGHTS
    alignment = w[0] * _nce(s, gt) + w[1] * _nce(v, fe) + w[2] * cos(s, gt) + w[3] * cos(v, fe)
    assert terms.semantic.item() == pytest.approx(semantic, rel=1e-9)
    assert terms.alignment.item() == pytest.approx(alignment, rel=1e-9)
    assert terms.total.item() == pytest.approx(semantic + alignment, rel=1e-9)
    assert ALIGN_WEIGHTS == (0.4, 0.4, 0.1, 0.1)


def test_info_nce_of_aligned_pairs_is_low_and_of_swapped_pairs_high():
    a = torch.eye(3, dtype=torch.float64)
    assert info_nce(a, a).item() == pytest.approx(np.log(1 + 2 * np.exp(-10)), rel=1e-4)  # cos 1 vs 0, / 0.1
    assert info_nce(a, a[[1, 2, 0]]).item() > 9


def test_readout_is_the_interest_closest_to_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    query = torch.tensor([[0.2, 0.9], [0.9, 0.2]])
    assert torch.equal(EIMFSemantic.readout(interests, query), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


# ---- in the wrapper -----------------------------------------------------------------------------------


@pytest.mark.parametrize("semantic_at_inference", [True, False])
def test_eimf_is_its_own_loss_term_and_trains_the_base(tiny, semantic_at_inference):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path, semantic_at_inference=semantic_at_inference,
                                             eimf_weight=0.5, au_weight=0.0)
    assert model.text_target_head is None and model.eimf is not None
    batch = next(iter(train))
    model.train()
    ce, eimf = model.calculate_loss(batch)
    # the term is weight * L_eimf of the first pass's fused vector and the batch's intent rows
    model.eval()  # SR-GNN has no dropout: the same fused vector as in training
    with model.call_state(batch):
        s = model.forward(batch["item_id_list"], batch["item_length"])
    direct = model.eimf_terms(s, batch["prefix_key"], batch["item_id"]).total
    assert eimf.item() == pytest.approx(0.5 * direct.item(), rel=1e-5)
    # the alignment reaches the behaviour encoder: the base's own parameters get a gradient from it alone
    model.zero_grad()
    eimf.backward()
    assert model.gnn.w_ih.grad.abs().sum() > 0
    assert model.item_embedding.weight.grad.abs().sum() > 0
    assert model.eimf.wv.weight.grad.abs().sum() > 0


def test_eimf_reads_the_intents_only_in_training(tiny):
    tmp_path, _ = tiny
    _, (train, _, _), model, _ = build_model(tmp_path, semantic_at_inference=False, eimf_weight=0.5)
    batch = next(iter(train))
    model.train()
    torch.manual_seed(0)
    ce, au, eimf = model.calculate_loss(batch)
    model.intent_vectors.mul_(-3.0).add_(1.0)
    torch.manual_seed(0)
    ce2, au2, eimf2 = model.calculate_loss(batch)
    assert torch.allclose(ce, ce2) and not torch.allclose(eimf, eimf2)  # the intents enter the loss only
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        for p in model.eimf.parameters():  # its heads do not score
            p.add_(1.0)
        without_key = batch.copy() if hasattr(batch, "copy") else batch
        del without_key.interaction["prefix_key"]
        model.intent_vectors, model.item_text_vectors = None, None  # nothing of stage 1 is read
        assert torch.equal(model.full_sort_predict(without_key), scores)


def test_eimf_on_other_bases(tiny):
    tmp_path, _ = tiny
    for name in ("LLM4SBR_NARM", "LLM4SBR_GRU4Rec"):
        _, (train, _, _), model, _ = build_model(tmp_path, model=name, eimf_weight=0.1, text_target_weight=0.1,
                                                 hidden_size=24)
        model.train()
        terms = model.calculate_loss(next(iter(train)))
        assert len(terms) == 4 and all(torch.isfinite(t) for t in terms)
