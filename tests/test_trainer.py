"""The plugin's trainer and quick start on a tiny dataset: the step decay per epoch, the records a
benchmark reads (the result's ``built``), per-sample test outcomes, eval-only / resume of a checkpoint, and
hyper-parameter search through RecBole's HyperTuning."""
import warnings

import pytest
import torch

from recbole_llm4sbr.quick_start import build, make_config, run_recbole_llm4sbr
from tinydata import write_tiny_dataset

SMALL = {"embedding_size": 16, "hidden_size": 16, "train_batch_size": 32, "show_progress": False,
         "state": "WARNING", "metric_decimal_place": 6}


def settings(tmp_path, **extra):
    return {"data_path": str(tmp_path), "checkpoint_dir": str(tmp_path / "saved"), **SMALL, **extra}


@pytest.mark.parametrize("step, gamma", [(1, 0.5), (2, 0.1), (0, 0.1)])
def test_step_decay_per_epoch_without_scheduler_warning(tmp_path, step, gamma):
    write_tiny_dataset(tmp_path)
    config = make_config("GRU4Rec", "tiny", read_cmd_line=False, config_dict=settings(
        tmp_path, epochs=4, stopping_step=10, lr_step_size=step, lr_gamma=gamma, learning_rate=1e-3))
    _, (train, valid, _), _, trainer = build(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(train, valid, saved=False, show_progress=False)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    expected = [1e-3 * gamma ** (e // step) if step else 1e-3 for e in range(4)]
    assert trainer.epoch_lrs == pytest.approx(expected)
    assert len(trainer.epoch_times) == 4 and all(t > 0 for t in trainer.epoch_times)


def test_a_tie_with_the_best_validation_score_is_no_gain(tmp_path):
    # an lr too small to move float32 weights: every epoch's validation score equals the first's.
    # RecBole alone (ties count as gains) would train all 20 epochs and keep the last as the best.
    write_tiny_dataset(tmp_path)
    config = make_config("GRU4Rec", "tiny", read_cmd_line=False, config_dict=settings(
        tmp_path, epochs=20, stopping_step=2, learning_rate=1e-30))
    _, (train, valid, _), _, trainer = build(config)
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert len(trainer.epoch_times) == 4  # epoch 0 sets the best, ties at 1, 2, 3 use up the patience
    assert [e for e, _ in trainer.saves] == [0]
    assert trainer.best_valid_result is not None


def test_built_run_per_sample_outcomes_match_recbole(tmp_path):
    write_tiny_dataset(tmp_path)
    result = run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False,
                                 config_dict=settings(tmp_path, epochs=3, stopping_step=10))
    run = result["built"]
    trainer = run.trainer
    assert type(trainer).__name__ == "PluginTrainer" and run.model is trainer.model
    # the trainer records its own fit time and the (epoch, seconds since fit start) of each checkpoint
    assert trainer.fit_time_s > 0 and trainer.saves and trainer.saves[0][0] == 0
    assert [e for e, _ in trainer.saves] == sorted(e for e, _ in trainer.saves)
    assert all(0 < s <= trainer.fit_time_s for _, s in trainer.saves)
    assert run.test_data is not None and result["model"] == "GRU4Rec"
    per = result["per_sample"]
    n_test = len(run.test_data._dataset)
    assert per["n"] == n_test and len(per["order_sha1"]) == 40
    for k in (5, 10, 20):
        for name in ("recall", "mrr", "ndcg"):
            values = per[f"{name}@{k}"]
            assert len(values) == n_test
            assert sum(values) / n_test == pytest.approx(result["test_result"][f"{name}@{k}"], abs=1e-6)
        assert set(per[f"recall@{k}"]) <= {0, 1}
        hits = [m > 0 for m in per[f"mrr@{k}"]]
        assert hits == [bool(r) for r in per[f"recall@{k}"]]
    assert any(per["recall@20"]) and not all(per["recall@20"])  # the test can tell hits from misses
    # evaluating again re-states the same samples in the same order
    trainer.evaluate(run.test_data, load_best_model=False)
    assert trainer.per_sample_outcomes(run.test_data) == per
    trainer.evaluate(run.valid_data, load_best_model=False)
    assert trainer.per_sample_outcomes(run.valid_data)["order_sha1"] != per["order_sha1"]


def test_eval_only_and_resume_a_checkpoint(tmp_path):
    write_tiny_dataset(tmp_path)
    cfg = settings(tmp_path, epochs=2, stopping_step=10)
    first = run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False, config_dict=cfg)
    ckpt = first["model_file"]
    again = run_recbole_llm4sbr(dataset="tiny", read_cmd_line=False, config_dict=cfg,
                                eval_only=True, checkpoint=ckpt)
    assert again["model"] == "GRU4Rec" and again["epoch_times"] == []  # no training
    assert dict(again["test_result"]) == pytest.approx(dict(first["test_result"]), abs=1e-6)
    assert again["best_valid_score"] == pytest.approx(first["best_valid_score"], abs=1e-6)
    with pytest.raises(ValueError, match="holds a GRU4Rec model"):
        run_recbole_llm4sbr("SASRec", "tiny", read_cmd_line=False, config_dict=cfg, eval_only=True, checkpoint=ckpt)
    with pytest.raises(ValueError, match="does not fit"):
        run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False, config_dict={**cfg, "embedding_size": 8},
                            eval_only=True, checkpoint=ckpt)
    # resume: training continues after the checkpoint's epoch, with the optimizer state it saved
    saved_epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    resumed = run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False,
                                  config_dict={**cfg, "epochs": 4}, resume=ckpt)
    assert resumed["built"].trainer.start_epoch == saved_epoch + 1
    assert len(resumed["epoch_times"]) == 4 - (saved_epoch + 1)
    assert resumed["model_file"] == ckpt and resumed["test_result"]
    with pytest.raises(ValueError, match="nothing left to train"):
        run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False, config_dict={**cfg, "epochs": 1}, resume=ckpt)


def test_eval_only_from_the_command_line(tmp_path, capsys):
    from recbole_llm4sbr.quick_start.cli import main

    write_tiny_dataset(tmp_path)
    cfg = settings(tmp_path, epochs=1)
    first = run_recbole_llm4sbr("GRU4Rec", "tiny", read_cmd_line=False, config_dict=cfg)
    args = [f"--{k}={v}" for k, v in cfg.items()]
    assert main(["--eval_only", f"--checkpoint={first['model_file']}", *args]) == 0
    assert main(["--checkpoint=" + first["model_file"], *args]) == 2  # without --eval_only: one clear line
    assert "add --eval_only" in capsys.readouterr().err


def test_hyper_tuning_exhaustive_grid(tmp_path):
    pytest.importorskip("hyperopt")
    import sys

    from recbole_llm4sbr.quick_start.hyper import run_hyper

    assert "ray" not in sys.modules and "recbole.quick_start" not in sys.modules
    write_tiny_dataset(tmp_path)
    params = tmp_path / "params.hyper"
    params.write_text("learning_rate choice [0.01,0.0001]\n")
    out = tmp_path / "hyper.result"
    tuner = run_hyper("GRU4Rec", str(params), "tiny", fixed=settings(tmp_path, epochs=2), output_file=str(out))
    assert "ray" not in sys.modules and "recbole.quick_start" not in sys.modules
    assert len(tuner.params2result) == 2  # both grid points ran
    scores = {p: r["best_valid_score"] for p, r in tuner.params2result.items()}
    best = tuner.params2str(tuner.best_params)
    assert scores[best] == max(scores.values())
    assert all(r["model"] == "GRU4Rec" and r["test_result"] for r in tuner.params2result.values())
    text = out.read_text()
    assert "learning_rate:0.01" in text and "learning_rate:0.0001" in text and "Test result" in text


def test_eval_only_of_an_llm4sbr_checkpoint(tmp_path, monkeypatch):
    from recbole_llm4sbr.data import intents as intents_module
    from tinydata import synthetic_intents

    folder = write_tiny_dataset(tmp_path)
    table = synthetic_intents(folder)
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    cfg = settings(tmp_path, epochs=1)
    first = run_recbole_llm4sbr("LLM4SBR_GRU4Rec", "tiny", read_cmd_line=False, config_dict=cfg)
    again = run_recbole_llm4sbr(dataset="tiny", read_cmd_line=False, config_dict=cfg, eval_only=True,
                                checkpoint=first["model_file"])
    assert again["model"] == "LLM4SBR_GRU4Rec" and again["epoch_times"] == []
    assert dict(again["test_result"]) == pytest.approx(dict(first["test_result"]), abs=1e-6)
    assert again["per_sample"] == first["per_sample"]


def test_each_recbole_trainer_has_its_named_plugin_class():
    from recbole.trainer import S3RecTrainer, Trainer
    from recbole.utils import ModelType

    from recbole_llm4sbr.quick_start.trainer import (PluginS3RecTrainer, PluginTrainer, PluginTrainerMixin,
                                                     get_plugin_trainer, plugin_trainer_class)

    assert get_plugin_trainer(ModelType.SEQUENTIAL, "LLM4SBR_SRGNN") is PluginTrainer
    assert get_plugin_trainer(ModelType.SEQUENTIAL, "GRU4Rec") is PluginTrainer
    assert get_plugin_trainer(ModelType.SEQUENTIAL, "S3Rec") is PluginS3RecTrainer
    assert PluginS3RecTrainer.__mro__[1:3] == (PluginTrainerMixin, S3RecTrainer)

    class LaterTrainer(Trainer):  # a trainer class RecBole might add: made once, with the mixin first
        pass

    made = plugin_trainer_class(LaterTrainer)
    assert made is plugin_trainer_class(LaterTrainer) and made.__name__ == "PluginLaterTrainer"
    assert made.__mro__[1:3] == (PluginTrainerMixin, LaterTrainer)
