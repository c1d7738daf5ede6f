"""Cleaning LLM answers before they are encoded.

Small chat models rarely answer with the bare item name the prompt asks for: they echo a role
("assistant", "Answer:"), number or bullet the answer, quote it, wrap it in markdown, copy the
``_<ItemID>`` suffix from the prompt, or add a preamble and an explanation. All of that is noise for
the text encoder, so it is removed here; what is left is the first meaningful line, cut to a bounded
length. An answer that cleans to nothing is NOT encoded as "" (a meaningless vector) and never
becomes a zero vector: ``fallback_answer`` substitutes the text of the prefix's last item, and the
pipeline counts and logs every substitution.
"""
from __future__ import annotations

import re
from typing import AbstractSet, Optional

#: bump when this module changes what an answer becomes: old tables then count as stale
CLEAN_VERSION = 1

#: reasoning models' hidden thoughts
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
#: chat-template tokens such as <|im_start|>, <|assistant|>, </s>, <s>, [INST]
_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>|\[/?INST\]", re.I)
#: a leading role or answer label: "assistant:", "Answer -", "Item name:", ...
_LABEL = re.compile(
    r"^(?:assistant|system|user|answer|final answer|response|output|item name|item|guess|"
    r"recommendation|recommended item|prediction)\s*(?:[:\-\u2013\u2014]\s*|$)",
    re.I,
)
#: list numbering or a bullet: "1.", "2)", "(3)", "-", "*", "•"
_BULLET = re.compile(r"^(?:\(?\d{1,3}[.)]\s+|[-*\u2022\u00b7+]\s+)")
_HEADING = re.compile(r"^#{1,6}\s*")
_QUOTE_LINE = re.compile(r"^>\s*")
_MARKUP = re.compile(r"\*\*|__|`+|(?<!\w)\*(?=\S)|(?<=\S)\*(?!\w)")
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb"
#: an ``_<ItemID>``-like suffix when the catalogue's tokens are not known: must contain a digit
_ID_SUFFIX = re.compile(r"_[A-Za-z0-9\-]*\d[A-Za-z0-9\-]*$")


def _strip_id_suffix(line: str, item_ids: Optional[AbstractSet[str]]) -> str:
    if "_" not in line:
        return line
    if item_ids is not None:
        head, _, tail = line.rpartition("_")
        return head.rstrip() if head and tail.strip() in item_ids else line
    return _ID_SUFFIX.sub("", line).rstrip()


def _clean_line(line: str, item_ids: Optional[AbstractSet[str]]) -> str:
    prev = None
    while line != prev:  # labels, bullets and quotes nest ("Answer: 1. "Foo"")
        prev = line
        line = line.strip()
        line = _HEADING.sub("", line)
        line = _QUOTE_LINE.sub("", line)
        line = _MARKUP.sub("", line)
        line = _LABEL.sub("", line)
        line = _BULLET.sub("", line)
        line = line.strip().strip(_QUOTES).strip()
        line = _strip_id_suffix(line, item_ids)
        line = line.rstrip(".,;").strip()
    return line


def _meaningful(line: str) -> bool:
    return any(c.isalnum() for c in line)


def _cut(text: str, max_chars: int) -> str:
    """At most ``max_chars``, cut at a word boundary when there is one in the second half."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:-")


def clean_answer(text: Optional[str], max_chars: int = 200, item_ids: Optional[AbstractSet[str]] = None) -> str:
    """The item name in an LLM answer, or "" when there is none (the caller applies the fallback).

    ``item_ids``: the dataset's item tokens, to strip an echoed ``_<ItemID>`` exactly; without it an
    ``_<suffix with a digit>`` is stripped.
    """
    if not text:
        return ""
    text = _THINK.sub("", str(text))
    text = _SPECIAL.sub("\n", text)
    lines = [_clean_line(raw, item_ids) for raw in text.splitlines()]
    lines = [(line, raw.rstrip().endswith(":")) for line, raw in zip(lines, text.splitlines()) if _meaningful(line)]
    # a preamble ending in ':' ("Here is my guess:") is skipped when an answer follows it
    for i, (line, preamble) in enumerate(lines):
        if not preamble or i == len(lines) - 1:
            return _cut(line, max_chars)
    return ""


def fallback_answer(last_item_text: str) -> str:
    """What an empty or failed answer becomes: the text of the prefix's last item (its best guess)."""
    return last_item_text


def final_answer(answer, max_chars: int, item_ids, last_item_text: str):
    """``(text, why)``: the text localization embeds for one LLM answer (``None`` = the call failed).

    The cleaned answer and ``why=None``; or, when nothing is left, the fallback rule's text and
    ``why`` = ``"failed"`` or ``"empty"`` (callers count and record it: never a silent empty answer).
    """
    text = clean_answer(answer, max_chars, item_ids) if answer is not None else ""
    if text:
        return text, None
    return fallback_answer(last_item_text), ("failed" if answer is None else "empty")
