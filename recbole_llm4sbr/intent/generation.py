"""Getting answers for prompts: de-duplication, the cache, chunked calls, progress, failures.

Kept apart from the backends so every backend gets these for free (base.py's contract): a backend
only turns a list of prompts into a list of answers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .backends.base import Backend
from .cache import AnswerCache

_log = logging.getLogger("recbole_llm4sbr.intent")


@dataclass
class GenerationStats:
    """What one ``answer_prompts`` call did (stored in the table's summary)."""

    total: int = 0  # prompts asked for
    unique: int = 0  # distinct prompt texts among them
    from_cache: int = 0  # distinct prompts answered by the cache
    sent: int = 0  # distinct prompts sent to the backend (failed ones included)
    failed: int = 0  # distinct prompts with no answer after one retry (the caller falls back)
    wall_s: float = 0.0

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def _call(backend: Backend, chunk: List[str]) -> List[str]:
    answers = backend.generate(chunk)
    if not isinstance(answers, list) or len(answers) != len(chunk):
        got = len(answers) if hasattr(answers, "__len__") else type(answers).__name__
        raise RuntimeError(f"backend {backend.name!r} returned {got} answers for {len(chunk)} prompts")
    if not all(isinstance(a, str) for a in answers):
        raise RuntimeError(f"backend {backend.name!r} returned a non-string answer")
    return answers


def chunk_size(backend: Backend, batch_size: int) -> int:
    """Prompts per ``backend.generate`` call (and per cache commit): ``batch_size``, or more when the
    backend declares ``prompts_per_call`` (an engine that schedules its own batches, as vLLM does,
    needs many prompts per call to fill them; chunks of ``intent_batch_size`` would starve it)."""
    n = max(1, int(batch_size or 1))
    try:
        own = int(getattr(backend, "prompts_per_call", 0) or 0)
    except (TypeError, ValueError):
        own = 0
    return max(n, own)


def send_order(prompts: Sequence[str]) -> List[str]:
    """The order prompts are sent in: by text. Prompts that share a beginning are then neighbours
    (the views of one prefix differ only in the qualifier near the end; with every-prefix datasets
    prefix k+1's prompt extends prefix k's up to its last item line), so they land in the same
    chunk, where the transformers backend prefills their common tokens once (and vLLM's prefix
    cache finds them warm). Lengths are not sorted here any more: a padding backend sorts its own
    call by length before cutting batches, and a call holds many batches (``prompts_per_call``)."""
    return sorted(prompts)


def answer_prompts(
    backend: Backend,
    prompts: Sequence[str],
    cache: AnswerCache,
    batch_size: int,
    logger: Optional[logging.Logger] = None,
    progress: bool = True,
) -> Tuple[List[Optional[str]], GenerationStats]:
    """One answer per prompt, in order; ``None`` where the backend failed twice (never silently: the
    failures are counted and logged). Identical prompts are sent once; cached ones are not sent; the
    rest go in :func:`send_order` (sharing prompts side by side) in chunks of ``batch_size`` prompts (or the backend's ``prompts_per_call``
    when larger, see :func:`chunk_size`), each committed to the cache as soon as it is answered."""
    log = logger or _log
    start = time.perf_counter()
    info = backend.describe()
    if dict(info) != cache.backend_info:
        raise ValueError("the answer cache was opened for another backend configuration than this backend's describe()")
    stats = GenerationStats(total=len(prompts))
    unique = list(dict.fromkeys(prompts))
    stats.unique = len(unique)
    answers: Dict[str, str] = cache.lookup(unique)
    stats.from_cache = len(answers)
    # prompts sharing a beginning side by side (send_order); answers are keyed by prompt, so the
    # order sent never changes which answer a prompt gets
    missing = send_order([p for p in unique if p not in answers])
    stats.sent = len(missing)
    per_call = chunk_size(backend, batch_size)

    bar = None
    if missing and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(missing), unit="prompt", desc=f"LLM ({backend.name})", dynamic_ncols=True)
    tokens = 0
    failed = 0
    try:
        for i in range(0, len(missing), per_call):
            chunk = missing[i : i + per_call]
            got: Optional[List[str]] = None
            for attempt in (1, 2):
                try:
                    got = _call(backend, chunk)
                    break
                except Exception as e:  # noqa: BLE001 - any backend failure: retry once, then fall back
                    what = "retrying once" if attempt == 1 else "its prompts get the fallback answer"
                    log.warning(f"LLM chunk of {len(chunk)} prompts failed ({type(e).__name__}: {e}); {what}")
            if got is None:
                failed += len(chunk)
            else:
                cache.store(list(zip(chunk, got)))
                answers.update(zip(chunk, got))
                try:
                    tokens += int(backend.count_tokens(got))
                except Exception:  # noqa: BLE001 - a read-out must never stop generation
                    pass
            if bar is not None:
                bar.update(len(chunk))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{tokens / elapsed:.1f} tok/s, failed {failed}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    stats.failed = failed
    stats.wall_s = time.perf_counter() - start
    if failed:
        log.warning(f"{failed} of {stats.sent} prompts sent got no answer after a retry; they fall "
                    "back to the prefix's last item (not cached: --force retries them)")
    return [answers.get(p) for p in prompts], stats
