"""Training-only semantic losses over the catalogue's text embeddings ``E_text`` (stage 1's encoder,
unit norm, row 0 = padding, masked out). Neither is used by ``predict``/``full_sort_predict``.

``text_target_weight`` (behaviour side; this plugin's own, not EIMF's): ``z = P s`` maps the fused
session vector ``s`` into the text space (``P``: ``d -> d_text``, no bias) and the target is predicted
over the catalogue:

    L_tt = mean_b  -log( exp(z_b . e_{t_b}) / sum_{j >= 1} exp(z_b . e_j) )

``eimf_weight`` (EIMF, Qiao et al. arXiv 2411.09410, as their ``Models/REMI.py`` does it;
docs/METHOD.md "EIMF"): the session's LLM interests ``H [B, V, d_text]`` (here: the V view vectors of
its intent row) go through one self-attention layer (``Wq, Wk, Wv`` with bias, scores / sqrt(d)); the
target's text embedding ``e_t`` reads them out (hard: the interest with the largest ``h . e_t``),
giving the text-side session vector ``t``. Then, with ``g``/``f`` linear maps (with bias) of ``t`` and
of ``e_t`` into the behaviour space, ``s`` the fused session vector and ``v_t`` the target's behaviour
(item) embedding:

    L_eimf = CE(t E_text^T, target)                                    (semantic prediction)
           + 0.4 NCE(s, g(t)) + 0.4 NCE(v_t, f(e_t))                   (modality alignment,
           + 0.1 (1 - cos(s, g(t))) + 0.1 (1 - cos(v_t, f(e_t)))        EIMF's weights)

with ``NCE(a, b) = mean_i -log softmax_j(cos(a_i, b_j) / 0.1)_i`` over the batch. The alignment terms
are what reach the behaviour encoder (the intents are frozen vectors; the semantic prediction alone
trains only the readout). EIMF adds ``0.1 * alignment + 0.1 * semantic prediction``: ``eimf_weight:
0.1`` is their setting.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

#: EIMF's weights of InfoNCE(session), InfoNCE(item), 1-cos(session), 1-cos(item)
ALIGN_WEIGHTS = (0.4, 0.4, 0.1, 0.1)
#: EIMF's InfoNCE temperature
TEMPERATURE = 0.1


def semantic_logits(z: torch.Tensor, item_text: torch.Tensor) -> torch.Tensor:
    """``z E_text^T`` with the padding item (row 0) at ``-inf``: [B, n_items]."""
    logits = z @ item_text.t()
    logits[:, 0] = float("-inf")
    return logits


def catalogue_ce(z: torch.Tensor, item_text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``targets`` [B] under ``softmax(z E_text^T)`` (padding excluded)."""
    return F.cross_entropy(semantic_logits(z, item_text), targets)


#: the behaviour-side loss (``text_target_weight``) is the catalogue CE of ``P s``
text_target_loss = catalogue_ce


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``mean_i -log softmax_j(cos(a_i, b_j) / temperature)_i``: row i's positive is ``b_i``, the batch's
    other rows are its negatives (one direction, as EIMF)."""
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    return F.cross_entropy(sim, torch.arange(a.size(0), device=a.device))


def cosine_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean (1 - cos(a_i, b_i))``."""
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


class EIMFTerms(NamedTuple):
    semantic: torch.Tensor  # CE(t E_text^T, target)
    nce_session: torch.Tensor
    nce_item: torch.Tensor
    cos_session: torch.Tensor
    cos_item: torch.Tensor

    @property
    def alignment(self) -> torch.Tensor:
        w = ALIGN_WEIGHTS
        return w[0] * self.nce_session + w[1] * self.nce_item + w[2] * self.cos_session + w[3] * self.cos_item

    @property
    def total(self) -> torch.Tensor:
        return self.semantic + self.alignment


class EIMFSemantic(nn.Module):
    """EIMF's LLM side: self-attention over the interests, target-queried readout ``t``, and the maps
    of ``t`` (``to_session``) and of the target's text embedding (``to_item``) into the behaviour space."""

    def __init__(self, d_text: int, session_size: int, item_size: int):
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Linear(d_text, d_text) for _ in range(3))
        self.to_session = nn.Linear(d_text, session_size)
        self.to_item = nn.Linear(d_text, item_size)

    def attend(self, interests: torch.Tensor) -> torch.Tensor:
        """One self-attention layer over ``[B, V, d_text]`` (no residual, as EIMF's ``Attention``)."""
        q, k, v = self.wq(interests), self.wk(interests), self.wv(interests)
        scores = q @ k.transpose(1, 2) / interests.size(-1) ** 0.5
        return torch.softmax(scores, dim=-1) @ v

    @staticmethod
    def readout(interests: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """The interest with the largest ``h . query`` per row (EIMF's hard readout): ``[B, d_text]``."""
        pick = (interests @ query.unsqueeze(-1)).squeeze(-1).argmax(dim=1)
        return interests[torch.arange(interests.size(0), device=interests.device), pick]

    def forward(self, interests: torch.Tensor, item_text: torch.Tensor, targets: torch.Tensor,
                session: torch.Tensor, target_item: torch.Tensor) -> EIMFTerms:
        """``interests [B, V, d_text]``, ``item_text [n_items, d_text]`` (``E_text``), ``targets [B]``,
        ``session [B, d]`` (the fused vector the base scores with), ``target_item [B, d_item]`` (the
        base's embedding of the target)."""
        target_text = item_text[targets]
        t = self.readout(self.attend(interests), target_text)
        mapped_t, mapped_text = self.to_session(t), self.to_item(target_text)
        return EIMFTerms(catalogue_ce(t, item_text, targets),
                         info_nce(session, mapped_t), info_nce(target_item, mapped_text),
                         cosine_gap(session, mapped_t), cosine_gap(target_item, mapped_text))
