"""Getting answers for prompts: de-duplication, the cache, chunked calls, progress, failures.

Kept apart from the backends so every backend gets these for free (base.py's contract): a backend
only turns a list of prompts into a list of answers.
"""
from __future__ import annotations

import logging
import sys
import threading
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
    """Prompts per ``backend.generate`` call (a cache commit holds at most these; fewer when the
    backend reports answers as they finish): ``batch_size``, or more when the
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


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Progress:
    """What a person sees while prompts are answered: a tqdm bar (``show_progress`` on a terminal),
    else one log line every ``LOG_EVERY_S`` seconds (a log file, a pipe, ``show_progress: False``).

    ``done`` counts answered prompts (the bar's position, and what the ETA is computed from);
    ``note`` is the backend's last sign of life (``report_step``: a prefill block, a decode step).
    A daemon thread redraws the bar every second and writes the log lines, so the elapsed time moves
    even while one long backend call runs."""

    LOG_EVERY_S = 10.0
    REDRAW_S = 1.0

    def __init__(self, total: int, desc: str, show_bar: bool, log: logging.Logger, stream=None):
        self.total, self.desc, self.log = total, desc, log
        self.done = self.failed = self.tokens = 0
        self.note = ""
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        stream = sys.stderr if stream is None else stream
        self.bar = None
        if show_bar and total and _isatty(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="prompt", desc=desc, dynamic_ncols=True, file=stream)
        self._thread = None
        if total:
            self._thread = threading.Thread(target=self._tick, name="llm4sbr-stage1-progress", daemon=True)
            self._thread.start()

    def line(self) -> str:
        """``37/128 prompts, 12 s, ETA 31 s (decode batch 2/4, step 17/32)``."""
        elapsed = time.perf_counter() - self.start
        eta = _eta(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        extra = [self.note] if self.note else []
        if self.failed:
            extra.append(f"failed {self.failed}")
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"{self.desc}: {self.done}/{self.total} prompts, {_eta(elapsed)}, ETA {eta}{tail}"

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)

    def step(self, note: str) -> None:
        self.note = note

    def _postfix(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        parts = [self.note] if self.note else []
        parts.append(f"{self.tokens / elapsed:.1f} tok/s")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return ", ".join(parts)

    def _tick(self) -> None:
        last_log = time.perf_counter()
        while not self._stop.wait(self.REDRAW_S):
            with self._lock:
                if self.bar is not None:
                    self.bar.set_postfix_str(self._postfix(), refresh=True)
                elif time.perf_counter() - last_log >= self.LOG_EVERY_S:
                    last_log = time.perf_counter()
                    self.log.info(self.line())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.close()
        elif self.total:
            failed = f" ({self.failed} failed)" if self.failed else ""
            self.log.info(f"{self.desc}: {self.done}/{self.total} prompts answered{failed} in "
                          f"{_eta(time.perf_counter() - self.start)}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


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
    rest go in :func:`send_order` (sharing prompts side by side) in chunks of ``batch_size`` prompts
    (or the backend's ``prompts_per_call`` when larger, see :func:`chunk_size`).

    Every answer is committed to the cache as soon as the pipeline has it: the answers a backend
    hands over while its call runs (``Backend.report_answers``: the transformers backend reports
    each prompt as its decoding ends) at once, the rest of a chunk when the call returns. So Ctrl-C
    keeps everything answered so far, and the chunks (what is decoded together) stay as large as
    before. ``progress``: a bar on a terminal, else a log line every ~10 s (:class:`Progress`)."""
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

    shown = Progress(len(missing), f"LLM ({backend.name})", progress, log)
    failed = 0

    def keep(pairs: List[Tuple[str, str]]) -> None:
        """Commit the new answers among ``pairs`` and count them."""
        new = [(p, a) for p, a in pairs if p not in answers and isinstance(a, str)]
        if not new:
            return
        cache.store(new)
        answers.update(new)
        try:
            shown.tokens += int(backend.count_tokens([a for _, a in new]))
        except Exception:  # noqa: BLE001 - a read-out must never stop generation
            pass
        shown.advance(len(new))

    try:
        for i in range(0, len(missing), per_call):
            chunk = missing[i : i + per_call]
            got: Optional[List[str]] = None
            for attempt in (1, 2):
                todo = [p for p in chunk if p not in answers]  # a retry sends what is still unanswered
                backend.on_answers = lambda positions, texts, todo=todo: keep(
                    [(todo[j], t) for j, t in zip(positions, texts)])
                backend.on_step = shown.step
                try:
                    got = _call(backend, todo)
                except Exception as e:  # noqa: BLE001 - any backend failure: retry once, then fall back
                    what = "retrying once" if attempt == 1 else "its prompts get the fallback answer"
                    log.warning(f"LLM chunk of {len(todo)} prompts failed ({type(e).__name__}: {e}); {what}")
                else:
                    break
                finally:
                    backend.on_answers = backend.on_step = None
            if got is not None:
                keep(list(zip(todo, got)))
            else:
                lost = sum(p not in answers for p in chunk)
                failed += lost
                shown.failed = failed
                shown.advance(lost)
    finally:
        shown.close()
    stats.failed = failed
    stats.wall_s = time.perf_counter() - start
    if failed:
        log.warning(f"{failed} of {stats.sent} prompts sent got no answer after a retry; they fall "
                    "back to the prefix's last item (not cached: --force retries them)")
    return [answers.get(p) for p in prompts], stats
