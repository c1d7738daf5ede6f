"""Stage 1 of LLM4SBR: multi-view LLM intents, grounded in the item catalogue, as an intent table.

Imports no RecBole (it runs in an LLM-only environment); the heavy parts (LLM backends, torch, the
text encoder) load only when a table is built. Stage 2 calls ``ensure_intent_table(config)`` (a dict
or a RecBole Config) and ``load_intent_table(path)``.
"""
from .keys import prefix_key
from .pipeline import build_intent_table, ensure_intent_table
from .errors import IntentError
from .settings import load_settings
from .table import IntentTable, load_intent_table

__all__ = [
    "ensure_intent_table",
    "build_intent_table",
    "load_intent_table",
    "IntentTable",
    "load_settings",
    "prefix_key",
    "IntentError",
]
