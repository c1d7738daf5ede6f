"""Stage 1 end to end: benchmark files -> prompts -> answers -> grounded intents -> intent table.

``build_intent_table`` runs named steps: ``read_inputs`` (benchmark files and item text,
``inputs.py``), ``encode_catalogue``, ``plan_prompts`` (which prefixes the LLM is asked about, once
per (prefix, view)), ``ask`` (the backend through the answer cache), ``clean_answers``,
``ground_rows`` (encode + localize, one row per prefix), then ``build_summary`` and ``table_meta``
for ``table.write_intent_table``. The per-prefix steps are ``rows.py``'s, shared with online stage 1.
Freshness: ``stale_reason`` / ``locate_table`` say which table these settings use and whether it is
up to date (a table whose files do not match its ``meta.json`` checksums is a ``TableDamagedError``
naming the file and the fix, never "up to date"); ``ensure_intent_table`` (what stage 2 calls) builds
it only when it is missing or stale. A build holds the table's lock (``table.table_lock``): a second
build of the same table waits for the first, then finds it up to date.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import encoder as enc
from .backends import auto_reuse, get_backend, resolve_backend_name, resolve_samples
from .cache import CACHE_FILE, AnswerCache
from .errors import IntentError, TableDamagedError
from .generation import GenerationStats, answer_prompts
from .identity import table_folder, table_identity
from .inputs import Sample, check_item_text, file_sha1, itemtext_path, read_item_text, read_samples, unique_prefixes
from .localization import Search
from .prompts import template_version
from .rows import Answer, Grounding, PrefixPrompts, unique_texts
from .settings import Stage1Settings, dataset_dir, normalize_settings
from .table import (FILES, FORMAT_VERSION, REQUIRED, lookup_rows, read_meta, remove_debris, table_lock, tidy,
                    verify_table, write_intent_table)
from .typical import TypicalPlan, plan_typical

_log = logging.getLogger("recbole_llm4sbr.intent")


# ---- inputs and the catalogue ---------------------------------------------------------------------


@dataclass
class Inputs:
    """What a build reads: every sample, its unique prefixes (first-seen order) and the item text."""

    samples: List[Sample]
    prefixes: Dict[str, Tuple[str, ...]]
    texts: Dict[str, str]


def read_inputs(settings: Mapping[str, Any]) -> Inputs:
    samples = read_samples(settings)
    prefixes = unique_prefixes(samples)
    texts = read_item_text(settings)
    check_item_text(settings, prefixes, texts)
    return Inputs(samples, prefixes, texts)


class _Encoder:
    """The stage-1 text encoder as a build uses it: the catalogue first, then the answers; on a GPU it
    is freed in between, so the LLM gets the memory."""

    def __init__(self, settings: Stage1Settings, progress: bool):
        enc.set_cpu_threads(settings.torch_num_threads)
        self.name = settings.encoder
        self.device = enc.resolve_device(settings.encoder_device)
        self.batch_size = settings.encoder_batch_size
        self.progress = progress

    def encode(self, texts: Sequence[str], desc: str) -> np.ndarray:
        return enc.encode(enc.load_encoder(self.name, self.device), texts, self.batch_size, self.progress, desc=desc)

    def free(self) -> None:
        if self.device != "cpu":
            enc.unload(self.name, self.device)


def encode_catalogue(texts: Mapping[str, str], encoder: _Encoder) -> Tuple[List[str], np.ndarray]:
    """``(item tokens, their text embeddings)``: what answers are grounded in, and what typical
    samples cluster on (an item with no text is embedded as its token)."""
    catalogue = list(texts)
    return catalogue, encoder.encode([texts[t] or t for t in catalogue], desc="encode items")


# ---- which prefixes get an LLM call ---------------------------------------------------------------


def plan_llm_calls(
    settings: Mapping[str, Any],
    prefixes: Mapping[str, Sequence[str]],
    logger: Optional[logging.Logger] = None,
    *,
    samples: str = "all",
    train_keys: Sequence[str] = (),
    item_tokens: Optional[Sequence[str]] = None,
    item_vectors: Optional[np.ndarray] = None,
) -> Tuple[Dict[str, str], Optional[TypicalPlan]]:
    """``({prefix key: key of the prefix whose answers it uses}, typical plan or None)``: the ONE
    place that decides which prefixes are sent to the LLM (the values).

    ``samples`` is the RESOLVED ``intent_samples`` (``resolve_samples``). ``all``: every prefix
    answers for itself. ``typical`` (EIMF): the train prefixes (``train_keys``) are clustered on the
    mean text embedding of their items (``item_tokens``/``item_vectors``), ``intent_budget``
    clusters; each cluster's exemplar is asked, every prefix (valid and test included, never
    clustered, targets never read) uses the exemplar nearest to it.
    """
    if samples == "all":
        return {k: k for k in prefixes}, None
    if samples == "typical":
        if item_tokens is None or item_vectors is None:
            raise IntentError("intent_samples: typical needs the catalogue's text embeddings (item_tokens, item_vectors)")
        s = normalize_settings(settings)
        tp = plan_typical(prefixes, train_keys, item_tokens, item_vectors, s.budget, s.seed, logger)
        return tp.plan, tp
    raise IntentError(f"unknown intent_samples {samples!r}: choose all or typical")


@dataclass
class CallPlan:
    """Who is asked: ``plan[key]`` = the prefix whose answers ``key`` uses, ``asked`` those prefixes
    (in order), ``prompts`` one per (asked prefix, view), view-major within a prefix."""

    plan: Dict[str, str]
    typical: Optional[TypicalPlan]
    asked: List[str]
    prompts: List[str]


def plan_prompts(settings: Mapping[str, Any], inputs: Inputs, rows: PrefixPrompts, samples: str,
                 catalogue: Tuple[List[str], np.ndarray], logger: Optional[logging.Logger] = None) -> CallPlan:
    plan, tplan = plan_llm_calls(
        settings, inputs.prefixes, logger, samples=samples,
        train_keys=[s.key for s in inputs.samples if s.split == "train"],
        item_tokens=catalogue[0], item_vectors=catalogue[1],
    )
    asked = list(dict.fromkeys(plan.values()))
    return CallPlan(plan, tplan, asked, [p for k in asked for p in rows.prompts(inputs.prefixes[k])])


def plan_llm_prompts(settings: Mapping[str, Any], backend_name: str, logger: Optional[logging.Logger] = None,
                     progress: bool = False) -> Tuple[List[str], str]:
    """``(prompts, template)``: what ``build_intent_table`` would send to the LLM for these
    (normalized) settings, through the same steps, without starting a backend (``intent/shards.py``
    plans them for many workers). The encoder runs only with ``intent_samples: typical``, whose
    plan clusters on the catalogue's embeddings."""
    settings = normalize_settings(settings)
    samples_mode, _ = resolve_samples(settings, backend_name)
    inputs = read_inputs(settings)
    rows = PrefixPrompts.from_settings(settings, inputs.texts, settings.prompt_items(samples_mode))
    if samples_mode == "typical":
        encoder = _Encoder(settings, progress)
        catalogue = encode_catalogue(inputs.texts, encoder)
        encoder.free()
    else:  # every prefix is asked: no embedding is read
        catalogue = (list(inputs.texts), None)
    return plan_prompts(settings, inputs, rows, samples_mode, catalogue, logger).prompts, rows.template


# ---- the LLM --------------------------------------------------------------------------------------


def ask(settings: Stage1Settings, backend_name: str, prompts: Sequence[str], template: str,
        logger: logging.Logger, progress: bool) -> Tuple[List[Optional[str]], GenerationStats, Dict[str, Any]]:
    """``(answer per prompt or None, stats, backend.describe())`` through the answer cache; the
    backend is closed afterwards (frees the GPU for the encoder)."""
    backend = get_backend(settings, logger, name=backend_name)
    try:
        info = backend.describe()
        cache = AnswerCache(dataset_dir(settings) / "intent" / CACHE_FILE, info, template_version(template))
        try:
            answers, stats = answer_prompts(
                backend, prompts, cache, settings.batch_size, logger=logger, progress=progress
            )
        finally:
            cache.close()
    finally:
        backend.close()
    return answers, stats, info


def clean_answers(calls: CallPlan, inputs: Inputs, rows: PrefixPrompts, answers: Sequence[Optional[str]],
                  logger: logging.Logger) -> Dict[str, List[Answer]]:
    """``{asked key: its Answer per view}``: cleaned, or fallen back (counted and logged)."""
    n = len(rows.view_names)
    out = {k: rows.answers(inputs.prefixes[k], answers[i * n:(i + 1) * n]) for i, k in enumerate(calls.asked)}
    whys = [a.fallback for per_view in out.values() for a in per_view if a.fallback is not None]
    if whys:
        logger.warning(
            f"{len(whys)} answers fell back to the text of the prefix's last item "
            f"({whys.count('empty')} empty after cleaning, {whys.count('failed')} failed)"
        )
    return out


# ---- encoding + localization ----------------------------------------------------------------------


def ground_rows(settings: Stage1Settings, inputs: Inputs, calls: CallPlan, cleaned: Mapping[str, List[Answer]],
                view_names: Sequence[str], encoder: _Encoder, catalogue: Tuple[List[str], np.ndarray],
                logger: logging.Logger, timings: Dict[str, float]):
    """``(keys, vectors, raw, records)``: every unique prefix's row, in first-seen order. The unique
    answer texts are encoded once, with the catalogue's encoder, and localized (Eq. 4-5)."""
    t0 = time.perf_counter()
    texts = unique_texts(a for per_view in cleaned.values() for a in per_view)
    embeddings = encoder.encode(texts, desc="encode answers")
    timings["encoding"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    grounding = Grounding(texts, embeddings, catalogue[0], catalogue[1], settings.topr, settings.faiss_threshold, logger,
                          search=Search.from_settings(settings))
    keys = list(inputs.prefixes)
    vectors = np.empty((len(keys), len(view_names), grounding.dim), dtype=np.float32)
    raw = np.empty_like(vectors)
    records = []
    for r, k in enumerate(keys):
        src = calls.plan[k]
        vectors[r], raw[r], rec = grounding.row(k, inputs.prefixes[k], view_names, cleaned[src],
                                                exemplar=src if calls.typical is not None else None)
        records.append(rec)
    timings["localization"] = time.perf_counter() - t0
    return keys, vectors, raw, records


# ---- the table ------------------------------------------------------------------------------------


def _summary_lines(summary: Mapping[str, Any]) -> str:
    width = max(len(k) for k in summary)
    rows = []
    for k, v in summary.items():
        rows.append(f"  {k:<{width}}  {v:.2f} s" if k.startswith("time ") else f"  {k:<{width}}  {v}")
    return "\n".join(rows)


def build_intent_table(settings: Any, logger: Optional[logging.Logger] = None, backend_name: Optional[str] = None) -> Path:
    """Build (or rebuild) the intent table for ``settings["dataset"]`` and return its folder; under
    the table's lock (another build of it is waited for), after removing what killed builds left."""
    log = logger or _log
    settings = normalize_settings(settings)
    backend_name = backend_name or resolve_backend_name(settings, log)
    folder = table_folder(settings, backend_name)
    with table_lock(folder, log):
        remove_debris(folder, log)
        return _build(settings, log, backend_name)


def _build(settings: Stage1Settings, log: logging.Logger, backend_name: str) -> Path:
    """``build_intent_table`` holding the lock (typed settings, resolved backend)."""
    progress = settings.show_progress
    samples_mode, _ = resolve_samples(settings, backend_name)
    folder = table_folder(settings, backend_name)
    timings: Dict[str, float] = {}

    t0 = time.perf_counter()
    inputs = read_inputs(settings)
    rows = PrefixPrompts.from_settings(settings, inputs.texts, settings.prompt_items(samples_mode))
    timings["prompting"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    encoder = _Encoder(settings, progress)
    # what answers are grounded in; with typical also what the plan clusters on
    catalogue = encode_catalogue(inputs.texts, encoder)
    encoder.free()
    timings["encoding"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    calls = plan_prompts(settings, inputs, rows, samples_mode, catalogue, log)
    timings["prompting"] += time.perf_counter() - t0
    log.info(
        f"stage 1 for {settings.dataset}: {len(inputs.samples)} samples, {len(inputs.prefixes)} unique prefixes, "
        f"intent_samples {samples_mode}: {len(calls.asked)} asked x {len(rows.view_names)} views = "
        f"{len(calls.prompts)} prompts, backend {backend_name} -> {folder}"
    )

    t0 = time.perf_counter()
    answers, gstats, info = ask(settings, backend_name, calls.prompts, rows.template, log, progress)
    timings["LLM"] = time.perf_counter() - t0

    cleaned = clean_answers(calls, inputs, rows, answers, log)
    keys, vectors, raw, records = ground_rows(settings, inputs, calls, cleaned, rows.view_names, encoder,
                                              catalogue, log, timings)
    summary = build_summary(inputs, calls, rows, cleaned, gstats, samples_mode, timings)
    meta = table_meta(settings, backend_name, info, rows, samples_mode, calls.typical, summary)
    t0 = time.perf_counter()
    write_intent_table(folder, meta, keys, vectors, raw, records, item_tokens=catalogue[0], item_vectors=catalogue[1],
                       storage_dtype=settings.storage_dtype)
    log.info(
        f"intent table written to {folder} ({time.perf_counter() - t0:.2f} s)\n"
        f"stage 1 summary ({settings.dataset}, backend {backend_name}):\n{_summary_lines(summary)}"
    )
    return folder


def build_summary(inputs: Inputs, calls: CallPlan, rows: PrefixPrompts, cleaned: Mapping[str, List[Answer]],
                  gstats: GenerationStats, samples_mode: str, timings: Mapping[str, float]) -> Dict[str, Any]:
    """``meta["summary"]``: what the build asked, reused, sent and fell back on, and where the time went."""
    whys = [a.fallback for per_view in cleaned.values() for a in per_view if a.fallback is not None]
    direct = set(calls.asked)  # prefixes whose own prompt was sent (an exemplar, or every prefix with all)
    samples = inputs.samples
    n_direct = sum(s.key in direct for s in samples)
    tplan = calls.typical
    return {
        "samples": len(samples),
        "unique prefixes": len(inputs.prefixes),
        "prompts total": len(samples) * len(rows.view_names),
        "prompts unique": gstats.unique,
        "from cache": gstats.from_cache,
        "sent": gstats.sent,
        "failed": gstats.failed,
        "fallbacks": len(whys),
        "fallbacks empty": whys.count("empty"),
        "intent_samples": samples_mode,
        **({"exemplars": len(tplan.exemplars)} if tplan is not None else {}),
        "LLM prompts per view": len(calls.asked),
        "LLM prompts": len(calls.prompts),
        "samples with a direct answer": n_direct,
        "direct answer fraction": round(n_direct / max(len(samples), 1), 4),
        "time prompting": timings["prompting"],
        "time LLM": timings["LLM"],
        "time encoding": timings["encoding"],
        "time localization": timings["localization"],
    }


def table_meta(settings: Stage1Settings, backend_name: str, info: Mapping[str, Any], rows: PrefixPrompts,
               samples_mode: str, tplan: Optional[TypicalPlan], summary: Mapping[str, Any]) -> Dict[str, Any]:
    """``meta.json`` of the table (``write_intent_table`` adds the counts); ``table_settings`` is what
    ``stale_reason`` compares."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": settings.dataset,
        "views": list(rows.view_names),
        "qualifiers": dict(rows.views),
        "backend": backend_name,
        "backend_info": info,
        "template": rows.template,
        "template_version": template_version(rows.template),
        "sampling": settings.sampling(),
        "encoder": settings.encoder,
        "encoder_path": enc.resolve_encoder(settings.encoder),
        "topr": settings.topr,
        "intent_samples": samples_mode,
        "prompt_max_items": rows.max_items,
        "answer_max_chars": rows.max_chars,
        "itemtext_sha1": file_sha1(itemtext_path(settings)),
        "table_settings": table_identity(settings, backend_name),
        **({"typical": {
            "budget": settings.budget,
            "k": tplan.budget,
            "exemplars": len(tplan.exemplars),
            "train_prefixes": tplan.train_prefixes,
            "kmeans_steps": tplan.iterations,
        }} if tplan is not None else {}),
        "summary": dict(summary),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ---- freshness: which table these settings use, and whether it is up to date -----------------------


def stale_reason(settings: Stage1Settings, folder: Path, backend: str) -> Optional[str]:
    """Why the table in ``folder`` cannot serve these settings and dataset files, or None if it can."""
    meta = read_meta(folder)
    if meta is None:
        return "missing"
    if meta.get("table_settings") != table_identity(settings, backend):
        return "stale: its settings differ from the current ones"
    try:
        if meta.get("itemtext_sha1") != file_sha1(itemtext_path(settings)):
            return f"stale: {itemtext_path(settings).name} changed since it was built"
        for name in dict.fromkeys([*REQUIRED, *(meta.get(FILES) or ())]):  # a missing file: rebuilt
            if not (folder / name).is_file():
                raise FileNotFoundError(2, "missing", str(folder / name))
    except FileNotFoundError as e:
        return f"stale: {Path(e.filename).name if e.filename else 'a file'} is missing"
    need = unique_prefixes(read_samples(settings))
    lacking = [k for k, row in zip(need, lookup_rows(folder, need)) if row < 0]  # keys.txt streamed
    if lacking:
        return f"stale: {len(lacking)} of the dataset's {len(need)} prefixes are not in it"
    verify_table(folder, meta)  # up to date but for a file unlike its checksum: TableDamagedError, file and fix
    return None


def built_elsewhere(settings: Stage1Settings, picked: str) -> Optional[Path]:
    """With ``intent_backend: auto``: an up-to-date table of another LLM backend for these settings.

    ``auto`` resolves per machine (vllm on the GPU box that ran stage 1, transformers or text on the
    CPU box that trains), so without this a table built on the GPU box and copied over would be
    rebuilt with a weaker backend. The LLM-free ``text`` table is never picked this way.
    """
    if settings.backend != "auto":
        return None
    for other in auto_reuse():  # the backends registered as reused, strongest first
        if other != picked:
            folder = table_folder(settings, other)
            try:
                if stale_reason(settings, folder, other) is None:  # "missing" without a meta.json
                    return folder
            except TableDamagedError as e:
                _log.warning(f"intent_backend auto: not using {folder}: {e}")
    return None


def locate_table(settings: Any, logger: Optional[logging.Logger] = None) -> Tuple[Path, str, Optional[str]]:
    """``(folder, backend, why it is not usable or None)``: the table these settings use, built or not.

    The folder of the backend ``intent_backend`` resolves to; with ``auto``, an up-to-date table of
    another LLM backend when that one is not (``built_elsewhere``). Training, ``show`` and serving
    all find their table here, so they never disagree about which one it is.
    """
    settings = normalize_settings(settings)
    backend = resolve_backend_name(settings, logger)
    folder = table_folder(settings, backend)
    reason = stale_reason(settings, folder, backend)
    if reason is not None:
        other = built_elsewhere(settings, backend)
        if other is not None:
            built_with = str(read_meta(other).get("backend"))
            (logger or _log).info(f"intent_backend auto: the up-to-date table {other} (built with backend "
                                  f"{built_with}) is used instead of a {backend} one")
            return other, built_with, None
    return folder, backend, reason


def ensure_intent_table(settings: Any, logger: Optional[logging.Logger] = None) -> Path:
    """The intent table folder for the current settings, built first when missing or stale."""
    log = logger or _log
    settings = normalize_settings(settings)
    folder, backend, reason = locate_table(settings, log)
    if reason is None:
        log.info(f"intent table up to date: {folder}")
        tidy(folder, log)  # what killed builds left, unless a build is running
        return folder
    with table_lock(folder, log) as waited:
        remove_debris(folder, log)  # may put back a table a killed swap had moved aside
        reason = stale_reason(settings, folder, backend)  # another process may have built it meanwhile
        if reason is None:
            log.info(f"intent table up to date: {folder}" + (" (built by the build waited for)" if waited else ""))
            return folder
        log.info(f"intent table {folder} {reason}: building it")
        return build_intent_table(settings, log, backend_name=backend)  # the lock is re-entrant
