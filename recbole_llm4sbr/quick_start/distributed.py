"""Stage 2 on several processes (``--nproc=N``): RecBole's own DistributedDataParallel training, with
the plugin as its launcher.

RecBole's launcher (``recbole.quick_start.run`` -> ``run_recboles``) lives in the module whose ray
import breaks (RECBOLE_NOTES), so the plugin spawns the ranks itself with ``torch.multiprocessing``,
as RecBole does: one process per rank, ``local_rank`` in each rank's config, rendezvous at
``tcp://ip:port``. Each rank then runs RecBole's DDP code unchanged: its Config joins the process
group, its dataloaders shard the samples (``DistributedSampler``; ``train_batch_size`` is split over
the ranks, so the global batch stays the same), its Trainer all-reduces the gradients, early-stops on
validation metrics averaged over the ranks, and saves on rank 0 only. What RecBole 1.2.1 assumes and
the plugin changes:

* the device: CPU ranks use gloo (``compat.cpu_rank_device``; RecBole hard-codes nccl and CUDA),
  GPU ranks RecBole's own nccl setup;
* the DDP wrap (``compat.ddp_for_any_device``): no ``device_ids`` for a CPU model, and the buffers
  named ``RANK_LOCAL_BUFFERS`` (the stage-1 intents, rebuilt by every rank from the same table) are
  left out of DDP's broadcasts;
* the checkpoint: each rank's Trainer names its file by its own clock; rank 0's name is broadcast
  (``agree``) so every rank resumes, saves and reloads one file, after a ``barrier``;
* the test: RecBole's distributed evaluation pads the last shard with repeated samples and weighs the
  ranks' means by their batch counts, so the launcher tests the best checkpoint in one process (the
  plugin's ``--eval_only`` path): the same numbers a one-process evaluation of that file gives.

The launcher converts the data and builds the stage-1 table before it spawns (ranks only load them);
``quick_start.run_recbole_llm4sbr`` is the entry, this module the mechanics.
"""
from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from recbole_llm4sbr import compat
from recbole_llm4sbr.config import Config
from recbole_llm4sbr.errors import USER_ERRORS, ConfigError, LLM4SBRError, one_line

#: buffers (by their own name's start) every rank rebuilds from the stage-1 table: never broadcast by
#: DDP. Matched by prefix so that a renamed or added intent buffer is still covered.
RANK_LOCAL_BUFFERS = ("intent_", "item_text_")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Layout:
    """Where this launcher's ranks sit: ranks ``offset .. offset + nproc - 1`` of ``world_size``."""

    nproc: int
    world_size: int
    offset: int
    ip: str
    port: int
    backend: str  # gloo (CPU) | nccl (GPUs)

    def rank_keys(self, local_rank: int) -> Dict[str, Any]:
        """The keys RecBole's ``Config._init_device`` reads for a rank."""
        return {"local_rank": local_rank, "nproc": self.nproc, "world_size": self.world_size,
                "offset": self.offset, "ip": self.ip, "port": self.port}


def wants_ranks(config) -> bool:
    """True when the config asks for more than one process (RecBole's rule: ``nproc > 1`` or a
    ``world_size`` over several machines)."""
    return int(config["nproc"] or 1) > 1 or int(config["world_size"] or -1) > 1


def _port_taken(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1" if ip == "localhost" else ip, port))
        except OSError:
            return True
    return False


def layout_of(config) -> Layout:
    """The ranks this launcher starts; ``ConfigError`` naming the fix for a layout that cannot run
    (each key's own type and range are ``validation``'s)."""
    import torch

    nproc, offset, port = int(config["nproc"]), int(config["offset"] or 0), int(config["port"])
    world_size = int(config["world_size"]) if int(config["world_size"] or -1) > 0 else nproc
    ip = str(config["ip"])
    if offset + nproc > world_size:
        raise ConfigError(f"nproc = {nproc} ranks from offset = {offset} do not fit world_size = {world_size}. "
                          f"Fix: --world_size={offset + nproc} (every machine's nproc added up), or leave "
                          "world_size at -1 on one machine")
    gpus = [g for g in str(config["gpu_id"] or "").split(",") if g.strip()]
    on_gpu = bool(gpus) and torch.cuda.is_available()
    if on_gpu and len(gpus) < nproc:
        raise ConfigError(f"nproc = {nproc} GPU ranks need as many GPUs, gpu_id = '{config['gpu_id']}' lists "
                          f"{len(gpus)}. Fix: --gpu_id={','.join(map(str, range(nproc)))}, or --gpu_id='' (CPU, gloo)")
    if offset == 0 and ip in LOOPBACK and _port_taken(ip, port):
        raise ConfigError(f"port {port} on {ip} is in use (rank 0 listens there). Fix: --port=<a free port>")
    return Layout(nproc, world_size, offset, ip, port, "nccl" if on_gpu else "gloo")


class RankConfig(Config):
    """The plugin's Config for one rank: RecBole's device setup, on the CPU with gloo
    (``compat.cpu_rank_device``)."""

    def _init_device(self):
        if not compat.cpu_rank_device(self.final_config_dict):
            super()._init_device()


def agree(value):
    """Rank 0's ``value`` on every rank (a collective: every rank calls it at the same point)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def global_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def state_sha1(module) -> str:
    """sha1 over a module's checkpointed tensors (``state_dict``, in its order): equal on every rank
    exactly when DDP kept the replicas in step."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class RankJob:
    """What every rank rebuilds its run from (pickled to the spawned processes)."""

    model: str
    dataset: str
    config_file_list: Optional[List[str]]
    overrides: Dict[str, Any]
    layout: Layout
    resume: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def config_dict(self, local_rank: int) -> Dict[str, Any]:
        return {**self.overrides, **self.layout.rank_keys(local_rank)}


def _rank_entry(local_rank: int, work: Callable[[int, RankJob], dict], job: RankJob, queue) -> None:
    """One spawned rank: ``work(local_rank, job)``'s report goes to the launcher; so does an error's
    one line (the launcher names the rank), before the error ends the process."""
    try:
        report = work(local_rank, job)
        queue.put({"local_rank": local_rank, **report})
    except BaseException as err:  # noqa: BLE001 - reported, then raised again
        queue.put({"local_rank": local_rank, "error": type(err).__name__, "message": one_line(err)[:2000],
                   "user_error": isinstance(err, USER_ERRORS)})
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _drain(queue, into: list) -> None:
    while not queue.empty():
        into.append(queue.get())


def spawn(work: Callable[[int, RankJob], dict], job: RankJob, poll_s: float = 0.2) -> List[dict]:
    """Start ``job.layout.nproc`` ranks running ``work`` (a module-level function: it is pickled by
    name), wait for all of them and return their reports in local-rank order. A rank that fails stops
    the others (torch's ``ProcessContext``); a user error in a rank becomes ``LLM4SBRError`` naming the
    rank, anything else keeps the rank's traceback."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_rank_entry, args=(work, job, queue), nprocs=job.layout.nproc, join=False,
                                 start_method="spawn")
    reports: List[dict] = []
    try:
        while not context.join(timeout=poll_s):
            _drain(queue, reports)  # keeps the pipe empty: a rank never blocks on its report
    except ProcessException as err:
        time.sleep(poll_s)
        _drain(queue, reports)
        failed = [r for r in reports if "error" in r]
        first = next((r for r in failed if r["local_rank"] == err.error_index), failed[0] if failed else None)
        if first is not None and first["user_error"]:
            rank = first["local_rank"] + job.layout.offset
            raise LLM4SBRError(f"rank {rank} of {job.layout.world_size}: {first['message']}") from err
        raise
    _drain(queue, reports)
    return sorted(reports, key=lambda r: r["local_rank"])
