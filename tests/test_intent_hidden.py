"""``intent_representation: hidden``: a tiny table of the LLM's pooled last-layer states (the tiny random
chat model of conftest, no download), its catalogue in the same space, its own tag, a model trained on
it, serving an unseen prefix, and the refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from intent_helpers import DS, ITEMS, base_settings, unique_prefix_count, write_dataset

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.intent import build_intent_table, load_intent_table, prefix_key
from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.hidden import HiddenEncoder
from recbole_llm4sbr.intent.identity import table_tag
from recbole_llm4sbr.intent.localization import localize
from recbole_llm4sbr.intent.online import OnlineIntents
from recbole_llm4sbr.intent.rows import PrefixPrompts
from recbole_llm4sbr.intent.settings import prompt_max_items

torch.set_num_threads(1)
HIDDEN = 64  # the tiny chat model's hidden size


def hidden_settings(root, model, **kw):
    over = dict(intent_backend="transformers", intent_model=model, intent_device="cpu", intent_samples="all",
                intent_representation="hidden", intent_num_threads=1)
    over.update(kw)
    return base_settings(root, **over)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_chat_model):
    root = tmp_path_factory.mktemp("hidden")
    write_dataset(root)
    s = hidden_settings(root, tiny_chat_model)
    return root, s, build_intent_table(s)


def test_hidden_table_shapes_norms_and_same_space_catalogue(built, tiny_chat_model):
    root, s, folder = built
    t = load_intent_table(folder)
    n = unique_prefix_count()
    assert t.vectors.shape == (n, 2, HIDDEN) and t.raw.shape == (n, 2, HIDDEN)
    assert t.meta["d_text"] == HIDDEN and t.meta["representation"] == "hidden"
    assert t.meta["backend_info"]["representation"] == "hidden"
    np.testing.assert_allclose(np.linalg.norm(t.raw, axis=2), 1.0, atol=1e-5)
    # the catalogue is the LLM's too (not the 384-d text encoder's), unit rows
    assert t.item_tokens == list(ITEMS) and t.item_vectors.shape == (len(ITEMS), HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(t.item_vectors, axis=1), 1.0, atol=1e-5)
    # the raw row IS the pooled state of the prompt the text path would send (chat template applied)
    rows = PrefixPrompts.from_settings(s, ITEMS, prompt_max_items(s, "all"))
    key = prefix_key(["1", "2"])
    llm = HiddenEncoder(s)
    try:
        want = llm.encode(rows.prompts(["1", "2"]))
        items = llm.encode(list(ITEMS.values()))
    finally:
        llm.close()
    np.testing.assert_allclose(t.raw[t.row(key)], want, atol=1e-4)
    np.testing.assert_allclose(t.item_vectors, items, atol=1e-4)
    # prompts that differ give different vectors (the state follows the prompt)
    assert not np.allclose(t.raw[t.row(key), 0], t.raw[t.row(prefix_key(["4", "5"])), 0], atol=1e-3)
    # localization grounds each raw vector in THAT catalogue: Eq. 4-5 over its own top-r
    grounded, idx, sims = localize(t.raw[t.row(key)], t.item_vectors, 5)
    np.testing.assert_allclose(t.vectors[t.row(key)], grounded, atol=1e-5)
    rec = t.record(key)
    assert rec["views"]["long"]["answer"] is None  # nothing was generated
    assert rec["views"]["long"]["items"] == [t.item_tokens[i] for i in idx[0]]


def test_hidden_tag_differs_and_text_tag_is_unchanged(built, tiny_chat_model):
    root, s, folder = built
    text = dict(s, intent_representation="text")
    assert table_tag(s, "transformers") != table_tag(text, "transformers")
    unset = {k: v for k, v in text.items() if k != "intent_representation"}
    assert table_tag(text, "transformers") == table_tag(unset, "transformers")  # text = as before the key
    assert folder.name == table_tag(s, "transformers")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["table_settings"]["representation"]["kind"] == "hidden"


def test_a_model_trains_a_step_on_the_hidden_table(built, tmp_path):
    from recbole_llm4sbr.quick_start import build, make_config

    root, s, folder = built
    config_dict = {"data_path": str(root), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(tmp_path / "saved"), "train_batch_size": 4, "intent_backend": "transformers", "intent_model": s["intent_model"],
                   "intent_device": "cpu", "intent_samples": "all", "intent_representation": "hidden",
                   "intent_num_threads": 1}
    config = make_config("LLM4SBR_SRGNN", DS, config_dict=config_dict, read_cmd_line=False)
    _, (train, _, _), model, _ = build(config)
    assert model.projection.in_features == HIDDEN  # d_text read from the table
    batch = next(iter(train))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    loss = sum(model.calculate_loss(batch))
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert model.projection.weight.grad is not None and model.projection.weight.grad.abs().sum() > 0


def test_online_intent_of_an_unseen_prefix_is_the_row_the_table_holds(built):
    root, s, folder = built
    online = OnlineIntents(s, folder)
    try:
        got = online.infer(["1", "2"])
    finally:
        online.close()
    t = load_intent_table(folder)
    np.testing.assert_allclose(got.raw, t.raw[t.row(prefix_key(["1", "2"]))], atol=1e-4)
    np.testing.assert_allclose(got.vectors, t.vectors[t.row(prefix_key(["1", "2"]))], atol=1e-4)
    assert got.record["views"]["short"]["answer"] is None


def test_hidden_needs_the_transformers_backend(tmp_path):
    write_dataset(tmp_path)
    s = base_settings(tmp_path, intent_representation="hidden")  # text backend
    with pytest.raises(IntentError, match="intent_representation=hidden.*Fix: --intent_backend=transformers"):
        build_intent_table(s)


def test_bad_representation_is_one_error_naming_key_and_fix(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(ConfigError) as err:
        base_settings(tmp_path, intent_representation="embedding")
    msg = str(err.value)
    assert "\n" not in msg and "intent_representation" in msg and "text, hidden" in msg
    assert "Fix: --intent_representation=text" in msg
