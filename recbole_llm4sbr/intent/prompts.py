"""Multi-view prompts (docs/METHOD.md, Stage 1 step 1).

One prompt per (prefix, view): the template's ``{items}`` becomes the WHOLE prefix as numbered lines
``N. <ItemName>_<ItemID>`` (oldest first, ids are the dataset's own tokens) and ``{qualifier}`` the
view's qualifier from ``intent_views``; ``max_items`` (``intent_prompt_max_items``, or the short view's
``intent_short_items``) keeps only the last items. Placeholders are substituted literally (not ``str.format``),
so braces in item names or in a user's template need no escaping.
"""
from __future__ import annotations

import hashlib
import re
from typing import Mapping, Sequence

from .errors import IntentError

ITEMS = "{items}"
QUALIFIER = "{qualifier}"
_PLACEHOLDER = re.compile(r"\{items\}|\{qualifier\}")


def template_version(template: str) -> str:
    """8 hex chars of sha1 over the template text: part of every cache key and table identity."""
    return hashlib.sha1(template.encode("utf-8")).hexdigest()[:8]


def check_template(template: str, n_views: int) -> None:
    """A template must list the items; with several views it must also say which view it asks for."""
    if not template or ITEMS not in template:
        raise IntentError("intent_template must contain {items} (where the numbered prefix goes)")
    if n_views > 1 and QUALIFIER not in template:
        raise IntentError(
            "intent_template has no {qualifier}: with several intent_views every view would get the "
            "same prompt; add {qualifier} or keep one view"
        )


def format_items(prefix: Sequence[str], item_text: Mapping[str, str]) -> str:
    """Numbered lines ``N. <ItemName>_<ItemID>`` over the whole prefix, oldest first."""
    return "\n".join(f"{n}. {item_text[tok]}_{tok}" for n, tok in enumerate(prefix, start=1))


def build_prompt(
    template: str, prefix: Sequence[str], item_text: Mapping[str, str], qualifier: str, max_items: int = 0
) -> str:
    """The user message for one (prefix, view). ``max_items`` > 0 (``intent_prompt_max_items``) lists
    only the prefix's last ``max_items`` items (numbered from 1): shorter prompts for a small CPU
    LLM; 0 lists the whole prefix (the paper)."""
    if max_items and max_items > 0:
        prefix = list(prefix)[-int(max_items):]
    values = {ITEMS: format_items(prefix, item_text), QUALIFIER: qualifier}
    # one pass, so a "{qualifier}" inside an item name stays as written
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)
