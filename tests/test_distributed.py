"""Stage 2 on two gloo ranks (``--nproc=2``): DDP keeps the replicas in step, both ranks reload one
checkpoint, the final test is the one-process evaluation of that checkpoint and is within noise of a
one-process run; bad layouts fail before anything is spawned; the two distributed shims of compat."""
import datetime
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_llm4sbr import compat
from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.quick_start import run_recbole_llm4sbr
from tinydata import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
#: 100 sessions: 15 test samples, an odd count, so two ranks' shards would need a padded duplicate
SMALL = {"epochs": 3, "stopping_step": 10, "embedding_size": 16, "hidden_size": 16, "train_batch_size": 32,
         "show_progress": False, "state": "WARNING", "metric_decimal_place": 6, "intent_backend": "text"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(tmp_path, **extra):
    return {"data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), **SMALL, **extra}


@pytest.mark.slow  # two spawned ranks, stage 1 and three trainings: about a minute and a half on one core
def test_two_gloo_ranks_train_one_checkpoint_and_the_test_is_its_one_process_evaluation(tmp_path):
    write_tiny_dataset(tmp_path / "data", n_sessions=100)
    ddp = run_recbole_llm4sbr("LLM4SBR_SRGNN", "tiny", read_cmd_line=False,
                              config_dict=settings(tmp_path, nproc=2, port=free_port()))
    ranks = ddp["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    # one checkpoint, named by rank 0, reloaded by both ranks
    assert {r["checkpoint"] for r in ranks} == {ddp["model_file"]} and Path(ddp["model_file"]).is_file()
    assert len({r["checkpoint_epoch"] for r in ranks}) == 1
    assert len({r["loaded_sha1"] for r in ranks}) == 1
    # the ranks trained on different halves of every batch: equal weights mean the gradients were reduced
    assert ranks[0]["trained_sha1"] == ranks[1]["trained_sha1"]
    losses = [ddp["train_loss"][e] for e in sorted(ddp["train_loss"])]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(ddp["epoch_times"]) == 3

    # the final test is the one-process evaluation of that checkpoint: every test sample once, no
    # padded duplicate (a distributed test would have scored 8 per rank)
    single = settings(tmp_path, checkpoint_dir=str(tmp_path / "single"))
    again = run_recbole_llm4sbr(dataset="tiny", read_cmd_line=False, config_dict=single, eval_only=True,
                                checkpoint=ddp["model_file"])
    assert dict(ddp["test_result"]) == dict(again["test_result"])
    assert ddp["per_sample"] == again["per_sample"] and ddp["per_sample"]["n"] == 15
    assert ddp["best_valid_score"] == again["best_valid_score"]

    # within noise of a one-process training run: the paired per-sample difference in MRR@20 is within
    # two standard errors (plus one sample's worth)
    one = run_recbole_llm4sbr("LLM4SBR_SRGNN", "tiny", read_cmd_line=False, config_dict=single)
    a, b = ddp["per_sample"]["mrr@20"], one["per_sample"]["mrr@20"]
    assert ddp["per_sample"]["order_sha1"] == one["per_sample"]["order_sha1"]
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1))
    assert abs(mean) <= 2 * sd / math.sqrt(n) + 1 / n, (ddp["test_result"], one["test_result"])


def test_nproc_zero_is_one_line_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "run_recbole_llm4sbr.py"), "--model=LLM4SBR_SRGNN",
                          "--nproc=0", f"--data_path={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "LLM4SBR_DEBUG"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'nproc' = 0" in errors[0] and "Fix: --nproc=2" in errors[0]
    assert not (tmp_path / "ml-100k-session").exists()  # refused before the data was converted


@pytest.mark.parametrize("extra, needle", [
    ({"nproc": 2, "world_size": 1}, "Fix: --world_size=2"),
    ({"nproc": 2, "world_size": 3, "offset": 2}, "Fix: --world_size=4"),
])
def test_a_layout_that_cannot_run_is_refused_before_spawning(tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        run_recbole_llm4sbr("SRGNN", "tiny", read_cmd_line=False,
                            config_dict=settings(tmp_path, port=free_port(), **extra))
    assert not (tmp_path / "saved").exists()


def test_a_port_in_use_is_refused_before_spawning(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} .* in use.*Fix: --port="):
            run_recbole_llm4sbr("SRGNN", "tiny", read_cmd_line=False,
                                config_dict=settings(tmp_path, nproc=2, port=port))


class WithIntents(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.register_buffer("intent_vectors", torch.zeros(3, 4), persistent=False)
        self.inner = torch.nn.Module()
        self.inner.register_buffer("item_text_vectors", torch.zeros(2, 4), persistent=False)
        self.register_buffer("counts", torch.zeros(1))


def test_rank_local_buffers_by_prefix_at_any_depth():
    names = compat.rank_local_buffers(WithIntents(), ("intent_", "item_text_"))
    assert names == {"intent_vectors", "inner.item_text_vectors"}


def test_ddp_for_any_device_wraps_a_cpu_model_and_leaves_the_intents_alone(tmp_path):
    """RecBole's wrap, ``DistributedDataParallel(model, device_ids=[local_rank])`` after
    ``convert_sync_batchnorm``, in a one-rank gloo group: refused for a CPU model without the shim."""
    import torch.distributed as dist
    from recbole.trainer import trainer as recbole_trainer

    # an in-memory store: a one-rank group needs no rendezvous over TCP, and a bounded timeout turns
    # any wait into an error instead of a stalled run
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        with pytest.raises(ValueError, match="device_ids"):
            recbole_trainer.DistributedDataParallel(WithIntents(), device_ids=[0])
        real = recbole_trainer.DistributedDataParallel
        with compat.ddp_for_any_device(("intent_", "item_text_")):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(WithIntents())
            wrapped = recbole_trainer.DistributedDataParallel(model, device_ids=[0])
        assert recbole_trainer.DistributedDataParallel is real  # restored
        assert isinstance(model.norm, torch.nn.BatchNorm1d) and not isinstance(model.norm, torch.nn.SyncBatchNorm)
        assert wrapped.device_ids is None
        assert wrapped.parameters_to_ignore == {"intent_vectors", "inner.item_text_vectors"}
        synced = {id(b) for b in wrapped.modules_buffers}
        assert id(model.counts) in synced and id(model.intent_vectors) not in synced
        # outside the block RecBole's conversion is torch's own again
        assert isinstance(torch.nn.SyncBatchNorm.convert_sync_batchnorm(WithIntents()).norm, torch.nn.SyncBatchNorm)
    finally:
        dist.destroy_process_group()


def fail_on_rank_one(local_rank, job):
    """A rank's work for ``distributed.spawn``: rank 1 refuses its input, rank 0 waits to be stopped."""
    import time

    if local_rank == 1:
        raise ConfigError("config key 'x' is bad. Fix: --x=1")
    time.sleep(300)
    return {"rank": local_rank}


@pytest.mark.slow  # two spawned processes importing torch and RecBole: about 30 s here
def test_a_user_error_in_one_rank_stops_the_others_and_names_the_rank(tmp_path):
    import time

    from recbole_llm4sbr.errors import LLM4SBRError
    from recbole_llm4sbr.quick_start.distributed import Layout, RankJob, spawn

    layout = Layout(nproc=2, world_size=2, offset=0, ip="127.0.0.1", port=free_port(), backend="gloo")
    start = time.perf_counter()
    with pytest.raises(LLM4SBRError, match=r"^rank 1 of 2: config key 'x' is bad\. Fix: --x=1$"):
        spawn(fail_on_rank_one, RankJob("SRGNN", "tiny", None, {}, layout))
    assert time.perf_counter() - start < 240  # rank 0 was stopped, not waited for
