"""``run_recbole_llm4sbr``: RecBole's ``run_recbole`` for plugin and stock models alike.

Same flow and return value as ``recbole.quick_start.run_recbole`` (which is never imported: its ray
breaks on today's stack), plus the data preparation the plugin owns: the default dataset is
converted on first use and, for LLM4SBR models, stage 1 runs when its table is missing or stale.
Beyond RecBole: ``eval_only`` + ``checkpoint`` tests a saved checkpoint without training, ``resume``
continues training from one (``Trainer.resume_checkpoint``), and the result's ``built`` hands a
caller the objects the run built (``BuiltRun``: the benchmark measures cost through it; nothing is
patched); the trainer is ``quick_start.trainer``'s. ``nproc > 1`` (or a ``world_size`` over machines) trains on that many processes with RecBole's DDP code
(``quick_start.distributed``): data and stage 1 here, training in the spawned ranks, the test of the
best checkpoint back here in one process; ``nproc: 1`` is the one-process path, unchanged.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from logging import getLogger
from typing import Any

import torch
from recbole.data import data_preparation
from recbole.utils import calculate_valid_score, dict2str, init_logger, init_seed, set_color

from recbole_llm4sbr.config import Config
from recbole_llm4sbr.data.dataset import DatasetFileError, LLM4SBRDataset, check_benchmark_files
from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.quick_start.distributed import (RankConfig, RankJob, barrier, global_rank, layout_of, spawn,
                                                     state_sha1, wants_ranks)
from recbole_llm4sbr.quick_start.trainer import get_plugin_trainer
from recbole_llm4sbr.utils import get_model

DEFAULT_DATASET = "ml-100k-session"


def prepare_dataset(config, logger) -> None:
    """Convert a dataset bundled with RecBole's wheel (``ml-100k-session``, ``ml-100k-every``) into
    ``data_path`` on first use (no network needed), as RecBole downloads its own datasets into a folder
    that lacks them; said in one line first (a warning when ``data_path`` was given and does not exist:
    a typo there would otherwise convert the data and run stage 1's LLM again, silently, in a new
    folder). Any other dataset must already be there: a ``data_path`` that does not exist is an error
    naming it."""
    from recbole_llm4sbr.data.converters.movielens import BUNDLED, ensure_default_dataset

    root = os.path.dirname(os.path.normpath(config["data_path"]))
    dataset = config["dataset"]
    if dataset not in BUNDLED:
        if not os.path.isdir(root):
            raise DatasetFileError(f"data_path {root} does not exist (dataset '{dataset}' is read from "
                                   f"{os.path.join(root, dataset)}). Fix: --data_path=<the folder that holds "
                                   f"{dataset}/>")
        return
    from recbole_llm4sbr.paths import default_data_path

    log = logger.info  # the converter says "building ... (first use)" when it converts
    if not os.path.exists(os.path.join(root, dataset, f"{dataset}.stats.json")):
        if not os.path.isdir(root) and os.path.abspath(root) != os.path.abspath(str(default_data_path())):
            logger.warning(f"data_path {root} does not exist: creating it and building {dataset} there from "
                           f"the bundled MovieLens-100K; stage 1 then runs for that copy too (its LLM answers "
                           f"are cached per data_path). Fix: --data_path=<the folder that holds {dataset}/> "
                           f"if you meant existing data")
            log = None
    ensure_default_dataset(root, dataset, log=log)


@dataclass
class BuiltRun:
    """What one run built (``run_recbole_llm4sbr``'s ``result["built"]``): the dataset, its three
    dataloaders, the model and the plugin's trainer (``trainer.saves``, ``trainer.fit_time_s``, ...)."""

    dataset: Any
    train_data: Any
    valid_data: Any
    test_data: Any
    model: Any
    trainer: Any


def build(config):
    """Dataset, dataloaders, model and trainer for ``config``, as RecBole's quick start makes them:
    ``dataset, (train_data, valid_data, test_data), model, trainer``."""
    logger = getLogger()
    prepare_dataset(config, logger)
    dataset = LLM4SBRDataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_plugin_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, (train_data, valid_data, test_data), model, trainer


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, read_cmd_line=True,
                config_class=Config):
    config = config_class(model=model, dataset=dataset, config_file_list=config_file_list,
                          config_dict=config_dict, read_cmd_line=read_cmd_line)
    init_seed(config["seed"], config["reproducibility"])
    if config["torch_num_threads"]:
        torch.set_num_threads(int(config["torch_num_threads"]))
    init_logger(config)
    return config


def read_checkpoint(path) -> dict:
    """A checkpoint RecBole's trainer wrote (``saved/<model>-<time>.pth``), with a clear error if not."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found. Fix: pass a .pth file the trainer saved "
                                "(saved/<model>-<time>.pth, or the path the log printed after 'Saving current')")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{path} is not a readable RecBole checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "state_dict" not in state or "config" not in state:
        raise ConfigError(f"{path} is not a RecBole checkpoint (no state_dict/config in it)")
    return state


def checkpoint_model(path) -> str:
    """The model name a checkpoint was trained as (``--eval_only``/``--resume`` default to it)."""
    return str(read_checkpoint(path)["config"]["model"])


def _load_or_explain(load, path, config):
    """Run ``load()`` (a ``load_state_dict``); a shape mismatch becomes a one-line fix."""
    try:
        return load()
    except RuntimeError as err:
        if "state_dict" not in str(err) and "size mismatch" not in str(err):
            raise
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"checkpoint {path} does not fit {config['model']} with these settings ({first}). "
                          "Fix: pass the model, dataset and --key=value settings it was trained with") from None


def run_recbole_llm4sbr(model=None, dataset=None, config_file_list=None, config_dict=None,
                        saved=True, read_cmd_line=True, eval_only=False, checkpoint=None, resume=None):
    """Train with validation-based model selection, then test; returns RecBole's result dict.

    Keys as in RecBole (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``) plus ``model`` (as in RecBole's ``objective_function``), ``epoch_times``
    (seconds per training epoch), ``model_file``, ``per_sample`` (the final test evaluation's
    per-sample outcomes, ``PluginTrainerMixin.per_sample_outcomes``), ``config`` and ``built`` (the
    objects the run built: ``BuiltRun``).

    ``eval_only=True, checkpoint=path``: no training; the checkpoint's weights are tested (and
    validated: ``best_valid_result`` is its validation result). ``resume=path``: RecBole's
    ``resume_checkpoint`` (weights, optimizer, epoch, early-stopping state), then training continues
    up to ``epochs`` and overwrites that file with each new best epoch. ``model`` and ``dataset``
    default to the checkpoint's (as on the command line).

    ``nproc > 1``: trained on that many processes (``_run_ranks``); the result also has ``ranks``
    (each rank's report: the checkpoint it loaded, sha1s of its trained and reloaded weights),
    ``train_loss`` (rank 0's per epoch, its shard) and ``ddp_best_valid_score`` (what early stopping
    saw); ``best_valid_*`` and ``test_result`` are the one-process evaluation of the best checkpoint.
    """
    if eval_only and not checkpoint:
        raise ConfigError("eval_only needs a checkpoint. Fix: --eval_only --checkpoint=saved/<model>-<time>.pth")
    if checkpoint and not eval_only:
        raise ConfigError("--checkpoint is the file --eval_only tests. Fix: add --eval_only, or continue "
                          "training from it with --resume=<file>")
    if eval_only and resume:
        raise ConfigError("--eval_only and --resume exclude each other: test a checkpoint, or train on from it")
    source = checkpoint or resume
    if source:
        trained_as = checkpoint_model(source)
        if model is None:
            model = trained_as
        if dataset is None and "dataset" not in (config_dict or {}):
            dataset = str(read_checkpoint(source)["config"]["dataset"])
        if str(model) != trained_as:
            raise ConfigError(f"checkpoint {source} holds a {trained_as} model, not {model}. "
                              f"Fix: --model={trained_as} (or leave --model out)")
    config = make_config(model, dataset, config_file_list, config_dict, read_cmd_line)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    if not eval_only and wants_ranks(config):
        return _run_ranks(config, config_file_list, config_dict, read_cmd_line, saved, resume)
    dataset, (train_data, valid_data, test_data), net, trainer = build(config)
    progress = config["show_progress"]
    if eval_only:
        state = read_checkpoint(checkpoint)
        _load_or_explain(lambda: net.load_state_dict(state["state_dict"]), checkpoint, config)
        net.load_other_parameter(state.get("other_parameter"))
        logger.info(set_color("eval only", "yellow") + f": {checkpoint} (epoch {state.get('epoch')})")
        best_valid_result = trainer.evaluate(valid_data, load_best_model=False, show_progress=progress)
        best_valid_score = calculate_valid_score(best_valid_result, trainer.valid_metric)
        test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=progress)
        model_file = str(checkpoint)
    else:
        if resume:
            _load_or_explain(lambda: trainer.resume_checkpoint(resume), resume, config)
            if trainer.start_epoch >= trainer.epochs:
                raise ConfigError(f"{resume} already holds epoch {trainer.start_epoch - 1} and epochs is "
                                  f"{trainer.epochs}: nothing left to train. Fix: --epochs=<more than "
                                  f"{trainer.start_epoch}>")
        best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved, show_progress=progress)
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=progress)
        model_file = trainer.saved_model_file if saved else None
    per_sample = trainer.per_sample_outcomes(test_data)
    logger.info(set_color("best valid ", "yellow") + f": {dict2str(best_valid_result)}")
    logger.info(set_color("test result", "yellow") + f": {dict2str(test_result)}")
    epoch_times = list(trainer.epoch_times)
    if epoch_times:
        logger.info(set_color("epoch time", "yellow") + f": {sum(epoch_times) / len(epoch_times):.2f} s "
                    f"(mean of {len(epoch_times)} training epochs)")
    logger.info(result_line(config["model"], config["dataset"], test_result, config["topk"],
                            best_epoch=None if eval_only else trainer.best_epoch,
                            checkpoint=checkpoint if eval_only else None))
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epoch_times": epoch_times,
        "model_file": model_file,
        "per_sample": per_sample,
        "config": config,
        "built": BuiltRun(dataset, train_data, valid_data, test_data, net, trainer),
    }


def _short(value) -> str:
    """``.1695`` (4 decimals, no leading zero, as papers print metrics); ``1.0000`` stays."""
    text = f"{float(value):.4f}"
    return text[1:] if text.startswith("0.") else text


def result_line(model, dataset, test_result, topk=None, best_epoch=None, checkpoint=None) -> str:
    """The run's outcome on one line a person reads:
    ``LLM4SBR_SRGNN on ml-100k-session: Recall@20 .1695  MRR@20 .0366  NDCG@20 .0712 (best epoch 5)``.

    K is 20 when ``topk`` has it, else its largest; the metrics are Recall, MRR and NDCG at K, those
    the test measured (any other metric when it measured none of them). ``best_epoch`` is RecBole's 0-based epoch index (the one
    its log lines print: ``PluginTrainer.best_epoch``); ``checkpoint`` names the file an eval-only
    run tested instead."""
    ks = [int(k) for k in (topk if isinstance(topk, (list, tuple)) else [topk] if topk else [])]
    k = 20 if 20 in ks or not ks else max(ks)
    result = {str(name).lower(): v for name, v in (test_result or {}).items()}
    names = (("recall", "Recall"), ("mrr", "MRR"), ("ndcg", "NDCG"))
    parts = [f"{label}@{k} {_short(result[f'{name}@{k}'])}" for name, label in names if f"{name}@{k}" in result]
    if not parts:  # no ranking metric at K: whatever the test measured
        parts = [f"{name} {_short(v)}" for name, v in result.items()]
    tail = (f" (best epoch {best_epoch})" if best_epoch is not None
            else f" (eval only: {checkpoint})" if checkpoint else "")
    return f"{model} on {dataset}: {'  '.join(parts)}{tail}"


def _run_ranks(config, config_file_list, config_dict, read_cmd_line, saved, resume) -> dict:
    """The launcher of ``nproc > 1``: checks the layout, converts the data and builds the stage-1
    table once, spawns the ranks (``_train_rank``), checks they reloaded one checkpoint, and tests it
    here in one process with the ``eval_only`` path."""
    logger = getLogger()
    layout = layout_of(config)
    if not saved:
        raise ConfigError("nproc > 1 trains in other processes; its checkpoint is how the model reaches the "
                          "test. Fix: saved=True, or nproc 1")
    if resume:
        done = int(read_checkpoint(resume)["epoch"]) + 1
        if done >= int(config["epochs"]):
            raise ConfigError(f"{resume} already holds epoch {done - 1} and epochs is {config['epochs']}: nothing "
                              f"left to train. Fix: --epochs=<more than {done}>")
    prepare_dataset(config, logger)
    if config["benchmark_filename"]:  # a missing file is one error here, not one per rank
        check_benchmark_files(config["data_path"], config["dataset"], config["benchmark_filename"])
    os.makedirs(config["checkpoint_dir"], exist_ok=True)  # RecBole's ensure_dir races between ranks
    if config["load_intent"]:  # built here once; the ranks find it up to date and only load it
        from recbole_llm4sbr.data.intents import stage1_settings
        from recbole_llm4sbr.intent import ensure_intent_table

        ensure_intent_table(stage1_settings(config), logger=logger)
    overrides = dict(config_dict or {})
    if read_cmd_line:
        overrides.update(config.cmd_config_dict)
    job = RankJob(str(config["model"]), str(config["dataset"]), config_file_list, overrides, layout, resume)
    logger.info(set_color("distributed", "yellow") + f": ranks {layout.offset}..{layout.offset + layout.nproc - 1} "
                f"of {layout.world_size} ({layout.backend}, tcp://{layout.ip}:{layout.port})")
    reports = spawn(_train_rank, job)
    checkpoints = sorted({r["checkpoint"] for r in reports})
    if len(checkpoints) != 1:
        raise RuntimeError(f"the ranks reloaded different checkpoints: {checkpoints}")
    logger.info(set_color("distributed", "yellow") + f": every rank reloaded {checkpoints[0]}")
    chief = next((r for r in reports if r["rank"] == 0), None)
    extra = {"ranks": reports, "model_file": checkpoints[0]}
    if chief is None:  # another machine holds rank 0 and its checkpoint, and tests it
        return {"model": config["model"], "test_result": None, "config": config, **extra}
    single = {**overrides, "nproc": 1, "world_size": -1}
    result = run_recbole_llm4sbr(config["model"], config["dataset"], config_file_list, single, saved=True,
                                 read_cmd_line=False, eval_only=True, checkpoint=checkpoints[0])
    result.update(extra, epoch_times=list(chief["epoch_times"]), train_loss=dict(chief["train_loss"]),
                  ddp_best_valid_score=chief["best_valid_score"], config=config)
    return result


def _train_rank(local_rank: int, job: RankJob) -> dict:
    """One rank (``distributed.spawn`` runs it in each process): RecBole's DDP training, a barrier
    once rank 0 has written the best epoch, then this rank reloads that file; returns its report."""
    config = make_config(job.model, job.dataset, job.config_file_list, job.config_dict(local_rank),
                         read_cmd_line=False, config_class=RankConfig)
    _, (train_data, valid_data, _), net, trainer = build(config)
    if job.resume:
        _load_or_explain(lambda: trainer.resume_checkpoint(job.resume), job.resume, config)
    best_valid_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
    trained = state_sha1(net)
    barrier()  # rank 0's last save is on disk
    state = read_checkpoint(trainer.saved_model_file)
    _load_or_explain(lambda: net.load_state_dict(state["state_dict"]), trainer.saved_model_file, config)
    net.load_other_parameter(state.get("other_parameter"))
    report = {"rank": global_rank(), "checkpoint": str(trainer.saved_model_file),
              "checkpoint_epoch": int(state["epoch"]), "trained_sha1": trained, "loaded_sha1": state_sha1(net)}
    if report["rank"] == 0:
        report.update(epoch_times=list(trainer.epoch_times), best_valid_score=float(best_valid_score),
                      train_loss={int(e): float(v) for e, v in trainer.train_loss_dict.items()},
                      saves=list(trainer.saves))
    return report
