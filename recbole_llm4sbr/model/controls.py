"""Attribution controls: how much of LLM4SBR's gain is the sessions' own intents.

Config keys (``properties/model/LLM4SBR.yaml``), read by the model when it builds its intent buffer
(the table on disk is never edited, and RecBole's dataset keeps its own rows):

* ``intent_control: none | constant | shuffled``

  - ``none``: every prefix reads its own intent.
  - ``constant``: every prefix reads ONE vector per view, the mean of the buffer's real rows (row 0,
    the padding key, excluded and left as it is). Intent vectors given directly (serving an unseen
    prefix, ``full_sort_predict_with_intents``) are replaced by it too. What the architecture alone
    (projection, gates, fusion, alignment-uniformity against one point) gives.
  - ``shuffled``: the buffer's real rows permuted by ``shuffle_order(n_rows, intent_shuffle_seed)``,
    one cycle through all of them, so every prefix reads another prefix's intent (identical vectors
    stay possible: prefixes that share an exemplar share answers); row 0 stays in place. Vectors
    given directly are not changed (there is no other session to take them from).

* ``intent_shuffle_seed: 0``: the seed of that permutation; a function of (seed, number of rows)
  only, so two runs, processes or model instances on the same dataset read the same rows.
* ``intent_dropout: 0.0``: in training only, each sample's intent (all views) is replaced by the
  constant vector with this probability (torch's RNG, so seeded runs repeat).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from recbole_llm4sbr.validation import validate


@dataclass(frozen=True)
class IntentControl:
    mode: str = "none"
    seed: int = 0
    dropout: float = 0.0

    @classmethod
    def from_config(cls, config) -> "IntentControl":
        """The three keys from a RecBole config (missing = default); ConfigError on a bad value (the
        rules of ``recbole_llm4sbr.validation``, the same ones the config was built with)."""
        keys = ("intent_control", "intent_shuffle_seed", "intent_dropout")
        validate({key: config[key] for key in keys})
        mode, seed, dropout = (config[key] for key in keys)
        mode = "none" if mode is None else str(mode).strip().lower()
        seed = 0 if seed is None else seed
        dropout = 0.0 if dropout is None else dropout
        return cls(mode, int(seed), float(dropout))


#: rows per block when the constant of a float16 buffer is summed in float64 (a block of 512 rows of
#: 2 views x 384 is 3 MB in float64; no float32 copy of the whole buffer)
MEAN_BLOCK_ROWS = 512


def constant_of(vectors: torch.Tensor) -> torch.Tensor:
    """The mean of the real rows (1..) of an intent buffer ``[n_rows, V, d]``: ``[V, d]``, float32
    (a float16 buffer is summed in float64 by row blocks, then the mean rounded to float16 and back, so
    that it is the value the buffer's constant rows hold)."""
    if vectors.dtype == torch.float32:
        return vectors[1:].mean(dim=0)
    real = vectors[1:]
    total = torch.zeros(real.shape[1:], dtype=torch.float64, device=vectors.device)
    for s in range(0, real.size(0), MEAN_BLOCK_ROWS):
        total += real[s : s + MEAN_BLOCK_ROWS].sum(dim=0, dtype=torch.float64)
    return (total / max(real.size(0), 1)).to(vectors.dtype).float()


def shuffle_order(n_rows: int, seed: int) -> torch.Tensor:
    """Row r of the shuffled buffer is row ``order[r]`` of the original: ``order[0] = 0`` (padding),
    and rows 1.. form one cycle (no row reads itself when there are two or more)."""
    cycle = np.random.default_rng(seed).permutation(np.arange(1, n_rows))
    order = np.zeros(n_rows, dtype=np.int64)
    order[cycle] = np.roll(cycle, -1)
    return torch.from_numpy(order)


def controlled_buffer(vectors: torch.Tensor, control: IntentControl) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the buffer the model reads, the constant vector ``[V, d]`` float32) for an intent buffer ``[n_rows, V, d]``
    (float16 or float32; the buffer keeps its dtype). The constant is computed only for the ``constant``
    control and intent dropout, its only readers (None otherwise, as for a mapped table)."""
    needed = control.mode == "constant" or control.dropout > 0
    constant = constant_of(vectors) if needed else None
    if control.mode == "constant":
        vectors = vectors.clone()
        vectors[1:] = constant
    elif control.mode == "shuffled":
        vectors = vectors[shuffle_order(vectors.size(0), control.seed)]
    return vectors, constant


def drop_intents(vectors: torch.Tensor, constant: Optional[torch.Tensor], p: float) -> torch.Tensor:
    """``vectors [B, V, d]`` with each sample replaced by ``constant`` with probability ``p``."""
    if p <= 0 or constant is None:
        return vectors
    dropped = torch.rand(vectors.size(0), device=vectors.device) < p
    return torch.where(dropped.view(-1, 1, 1), constant.to(vectors), vectors)
