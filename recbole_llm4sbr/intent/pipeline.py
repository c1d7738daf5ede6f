"""Stage 1 end to end: benchmark files -> prompts -> answers -> grounded intents -> intent table.

Reads the RecBole benchmark files as plain TSV (stage 1 must not import RecBole), computes each
sample's ``prefix_key``, and asks the LLM once per (unique prefix, view). ``ensure_intent_table``
is what stage 2 calls: it returns the table for the current settings, building it only when it is
missing or stale.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import encoder as enc
from .backends import get_backend, resolve_backend_name, resolve_samples
from .cache import CACHE_FILE, AnswerCache
from .clean import final_answer
from .generation import answer_prompts
from .keys import prefix_key
from .localization import localize
from .prompts import build_prompt, check_template, template_version
from .settings import (
    FORMAT_VERSION,
    IntentError,
    answer_max_chars,
    dataset_dir,
    intent_views,
    normalize_settings,
    prompt_max_items,
    sampling,
    table_identity,
    table_tag,
)
from .typical import TypicalPlan, plan_typical
from .table import ITEMS_NPY, ITEMS_TXT, read_keys, read_meta, write_intent_table

SPLITS = ("train", "valid", "test")
_log = logging.getLogger("recbole_llm4sbr.intent")


# ---- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One benchmark line: a prefix and its target."""

    split: str
    session_id: Optional[str]
    prefix: Tuple[str, ...]
    target: Optional[str]

    @property
    def key(self) -> str:
        return prefix_key(self.prefix)


def inter_path(settings: Mapping[str, Any], split: str) -> Path:
    ds = str(settings["dataset"])
    return dataset_dir(settings) / f"{ds}.{split}.inter"


def itemtext_path(settings: Mapping[str, Any]) -> Path:
    ds = str(settings["dataset"])
    return dataset_dir(settings) / f"{ds}.itemtext"


def _column(fields: List[str], name: str) -> Optional[int]:
    for i, f in enumerate(fields):
        if f.split(":", 1)[0] == name:
            return i
    return None


def read_split(settings: Mapping[str, Any], split: str) -> List[Sample]:
    """The samples of ``<ds>.<split>.inter`` (header ``session_id:token item_id_list:token_seq item_id:token``)."""
    path = inter_path(settings, split)
    item = str(settings.get("ITEM_ID_FIELD") or "item_id")
    list_field = item + str(settings.get("LIST_SUFFIX") or "_list")
    if not path.is_file():
        raise IntentError(
            f"benchmark file {path} not found: convert the dataset first (recbole_llm4sbr.data.converters) "
            f"or point --data_path at the folder that holds {settings['dataset']}/"
        )
    samples: List[Sample] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        col_list = _column(header, list_field)
        if col_list is None:
            raise IntentError(f"{path}: the header has no {list_field}:token_seq column (header: {' '.join(header)})")
        col_sess, col_item = _column(header, "session_id"), _column(header, item)
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) <= col_list:
                raise IntentError(f"{path}, line {lineno}: expected {len(header)} tab-separated columns, got {len(cols)}")
            prefix = tuple(cols[col_list].split())
            if not prefix:
                raise IntentError(f"{path}, line {lineno}: empty {list_field}; every sample needs a non-empty prefix")
            samples.append(
                Sample(
                    split,
                    cols[col_sess] if col_sess is not None and col_sess < len(cols) else None,
                    prefix,
                    cols[col_item] if col_item is not None and col_item < len(cols) else None,
                )
            )
    return samples


def read_samples(settings: Mapping[str, Any]) -> List[Sample]:
    """All samples of the three benchmark files, train then valid then test."""
    return [s for split in SPLITS for s in read_split(settings, split)]


def unique_prefixes(samples: Sequence[Sample]) -> Dict[str, Tuple[str, ...]]:
    """``{prefix_key: tokens}`` in first-seen order."""
    out: Dict[str, Tuple[str, ...]] = {}
    for s in samples:
        out.setdefault(s.key, s.prefix)
    return out


def read_item_text(settings: Mapping[str, Any]) -> Dict[str, str]:
    """``{item token: text}`` from ``<ds>.itemtext`` (header ``item_id<TAB>text``)."""
    path = itemtext_path(settings)
    if not path.is_file():
        raise IntentError(f"item text file {path} not found: stage 1 needs it; write it with the data converter for {settings['dataset']}")
    texts: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
        if not header:
            raise IntentError(f"item text file {path} is empty: expected a header 'item_id<TAB>text' and one line per item")
        if header.split("\t")[0].split(":")[0] != "item_id" or "\t" not in header:
            raise IntentError(f"item text file {path} is malformed: its first line must be the header 'item_id<TAB>text', got {header[:80]!r}")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            if "\t" not in line:
                raise IntentError(f"item text file {path} is malformed at line {lineno}: expected 'item_id<TAB>text', got {line[:80]!r}")
            tok, text = line.split("\t", 1)
            texts[tok.strip()] = text.strip()
    if not texts:
        raise IntentError(f"item text file {path} has no items: expected one 'item_id<TAB>text' line per item")
    return texts


def check_item_text(settings: Mapping[str, Any], prefixes: Mapping[str, Sequence[str]], texts: Mapping[str, str]) -> None:
    missing = sorted({t for p in prefixes.values() for t in p if t not in texts})
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise IntentError(
            f"{len(missing)} item tokens used in the sessions of {settings['dataset']} have no text in "
            f"{itemtext_path(settings)} ({shown}): add an 'item_id<TAB>text' line for each, or re-run the data converter"
        )


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        tp = plan_typical(
            prefixes, train_keys, item_tokens, item_vectors, settings.get("intent_budget"),
            int(settings.get("intent_seed") or 0), logger,
        )
        return tp.plan, tp
    raise IntentError(f"unknown intent_samples {samples!r}: choose all or typical")


# ---- the table ------------------------------------------------------------------------------------


def table_folder(settings: Mapping[str, Any], backend: str) -> Path:
    """``<data_path>/<ds>/intent/<tag>/``."""
    return dataset_dir(settings) / "intent" / table_tag(settings, backend)


def _summary_lines(summary: Mapping[str, Any]) -> str:
    width = max(len(k) for k in summary)
    rows = []
    for k, v in summary.items():
        rows.append(f"  {k:<{width}}  {v:.2f} s" if k.startswith("time ") else f"  {k:<{width}}  {v}")
    return "\n".join(rows)


def build_intent_table(settings: Any, logger: Optional[logging.Logger] = None, backend_name: Optional[str] = None) -> Path:
    """Build (or rebuild) the intent table for ``settings["dataset"]`` and return its folder."""
    log = logger or _log
    settings = normalize_settings(settings)
    progress = bool(settings.get("show_progress", True))
    backend_name = backend_name or resolve_backend_name(settings, log)
    views = intent_views(settings)
    template = str(settings.get("intent_template") or "")
    check_template(template, len(views))
    tv = template_version(template)
    folder = table_folder(settings, backend_name)
    timings: Dict[str, float] = {}

    samples_mode, _ = resolve_samples(settings, backend_name)
    max_items = prompt_max_items(settings, samples_mode)

    # inputs
    t0 = time.perf_counter()
    samples = read_samples(settings)
    prefixes = unique_prefixes(samples)
    texts = read_item_text(settings)
    check_item_text(settings, prefixes, texts)
    timings["prompting"] = time.perf_counter() - t0

    # the catalogue first, with the encoder that will embed the answers: typical samples cluster on
    # it; on a GPU the (small) encoder is freed again before the LLM starts
    t0 = time.perf_counter()
    enc.set_cpu_threads(settings.get("torch_num_threads"))
    enc_name = str(settings.get("intent_encoder"))
    enc_device = enc.resolve_device(settings.get("intent_encoder_device") or settings.get("intent_device"))
    bs = int(settings.get("intent_encoder_batch_size") or 256)
    catalogue = list(texts)
    model = enc.load_encoder(enc_name, enc_device)
    i_emb = enc.encode(model, [texts[t] or t for t in catalogue], bs, progress, desc="encode items")
    if enc_device != "cpu":
        del model
        enc.unload(enc_name, enc_device)
    timings["encoding"] = time.perf_counter() - t0

    # which prefixes the LLM is asked about, and one prompt per (asked prefix, view)
    t0 = time.perf_counter()
    plan, tplan = plan_llm_calls(
        settings, prefixes, log, samples=samples_mode,
        train_keys=[s.key for s in samples if s.split == "train"], item_tokens=catalogue, item_vectors=i_emb,
    )
    asked = list(dict.fromkeys(plan.values()))
    view_names = list(views)
    prompts = [build_prompt(template, prefixes[k], texts, views[v], max_items) for k in asked for v in view_names]
    timings["prompting"] += time.perf_counter() - t0
    log.info(
        f"stage 1 for {settings['dataset']}: {len(samples)} samples, {len(prefixes)} unique prefixes, "
        f"intent_samples {samples_mode}: {len(asked)} asked x {len(view_names)} views = {len(prompts)} prompts, "
        f"backend {backend_name} -> {folder}"
    )

    # LLM
    t0 = time.perf_counter()
    backend = get_backend(settings, log, name=backend_name)
    try:
        info = backend.describe()
        cache = AnswerCache(dataset_dir(settings) / "intent" / CACHE_FILE, info, tv)
        try:
            answers, gstats = answer_prompts(
                backend, prompts, cache, int(settings.get("intent_batch_size") or 32), logger=log, progress=progress
            )
        finally:
            cache.close()
    finally:
        backend.close()  # frees the GPU for the encoder
    timings["LLM"] = time.perf_counter() - t0

    # cleaning + fallback (never a silent empty answer)
    item_ids = frozenset(texts)
    max_chars = answer_max_chars(settings)
    cleaned: Dict[Tuple[str, str], str] = {}
    fell_back: Dict[Tuple[str, str], str] = {}
    n_empty = n_failed = 0
    for (k, v), ans in zip(((k, v) for k in asked for v in view_names), answers):
        last = prefixes[k][-1]
        cleaned[(k, v)], why = final_answer(ans, max_chars, item_ids, texts.get(last) or last)
        if why is not None:
            fell_back[(k, v)] = why
            n_failed += why == "failed"
            n_empty += why == "empty"
    if fell_back:
        log.warning(
            f"{len(fell_back)} answers fell back to the text of the prefix's last item "
            f"({n_empty} empty after cleaning, {n_failed} failed)"
        )

    # encoding: the unique answer texts, with the catalogue's encoder
    t0 = time.perf_counter()
    model = enc.load_encoder(enc_name, enc_device)
    uniq_answers = list(dict.fromkeys(cleaned.values()))
    a_row = {t: i for i, t in enumerate(uniq_answers)}
    a_emb = enc.encode(model, uniq_answers, bs, progress, desc="encode answers")
    timings["encoding"] += time.perf_counter() - t0

    # localization (Eq. 4-5) on unique answers, then scattered into [n_keys, n_views, d]
    t0 = time.perf_counter()
    topr = int(settings.get("intent_topr") or 0)
    loc, idx, sims = localize(a_emb, i_emb, topr, int(settings.get("intent_faiss_threshold") or 200_000), log)
    keys = list(prefixes)
    d = a_emb.shape[1]
    vectors = np.empty((len(keys), len(view_names), d), dtype=np.float32)
    raw = np.empty_like(vectors)
    records = []
    for r, k in enumerate(keys):
        src = plan[k]
        rec: Dict[str, Any] = {"key": k, "prefix": list(prefixes[k]), "views": {}}
        for j, v in enumerate(view_names):
            text = cleaned[(src, v)]
            a = a_row[text]
            vectors[r, j] = loc[a]
            raw[r, j] = a_emb[a]
            entry: Dict[str, Any] = {
                "answer": text,
                "items": [catalogue[i] for i in idx[a]],
                "sims": [round(float(s), 6) for s in sims[a]],
            }
            if (src, v) in fell_back:
                entry["fallback"] = fell_back[(src, v)]
            rec["views"][v] = entry
        if tplan is not None:
            rec["exemplar"] = src
        records.append(rec)
    timings["localization"] = time.perf_counter() - t0

    direct = set(asked)  # prefixes whose own prompt was sent (an exemplar, or every prefix with all)
    n_direct = sum(s.key in direct for s in samples)
    summary: Dict[str, Any] = {
        "samples": len(samples),
        "unique prefixes": len(prefixes),
        "prompts total": len(samples) * len(view_names),
        "prompts unique": gstats.unique,
        "from cache": gstats.from_cache,
        "sent": gstats.sent,
        "failed": gstats.failed,
        "fallbacks": len(fell_back),
        "fallbacks empty": n_empty,
        "intent_samples": samples_mode,
        **({"exemplars": len(tplan.exemplars)} if tplan is not None else {}),
        "LLM prompts per view": len(asked),
        "LLM prompts": len(prompts),
        "samples with a direct answer": n_direct,
        "direct answer fraction": round(n_direct / max(len(samples), 1), 4),
        "time prompting": timings["prompting"],
        "time LLM": timings["LLM"],
        "time encoding": timings["encoding"],
        "time localization": timings["localization"],
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": str(settings["dataset"]),
        "views": view_names,
        "qualifiers": views,
        "backend": backend_name,
        "backend_info": info,
        "template": template,
        "template_version": tv,
        "sampling": sampling(settings),
        "encoder": str(settings.get("intent_encoder")),
        "encoder_path": enc.resolve_encoder(str(settings.get("intent_encoder"))),
        "topr": topr,
        "intent_samples": samples_mode,
        "prompt_max_items": max_items,
        "answer_max_chars": max_chars,
        "itemtext_sha1": file_sha1(itemtext_path(settings)),
        "table_settings": table_identity(settings, backend_name),
        **({"typical": {
            "budget": settings.get("intent_budget"),
            "k": tplan.budget,
            "exemplars": len(tplan.exemplars),
            "train_prefixes": tplan.train_prefixes,
            "kmeans_steps": tplan.iterations,
        }} if tplan is not None else {}),
        "summary": summary,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    t0 = time.perf_counter()
    write_intent_table(folder, meta, keys, vectors, raw, records, item_tokens=catalogue, item_vectors=i_emb)
    log.info(
        f"intent table written to {folder} ({time.perf_counter() - t0:.2f} s)\n"
        f"stage 1 summary ({settings['dataset']}, backend {backend_name}):\n{_summary_lines(summary)}"
    )
    return folder


def stale_reason(settings: Mapping[str, Any], folder: Path, backend: str) -> Optional[str]:
    """Why the table in ``folder`` cannot serve these settings and dataset files, or None if it can."""
    meta = read_meta(folder)
    if meta is None:
        return "missing"
    if meta.get("table_settings") != table_identity(settings, backend):
        return "stale: its settings differ from the current ones"
    try:
        if meta.get("itemtext_sha1") != file_sha1(itemtext_path(settings)):
            return f"stale: {itemtext_path(settings).name} changed since it was built"
        have = set(read_keys(folder))
        for name in (ITEMS_TXT, ITEMS_NPY):
            if not (folder / name).is_file():
                raise FileNotFoundError(2, "missing", str(folder / name))
    except FileNotFoundError as e:
        return f"stale: {Path(e.filename).name if e.filename else 'a file'} is missing"
    need = unique_prefixes(read_samples(settings))
    lacking = [k for k in need if k not in have]
    if lacking:
        return f"stale: {len(lacking)} of the dataset's {len(need)} prefixes are not in it"
    return None


#: with ``intent_backend: auto``, an up-to-date table of these LLM backends (strongest first) is used
#: before a table of the backend auto picked on this machine is built
AUTO_REUSE = ("vllm", "openai", "transformers")


def built_elsewhere(settings: Mapping[str, Any], picked: str) -> Optional[Path]:
    """With ``intent_backend: auto``: an up-to-date table of another LLM backend for these settings.

    ``auto`` resolves per machine (vllm on the GPU box that ran stage 1, transformers or text on the
    CPU box that trains), so without this a table built on the GPU box and copied over would be
    rebuilt with a weaker backend. The LLM-free ``text`` table is never picked this way.
    """
    if str(settings.get("intent_backend") or "auto").strip().lower() != "auto":
        return None
    for other in AUTO_REUSE:
        if other != picked:
            folder = table_folder(settings, other)
            if stale_reason(settings, folder, other) is None:  # "missing" without a meta.json
                return folder
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
        return folder
    log.info(f"intent table {folder} {reason}: building it")
    return build_intent_table(settings, log, backend_name=backend)
