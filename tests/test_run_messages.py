"""What a person reads: warnings instead of silent surprises, refusals that list the way out, a fast
answer to ``--help`` and config errors, and one readable result line."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_llm4sbr import known_keys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(known_keys, "_warned", set())


def test_misspelled_key_warns_once_naming_the_closest_known_key(tmp_path, caplog, fresh_warnings):
    from recbole_llm4sbr.config import Config

    caplog.set_level(logging.WARNING, logger="recbole_llm4sbr")
    over = {"data_path": str(tmp_path), "gpu_id": "", "epoch": 2, "learning_rat": 0.1, "epochs": 1,
            "intent_topr": 3, "nproc": 1, "MAX_ITEM_LIST_LENGTH": 20}
    Config(model="SRGNN", dataset="tiny", config_dict=over, read_cmd_line=False)
    Config(model="SRGNN", dataset="tiny", config_dict=over, read_cmd_line=False)  # once per process
    lines = [r.getMessage() for r in caplog.records if r.name == "recbole_llm4sbr"]
    assert len(lines) == 2, lines
    assert "'epoch'" in lines[0] and "did you mean 'epochs'" in lines[0] and "ignored" in lines[0]
    assert "'learning_rat'" in lines[1] and "did you mean 'learning_rate'" in lines[1]
    assert all("\n" not in line for line in lines)


def test_stage1_settings_warn_about_unknown_keys_too(tmp_path, caplog, fresh_warnings):
    from recbole_llm4sbr.intent.settings import load_settings

    caplog.set_level(logging.WARNING, logger="recbole_llm4sbr")
    load_settings(dataset="tiny", overrides={"data_path": str(tmp_path), "intent_bakend": "text", "intent_topr": 3})
    lines = [r.getMessage() for r in caplog.records if r.name == "recbole_llm4sbr"]
    assert len(lines) == 1 and "did you mean 'intent_backend'" in lines[0]


def test_every_key_of_the_property_files_and_rules_is_known():
    from recbole_llm4sbr.validation import RULES

    assert known_keys.unknown_keys(RULES) == []
    assert known_keys.unknown_keys(["epochs", "topk", "eval_args", "seed", "benchmark_filename", "nproc",
                                    "USER_ID_FIELD", "load_col", "intent_views", "au_weight"]) == []


def test_help_and_config_errors_answer_without_torch_or_recbole():
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('heavy:', sorted(m for m in ('torch', 'recbole', 'transformers')\n"
            "                                              if m in sys.modules)))\n"
            "from recbole_llm4sbr.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    for args, rc in ((["--help"], 0), (["--epochs=abc"], 2), (["--model=SRGNN", "--intent_topr=-1"], 2),
                     (["--benchmark", "--help"], 0)):
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=str(ROOT), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == rc, out.stderr
        assert "heavy: []" in out.stdout, (args, out.stdout)
    serve = code.replace("from recbole_llm4sbr.cli import main", "from recbole_llm4sbr.serve import main")
    out = subprocess.run([sys.executable, "-c", serve, "--help"], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--checkpoint" in out.stdout and "heavy: []" in out.stdout, out.stdout
    bad = subprocess.run([sys.executable, "-c", code, "--epochs=abc"], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=120)
    assert "config key 'epochs' = 'abc'" in bad.stderr and "Fix: --epochs=" in bad.stderr


def test_command_line_values_are_typed_as_recbole_types_them():
    from recbole_llm4sbr.quick_start.cli import as_recbole_types

    typed = as_recbole_types({"epochs": "3", "learning_rate": "1e-3", "topk": "[10,20]", "reproducibility": "True",
                              "show_progress": "false", "device": "cpu", "gpu_id": "", "x": "2*5"})
    assert typed == {"epochs": 3, "learning_rate": 1e-3, "topk": [10, 20], "reproducibility": True,
                     "show_progress": False, "device": "cpu", "gpu_id": ""}


def test_refused_base_lists_the_supported_ones():
    from recbole_llm4sbr.utils import get_model

    for name in ("LLM4SBR_Pop", "LLM4SBR_DIN"):
        with pytest.raises(ValueError) as err:
            get_model(name)
        msg = str(err.value)
        assert "is not supported" in msg and "Fix: one of LLM4SBR_SRGNN, LLM4SBR_GCSAN," in msg
        assert "LLM4SBR_SASRec" in msg and "LLM4SBR_Pop," not in msg


def test_missing_itemtext_gives_the_format(tmp_path):
    from intent_helpers import DS, base_settings, write_dataset

    from recbole_llm4sbr.intent.errors import IntentError
    from recbole_llm4sbr.intent.inputs import read_item_text

    folder = write_dataset(tmp_path)
    (folder / f"{DS}.itemtext").unlink()
    with pytest.raises(IntentError) as err:
        read_item_text(base_settings(tmp_path))
    msg = str(err.value)
    assert "tiny.itemtext not found" in msg and "'item_id<TAB>text'" in msg and "one line" in msg
    assert "Fix:" in msg and "\n" not in msg


def test_data_path_that_does_not_exist(tmp_path, caplog, monkeypatch):
    """The default dataset is built there, said in a warning first; any other dataset is an error."""
    from recbole_llm4sbr.data.converters import movielens
    from recbole_llm4sbr.data.dataset import DatasetFileError
    from recbole_llm4sbr.quick_start.quick_start import DEFAULT_DATASET, prepare_dataset

    built = []
    monkeypatch.setattr(movielens, "convert_ml100k", lambda data_path, **kw: built.append(str(data_path)))
    log = logging.getLogger("test_run_messages")
    caplog.set_level(logging.INFO, logger="test_run_messages")
    typo = tmp_path / "datset"
    prepare_dataset({"dataset": DEFAULT_DATASET, "data_path": str(typo / DEFAULT_DATASET)}, log)
    assert built == [str(typo)]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"data_path {typo} does not exist" in warned[0].getMessage()
    assert "Fix: --data_path=" in warned[0].getMessage()

    caplog.clear()
    (tmp_path / "data").mkdir()
    prepare_dataset({"dataset": DEFAULT_DATASET, "data_path": str(tmp_path / "data" / DEFAULT_DATASET)}, log)
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # an existing folder: first use, said

    with pytest.raises(DatasetFileError, match=r"data_path .*datset does not exist .* Fix: --data_path="):
        prepare_dataset({"dataset": "tiny", "data_path": str(typo / "tiny")}, log)


def test_result_line():
    from collections import OrderedDict

    import numpy as np

    from recbole_llm4sbr.quick_start.quick_start import result_line

    result = OrderedDict([("recall@10", np.float64(0.12)), ("recall@20", np.float64(0.1695)),
                          ("mrr@20", np.float64(0.0366)), ("ndcg@20", np.float64(0.0712)), ("hit@20", 1.0)])
    assert result_line("LLM4SBR_SRGNN", "ml-100k-session", result, [10, 20], best_epoch=5) == (
        "LLM4SBR_SRGNN on ml-100k-session: Recall@20 .1695  MRR@20 .0366  NDCG@20 .0712 (best epoch 5)")
    assert result_line("SRGNN", "tiny", {"recall@10": 0.5}, [5, 10], checkpoint="saved/x.pth") == (
        "SRGNN on tiny: Recall@10 .5000 (eval only: saved/x.pth)")
    assert result_line("SRGNN", "tiny", {"hit@10": 1.0}, 10) == "SRGNN on tiny: hit@10 1.0000"
