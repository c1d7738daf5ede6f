"""Alignment-uniformity against the direct formulas (docs/METHOD.md Eq. 8-9) and the gated fusion."""
import itertools
import math

import pytest
import torch

from recbole_llm4sbr.model.alignment import AlignUniformLoss, align_uniform_views, alignment, uniformity
from recbole_llm4sbr.model.fusion import GatedFusion


def test_alignment_and_uniformity_match_direct_formulas():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    direct_a = sum(float(((x[i] - y[i]) ** 2).sum()) for i in range(5)) / 5
    pairs = list(itertools.combinations(range(5), 2))
    direct_u = math.log(sum(math.exp(-2 * float(((x[i] - x[j]) ** 2).sum())) for i, j in pairs) / len(pairs))
    assert alignment(x, y).item() == pytest.approx(direct_a, rel=1e-5)
    assert uniformity(x).item() == pytest.approx(direct_u, rel=1e-5)


def test_align_uniform_loss_normalises_and_combines():
    torch.manual_seed(1)
    h, t = torch.randn(6, 8) * 3, torch.randn(6, 8) * 0.2
    xn, yn = torch.nn.functional.normalize(h, dim=1), torch.nn.functional.normalize(t, dim=1)
    expected = alignment(xn, yn) + (uniformity(xn) + uniformity(yn)) / 2
    assert AlignUniformLoss()(h, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert AlignUniformLoss()(h, h).item() < AlignUniformLoss()(h, -h).item()  # aligned is better
    assert uniformity(torch.ones(1, 3)).item() == 0.0  # one row: no pair, no NaN


@pytest.mark.parametrize("dtype, batch", [(torch.float64, 1), (torch.float64, 2), (torch.float64, 9),
                                          (torch.float32, 2), (torch.float32, 100)])
def test_fused_align_uniform_equals_the_per_view_definition(dtype, batch):
    # the model's one-op loss over all views (hand-written backward) is the sum of the per-view
    # definition, value and gradients, up to rounding; also for a zero row and two identical rows
    torch.manual_seed(batch)
    x = torch.randn(2, batch, 8, dtype=dtype) * 3
    y = torch.randn(2, batch, 8, dtype=dtype) * 0.2
    if batch > 2:
        x[0, 1] = 0.0
        x[1, 2] = x[1, 3]
    x.requires_grad_(), y.requires_grad_()
    ref = sum(AlignUniformLoss()(x[v], y[v]) for v in range(2))
    ref_grads = torch.autograd.grad(ref * 0.7, (x, y))
    fused = align_uniform_views(x, y)
    grads = torch.autograd.grad(fused * 0.7, (x, y))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(fused, ref, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **tol)
    if dtype == torch.float64 and batch == 2:
        assert torch.autograd.gradcheck(align_uniform_views, (x.detach().requires_grad_(), y.detach().requires_grad_()))
    with pytest.raises(ValueError, match="V, B, d"):
        align_uniform_views(x[0], y[0])


def test_gated_fusion_shapes_and_unpaired_behaviour():
    torch.manual_seed(0)
    b = {"global": torch.randn(4, 8), "local": torch.randn(4, 8)}
    both = GatedFusion(8, ["long", "short"], {"long": "global", "short": "local"})
    out = both(b, {"long": torch.randn(4, 8), "short": torch.randn(4, 8)})
    assert out.shape == (4, 8) and both.out.in_features == 16 and both.unpaired == []
    short_only = GatedFusion(8, ["short"], {"long": "global", "short": "local"})
    assert short_only.unpaired == ["global"] and short_only.out.in_features == 16
    assert short_only(b, {"short": torch.randn(4, 8)}).shape == (4, 8)


def test_gate_is_the_papers_scalar_weighting():
    fusion = GatedFusion(3, ["long"], {"long": "global"})
    h, intent = torch.randn(2, 3), torch.randn(2, 3)
    q = fusion.gates["long"].weight  # [1, 3]
    gate = torch.sigmoid(h + intent) @ q.t()  # a = q^T sigmoid(H + h~)
    local = torch.randn(2, 3)
    expected = fusion.out(torch.cat([h * gate, local], dim=-1))
    got = fusion({"global": h, "local": local}, {"long": intent})
    assert torch.allclose(got, expected, atol=1e-6)


def test_bad_view_pairing_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="view_behaviour"):
        GatedFusion(4, ["mid"], {"mid": "medium"})
