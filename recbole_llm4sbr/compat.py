"""Every shim RecBole 1.2.1 needs on today's stack, in one place.

RecBole 1.2.1 (the latest release) predates numpy 2, pandas 3 and torch >= 2.6. ``apply()`` runs
once, before any RecBole module is imported (``recbole_llm4sbr/__init__`` calls it). Each shim says
what breaks without it; ``tests/test_compat.py`` has one test per shim that fails if it is removed
(the two distributed shims, ``cpu_rank_device`` and ``ddp_for_any_device``, are used by
``quick_start.distributed`` only and tested by ``tests/test_distributed.py``).

Not a shim but a rule: never import ``recbole.quick_start``. It is the only RecBole module that
imports ray 2.6.3, which fails on setuptools >= 81 (``No module named 'pkg_resources'``) and then on
numpy 2 (``np.bool8``). The plugin's own ``quick_start`` replaces it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from importlib.abc import MetaPathFinder
from importlib.machinery import PathFinder

_APPLIED = False


def numpy_aliases() -> None:
    """numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``.

    Without them every ``recbole.config.Config(...)`` dies in ``compatibility_settings`` with
    "np.float_ was removed in the NumPy 2.0 release"; RecBole then derives ``np.float``/``np.bool``
    (used by its metrics and dataset loader) from these.
    """
    import numpy as np

    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))


@contextlib.contextmanager
def full_checkpoint_load():
    """Around RecBole's own ``torch.load`` calls only: torch >= 2.6 loads with ``weights_only=True``.

    RecBole's checkpoints pickle its Config (protocol 4), so the best-epoch reload in
    ``Trainer.evaluate(load_best_model=True)`` (and ``Trainer.resume_checkpoint``) fails with "Weights
    only load failed ... Unsupported operand 149" and no test result is printed. ``add_safe_globals``
    cannot help, and RecBole passes no ``weights_only``; torch reads this switch at every such call.
    The plugin's trainer (``quick_start.trainer.PluginTrainerMixin``) wraps exactly those two calls, so the rest of
    the process keeps torch's safe default. Checkpoints are the user's own files written by RecBole.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{key}.*", category=UserWarning)
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def cpu_rank_device(final_config_dict) -> bool:
    """A rank's device on the CPU; False (RecBole's own setup runs) on GPUs.

    RecBole's ``Config._init_device`` for a rank (``local_rank`` set) asserts that ``gpu_id`` lists
    ``nproc`` GPUs, hard-codes ``init_process_group(backend="nccl")``, the device ``cuda:<local_rank>``
    and ``torch.cuda.set_device``: a CPU rank dies on the assert (``gpu_id: ''``) or in NCCL. On the
    CPU (``gpu_id`` empty or no CUDA) this takes the same steps with gloo and the CPU device: rank
    ``local_rank + offset`` of ``world_size`` at ``tcp://ip:port``, ``single_spec`` False, and ranks
    other than 0 quiet (``state: error``, no progress bars), as RecBole does for its GPU ranks.
    """
    import torch

    config = final_config_dict
    if "local_rank" not in config:
        return False
    gpu_id = config["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    config["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    if gpu_id and torch.cuda.is_available():
        return False
    local_rank = int(config["local_rank"])
    torch.distributed.init_process_group(
        backend="gloo", rank=local_rank + int(config["offset"]), world_size=int(config["world_size"]),
        init_method=f"tcp://{config['ip']}:{config['port']}")
    config["device"] = torch.device("cpu")
    config["single_spec"] = False
    if local_rank != 0:
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False
    return True


def rank_local_buffers(module, prefixes) -> set:
    """Names (DDP's dotted form) of ``module``'s buffers whose own name starts with one of
    ``prefixes``: state every rank rebuilds from the same files, that DDP must neither broadcast when
    it wraps the model nor sync before every forward."""
    names = set()
    for owner, sub in module.named_modules():
        for name, _ in sub.named_buffers(recurse=False):
            if name.startswith(tuple(prefixes)):
                names.add(f"{owner}.{name}" if owner else name)
    return names


@contextlib.contextmanager
def ddp_for_any_device(rank_local_prefixes=()):
    """Around a RecBole trainer's ``__init__`` in a rank only.

    ``AbstractTrainer.__init__`` wraps the model as ``DistributedDataParallel(model,
    device_ids=[local_rank])`` after ``SyncBatchNorm.convert_sync_batchnorm``. On the CPU torch refuses
    the first ("device_ids and output_device arguments only work with single-device/multiple-device
    GPU modules") and SyncBatchNorm's forward needs a GPU. Inside this block the wrap passes
    ``device_ids`` only for a CUDA model, the conversion is skipped for a CPU model (each CPU rank keeps
    its own BatchNorm, whose running statistics DDP broadcasts from rank 0 as buffers), and the buffers
    named by ``rank_local_buffers(model, rank_local_prefixes)`` are left out of DDP's buffer sync
    (``_ddp_params_and_buffers_to_ignore``): the stage-1 intent tables are large and identical on every
    rank. Restored on the way out.
    """
    import torch
    from recbole.trainer import trainer as recbole_trainer

    real_ddp = recbole_trainer.DistributedDataParallel
    real_convert = torch.nn.SyncBatchNorm.__dict__["convert_sync_batchnorm"]

    def on_cuda(module):
        return any(p.is_cuda for p in module.parameters())

    def convert(cls, module, process_group=None):
        return real_convert.__func__(cls, module, process_group) if on_cuda(module) else module

    def wrap(module, device_ids=None, **kwargs):
        ignore = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
        ignore |= rank_local_buffers(module, rank_local_prefixes)
        real_ddp._set_params_and_buffers_to_ignore_for_model(module, ignore)
        return real_ddp(module, device_ids=device_ids if on_cuda(module) else None, **kwargs)

    recbole_trainer.DistributedDataParallel = wrap
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(convert)
    try:
        yield
    finally:
        recbole_trainer.DistributedDataParallel = real_ddp
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = real_convert


def quiet_known_warnings() -> None:
    """Every run printed ~8 FutureWarning blocks before anything useful: pandas deprecations hit by
    RecBole's dataset code (chained ``fillna(inplace=True)``, ``Series.agg(len)``; harmless with
    pandas < 3, which ``pandas_below_3`` enforces) and torch's ``torch.cuda.amp.GradScaler`` in
    RecBole's trainer. Ignored only where RecBole's own modules trigger them, never globally."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole(\.|$)")


def pandas_below_3() -> None:
    """pandas 3 breaks RecBole 1.2.1 silently, so refuse it loudly.

    ``Series.agg(len)`` returns one scalar (benchmark files: "Length of values (1) does not match
    length of index") and ``fillna(..., inplace=True)`` becomes a no-op (empty token_seq cells:
    "'float' object has no attribute 'split'", NaN floats left unfilled). setup.py pins
    ``pandas<3``; this guard names the fix if another install replaced it.
    """
    import pandas as pd

    from recbole_llm4sbr.errors import MissingDependencyError

    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise MissingDependencyError(
            f"recbole_llm4sbr: pandas {pd.__version__} is installed, but RecBole 1.2.1 silently "
            "mis-reads data with pandas 3. Fix: pip install 'pandas>=2.2,<3'"
        )


class _AfterImport(MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is first imported, so a shim for a RecBole model
    module does not make ``import recbole_llm4sbr`` import torch and every RecBole model."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        run, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def after_import(name: str, patch) -> None:
    """``patch(module)`` now if ``name`` is already imported, else right after its first import."""
    if name in sys.modules:
        patch(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, patch))


def _bert4rec_guard(module) -> None:
    cls = module.BERT4Rec
    if getattr(cls.calculate_loss, "_llm4sbr_empty_mask_guard", False):
        return
    cloze = cls.calculate_loss

    def calculate_loss(self, interaction):
        if not bool((interaction[self.MASK_INDEX] > 0).any()):
            return self.output_bias.sum() * 0.0  # nothing to predict: zero loss, zero gradient
        return cloze(self, interaction)

    calculate_loss._llm4sbr_empty_mask_guard = True
    calculate_loss.__wrapped__ = cloze
    calculate_loss.__doc__ = cloze.__doc__
    cls.calculate_loss = calculate_loss


def bert4rec_empty_mask_loss() -> None:
    """BERT4Rec's cloze loss is 0/0 = NaN on a batch with no masked position it counts.

    ``calculate_loss`` divides by ``sum(masked_index > 0)``. The mask transform masks each item with
    probability ``mask_ratio``, so a short prefix may get no mask at all (and a mask at position 0
    is not counted either). On ``ml-100k-session`` at seed 2020 the last training batch (5,201 =
    52 x 100 + 1 samples) is one length-1 prefix left unmasked: the Trainer stops at epoch 0 with
    "Training loss is nan", stock and ``LLM4SBR_BERT4Rec`` alike. Patched: such a batch's cloze loss
    is 0 with a zero gradient; every other batch's loss is unchanged. Applied when
    ``recbole.model.sequential_recommender.bert4rec`` is first imported.
    """
    after_import("recbole.model.sequential_recommender.bert4rec", _bert4rec_guard)


def _anomaly_mode_off(module) -> None:
    import torch

    torch.autograd.set_detect_anomaly(False)


def sine_anomaly_mode() -> None:
    """RecBole's ``sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` at import time, and
    ``recbole.model.sequential_recommender/__init__`` imports it with every model, so importing any
    sequential model switched anomaly detection on for the whole process: every autograd op then
    records a Python stack trace and every backward checks for NaN. It changes no result, but it
    made training 2-6x slower, stock and wrapped alike (ml-100k-session, 1 thread: STAMP 2.3 s ->
    1.0 s per epoch, GRU4Rec ~30 s -> 5.4 s; benchmarks/stage2_cost.py). Switched off again right
    after that import; a user who wants it calls ``set_detect_anomaly(True)`` after importing models."""
    after_import("recbole.model.sequential_recommender.sine", _anomaly_mode_off)


def apply() -> None:
    """Apply every shim (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    pandas_below_3()
    numpy_aliases()
    quiet_known_warnings()
    bert4rec_empty_mask_loss()
    sine_anomaly_mode()
    _APPLIED = True
