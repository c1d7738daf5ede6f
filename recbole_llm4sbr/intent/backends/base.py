"""The contract every stage-1 LLM backend fulfils.

A backend turns user-message prompts into answers, one answer per prompt, in order. Chat templates,
batching inside one call, devices and retries are the backend's business; caching, de-duplication,
cleaning and progress are the pipeline's (so every backend gets them for free).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence


class Backend(ABC):
    """Base class of stage-1 backends (``intent_backend`` in the config)."""

    #: registry name, the value of ``intent_backend``
    name: str = "base"

    def __init__(self, settings: Dict[str, Any]):
        self.settings = dict(settings)

    @abstractmethod
    def describe(self) -> Dict[str, Any]:
        """Everything that changes the answers: model id/path (+ file), sampling settings.

        Recorded in every intent table and hashed into the answer-cache key, so results are never
        mislabelled and a change of model or sampling never reuses old answers.
        """

    @classmethod
    def describe_settings(cls, settings: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """What ``describe()`` of a backend started with ``settings`` will return, computed WITHOUT
        loading a model (``intent/shards.py``: the plan names every answer-cache key before any
        worker starts; each worker then checks its engine's ``describe()`` equals it). ``None``: this
        backend cannot tell before it is started (it cannot be planned)."""
        return None

    @abstractmethod
    def generate(self, prompts: Sequence[str]) -> List[str]:
        """Answer ``prompts`` (user messages, chat template not yet applied), same length and order."""

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens in ``texts`` for the tokens/s read-out; backends with a tokenizer override this."""
        return sum(len(t.split()) for t in texts)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release devices, processes or connections."""
