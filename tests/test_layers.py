"""Alignment-uniformity against the direct formulas (docs/METHOD.md Eq. 8-9) and the gated fusion."""
import itertools
import math

import pytest
import torch

from recbole_llm4sbr.model.alignment import AlignUniformLoss, alignment, uniformity
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
