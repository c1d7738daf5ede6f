"""Attribution controls (model/controls.py): intent_control none|constant|shuffled, intent_dropout."""
import hashlib
from pathlib import Path

import pytest
import torch

from recbole_llm4sbr.data import intents as intents_module
from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.model.controls import IntentControl, shuffle_order
from tinydata import as_if_trained, build_tiny_batch, synthetic_intents, write_tiny_dataset


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    table = synthetic_intents(write_tiny_dataset(tmp_path))
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    return tmp_path


def build_model(root, **overrides):
    dataset, batch, model = build_tiny_batch(root, **overrides)
    return dataset, batch, as_if_trained(model)


def with_keys_swapped(batch):
    """The same sequences with other sessions' prefix keys."""
    from recbole.data.interaction import Interaction

    swapped = Interaction(dict(batch.interaction))
    swapped.interaction["prefix_key"] = batch["prefix_key"].roll(1)
    assert not torch.equal(swapped["prefix_key"], batch["prefix_key"])
    return swapped


def scores(model, batch):
    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(batch)


def test_constant_intents_make_the_scores_independent_of_the_session(tiny):
    dataset, batch, real = build_model(tiny)
    _, _, const = build_model(tiny, intent_control="constant")
    assert not torch.allclose(scores(real, batch), scores(real, with_keys_swapped(batch)))
    assert torch.allclose(scores(const, batch), scores(const, with_keys_swapped(batch)), atol=1e-6)
    # the one vector per view is the mean of the real rows (not the padding row), which stays zero
    # (float32, from the float16 buffer; the buffer's constant rows hold that value rounded to float16,
    # and so does intent_constant, so dropped and buffered rows are the same vector)
    expected = real.intent_vectors[1:].double().mean(dim=0).float()
    assert const.intent_constant.dtype == torch.float32
    assert torch.allclose(const.intent_constant, expected, atol=1e-3)
    assert torch.equal(const.intent_vectors[1:].float(), const.intent_constant.expand_as(const.intent_vectors[1:]))
    assert torch.equal(const.intent_vectors[0], real.intent_vectors[0])
    const.train()  # one vector for every sample: alignment-uniformity still has finite gradients
    sum(const.calculate_loss(batch)).backward()
    assert all(torch.isfinite(p.grad).all() for p in const.parameters() if p.grad is not None)
    # intent vectors given directly (an unseen prefix) are replaced too
    given = torch.randn(len(batch), len(const.views), const.projection.in_features)
    with torch.no_grad():
        assert torch.allclose(const.full_sort_predict_with_intents(batch, given), scores(const, batch), atol=1e-6)
        assert not torch.allclose(real.full_sort_predict_with_intents(batch, given), scores(real, batch))


def test_shuffled_intents_are_a_fixed_permutation_of_other_sessions(tiny):
    dataset, batch, real = build_model(tiny)
    table_rows = dataset.intent_vectors.clone()
    _, _, shuffled = build_model(tiny, intent_control="shuffled")
    _, _, again = build_model(tiny, intent_control="shuffled")
    _, _, other_seed = build_model(tiny, intent_control="shuffled", intent_shuffle_seed=1)
    n = real.intent_vectors.size(0)
    order = shuffle_order(n, 0)
    assert order[0] == 0 and sorted(order.tolist()) == list(range(n))
    assert (order[1:] != torch.arange(1, n)).all()  # every prefix reads another prefix's row
    # the row each key reads is the permuted one, in every instance; another seed, another order
    keys = batch["prefix_key"]
    assert torch.equal(shuffled.intent_vectors[keys], real.intent_vectors[order[keys]])
    assert torch.equal(again.intent_vectors, shuffled.intent_vectors)
    assert torch.equal(shuffled.intent_vectors[0], real.intent_vectors[0])
    assert not torch.equal(other_seed.intent_vectors, shuffled.intent_vectors)
    assert not torch.allclose(shuffled.intent_vectors[keys], real.intent_vectors[keys])
    shuffled.load_state_dict(real.state_dict())  # same weights: only the intents differ
    assert not torch.allclose(scores(shuffled, batch), scores(real, batch))
    assert torch.equal(dataset.intent_vectors, table_rows)  # the dataset's rows are untouched


def test_intent_dropout_replaces_intents_in_training_only(tiny):
    _, batch, model = build_model(tiny, intent_dropout=1.0)
    swapped = with_keys_swapped(batch)
    model.train()
    losses = [sum(model.calculate_loss(b)) for b in (batch, swapped)]
    assert torch.allclose(losses[0], losses[1], atol=1e-6)  # every intent dropped to the constant
    assert not torch.allclose(scores(model, batch), scores(model, swapped))  # eval: the real intents
    _, _, kept = build_model(tiny, intent_dropout=0.0)
    kept.train()
    assert not torch.allclose(sum(kept.calculate_loss(batch)), sum(kept.calculate_loss(swapped)))
    # p = 0.5: some samples dropped, some not (fixed seed)
    _, _, half = build_model(tiny, intent_dropout=0.5)
    half.train()
    vectors = half._gather_intents(batch["prefix_key"])
    torch.manual_seed(0)
    from recbole_llm4sbr.model.controls import drop_intents

    dropped = drop_intents(vectors, half.intent_constant, 0.5)
    is_constant = torch.isclose(dropped, half.intent_constant.expand_as(dropped)).flatten(1).all(dim=1)
    assert 0 < int(is_constant.sum()) < len(batch)
    assert torch.equal(dropped[~is_constant], vectors[~is_constant])


@pytest.mark.parametrize("key, value, allowed", [
    ("intent_control", "random", "none, constant, shuffled"),
    ("intent_control", 3, "none, constant, shuffled"),
    ("intent_shuffle_seed", -1, "an integer >= 0"),
    ("intent_shuffle_seed", "abc", "an integer >= 0"),
    ("intent_shuffle_seed", 1.5, "an integer >= 0"),
    ("intent_dropout", 1.5, "a probability in [0, 1]"),
    ("intent_dropout", "often", "a probability in [0, 1]"),
])
def test_bad_control_values_name_the_key_and_the_allowed_values(key, value, allowed):
    config = {"intent_control": None, "intent_shuffle_seed": None, "intent_dropout": None, key: value}
    with pytest.raises(ConfigError) as err:
        IntentControl.from_config(config)
    assert key in str(err.value) and allowed in str(err.value)


def test_bad_control_value_stops_the_model_build(tiny):
    with pytest.raises(ConfigError, match="intent_control"):
        build_model(tiny, intent_control="Shuffle")


def test_controls_never_edit_the_table_on_disk(tmp_path):
    """A real stage-1 table (text backend): the shuffled and constant models read changed rows, the
    files on disk stay byte for byte the same."""
    root = tmp_path / "data"
    write_tiny_dataset(root, n_sessions=60)
    dataset, batch, real = build_model(root, intent_backend="text")
    files = sorted(p for p in (root / "tiny" / "intent").rglob("*") if p.is_file())
    assert any(p.name == "vectors.npy" for p in files)

    def digest():
        return {str(p): hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in files}

    before = digest()
    for control in ("shuffled", "constant"):
        _, _, model = build_model(root, intent_backend="text", intent_control=control)
        assert not torch.equal(model.intent_vectors, real.intent_vectors)
    assert digest() == before
