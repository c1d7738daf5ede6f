"""The quick start compares stock and wrapped models fairly: both read the same training settings
from the shipped property files, and those are the fair protocol's (constant lr, early stopping on
validation with room to converge), not the paper's step decay that starved stock bases."""
import pytest

from recbole_llm4sbr.benchmark.runner import PROTOCOLS
from recbole_llm4sbr.validation import intent_strength

TRAINING_KEYS = ("learning_rate", "lr_step_size", "lr_gamma", "epochs", "stopping_step", "train_batch_size",
                 "weight_decay", "valid_metric", "embedding_size", "hidden_size")
#: the fair protocol's choice for each stock base on ml-100k-session (validation only, seed 2020):
#: learning rate, lr step (0 = constant); results/ml-100k-session/README.md lists every grid point
#: the intent strength the fair protocol chose on validation (--tune=base: 0, 1 or off) where it is not 1
#: (SASRec: ml-100k-every's choice, the README's lead protocol; GCSAN and BERT4Rec: off, the stock base)
CHOSEN_STRENGTH = {"SASRec": 0.0, "SRGNN": 0.0, "GCSAN": "off", "BERT4Rec": "off"}
FAIR_CHOICE = {"SRGNN": (0.0003, 0), "GRU4Rec": (0.001, 0), "NARM": (0.001, 3), "STAMP": (0.001, 0),
               "SASRec": (0.001, 0), "GCSAN": (0.0003, 0)}


def config_of(model, tmp_path):
    from recbole_llm4sbr.config import Config

    return Config(model=model, dataset="ml-100k-session", read_cmd_line=False,
                  config_dict={"data_path": str(tmp_path)})


@pytest.mark.parametrize("base", sorted(FAIR_CHOICE))
def test_stock_and_wrapped_read_the_same_fair_training_settings(base, tmp_path):
    stock, wrapped = config_of(base, tmp_path), config_of(f"LLM4SBR_{base}", tmp_path)
    for key in TRAINING_KEYS:
        assert stock[key] == wrapped[key], (base, key)
    assert (stock["learning_rate"], stock["lr_step_size"]) == FAIR_CHOICE[base]
    fair = PROTOCOLS["fair"].defaults
    assert stock["epochs"] == fair["epochs"] and stock["stopping_step"] == fair["stopping_step"]
    assert wrapped["fusion"] == "residual"  # the no-harm fusion is what a user gets
    assert intent_strength(wrapped["intent_strength"]) == CHOSEN_STRENGTH.get(base, 1.0)
    assert wrapped["load_intent"] is (CHOSEN_STRENGTH.get(base) != "off")  # off: no stage 1


def test_bases_shipped_off_are_their_stock_base(tmp_path):
    for base in [b for b, s in CHOSEN_STRENGTH.items() if s == "off"]:
        wrapped = config_of(f"LLM4SBR_{base}", tmp_path)
        assert wrapped["intent_strength"] == "off" and wrapped["load_intent"] is False, base
