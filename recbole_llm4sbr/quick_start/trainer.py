"""The plugin's trainer: RecBole's trainers with the plugin's additions, as named classes.

``PluginTrainerMixin`` holds the additions (step decay, tie-is-no-gain early stopping, epoch and
checkpoint timing, per-sample test outcomes, the distributed-rank bits); ``PluginTrainer`` is RecBole's
``Trainer`` with them, and every other trainer RecBole's ``get_trainer`` can hand out has its
``Plugin<Name>`` class here (as RecBole-GNN's ``trainer.py`` names its trainers).
``get_plugin_trainer(model_type, model_name)`` is ``get_trainer`` for the plugin: the class the
quick start builds for a model.
"""
from __future__ import annotations

import hashlib
import math
import time
from typing import Dict, Optional

from recbole.evaluator import Collector
from recbole.trainer import (DecisionTreeTrainer, KGATTrainer, KGTrainer, LightGBMTrainer, MKRTrainer, NCLTrainer,
                             PretrainTrainer, RaCTTrainer, RecVAETrainer, S3RecTrainer, TraditionalTrainer, Trainer,
                             XGBoostTrainer)
from recbole.utils import get_trainer

from recbole_llm4sbr.compat import ddp_for_any_device, full_checkpoint_load
from recbole_llm4sbr.quick_start.distributed import RANK_LOCAL_BUFFERS, agree

#: RecBole metrics whose per-sample values ``PluginTrainerMixin.per_sample_outcomes`` reports
PER_SAMPLE_METRICS = ("recall", "mrr", "ndcg")


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


class PluginTrainerMixin:
    """The plugin's additions to a RecBole trainer, for stock and LLM4SBR models alike (first in the
    bases, before the RecBole trainer class):

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


class PluginTrainer(PluginTrainerMixin, Trainer):
    """RecBole's ``Trainer`` (what RecBole trains most models with, every ``LLM4SBR_<Base>`` included) with the
    plugin's additions."""


class PluginKGTrainer(PluginTrainerMixin, KGTrainer):
    """RecBole's ``KGTrainer`` with the plugin's additions."""


class PluginKGATTrainer(PluginTrainerMixin, KGATTrainer):
    """RecBole's ``KGATTrainer`` with the plugin's additions."""


class PluginPretrainTrainer(PluginTrainerMixin, PretrainTrainer):
    """RecBole's ``PretrainTrainer`` with the plugin's additions."""


class PluginS3RecTrainer(PluginTrainerMixin, S3RecTrainer):
    """RecBole's ``S3RecTrainer`` with the plugin's additions."""


class PluginMKRTrainer(PluginTrainerMixin, MKRTrainer):
    """RecBole's ``MKRTrainer`` with the plugin's additions."""


class PluginTraditionalTrainer(PluginTrainerMixin, TraditionalTrainer):
    """RecBole's ``TraditionalTrainer`` with the plugin's additions."""


class PluginDecisionTreeTrainer(PluginTrainerMixin, DecisionTreeTrainer):
    """RecBole's ``DecisionTreeTrainer`` with the plugin's additions."""


class PluginXGBoostTrainer(PluginTrainerMixin, XGBoostTrainer):
    """RecBole's ``XGBoostTrainer`` with the plugin's additions."""


class PluginLightGBMTrainer(PluginTrainerMixin, LightGBMTrainer):
    """RecBole's ``LightGBMTrainer`` with the plugin's additions."""


class PluginRaCTTrainer(PluginTrainerMixin, RaCTTrainer):
    """RecBole's ``RaCTTrainer`` with the plugin's additions."""


class PluginRecVAETrainer(PluginTrainerMixin, RecVAETrainer):
    """RecBole's ``RecVAETrainer`` with the plugin's additions."""


class PluginNCLTrainer(PluginTrainerMixin, NCLTrainer):
    """RecBole's ``NCLTrainer`` with the plugin's additions."""


#: RecBole's trainer class -> the plugin's
PLUGIN_TRAINERS: Dict[type, type] = {cls.__bases__[1]: cls for cls in [
    PluginTrainer, PluginKGTrainer, PluginKGATTrainer, PluginPretrainTrainer, PluginS3RecTrainer, PluginMKRTrainer,
    PluginTraditionalTrainer, PluginDecisionTreeTrainer, PluginXGBoostTrainer, PluginLightGBMTrainer,
    PluginRaCTTrainer, PluginRecVAETrainer, PluginNCLTrainer]}


def plugin_trainer_class(trainer_class: type) -> type:
    """The plugin's trainer for RecBole's ``trainer_class``: its named class above, or (a trainer class
    RecBole adds later) one made with the mixin and kept, so a class is made once."""
    cls = PLUGIN_TRAINERS.get(trainer_class)
    if cls is None:
        cls = PLUGIN_TRAINERS[trainer_class] = type(f"Plugin{trainer_class.__name__}",
                                                    (PluginTrainerMixin, trainer_class), {})
    return cls


def get_plugin_trainer(model_type, model_name: str) -> type:
    """RecBole's ``get_trainer(model_type, model_name)``, as the plugin's trainer class."""
    return plugin_trainer_class(get_trainer(model_type, model_name))
