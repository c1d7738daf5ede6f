"""The contract every stage-1 LLM backend fulfils.

A backend turns user-message prompts into answers, one answer per prompt, in order. Chat templates,
batching inside one call, devices and retries are the backend's business; caching, de-duplication,
cleaning and progress are the pipeline's (so every backend gets them for free).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

#: ``on_answers(positions, answers)``: answers finished before ``generate`` returns (positions in its prompts)
AnswersHook = Callable[[List[int], List[str]], None]
#: ``on_step(note)``: the call is alive, e.g. ``"decode batch 2/4, step 17/32"``
StepHook = Callable[[str], None]


class Backend(ABC):
    """Base class of stage-1 backends (``intent_backend`` in the config)."""

    #: registry name, the value of ``intent_backend``
    name: str = "base"
    #: set by the pipeline (``generation.answer_prompts``) while a ``generate`` call runs, else None.
    #: A backend MAY hand over answers as they finish (``report_answers``: the pipeline commits them
    #: to the answer cache at once, so Ctrl-C keeps them, and counts them in the progress bar) and
    #: say it is alive (``report_step``). Neither may change what is decoded: the same answers come
    #: back from ``generate`` as before.
    on_answers: Optional[AnswersHook] = None
    on_step: Optional[StepHook] = None

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

    def report_answers(self, positions: Sequence[int], answers: Sequence[str]) -> None:
        """Hand finished answers (``positions`` in the running call's prompts) to the pipeline."""
        if self.on_answers is not None and len(positions):
            self.on_answers(list(positions), list(answers))

    def report_step(self, note: str) -> None:
        """Say the running call is alive (a prefill block, a decode step)."""
        if self.on_step is not None:
            self.on_step(note)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens in ``texts`` for the tokens/s read-out; backends with a tokenizer override this."""
        return sum(len(t.split()) for t in texts)

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release devices, processes or connections."""
