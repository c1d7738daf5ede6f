"""``intent_representation: hidden``: the LLM's own last-layer state as the intent, no generated text.

SmolLM2-135M's generated answers are mostly echoes and noise (``python -m recbole_llm4sbr.intent show``),
so the text path (answer -> MiniLM -> top-r items) may discard what the model did read. Here each
view's prompt (exactly the one the text path sends, chat template included) is run through the LLM
once, prefill only, and its vector is the MEAN of the last layer's states (after the final norm)
over the tokens of the user message (the prompt itself, read in the template's context; the
template's own tokens, the same for every prompt, are left out), L2-normalised.

The catalogue is embedded in the SAME space, so localization (top-r, Eq. 4-5) and ``items.npy``
stay consistent: each item's text is sent as a user message through the same template and pooled
the same way. ``d_text`` is then the LLM's hidden size (576 for SmolLM2-135M).

The LLM is the transformers backend's own (``TransformersBackend``: GGUF via ``gguf_file=``, local
files only, ``intent_device``/``intent_dtype``/``intent_num_threads``), so only that backend can give
hidden states. Nothing is cached apart from the table itself: a table is built once per tag, and
recomputing costs one forward pass per text, no decoding. Measured on ml-100k-session (typical 64,
1 thread, bf16, machine shared): 42.5 s for the 128 prompts, 85 s for the 1,334 items; the text path
spent 58.7 s generating answers to the same 128 prompts (its prefix-tree prefill shares the template
and the two views' common tokens, which this plain right-padded batching does not) and 13 s in MiniLM.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..validation import choose
from .errors import IntentError

#: what ``intent_representation`` may say
REPRESENTATIONS = ("text", "hidden")
#: how a prompt's states become one vector (recorded in the table identity and meta)
POOLING = {"layer": "last", "pooling": "mean over the user message's tokens", "version": 1}
#: forward batches: at most this many tokens (rows x padded width)
BATCH_TOKENS = 4096

_log = logging.getLogger("recbole_llm4sbr.intent")


def representation(settings: Mapping[str, Any]) -> str:
    """``intent_representation`` (``text`` when unset)."""
    return choose(settings, "intent_representation", REPRESENTATIONS, "text")


def check_backend(settings: Mapping[str, Any], backend: str) -> None:
    """``hidden`` needs an LLM whose states we can read: the transformers backend."""
    from .registry import hidden_backends  # the backends that registered hidden states

    if representation(settings) == "hidden" and backend not in hidden_backends():
        raise IntentError(
            f"intent_representation=hidden reads the LLM's hidden states, which the {backend!r} backend "
            f"does not give. Fix: --intent_backend=transformers (a local model) or "
            f"--intent_representation=text")


class HiddenEncoder:
    """Texts -> pooled last-layer states of the transformers backend's LLM, ``[n, hidden]`` unit rows.

    ``encode(texts)`` treats every text as one user message (what ``TransformersBackend.generate``
    would send); ``describe()`` is the backend's description plus ``POOLING``.
    """

    def __init__(self, settings: Mapping[str, Any], logger: Optional[logging.Logger] = None):
        from .backends import get_backend

        self.log = logger or _log
        self.backend = get_backend(dict(settings), self.log, name="transformers")
        self.stats = {"texts": 0, "tokens": 0, "wall_s": 0.0}

    def describe(self) -> Dict[str, Any]:
        return dict(self.backend.describe(), representation="hidden", hidden=dict(POOLING))

    def _spans(self, texts: Sequence[str]):
        """Per text: token ids of its chat text and the (first, last + 1) token range of the message."""
        tok = self.backend.tokenizer
        chats = [self.backend._chat_text(t) for t in texts]
        enc = tok(chats, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, chat, ids, offsets in zip(texts, chats, enc["input_ids"], enc["offset_mapping"]):
            start = chat.rfind(text) if text else -1
            if start < 0:  # empty message: pool the whole sequence
                lo, hi = 0, len(ids)
            else:
                end = start + len(text)
                inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
                lo, hi = (inside[0], inside[-1] + 1) if inside else (0, len(ids))
            out.append((list(ids), lo, hi))
        return out

    def encode(self, texts: Sequence[str], desc: str = "hidden states") -> np.ndarray:
        import torch

        from .backends.transformers_backend import _torch_threads

        texts = list(texts)
        model = self.backend.model
        base = getattr(model, "base_model", model)  # the decoder stack: no logits over the vocabulary
        dev = self.backend.device
        t0 = time.perf_counter()
        if not texts:
            return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
        spans = self._spans(texts)
        order = sorted(range(len(texts)), key=lambda i: len(spans[i][0]))
        out: List[Optional[np.ndarray]] = [None] * len(texts)
        pad = int(self.backend.pad_token_id)
        with _torch_threads(self.backend.num_threads), torch.inference_mode():
            pos = 0
            while pos < len(order):
                n = 1  # sorted by length: the next row's length is the padded width
                while pos + n < len(order) and (n + 1) * len(spans[order[pos + n]][0]) <= BATCH_TOKENS:
                    n += 1
                idx = order[pos:pos + n]
                pos += n
                width = max(len(spans[i][0]) for i in idx)
                # RIGHT padded: every real token keeps the positions and the causal context it has alone
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    seq = spans[i][0]
                    ids[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[r, :len(seq)] = 1
                states = base(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
                for r, i in enumerate(idx):
                    _, lo, hi = spans[i]
                    v = states[r, lo:hi].float().mean(dim=0).cpu().numpy()
                    out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
                self.stats["tokens"] += int(mask.sum())
        self.stats["texts"] += len(texts)
        self.stats["wall_s"] += time.perf_counter() - t0
        self.log.info(f"{desc}: {len(texts)} texts, LLM prefill only, {time.perf_counter() - t0:.1f} s")
        return np.stack(out).astype(np.float32)

    def free(self) -> None:  # the _Encoder interface of pipeline.py (kept until close)
        pass

    def close(self) -> None:
        self.backend.close()


__all__ = ["REPRESENTATIONS", "POOLING", "representation", "check_backend", "HiddenEncoder"]
