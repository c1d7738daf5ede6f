"""Online stage 1 (serving an unseen prefix) refuses a table it cannot reproduce, before any model loads.

A served model asks the LLM about prefixes its table lacks; if the table was built with other views,
or holds LLM hidden states (a representation no longer produced), the online rows would not be
comparable to the table's: each must stop with an ``IntentError`` naming the fix, not serve silently
different intents.
"""
import json
import re

import pytest

from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.online import OnlineIntents

VIEWS = {"long": "long-term", "short": "short-term"}


@pytest.mark.parametrize("meta, extra, message", [
    ({"views": ["long"], "backend": "text"}, {}, "has views ['long'], the settings ['long', 'short']"),
    ({"views": ["long", "short"], "backend": "transformers", "representation": "hidden"}, {},
     "holds LLM hidden states (intent_representation: hidden, since removed)"),
], ids=["views", "hidden"])
def test_online_refuses_a_table_it_cannot_reproduce(tmp_path, meta, extra, message):
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IntentError, match=re.escape(message)):
        OnlineIntents({"dataset": "ml-100k-session", "intent_views": VIEWS, **extra}, tmp_path)

