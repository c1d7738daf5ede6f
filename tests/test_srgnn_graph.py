"""LLM4SBR_SRGNN/GCSAN build their session graphs batched (``views.session_graphs``): exactly the
graphs RecBole's per-sample ``_get_slice`` builds, on random batches with repeats and padding."""
from types import SimpleNamespace

import pytest
import torch
from recbole.model.sequential_recommender.gcsan import GCSAN
from recbole.model.sequential_recommender.srgnn import SRGNN

from recbole_llm4sbr.model.views import session_graphs
from recbole_llm4sbr.model.wrapper import llm4sbr_class

CPU = SimpleNamespace(device=torch.device("cpu"))


def random_batch(seed: int, batch: int = 64, width: int = 12, n_items: int = 6) -> torch.Tensor:
    """Right-padded sessions of length 0..width over few ids (many repeats and self-loops), plus
    rows RecBole never makes but its loop accepts: a zero inside a row, no padding at all."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n_items + 1, (batch, width), generator=g)
    lengths = torch.randint(0, width + 1, (batch,), generator=g)
    seq[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    seq[0] = torch.tensor([3, 3, 3] + [0] * (width - 3))  # one node, a self-loop
    seq[1] = torch.arange(1, width + 1) % n_items + 1  # full row, no padding
    seq[2, :4] = torch.tensor([2, 0, 5, 1])  # a zero inside: RecBole stops at it
    seq[3, :4] = torch.tensor([0, 4, 4, 2])  # a leading zero: edge 0 -> 4, then stop
    return seq


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_graphs_equal_recboles(seed):
    seq = random_batch(seed)
    expected = SRGNN._get_slice(CPU, seq)
    got = session_graphs(seq)
    names = ("alias_inputs", "A", "items", "mask")
    for name, want, have in zip(names, expected, got):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert torch.equal(have, want), name
    for want, have in zip(GCSAN._get_slice(CPU, seq), got[:3]):
        assert torch.equal(have, want)


def test_wrapped_graph_bases_use_the_batched_build():
    for base, stock, n_out in (("SRGNN", SRGNN, 4), ("GCSAN", GCSAN, 3)):
        cls = llm4sbr_class(base)
        seq = random_batch(7, batch=8)
        out = cls._get_slice(CPU, seq)
        assert len(out) == n_out and cls._get_slice is not stock._get_slice
        assert all(torch.equal(a, b) for a, b in zip(out, session_graphs(seq)))
