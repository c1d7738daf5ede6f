"""The intents of a mapped table (``intent_mmap``): gathered per batch, never copied whole.

The dataset holds the table's arrays memory-mapped (``intent_source [n_table, V_table, d]``, float16
or float32 as stored) and a small int64 map ``intent_rows`` from its prefix-key ids to table rows
(-1: the padding key, a zero vector). ``MappedIntents`` applies the attribution controls to the map
(``shuffled``: a permutation of it, the same ``shuffle_order`` as the in-memory buffer) and to a
constant computed in row blocks, and ``gather`` reads a batch's rows from the mapping as float32 on
the keys' device. The model keeps it as a plain attribute: no parameter, no buffer, nothing in the
``state_dict`` and nothing DDP broadcasts (each rank maps the same file; the page cache is shared).

Pages read through a mapping count in the process's RSS until they are unmapped, although they belong
to the page cache (shared by every rank, reclaimable by the kernel). After every ``DROP_EVERY_BYTES``
mapped in, ``madvise(MADV_DONTNEED)`` drops the mapping's resident pages from this process; they stay
cached (the next read is a page-cache hit, not a disk read), so a rank's RSS follows its own memory,
not how much of a huge table it has touched. The budget counts ``FAULT_AROUND_BYTES`` per row read:
a fault maps cached neighbours too, so a row costs far more resident bytes than its own size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from recbole_llm4sbr.intent.table import drop_resident_pages
from recbole_llm4sbr.model.controls import IntentControl, shuffle_order

#: rows per block when the constant (the mean of the real rows) is computed (a block is read as float32:
#: 4096 rows of 2 views x 384 are 12 MB)
MEAN_BLOCK_ROWS = 4096
#: resident bytes a rank may accumulate from the mapping between two drops of its pages (docstring)
DROP_EVERY_BYTES = 32 << 20
#: what one row read may map in, at worst: the kernel's fault-around maps up to 64 KB of already
#: cached neighbours per fault (measured here: 27-87 KB per random row of a 2 x 384 float16 table)
FAULT_AROUND_BYTES = 64 << 10


class MappedIntents:
    def __init__(self, source: np.ndarray, rows: np.ndarray, view_index: Sequence[int], control: IntentControl):
        self.source = source
        self.view_index = np.asarray(list(view_index), dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        if control.mode == "shuffled":
            rows = rows[shuffle_order(len(rows), control.seed).numpy()]
        self.rows = rows
        self.mode = control.mode
        self.d_text = int(source.shape[-1])
        self._read_since_drop = 0
        # the constant is read only by the `constant` control and intent dropout: the others never pay
        # for a pass over the rows
        needed = self.mode == "constant" or control.dropout > 0
        self.constant = self._mean_of_real_rows() if needed else None  # [V, d] float32

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), V, d]`` float32; row -1 reads zeros. Sorted reads: the mapping's pages in order."""
        pad = rows < 0
        safe = np.where(pad, 0, rows)
        order = np.argsort(safe, kind="stable")
        out = np.empty((len(rows), len(self.view_index), self.d_text), dtype=np.float32)
        out[order] = self.source[safe[order][:, None], self.view_index[None, :]]
        out[pad] = 0.0
        row_bytes = len(self.view_index) * self.d_text * self.source.itemsize
        self._read_since_drop += len(rows) * max(row_bytes, FAULT_AROUND_BYTES)
        if self._read_since_drop >= DROP_EVERY_BYTES:
            drop_resident_pages(self.source)
            self._read_since_drop = 0
        return out

    def _mean_of_real_rows(self) -> torch.Tensor:
        total = np.zeros((len(self.view_index), self.d_text), dtype=np.float64)
        real = np.sort(self.rows[1:])
        for s in range(0, len(real), MEAN_BLOCK_ROWS):
            total += self._read(real[s : s + MEAN_BLOCK_ROWS]).sum(axis=0, dtype=np.float64)
        drop_resident_pages(self.source)
        self._read_since_drop = 0
        return torch.from_numpy((total / max(len(real), 1)).astype(np.float32))

    def gather(self, keys: torch.Tensor) -> torch.Tensor:
        """The intents of prefix-key ids ``keys [B]``: ``[B, V, d]`` float32 on ``keys.device``."""
        ids = keys.detach().reshape(-1).cpu().numpy()
        if self.mode == "constant":  # every real key reads the constant; the padding key stays zero
            out = self.constant.expand(len(ids), -1, -1).clone()
            out[torch.from_numpy(ids == 0)] = 0.0
        else:
            out = torch.from_numpy(self._read(self.rows[ids]))
        return out.view(*keys.shape, len(self.view_index), self.d_text).to(keys.device)


#: the model's frozen, rebuilt-from-the-dataset buffers (non-persistent): a distributed launcher can
#: keep them out of DDP's broadcast (``broadcast_buffers=False`` or
#: ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``); a mapped table has none
FROZEN_BUFFERS = ("intent_vectors", "intent_constant", "item_text_vectors")
