"""Answer cleaning: what small chat models wrap around an item name."""
from __future__ import annotations

import pytest
import torch

from recbole_llm4sbr.intent.clean import clean_answer, fallback_answer

torch.set_num_threads(1)

CASES = [
    ("Toy Story (1995)", "Toy Story (1995)"),
    ("assistant\nToy Story (1995)", "Toy Story (1995)"),
    ("Assistant: Toy Story", "Toy Story"),
    ("<|im_start|>assistant\nToy Story<|im_end|>", "Toy Story"),
    ("Answer: Heat", "Heat"),
    ("answer - Heat", "Heat"),
    ("Item name: \"Heat\"", "Heat"),
    ("1. Jumanji (1995) -- Adventure", "Jumanji (1995) -- Adventure"),
    ("2) Jumanji", "Jumanji"),
    ("- Jumanji", "Jumanji"),
    ("* **Jumanji**", "Jumanji"),
    ("**Answer:** *Jumanji*", "Jumanji"),
    ("# Jumanji", "Jumanji"),
    ("`Jumanji`", "Jumanji"),
    ("\u201cSe7en\u201d", "Se7en"),
    ("'Casino'.", "Casino"),
    ("Jumanji (1995) -- Adventure_2", "Jumanji (1995) -- Adventure"),
    ("Answer: 1. \"Heat_B00ABC123\"", "Heat"),
    ("Here is my guess:\nBabe (1995)\nBecause the user likes comedies.", "Babe (1995)"),
    ("Babe\n\nThe user clicked family films.", "Babe"),
    ("<think>the user likes crime</think>\nCasino", "Casino"),
    ("", ""),
    ("   \n\n", ""),
    ("assistant\n\n**1.** \"\"", ""),
    ("Answer:", ""),
    ("...", ""),
]


@pytest.mark.parametrize("raw,want", CASES)
def test_clean(raw, want):
    assert clean_answer(raw) == want


def test_only_known_ids_are_stripped_when_ids_are_given():
    ids = {"7", "B00X"}
    assert clean_answer("Se7en_7", item_ids=ids) == "Se7en"
    assert clean_answer("Heat_B00X", item_ids=ids) == "Heat"
    assert clean_answer("snake_case2", item_ids=ids) == "snake_case2"  # not an item token
    assert clean_answer("snake_case2") == "snake"  # without ids: any suffix with a digit goes


def test_long_answers_are_cut_at_a_word():
    text = "word " * 100
    out = clean_answer(text, max_chars=50)
    assert len(out) <= 50 and out.endswith("word") and not out.endswith(" ")
    assert clean_answer("x" * 300, max_chars=200) == "x" * 200
    assert clean_answer("x" * 300, max_chars=0) == "x" * 300  # 0 = no cut


def test_none_is_empty_and_fallback_is_the_last_item_text():
    assert clean_answer(None) == ""
    assert fallback_answer("Babe (1995)") == "Babe (1995)"
