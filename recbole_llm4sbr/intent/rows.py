"""The per-prefix path of stage 1, in ONE place: a prefix -> its prompts; its answers -> its table row.

``pipeline.build_intent_table`` (every prefix of a dataset, answers de-duplicated across prefixes)
and ``online.OnlineIntents.infer`` (one unseen prefix at serving time) both run these steps, so an
online intent is the row the table would hold for that prefix (they used to be two copies that
drifted: the prompt length, the cleaning fallback). The steps, docs/METHOD.md Stage 1:

1. ``PrefixPrompts.prompts``: one prompt per view (``intent_prompt_max_items`` applied, and
   ``intent_short_items`` to the ``short`` view);
2. ``PrefixPrompts.answers``: each LLM answer cleaned, or the fallback with its reason
   (``clean.final_answer``: never a silent empty answer);
3. ``unique_texts`` -> the caller encodes them with the catalogue's encoder -> ``Grounding``
   (Eq. 4-5: the top-r catalogue items of each text and their weighted sum);
4. ``Grounding.row``: the row's grounded and raw vectors ``[n_views, d]`` and its ``answers.jsonl``
   record.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .clean import final_answer
from .errors import IntentError
from .localization import Search, localize
from .prompts import build_prompt, check_template
from .settings import intent_views, normalize_settings

#: the view ``intent_short_items`` shortens (the paper's short-term view)
SHORT_VIEW = "short"


def short_view_items(settings: Mapping[str, Any]) -> int:
    """``intent_short_items``: the ``short`` view's prompt lists only the prefix's last N items, so the
    two views differ by construction (SmolLM2 gave both views one answer for 37 % of prefixes); 0 =
    off, every view lists what ``intent_prompt_max_items`` says. Needs a ``short`` view."""
    value = settings.get("intent_short_items") or 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, bool):
        raise IntentError(f"intent_short_items={value!r}: give 0 (off) or a positive count of last items")
    views = intent_views(settings)
    if n and SHORT_VIEW not in views:
        raise IntentError(
            f"intent_short_items={n} shortens the '{SHORT_VIEW}' view's prompt, but intent_views has "
            f"{list(views)}. Fix: add a '{SHORT_VIEW}' view or set intent_short_items: 0")
    return n


@dataclass(frozen=True)
class Answer:
    """What one (prefix, view) answer became: the text that is encoded, and why it is the fallback
    (``"empty"`` after cleaning, ``"failed"`` LLM call) or None."""

    text: str
    fallback: Optional[str] = None


class PrefixPrompts:
    """Prompts of a prefix and the cleaning of its answers, with one table's settings.

    ``views``: ordered ``{view: qualifier}``; ``item_text``: ``{item token: text}`` (the catalogue);
    ``max_items``: the RESOLVED ``intent_prompt_max_items`` (0 = the whole prefix); ``short_items``
    (``intent_short_items``) > 0: the ``short`` view lists at most that many last items.
    """

    def __init__(self, template: str, views: Mapping[str, str], item_text: Mapping[str, str],
                 max_items: int = 0, max_chars: int = 200, short_items: int = 0):
        check_template(template, len(views))
        self.template = template
        self.views = dict(views)
        self.view_names: List[str] = list(views)
        self.item_text = item_text
        self.item_ids = frozenset(item_text)
        self.max_items = int(max_items or 0)
        self.max_chars = int(max_chars)
        self.short_items = int(short_items or 0)
        self.view_items = {v: self.max_items for v in self.view_names}
        if self.short_items and SHORT_VIEW in self.views:
            self.view_items[SHORT_VIEW] = (min(self.max_items, self.short_items) if self.max_items
                                           else self.short_items)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], item_text: Mapping[str, str], max_items: int) -> "PrefixPrompts":
        s = normalize_settings(settings)
        return cls(s.template, dict(s.views), item_text, max_items, s.answer_max_chars, short_view_items(s))

    def prompts(self, prefix: Sequence[str]) -> List[str]:
        """One prompt per view, in view order."""
        return [build_prompt(self.template, prefix, self.item_text, self.views[v], self.view_items[v])
                for v in self.view_names]

    def answers(self, prefix: Sequence[str], raw: Sequence[Optional[str]]) -> List[Answer]:
        """The LLM's answers to ``prompts(prefix)`` (``None`` = the call failed), cleaned or fallen
        back to the text of the prefix's last item."""
        last = prefix[-1]
        fallback = self.item_text.get(last) or last
        return [Answer(*final_answer(a, self.max_chars, self.item_ids, fallback)) for a in raw]


def unique_texts(answers: Iterable[Answer]) -> List[str]:
    """The distinct texts to encode, first-seen order (identical answers are encoded once)."""
    return list(dict.fromkeys(a.text for a in answers))


class Grounding:
    """Encoded answer texts grounded in the catalogue (Eq. 4-5), from which rows are cut.

    ``texts`` and ``embeddings`` (unit-norm rows, the catalogue's encoder) are aligned;
    ``item_tokens``/``item_vectors`` are the catalogue and its embeddings (``items.txt``/``items.npy``).
    """

    def __init__(self, texts: Sequence[str], embeddings: np.ndarray, item_tokens: Sequence[str],
                 item_vectors: np.ndarray, topr: int, faiss_threshold: int = 200_000,
                 logger: Optional[logging.Logger] = None, search: Optional[Search] = None):
        self.row_of = {t: i for i, t in enumerate(texts)}
        self.raw = np.asarray(embeddings, dtype=np.float32)
        self.vectors, idx, sims = localize(self.raw, item_vectors, int(topr or 0), int(faiss_threshold), logger,
                                              search=search)
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        self._idx, self._sims, self._tokens = idx, sims, item_tokens
        self._where: Dict[int, Tuple[List[str], List[float]]] = {}
        self.dim = int(self.raw.shape[1])

    def where(self, text: str) -> Tuple[List[str], List[float]]:
        """The catalogue items ``text`` was grounded in, best first, and their similarities."""
        a = self.row_of[text]
        if a not in self._where:
            self._where[a] = ([self._tokens[i] for i in self._idx[a]],
                              [round(float(s), 6) for s in self._sims[a]])
        return self._where[a]

    def row(self, key: str, prefix: Sequence[str], view_names: Sequence[str], answers: Sequence[Answer],
            exemplar: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
        """``(vectors [n_views, d], raw [n_views, d], record)`` of one prefix; ``answers`` per view
        (an exemplar's, with ``intent_samples: typical``, then ``exemplar`` names it in the record)."""
        rows = [self.row_of[a.text] for a in answers]
        record: Dict[str, Any] = {"key": key, "prefix": list(prefix), "views": {}}
        for v, a in zip(view_names, answers):
            items, sims = self.where(a.text)
            entry: Dict[str, Any] = {"answer": a.text, "items": list(items), "sims": list(sims)}
            if a.fallback is not None:
                entry["fallback"] = a.fallback
            record["views"][v] = entry
        if exemplar is not None:
            record["exemplar"] = exemplar
        return self.vectors[rows], self.raw[rows], record


__all__ = ["SHORT_VIEW", "short_view_items", "Answer", "PrefixPrompts", "unique_texts", "Grounding"]
