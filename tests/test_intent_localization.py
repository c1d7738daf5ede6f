"""Intent localization, Eq. 4-5, against a hand-computed example (and not the authors' version)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from recbole_llm4sbr.intent.localization import localize, top_r_exact

torch.set_num_threads(1)

# four unit items in 2-d and two unit answers
ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
ANSWERS = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)


def authors_version(answers, items, r):
    """The released code's defect (docs/METHOD.md): weights of catalogue rows 0..r-1, divided by r."""
    sims = answers @ items.T
    idx = np.argsort(-sims, axis=1)[:, :r]
    return np.stack([(sims[j, :r, None] * items[idx[j]]).sum(0) / r for j in range(len(answers))])


def test_hand_computed_example():
    vec, idx, sims = localize(ANSWERS, ITEMS, topr=2)
    # answer (1,0): sims 1, 0, .6, .8 -> items 0 (1.0) and 3 (0.8): 1*(1,0) + .8*(.8,.6) = (1.64, .48)
    # answer (0,1): sims 0, 1, .8, .6 -> items 1 (1.0) and 2 (0.8): 1*(0,1) + .8*(.6,.8) = (.48, 1.64)
    np.testing.assert_array_equal(idx, [[0, 3], [1, 2]])
    np.testing.assert_allclose(sims, [[1.0, 0.8], [1.0, 0.8]], atol=1e-6)
    np.testing.assert_allclose(vec, [[1.64, 0.48], [0.48, 1.64]], atol=1e-6)
    assert vec.dtype == np.float32


def test_not_the_authors_buggy_version():
    vec, _, _ = localize(ANSWERS, ITEMS, topr=2)
    buggy = authors_version(ANSWERS, ITEMS, 2)
    np.testing.assert_allclose(buggy, [[0.5, 0.0], [0.3, 0.4]], atol=1e-6)  # what they compute
    assert not np.allclose(vec, buggy, atol=1e-3)


def test_r0_is_the_answer_itself():
    vec, idx, sims = localize(ANSWERS, ITEMS, topr=0)
    np.testing.assert_array_equal(vec, ANSWERS)
    assert idx.shape == (2, 0) and sims.shape == (2, 0)


def test_r_larger_than_catalogue_is_clamped(caplog):
    with caplog.at_level(logging.WARNING, logger="recbole_llm4sbr.intent"):
        vec, idx, _ = localize(ANSWERS, ITEMS, topr=10)
    assert idx.shape == (2, 4) and "exceeds" in caplog.text
    np.testing.assert_allclose(vec, ANSWERS @ ITEMS.T @ ITEMS, atol=1e-5)  # all items, own weights


def test_chunked_exact_search_matches_brute_force():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(97, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    answers = rng.normal(size=(41, 16)).astype(np.float32)
    answers /= np.linalg.norm(answers, axis=1, keepdims=True)
    # a tiny block budget forces many chunks in both the search and the weighted sum
    vec, idx, sims = localize(answers, items, topr=5, max_block_bytes=1000)
    full = answers @ items.T
    want_idx = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want_idx, 1), atol=1e-6)
    want = np.einsum("mr,mrd->md", np.take_along_axis(full, want_idx, 1), items[want_idx])
    np.testing.assert_allclose(vec, want, atol=1e-5)
    i2, s2 = top_r_exact(answers, items, 5)
    np.testing.assert_array_equal(i2, idx)


def test_large_catalogue_without_faiss_falls_back_to_exact(caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *a, **kw):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        vec, idx, _ = localize(ANSWERS, ITEMS, topr=2, faiss_threshold=1)
    assert "faiss is not installed" in caplog.text
    np.testing.assert_array_equal(idx, [[0, 3], [1, 2]])


def test_empty_catalogue_is_an_error():
    with pytest.raises(ValueError, match="catalogue"):
        localize(ANSWERS, np.zeros((0, 2), np.float32), topr=2)
