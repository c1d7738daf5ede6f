"""``run_recbole_llm4sbr``: RecBole's ``run_recbole`` for plugin and stock models alike.

Same flow and return value as ``recbole.quick_start.run_recbole`` (which is never imported: its ray
breaks on today's stack), plus the data preparation the plugin owns: the default dataset is
converted on first use and, for LLM4SBR models, stage 1 runs when its table is missing or stale.
"""
from __future__ import annotations

import os
import sys
import time
from logging import getLogger

import torch
from recbole.data import data_preparation
from recbole.utils import get_trainer, init_logger, init_seed, set_color

from recbole_llm4sbr.config import Config
from recbole_llm4sbr.data.dataset import LLM4SBRDataset
from recbole_llm4sbr.utils import get_model

DEFAULT_DATASET = "ml-100k-session"


def prepare_dataset(config, logger) -> None:
    """Convert the bundled default dataset into ``data_path`` on first use (no network needed)."""
    if config["dataset"] != DEFAULT_DATASET:
        return
    from recbole_llm4sbr.data.converters import ensure_default_dataset

    ensure_default_dataset(os.path.dirname(os.path.normpath(config["data_path"])))


def plugin_trainer(trainer_class):
    """The model's RecBole trainer with two additions, for stock and LLM4SBR models alike.

    * ``epoch_times``: seconds of each training epoch (efficiency tables, closing notes);
    * the paper's step decay (``lr_step_size`` epochs, factor ``lr_gamma``; SR-GNN's own schedule),
      which RecBole 1.2.1 has no setting for. ``lr_step_size: 0`` turns it off.
    """

    class PluginTrainer(trainer_class):
        def _train_epoch(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._train_epoch(*args, **kwargs)
            finally:
                self.epoch_times = getattr(self, "epoch_times", []) + [time.perf_counter() - start]
                self._step_lr()

        def _step_lr(self):
            step = int(self.config["lr_step_size"] or 0)
            if step <= 0:
                return
            if getattr(self, "lr_scheduler", None) is None:
                gamma = float(self.config["lr_gamma"] if self.config["lr_gamma"] is not None else 0.1)
                self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step, gamma)
            self.lr_scheduler.step()

    PluginTrainer.__name__ = trainer_class.__name__
    return PluginTrainer


def build(config):
    """Dataset, dataloaders, model and trainer for ``config``, as RecBole's quick start makes them."""
    logger = getLogger()
    prepare_dataset(config, logger)
    dataset = LLM4SBRDataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = plugin_trainer(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)
    return dataset, (train_data, valid_data, test_data), model, trainer


def make_config(model=None, dataset=None, config_file_list=None, config_dict=None, read_cmd_line=True):
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, read_cmd_line=read_cmd_line)
    init_seed(config["seed"], config["reproducibility"])
    if config["torch_num_threads"]:
        torch.set_num_threads(int(config["torch_num_threads"]))
    init_logger(config)
    return config


def run_recbole_llm4sbr(model=None, dataset=None, config_file_list=None, config_dict=None,
                        saved=True, read_cmd_line=True):
    """Train with validation-based model selection, then test; returns RecBole's result dict.

    Keys as in RecBole (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``) plus ``epoch_times`` (seconds per training epoch), ``model_file`` and ``config``.
    """
    config = make_config(model, dataset, config_file_list, config_dict, read_cmd_line)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    _, (train_data, valid_data, test_data), model, trainer = build(config)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    epoch_times = getattr(trainer, "epoch_times", [])
    if epoch_times:
        logger.info(set_color("epoch time", "yellow") + f": {sum(epoch_times) / len(epoch_times):.2f} s "
                    f"(mean of {len(epoch_times)} training epochs)")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epoch_times": epoch_times,
        "model_file": trainer.saved_model_file if saved else None,
        "config": config,
    }
