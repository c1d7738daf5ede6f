"""``python -m recbole_llm4sbr.intent show``: what stage 1 made of one session.

For every sample of a session id: the prompt the LLM saw, each view's (cleaned) answer and the
catalogue items it was grounded in, with their similarities. Reads an existing table only: showing
never starts a build.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Mapping, Optional, TextIO

from .backends import resolve_samples
from .errors import IntentError
from .inputs import read_item_text, read_samples
from .pipeline import locate_table
from .rows import PrefixPrompts, short_view_items
from .settings import normalize_settings
from .table import load_intent_table, read_meta


def show_session(settings: Mapping[str, Any], session_id: Any, out: Optional[TextIO] = None) -> int:
    """Print the samples of ``session_id`` to ``out``; returns how many there were."""
    out = out or sys.stdout
    settings = normalize_settings(settings)
    sid = str(session_id)
    quiet = logging.getLogger("recbole_llm4sbr.intent.show")  # the build said what auto picked
    quiet.setLevel(logging.WARNING)
    folder, backend, _ = locate_table(settings, quiet)
    if read_meta(folder) is None:
        raise IntentError(
            f"no intent table for these settings at {folder}: build it first with "
            f"python -m recbole_llm4sbr.intent --dataset={settings['dataset']} (and the same settings)"
        )
    samples = read_samples(settings)
    mine = [s for s in samples if s.session_id == sid]
    if not mine:
        examples = ", ".join(list(dict.fromkeys(s.session_id for s in samples if s.session_id))[:5])
        raise IntentError(f"session {sid!r} is not in the benchmark files of {settings['dataset']}: pass one of its session_id values (e.g. {examples})")
    texts = read_item_text(settings)
    table = load_intent_table(folder, mmap=True)
    records = {r["key"]: r for r in table.answers({s.key for s in mine})}
    exemplars = {r["exemplar"] for r in records.values() if r.get("exemplar") not in (None, r["key"])} - set(records)
    if exemplars:  # intent_samples: typical: the prompts the LLM saw are the exemplars'
        records.update({r["key"]: r for r in table.answers(exemplars)})
    views = dict(settings.views)
    template = table.meta.get("template", settings.template)
    # every view's own prompt: they differ in the qualifier and, with intent_short_items, in the items
    prompts = PrefixPrompts(template, views, texts, settings.prompt_items(resolve_samples(settings, backend)[0]),
                            settings.answer_max_chars, short_view_items(settings))
    w = out.write
    w(f"intent table: {folder}\nbackend: {table.meta.get('backend')} {table.meta.get('backend_info')}\n")
    for n, s in enumerate(mine, start=1):
        target = f"{s.target} ({texts.get(s.target, '?')})" if s.target is not None else "-"
        w(f"\n=== sample {n}/{len(mine)}: session {sid}, split {s.split}, prefix of {len(s.prefix)} items, "
          f"target {target}, prefix key {s.key}\n")
        rec = records.get(s.key)
        asked = s.prefix
        ex = rec.get("exemplar") if rec is not None else None
        if ex is not None and ex != s.key and ex in records:
            asked = records[ex]["prefix"]
            w(f"(intent_samples: typical: no LLM call of its own; it shares the answers of the exemplar {ex}, "
              f"a train prefix of {len(asked)} items)\n")
        asked_prompts = dict(zip(prompts.view_names, prompts.prompts(asked)))
        if rec is None:
            for v, prompt in asked_prompts.items():
                w(f"--- prompt (view {v})\n{prompt}\n")
            w("(this prefix is not in the table: it is stale, rebuild it)\n")
            continue
        for v in table.views:
            if v in asked_prompts:
                w(f"--- prompt (view {v})\n{asked_prompts[v]}\n")
            e = rec["views"].get(v, {})
            note = f"  [fallback: {e['fallback']}]" if e.get("fallback") else ""
            w(f"--- view {v} ({table.meta.get('qualifiers', {}).get(v, v)}): {e.get('answer', '')!r}{note}\n")
            for rank, (tok, sim) in enumerate(zip(e.get("items", []), e.get("sims", [])), start=1):
                w(f"    {rank}. {sim:.4f}  {tok}  {texts.get(tok, '?')}\n")
    return len(mine)
