"""Stage-1 settings: RecBole-like layering without RecBole, and the table tag."""
from __future__ import annotations

import re
import shutil

import pytest
import torch

from intent_helpers import REPO, write_dataset

from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.identity import table_tag
from recbole_llm4sbr.intent.settings import dataset_dir, intent_views, load_settings, normalize_settings, parse_cli

torch.set_num_threads(1)


def test_defaults_come_from_overall_yaml(tmp_path):
    s = load_settings(dataset="tiny", overrides={"data_path": str(tmp_path)})
    assert s["intent_topr"] == 5
    assert list(intent_views(s).items()) == [("long", "long-term"), ("short", "short-term")]
    assert s["intent_encoder"] == "all-MiniLM-L6-v2"
    assert s["dataset"] == "tiny"


def test_data_path_default(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM4SBR_DATA_PATH", str(tmp_path))
    assert load_settings(dataset="x")["data_path"] == str(tmp_path)


def test_layering_dataset_yaml_then_files_then_overrides(tmp_path, monkeypatch):
    props = tmp_path / "props"
    (props / "dataset").mkdir(parents=True)
    shutil.copy(REPO / "properties" / "overall.yaml", props / "overall.yaml")
    (props / "dataset" / "tiny.yaml").write_text("intent_topr: 3\nintent_batch_size: 7\nintent_seed: 1\n")
    monkeypatch.setenv("LLM4SBR_PROPERTIES", str(props))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("intent_topr: 4\nintent_temperature: 0.5\n")
    b.write_text("intent_temperature: 0.7\nintent_top_p: 0.9\n")
    for files in (f"{a},{b}", f"{a} {b}", [str(a), str(b)]):
        s = load_settings(dataset="tiny", config_files=files, overrides={"intent_seed": 9})
        assert s["intent_batch_size"] == 7  # dataset yaml
        assert s["intent_topr"] == 4  # user file beats dataset yaml
        assert s["intent_temperature"] == 0.7  # later file wins
        assert s["intent_top_p"] == 0.9
        assert s["intent_seed"] == 9  # --key=value wins over everything
        assert s["config_files"] == [str(a), str(b)]


def test_cli_values_are_typed_like_recbole():
    over, flags = parse_cli(
        ["--dataset=007", "--intent_topr=3", "--intent_temperature=1e-3", "--intent_views={long: long-term}",
         "--show_progress=False", "--intent_model=Qwen/Qwen2-7B", "--session=0042", "--force"],
        flags=("force",),
    )
    assert over["dataset"] == "007" and over["session"] == "0042"  # ids stay as written
    assert over["intent_topr"] == 3
    assert over["intent_temperature"] == pytest.approx(1e-3)
    assert over["intent_views"] == {"long": "long-term"}
    assert over["show_progress"] is False
    assert over["intent_model"] == "Qwen/Qwen2-7B"
    assert flags == ["force"]


@pytest.mark.parametrize("arg", ["dataset=x", "--force", "--", "--=3"])
def test_cli_rejects_what_it_does_not_understand(arg):
    with pytest.raises(IntentError):
        parse_cli([arg])


def test_missing_config_file_and_dataset(tmp_path):
    with pytest.raises(IntentError, match="not found"):
        load_settings(dataset="tiny", config_files=str(tmp_path / "nope.yaml"))
    with pytest.raises(IntentError, match="--dataset"):
        load_settings()


def test_recbole_style_data_path(tmp_path):
    write_dataset(tmp_path)
    plain = {"dataset": "tiny", "data_path": str(tmp_path)}
    recbole = {"dataset": "tiny", "data_path": str(tmp_path / "tiny")}  # RecBole's Config appends <ds>
    assert dataset_dir(plain) == dataset_dir(recbole) == tmp_path / "tiny"


def test_normalize_settings_fills_defaults():
    class FakeConfig:  # what RecBole's Config offers
        final_config_dict = {"dataset": "tiny", "data_path": "/x", "intent_topr": 2}

    s = normalize_settings(FakeConfig())
    assert s["intent_topr"] == 2 and s["intent_batch_size"] == 32


def test_tag_tracks_the_settings_that_change_the_table(tmp_path):
    base = load_settings(dataset="tiny", overrides={"data_path": str(tmp_path)})
    tag = table_tag(base, "transformers")
    assert re.fullmatch(r"transformers-[0-9a-f]{8}", tag)
    changed = [
        {"intent_topr": 3},
        {"intent_model": "other"},
        {"intent_temperature": 0.8},
        {"intent_seed": 1},
        {"intent_encoder": "/some/encoder"},
        {"intent_views": {"long": "long-term"}},
        {"intent_views": {"short": "short-term", "long": "long-term"}},  # order matters
        {"intent_template": base["intent_template"] + " "},
    ]
    for over in changed:
        assert table_tag({**base, **over}, "transformers") != tag, over
    # not part of the table: batch sizes, devices, progress
    for over in ({"intent_batch_size": 1}, {"show_progress": False}, {"intent_encoder_batch_size": 8}):
        assert table_tag({**base, **over}, "transformers") == tag
    # the text backend ignores the model and the sampling settings
    assert table_tag({**base, "intent_model": "x", "intent_seed": 3}, "text") == table_tag(base, "text")
    # the budget matters only with typical samples
    assert table_tag({**base, "intent_budget": 9}, "text") == table_tag(base, "text")
    assert table_tag({**base, "intent_samples": "typical"}, "text") != table_tag(
        {**base, "intent_samples": "typical", "intent_budget": 9}, "text"
    )


def test_bad_views():
    with pytest.raises(IntentError, match="intent_views"):
        intent_views({"intent_views": {}})
    assert intent_views({"intent_views": ["long", "short"]}) == {"long": "long", "short": "short"}


def test_typed_settings_are_built_once_with_overall_yaml_defaults(tmp_path):
    from recbole_llm4sbr.errors import ConfigError
    from recbole_llm4sbr.intent.settings import Stage1Settings

    s = normalize_settings(load_settings(dataset="tiny", overrides={"data_path": str(tmp_path), "intent_topr": 3}))
    assert isinstance(s, Stage1Settings) and normalize_settings(s) is s  # typed once: later calls reuse it
    assert (s.topr, s.batch_size, s.encoder, s.samples, s.prompt_max_items) == (3, 32, "all-MiniLM-L6-v2", "auto", "auto")
    assert dict(s.views) == {"long": "long-term", "short": "short-term"}
    assert s.prompt_items("typical") == 10 and s.prompt_items("all") == 0
    assert s["intent_topr"] == 3 and dict(s, intent_topr=4)["intent_topr"] == 4  # a read-only mapping too
    with pytest.raises(AttributeError):
        s.topr = 1  # frozen
    with pytest.raises(TypeError):
        s["intent_topr"] = 1  # noqa
    # checked when built, before anything is read: the key, the value and the fix
    with pytest.raises(ConfigError, match="intent_topr.*Fix"):
        normalize_settings({"dataset": "tiny", "intent_topr": -1})
    with pytest.raises(ConfigError, match="intent_backend"):
        normalize_settings({"dataset": "tiny", "intent_backend": "vlm"})
    with pytest.raises(ConfigError, match="intent_prompt_max_items"):
        normalize_settings({"dataset": "tiny", "intent_prompt_max_items": "many"})
