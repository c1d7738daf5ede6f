"""``run_recbole_llm4sbr``: RecBole's ``run_recbole`` for plugin and stock models alike.

Same flow and return value as ``recbole.quick_start.run_recbole`` (which is never imported: its ray
breaks on today's stack), plus the data preparation the plugin owns: the default dataset is
converted on first use and, for LLM4SBR models, stage 1 runs when its table is missing or stale.
Beyond RecBole: ``eval_only`` + ``checkpoint`` tests a saved checkpoint without training, ``resume``
continues training from one (``Trainer.resume_checkpoint``), and ``capture_run()`` hands a caller
the objects one run built (the benchmark measures cost through it; nothing is patched). ``nproc > 1``
(or a ``world_size`` over machines) trains on that many processes with RecBole's DDP code
(``quick_start.distributed``): data and stage 1 here, training in the spawned ranks, the test of the
best checkpoint back here in one process; ``nproc: 1`` is the one-process path, unchanged.
"""
from __future__ import annotations

import contextvars
import hashlib
import math
import os
import sys
import time
from contextlib import contextmanager
from logging import getLogger
from typing import Iterator, Optional

import torch
from recbole.data import data_preparation
from recbole.evaluator import Collector
from recbole.utils import calculate_valid_score, dict2str, get_trainer, init_logger, init_seed, set_color

from recbole_llm4sbr.compat import ddp_for_any_device, full_checkpoint_load
from recbole_llm4sbr.config import Config
from recbole_llm4sbr.data.dataset import DatasetFileError, LLM4SBRDataset, check_benchmark_files
from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.quick_start.distributed import (RANK_LOCAL_BUFFERS, RankConfig, RankJob, agree, barrier,
                                                     global_rank, layout_of, spawn, state_sha1, wants_ranks)
from recbole_llm4sbr.utils import get_model

DEFAULT_DATASET = "ml-100k-session"
#: RecBole metrics whose per-sample values ``PluginTrainer.per_sample_outcomes`` reports
PER_SAMPLE_METRICS = ("recall", "mrr", "ndcg")


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

    if not os.path.exists(os.path.join(root, dataset, f"{dataset}.stats.json")):
        if not os.path.isdir(root) and os.path.abspath(root) != os.path.abspath(str(default_data_path())):
            logger.warning(f"data_path {root} does not exist: creating it and building {dataset} there from "
                           f"the bundled MovieLens-100K; stage 1 then runs for that copy too (its LLM answers "
                           f"are cached per data_path). Fix: --data_path=<the folder that holds {dataset}/> "
                           f"if you meant existing data")
        else:
            logger.info(f"building {dataset} in {root} from the bundled MovieLens-100K (first use)")
    ensure_default_dataset(root, dataset)


class RecordingCollector(Collector):
    """RecBole's Collector that also keeps, per evaluation, what a paired test over samples needs.

    ``get_data_struct`` deep-copies its struct and then deletes ``rec.topk``; this keeps the copy's
    ``rec.topk`` (hit flags of the top max(topk) items + the target count, one row per sample) and the
    samples' session and target ids in evaluation order."""

    def __init__(self, config):
        super().__init__(config)
        self._rows: list = []
        self.last_topk = None
        self.last_rows = None

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        uid = self.config["USER_ID_FIELD"]
        sessions = interaction[uid].cpu() if uid in interaction else None
        self._rows.append((sessions, positive_u.cpu(), positive_i.cpu()))

    def get_data_struct(self):
        struct = super().get_data_struct()
        self.last_topk = struct.get("rec.topk") if "rec.topk" in struct else None
        self.last_rows, self._rows = self._rows, []
        return struct


def plugin_trainer(trainer_class):
    """The model's RecBole trainer with the plugin's additions, for stock and LLM4SBR models alike.

    * the paper's step decay (``lr_step_size`` epochs, factor ``lr_gamma``; SR-GNN's own schedule),
      which RecBole 1.2.1 has no setting for: epoch ``e`` trains with ``learning_rate * lr_gamma **
      (e // lr_step_size)``, set from the epoch index (so ``resume`` continues the schedule, and no
      torch scheduler warns about its call order). ``lr_step_size: 0`` keeps the optimizer's lr;
    * early stopping that counts a tie with the best validation score as no gain (RecBole's counts
      it as a gain, so a run whose score stopped moving trained to the cap);
    * what a benchmark measures, recorded by the trainer itself: ``epoch_times`` and ``epoch_lrs``
      (per training epoch), ``fit_time_s``, ``saves`` (``(epoch, seconds since fit start)`` of every
      checkpoint written, so the last one is the kept best epoch);
    * RecBole's own checkpoint loads (``evaluate(load_best_model=True)``, ``resume_checkpoint``) run
      under ``compat.full_checkpoint_load`` (torch >= 2.6's weights-only default refuses RecBole's
      pickled Config), and nowhere else;
    * ``per_sample_outcomes()``: the last evaluation's per-sample Recall/MRR/NDCG@K (a paired
      bootstrap over test samples), from RecBole's own metric classes;
    * in a rank of a distributed run (``single_spec`` False): RecBole's DDP wrap made to work on the
      CPU and to leave the intent buffers alone (``compat.ddp_for_any_device``), and rank 0's
      checkpoint name on every rank (each rank's Trainer names its own by the clock).
    """

    class PluginTrainer(trainer_class):
        def __init__(self, config, model):
            if config["single_spec"]:
                super().__init__(config, model)
            else:
                with ddp_for_any_device(RANK_LOCAL_BUFFERS):
                    super().__init__(config, model)
                self.saved_model_file = agree(self.saved_model_file)  # rank 0 names the checkpoint
            self.eval_collector = RecordingCollector(config)
            self.epoch_times, self.epoch_lrs, self.saves = [], [], []
            self.fit_start, self.fit_time_s = None, None
            self.valid_scores, self._epoch = [], None  # (epoch, validation score) of this fit

        def fit(self, *args, **kwargs):
            self.fit_start, self.saves = time.perf_counter(), []
            try:
                return super().fit(*args, **kwargs)
            finally:
                self.fit_time_s = time.perf_counter() - self.fit_start

        def _save_checkpoint(self, epoch, *args, **kwargs):
            out = super()._save_checkpoint(epoch, *args, **kwargs)
            since = time.perf_counter() - self.fit_start if self.fit_start is not None else None
            self.saves.append((epoch, since))
            return out

        def evaluate(self, *args, **kwargs):
            with full_checkpoint_load():  # the best-epoch reload is a RecBole torch.load
                return super().evaluate(*args, **kwargs)

        def resume_checkpoint(self, *args, **kwargs):
            with full_checkpoint_load():
                return super().resume_checkpoint(*args, **kwargs)

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            self._epoch = int(epoch_idx)
            self.epoch_lrs.append(self._set_epoch_lr(epoch_idx))
            start = time.perf_counter()
            try:
                return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            finally:
                self.epoch_times.append(time.perf_counter() - start)

        def _valid_epoch(self, *args, **kwargs):
            score, result = super()._valid_epoch(*args, **kwargs)
            self.valid_scores.append((self._epoch, float(score)))
            return self._tie_is_no_gain(score), result

        @property
        def best_epoch(self) -> Optional[int]:
            """The epoch whose weights are tested, as RecBole's trainer counts epochs: 0-based, the
            index of its "epoch 4 training" lines and of "best eval result in epoch 4". The last
            checkpoint saved (RecBole saves each new best), else the first epoch of this fit with
            the best validation score (a tie is no gain); None when nothing was validated."""
            if self.saves:
                return int(self.saves[-1][0])
            best = None
            for epoch, score in self.valid_scores:
                if best is None or (score > best[1] if self.valid_metric_bigger else score < best[1]):
                    best = (epoch, score)
            return None if best is None else best[0]

        def _tie_is_no_gain(self, score: float) -> float:
            """RecBole's ``early_stopping`` counts a score equal to the best as a gain (``>=``): a run
            whose score stops moving (the step decay has driven the lr to ~0) never runs out of
            patience, trains to the epoch cap and reports the cap as its best epoch. A tie is handed
            to it as the next float on the worse side, so patience runs out and the first of the
            tied epochs stays the best one (logged values are unchanged at any printed precision)."""
            if score == self.best_valid_score:
                return math.nextafter(score, -math.inf if self.valid_metric_bigger else math.inf)
            return score

        def _set_epoch_lr(self, epoch_idx: int) -> float:
            step = int(self.config["lr_step_size"] or 0)
            if step > 0:
                gamma = float(self.config["lr_gamma"] if self.config["lr_gamma"] is not None else 0.1)
                lr = float(self.learning_rate) * gamma ** (int(epoch_idx) // step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            return float(self.optimizer.param_groups[0]["lr"])

        def per_sample_outcomes(self, eval_data=None) -> Optional[dict]:
            """Per-sample outcomes of the last ``evaluate``: ``{"order_sha1", "n", "recall@K": [0/1],
            "mrr@K": [1/rank or 0], "ndcg@K": [...]}`` for every K of ``topk``. Their means are RecBole's
            metric values (before its rounding). ``order_sha1`` (sha1 over "session target" tokens
            in evaluation order) lets two cells' lists be checked to pair sample by sample."""
            collector = self.eval_collector
            if collector.last_topk is None:
                return None
            metrics = self.evaluator.metric_class
            struct = {"rec.topk": collector.last_topk}
            ks = [int(k) for k in self.config["topk"]]
            out: dict = {"order_sha1": self._order_sha1(eval_data), "n": int(collector.last_topk.shape[0])}
            for name in PER_SAMPLE_METRICS:
                if name not in metrics:
                    from recbole.evaluator.metrics import metrics_dict

                    metric = metrics_dict[name](self.config)
                else:
                    metric = metrics[name]
                pos_index, pos_len = metric.used_info(struct)
                # each metric's own per-row computation (MRR's takes no pos_len)
                values = (metric.metric_info(pos_index) if name == "mrr"
                          else metric.metric_info(pos_index, pos_len))
                for k in ks:
                    column = values[:, k - 1]
                    out[f"{name}@{k}"] = ([int(v) for v in column] if name == "recall" and
                                          (pos_len == 1).all() else [round(float(v), 6) for v in column])
            return out

        def _order_sha1(self, eval_data=None) -> str:
            rows = self.eval_collector.last_rows or []
            dataset = getattr(eval_data, "_dataset", None)
            uid, iid = self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"]
            parts = []
            for sessions, positive_u, positive_i in rows:
                targets = positive_i.tolist()
                owners = sessions[positive_u].tolist() if sessions is not None else [""] * len(targets)
                if dataset is not None:
                    targets = list(dataset.id2token(iid, targets))
                    if sessions is not None:
                        owners = list(dataset.id2token(uid, owners))
                parts += [f"{s} {t}" for s, t in zip(owners, targets)]
            return hashlib.sha1("\n".join(map(str, parts)).encode()).hexdigest()

    PluginTrainer.__name__ = trainer_class.__name__
    return PluginTrainer


class RunCapture:
    """What one run built (``None`` until built): ``dataset``, ``train_data``, ``valid_data``,
    ``test_data``, ``model``, ``trainer``."""

    dataset = train_data = valid_data = test_data = model = trainer = config = None

    def _set(self, config, dataset, train_data, valid_data, test_data, model, trainer):
        self.config, self.dataset, self.model, self.trainer = config, dataset, model, trainer
        self.train_data, self.valid_data, self.test_data = train_data, valid_data, test_data

    def clear(self) -> None:
        self._set(None, None, None, None, None, None, None)


_CAPTURES: contextvars.ContextVar = contextvars.ContextVar("llm4sbr_run_captures", default=())


@contextmanager
def capture_run() -> Iterator[RunCapture]:
    """Hook: every ``build`` inside the block (so every ``run_recbole_llm4sbr``) records its objects in
    the yielded ``RunCapture`` (the last build wins)::

        with capture_run() as run:
            result = run_recbole_llm4sbr("GRU4Rec", "tiny", config_dict={...})
        run.trainer.saves, run.trainer.fit_time_s, run.test_data
    """
    capture = RunCapture()
    token = _CAPTURES.set(_CAPTURES.get() + (capture,))
    try:
        yield capture
    finally:
        _CAPTURES.reset(token)


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
    trainer = plugin_trainer(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)
    for capture in _CAPTURES.get():
        capture._set(config, dataset, train_data, valid_data, test_data, model, trainer)
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
    per-sample outcomes, ``PluginTrainer.per_sample_outcomes``) and ``config``.

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
    _, (train_data, valid_data, test_data), net, trainer = build(config)
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
