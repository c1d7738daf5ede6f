"""Multi-view prompts: exact text, views from config, template version; the text backend."""
from __future__ import annotations

import pytest
import torch

from intent_helpers import ITEMS

from recbole_llm4sbr.intent.backends.text import TextBackend
from recbole_llm4sbr.intent.prompts import build_prompt, check_template, format_items, template_version
from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.settings import intent_views, load_settings

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def settings():
    return load_settings(dataset="tiny")


def test_paper_prompt_exact_text(settings):
    got = build_prompt(settings["intent_template"], ["3", "1", "7"], ITEMS, "short-term")
    assert got == (
        "The order in which users click on items is as follows:\n"
        "1. Heat (1995) -- Action|Crime_3\n"
        "2. Toy Story (1995) -- Animation|Comedy_1\n"
        "3. Se7en (1995) -- Crime|Thriller_7\n"
        "Please guess an item that the user is interested in in the short-term.\n"
        "(Only output the item name without any explanation.)"
    )


def test_every_view_lists_the_whole_prefix(settings):
    prefix = [str(i % 8 + 1) for i in range(50)]
    views = intent_views(settings)
    prompts = {v: build_prompt(settings["intent_template"], prefix, ITEMS, q) for v, q in views.items()}
    assert prompts["long"].count("\n") == prompts["short"].count("\n") == 50 + 2
    assert "50. " in prompts["long"] and "in the long-term." in prompts["long"]
    assert prompts["long"].replace("long-term", "short-term") == prompts["short"]


def test_a_view_added_in_config_needs_no_code(settings):
    views = intent_views({**settings, "intent_views": {"long": "long-term", "short": "short-term", "next": "next click"}})
    assert list(views) == ["long", "short", "next"]
    assert "in the next click." in build_prompt(settings["intent_template"], ["1"], ITEMS, views["next"])


def test_braces_in_names_and_templates_are_literal():
    items = {"9": "A {qualifier} {items} {0} name"}
    got = build_prompt("{items} | {qualifier} | {literal}", ["9"], items, "Q")
    assert got == "1. A {qualifier} {items} {0} name_9 | Q | {literal}"


def test_format_items_numbering():
    assert format_items(["2", "2"], ITEMS) == "1. Jumanji (1995) -- Adventure|Children_2\n2. Jumanji (1995) -- Adventure|Children_2"


def test_template_version():
    assert template_version("abc") == template_version("abc")
    assert template_version("abc") != template_version("abd")
    assert len(template_version("abc")) == 8


def test_check_template():
    check_template("{items}", 1)
    with pytest.raises(IntentError, match=r"\{items\}"):
        check_template("no items here {qualifier}", 2)
    with pytest.raises(IntentError, match=r"\{qualifier\}"):
        check_template("{items}", 2)


def test_text_backend_answers_with_the_prompt_items(settings):
    prompt = build_prompt(settings["intent_template"], ["3", "1", "7"], ITEMS, "long-term")
    b = TextBackend(settings)
    assert b.generate([prompt]) == [
        "Se7en (1995) -- Crime|Thriller; Toy Story (1995) -- Animation|Comedy; Heat (1995) -- Action|Crime"
    ]
    assert "no LLM" in b.describe()["rule"]
