"""One test per shim in recbole_llm4sbr.compat: each fails if its shim is removed."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recbole_llm4sbr import compat
from tinydata import write_tiny_dataset


def recbole_config(tmp_path):
    from recbole.config import Config

    return Config(model="SRGNN", dataset="tiny", config_dict={"data_path": str(tmp_path), "gpu_id": "", "train_neg_sample_args": None})


def test_numpy_aliases_let_recbole_config_build_on_numpy2(monkeypatch, tmp_path):
    # Simulate numpy 2: the aliases RecBole's Config.compatibility_settings reads are gone.
    for alias in ("float_", "complex_", "unicode_"):
        monkeypatch.delattr(np, alias, raising=False)
    with pytest.raises(AttributeError):
        recbole_config(tmp_path)
    compat.numpy_aliases()
    config = recbole_config(tmp_path)
    assert config["model"] == "SRGNN"
    assert np.float_ is np.float64 and np.float is np.float64  # the latter set by RecBole from ours


def _train_and_reload(tmp_path):
    from recbole_llm4sbr.quick_start import run_recbole_llm4sbr

    write_tiny_dataset(tmp_path)
    return run_recbole_llm4sbr(
        model="GRU4Rec", dataset="tiny", read_cmd_line=False,
        config_dict={"data_path": str(tmp_path), "epochs": 1, "show_progress": False,
                     "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING"})


def test_full_checkpoint_load_only_around_recbole_loads(monkeypatch, tmp_path):
    import contextlib

    import torch

    import recbole_llm4sbr.quick_start.trainer as qs  # where the trainer reloads checkpoints

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    result = _train_and_reload(tmp_path / "with")  # the plugin trainer's best-epoch reload
    assert "recall@20" in result["test_result"]
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # the process keeps torch's safe default
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
        monkeypatch.setattr(qs, "full_checkpoint_load", contextlib.nullcontext)
        with pytest.raises(Exception, match="[Ww]eights only load failed"):
            _train_and_reload(tmp_path / "without")


def test_known_recbole_warnings_are_quiet_but_only_from_recbole(tmp_path):
    code = ("import warnings, recbole_llm4sbr, recbole.data.dataset.dataset as d; "
            "warnings.warn_explicit('x', FutureWarning, 'dataset.py', 1, module=d.__name__); "
            "warnings.warn('mine', FutureWarning)")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "mine" in out.stderr and "dataset.py:1" not in out.stderr


def test_pandas_guard_names_the_fix(monkeypatch):
    monkeypatch.setattr(pd, "__version__", "3.0.1")
    with pytest.raises(ImportError, match=r"pandas>=2.2,<3"):
        compat.pandas_below_3()
    monkeypatch.setattr(pd, "__version__", "2.3.3")
    compat.pandas_below_3()


def test_plugin_never_imports_recbole_quick_start():
    code = ("import sys; import recbole_llm4sbr.quick_start, recbole_llm4sbr.model; "
            "from recbole_llm4sbr.utils import get_model; get_model('LLM4SBR_SRGNN'); "
            "assert 'recbole.quick_start' not in sys.modules, 'recbole.quick_start was imported'; "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_bert4rec_batch_without_a_mask_trains_on_the_default_dataset(tmp_path):
    """Seed 2020 on ml-100k-session: the last training batch is one unmasked length-1 prefix, and
    RecBole's cloze loss is 0/0 there ("Training loss is nan" in epoch 0, stock and wrapped)."""
    import torch
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    from recbole_llm4sbr.quick_start import build, make_config

    config = make_config("BERT4Rec", "ml-100k-session", read_cmd_line=False, config_dict={
        "data_path": str(tmp_path), "seed": 2020, "show_progress": False, "state": "WARNING",
        "checkpoint_dir": str(tmp_path / "saved")})
    _, (train, _, _), model, _ = build(config)
    batches = list(train)  # the masks are drawn here, as in the trainer's first epoch
    empty = [i for i, b in enumerate(batches) if not (b["MASK_INDEX"] > 0).any()]
    assert empty == [len(batches) - 1] and len(batches[-1]) == 1
    model.eval()  # no dropout: the two losses below are comparable
    original = BERT4Rec.calculate_loss.__wrapped__
    assert torch.isnan(original(model, batches[-1]))
    loss = model.calculate_loss(batches[-1])
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # the trainer can step on it
    assert torch.allclose(model.calculate_loss(batches[0]), original(model, batches[0]))


def test_bert4rec_shim_waits_for_the_first_import():
    """The shim does not make ``import recbole_llm4sbr`` import RecBole's models; it patches
    BERT4Rec when that module is first imported."""
    module = "recbole.model.sequential_recommender.bert4rec"
    code = (f"import sys, recbole_llm4sbr; assert {module!r} not in sys.modules; "
            "from recbole.model.sequential_recommender import BERT4Rec; "
            "assert BERT4Rec.calculate_loss._llm4sbr_empty_mask_guard")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_importing_recbole_models_leaves_anomaly_detection_off():
    """RecBole's sine.py switches torch's anomaly detection on at import (every sequential model
    imports it): each autograd op then records a stack trace, several times slower training."""
    code = ("import torch, recbole_llm4sbr; from recbole.model.sequential_recommender import STAMP; "
            "assert not torch.is_anomaly_enabled(), 'anomaly detection is on'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
