"""How the intents enter the session vector: the paper's gated fusion, or a residual on the base.

``fusion: paper`` (docs/METHOD.md Eq. 10-12): ``H_sess = W [segments]`` (below) replaces the vector
the base scores with. ``fusion: residual`` (the default) keeps the base's own vector ``s`` and adds
``intent_strength * R [H_sess; T h_1; ...; T h_V]`` (``IntentResidual``), with ``R`` initialised
to zero: an untrained wrapped model scores exactly like its base with the same weights, and the
intents (through the gates and directly) can only add what training finds on top of the base.

The gated fusion:

Each intent view v is paired with one behaviour view b(v) (``global`` or ``local``); its gate is the
scalar ``a_v = q_v^T sigmoid(H_b(v) + h~_v)`` and its segment ``H_b(v) * a_v``. A behaviour view that
no intent view is paired with (an ablation without that view) enters unweighted, so dropping a view
drops only its LLM signal. ``H_sess = W [segments]`` keeps the base model's hidden size, so the
base's own prediction layer and loss run unchanged.

Without intents (``intents=None``: LLM-free serving, ``semantic_at_inference: False``) each gate reads
its behaviour view alone, ``a_v = q_v^T sigmoid(H_b(v))``: same parameters and shapes, no intent
input, and the model trains and serves on exactly this path.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from recbole_llm4sbr.errors import ConfigError

BEHAVIOURS = ("local", "global")
FUSIONS = ("residual", "paper")


class GatedFusion(nn.Module):
    def __init__(self, hidden_size: int, views: Sequence[str], pairing: Mapping[str, str]):
        super().__init__()
        for view in views:
            if pairing.get(view) not in BEHAVIOURS:
                raise ConfigError(
                    f"view_behaviour['{view}'] = {pairing.get(view)!r}; each view in llm4sbr_views "
                    f"needs one of {BEHAVIOURS}. Fix: set view_behaviour: {{{view}: global}} (or local)."
                )
        self.views = list(views)
        self.pairing = {v: pairing[v] for v in self.views}
        self.unpaired = [b for b in BEHAVIOURS if b not in self.pairing.values()]
        self.gates = nn.ModuleDict({v: nn.Linear(hidden_size, 1, bias=False) for v in self.views})
        n_segments = len(self.views) + len(self.unpaired)
        self.out = nn.Linear(n_segments * hidden_size, hidden_size, bias=False)

    def forward(self, behaviour: Dict[str, torch.Tensor],
                intents: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        segments = []
        for view in self.views:
            h = behaviour[self.pairing[view]]
            gate_in = h if intents is None else h + intents[view]
            gate = self.gates[view](torch.sigmoid(gate_in))  # [B, 1]
            segments.append(h * gate)
        segments.extend(behaviour[b] for b in self.unpaired)
        return self.out(torch.cat(segments, dim=-1))


class IntentResidual(nn.Module):
    """``R``: a bias-free linear map from ``[H_sess; T h_v ...]`` to the base's output width,
    initialised to zero (so the residual starts at exactly 0 and the base is kept)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, fused: torch.Tensor, intents: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        parts = [fused] + list(intents or ())
        return self.linear(torch.cat(parts, dim=-1))
