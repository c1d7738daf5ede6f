"""Where ``generate`` runs a stage-1 plan (``intent/shards.py``): they change speed only, never an
answer, so they stay out of the table tag.

* ``local``: one process, the plan's blocks in order.
* ``--shard=i/N`` (with ``local``): the i-th contiguous part of the plan in this process; start N of
  them (one per GPU: ``CUDA_VISIBLE_DEVICES=i``), Ray-free.
* ``ray``: Ray Data, ``read_parquet(plan) -> map_batches(RayBlockWorker, ActorPoolStrategy(size=N))``;
  each actor wraps the project's own backend (any of them), the driver writes every block as it
  arrives, so workers need no shared file system.
* ``ray-llm``: Ray Data's own LLM processor (``ray.data.llm.build_processor`` with a
  ``vLLMEngineProcessorConfig``, prefix caching on) for ``intent_backend: vllm``, where the vLLM
  that Ray pins is the one the plan was described with (checked).

Every worker checks that its engine's ``describe()`` is the plan's (else its answers would be
stored under keys of another configuration) and that every key is its prompt's.
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .cache import AnswerKeys
from .errors import IntentError
from .backends import default_block_rows
from .generation import _call, chunk_size
from .settings import normalize_settings
from .shards import block_keys, check_keys, read_manifest, read_plan, shard_paths, shard_slice, write_block

_log = logging.getLogger("recbole_llm4sbr.intent")

EXECUTORS = ("local", "ray", "ray-llm")
#: CPUs a Ray read task of a plan shard asks for (reading prompts is light; a whole CPU per read
#: task would starve actors that hold the CPUs on small nodes)
READ_TASK_CPUS = 0.25


@dataclass
class GenerateStats:
    planned: int = 0  # rows of the plan (this shard's part with --shard)
    skipped: int = 0  # already in unmerged blocks
    sent: int = 0  # prompts handed to workers
    written: int = 0  # answers written to blocks
    failed: int = 0  # prompts whose block failed twice (not written: a rerun sends them)
    blocks: int = 0
    wall_s: float = 0.0


def _normal(info: Mapping[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(info, sort_keys=True, ensure_ascii=False, default=str))


def _load_class(path: str) -> type:
    module, cls = path.split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise IntentError(f"the plan's backend {path!r} needs the package {e.name!r}, which this worker "
                          "lacks: install it where the workers run") from None


class BlockWorker:
    """One worker: the plan's backend, started and checked against the plan; answers blocks."""

    def __init__(self, settings: Mapping[str, Any], manifest: Mapping[str, Any],
                 logger: Optional[logging.Logger] = None):
        self.log = logger or _log
        cls = _load_class(str(manifest["backend_class"]))
        try:
            self.backend = cls(dict(settings))
        except (OSError, ImportError, ValueError, RuntimeError) as e:
            raise IntentError(f"intent_backend {manifest['backend']!r} could not start: {e}") from e
        got, want = _normal(self.backend.describe()), _normal(manifest["backend_info"])
        if got != want:
            self.backend.close()
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise IntentError(
                f"this worker's backend describes itself otherwise than the plan ({', '.join(diff)}: "
                f"{ {k: got.get(k) for k in diff} } here, { {k: want.get(k) for k in diff} } planned): its "
                "answers would be cached under another configuration's keys. Give the workers the plan's "
                "settings and package versions, or run plan again where the workers run")
        self.keys = AnswerKeys(want, str(manifest["template_version"]))
        self.block_rows = chunk_size(self.backend, normalize_settings(settings).batch_size)

    def answer(self, keys: Sequence[str], prompts: Sequence[str]) -> Optional[List[str]]:
        """The block's answers, or None when the backend failed on it twice (logged)."""
        check_keys(self.keys, keys, prompts, "worker")
        for attempt in (1, 2):
            try:
                return _call(self.backend, list(prompts))
            except Exception as e:  # noqa: BLE001 - any backend failure: retry once, then leave the block
                what = "retrying once" if attempt == 1 else "left for a rerun (its keys stay planned)"
                self.log.warning(f"block of {len(prompts)} prompts failed ({type(e).__name__}: {e}); {what}")
        return None

    def close(self) -> None:
        self.backend.close()


def _blocks(n: int, size: int):
    for i in range(0, n, max(1, size)):
        yield slice(i, min(n, i + max(1, size)))


def generate_local(settings: Mapping[str, Any], folder, shard: Optional[Tuple[int, int]] = None,
                   block_rows: Optional[int] = None, logger: Optional[logging.Logger] = None,
                   progress: bool = False) -> GenerateStats:
    """Answer the plan in ``folder`` (or part ``shard`` = (i, N) of it) in this process."""
    log = logger or _log
    start = time.perf_counter()
    manifest, keys, prompts = read_plan(folder)
    if shard is not None:
        part = shard_slice(len(keys), shard)
        keys, prompts = keys[part], prompts[part]
    stats = GenerateStats(planned=len(keys))
    done = block_keys(folder)
    todo = [(k, p) for k, p in zip(keys, prompts) if k not in done]
    stats.skipped = len(keys) - len(todo)
    if not todo:
        log.info(f"generate: nothing to do in {folder} ({stats.skipped} already in blocks)")
        return stats
    worker = BlockWorker(settings, manifest, log)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="prompt", desc="stage-1 blocks", dynamic_ncols=True)
    try:
        for part in _blocks(len(todo), int(block_rows or worker.block_rows)):
            bk, bp = [k for k, _ in todo[part]], [p for _, p in todo[part]]
            stats.sent += len(bk)
            answers = worker.answer(bk, bp)
            if answers is None:
                stats.failed += len(bk)
            else:
                write_block(folder, bk, bp, answers)
                stats.written += len(bk)
                stats.blocks += 1
            if bar is not None:
                bar.update(len(bk))
    finally:
        worker.close()
        if bar is not None:
            bar.close()
    stats.wall_s = time.perf_counter() - start
    return stats


# ---- Ray ---------------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ModuleNotFoundError:
        raise IntentError("--executor=ray needs Ray Data, which is not installed here: it lives in the vLLM "
                          "environment (`bash .ci/vllm_env.sh`, or `pip install 'ray[data]==2.60.0'` next to "
                          "vLLM), never the training one (RecBole 1.2.1 pins an old ray)") from None
    return ray


class RayBlockWorker:
    """A Ray Data actor around :class:`BlockWorker`: a batch of plan rows in, the same rows with
    their answers out (``answer`` null where the block failed twice)."""

    def __init__(self, settings: Mapping[str, Any], manifest: Mapping[str, Any]):
        logging.basicConfig(level=logging.INFO)
        self.worker = BlockWorker(settings, manifest)

    def __call__(self, batch):
        import pyarrow as pa

        keys = batch.column("key").to_pylist()
        prompts = batch.column("prompt").to_pylist()
        answers = self.worker.answer(keys, prompts)
        return pa.table({"key": pa.array(keys, pa.string()), "prompt": pa.array(prompts, pa.string()),
                         "answer": pa.array(answers if answers is not None else [None] * len(keys), pa.string())})


def _init_ray(ray, address: Optional[str], log: logging.Logger) -> None:
    if ray.is_initialized():
        return
    ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
             ignore_reinit_error=True)
    log.info(f"ray: connected ({ray.cluster_resources()})")


def _plan_dataset(ray, folder, manifest, done):
    # Ray 2.60's V2 Parquet read adds a ListFiles operator that asks for a whole CPU, ignoring
    # ray_remote_args: on small nodes whose CPUs the actors hold, it never runs (a deadlock). The V1
    # read lists on the driver and honours READ_TASK_CPUS; the dataset keeps the context it was made in.
    ctx = ray.data.DataContext.get_current()
    v2 = getattr(ctx, "use_datasource_v2", None)
    if v2 is not None:
        ctx.use_datasource_v2 = False
    try:
        named = "num_cpus" in inspect.signature(ray.data.read_parquet).parameters  # Ray >= 2.60
        ds = ray.data.read_parquet([str(p) for p in shard_paths(folder, manifest)],
                                   **({"num_cpus": READ_TASK_CPUS} if named else
                                      {"ray_remote_args": {"num_cpus": READ_TASK_CPUS}}))
    finally:
        if v2 is not None:
            ctx.use_datasource_v2 = v2
    if done:
        ds = ds.filter(lambda row: row["key"] not in done)
    return ds


def _write_arriving(folder, batches, stats: GenerateStats, progress: bool, total: int) -> None:
    """Write each arriving batch as a block (rows with an answer); count the rest as failed."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="prompt", desc="stage-1 blocks (ray)", dynamic_ncols=True)
    try:
        for batch in batches:
            keys = batch.column("key").to_pylist()
            prompts = batch.column("prompt").to_pylist()
            answers = batch.column("answer").to_pylist()
            ok = [i for i, a in enumerate(answers) if a is not None]
            stats.failed += len(keys) - len(ok)
            if ok:
                write_block(folder, [keys[i] for i in ok], [prompts[i] for i in ok], [answers[i] for i in ok])
                stats.written += len(ok)
                stats.blocks += 1
            if bar is not None:
                bar.update(len(keys))
    finally:
        if bar is not None:
            bar.close()


def generate_ray(settings: Mapping[str, Any], folder, workers: int = 1, block_rows: Optional[int] = None,
                 num_gpus: float = 0.0, num_cpus: float = 1.0, address: Optional[str] = None,
                 logger: Optional[logging.Logger] = None, progress: bool = False) -> GenerateStats:
    """Answer the plan on a Ray cluster: an actor pool of ``workers`` project backends."""
    log = logger or _log
    ray = _import_ray()
    start = time.perf_counter()
    manifest = read_manifest(folder)
    done = block_keys(folder)
    stats = GenerateStats(planned=int(manifest["planned"]))
    _init_ray(ray, address, log)
    block_rows = block_rows or default_block_rows(normalize_settings(settings), manifest["backend"])
    ds = _plan_dataset(ray, folder, manifest, done).map_batches(
        RayBlockWorker,
        fn_constructor_kwargs={"settings": dict(settings), "manifest": dict(manifest)},
        batch_size=int(block_rows),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=int(workers)),
        num_gpus=float(num_gpus) or None,
        num_cpus=float(num_cpus),
    )
    todo = stats.planned - len(done)
    stats.skipped = len(done)
    stats.sent = todo
    _write_arriving(folder, ds.iter_batches(batch_size=None, batch_format="pyarrow"), stats, progress, todo)
    stats.wall_s = time.perf_counter() - start
    return stats


def generate_ray_llm(settings: Mapping[str, Any], folder, workers: int = 1, block_rows: Optional[int] = None,
                     num_gpus: float = 1.0, address: Optional[str] = None,
                     logger: Optional[logging.Logger] = None, progress: bool = False) -> GenerateStats:
    """Answer the plan with Ray Data's own vLLM processor (``intent_backend: vllm`` only). Its answers
    are cached under the project vllm backend's keys, so the engine must be that backend's: the same
    vLLM version (checked here), model, chat template, dtype and sampling (passed from the settings)."""
    log = logger or _log
    ray = _import_ray()
    manifest = read_manifest(folder)
    info = manifest["backend_info"]
    if manifest["backend"] != "vllm":
        raise IntentError(f"--executor=ray-llm runs vLLM: the plan is for intent_backend {manifest['backend']!r}; "
                          "use --executor=ray (any backend) or plan with --intent_backend=vllm")
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        import vllm
    except ImportError as e:
        raise IntentError(f"--executor=ray-llm needs ray.data.llm and the vLLM Ray pins ({e}); use --executor=ray, "
                          "which wraps this project's vllm backend") from None
    if getattr(vllm, "__version__", "?") != info.get("vllm"):
        raise IntentError(f"--executor=ray-llm: vLLM {vllm.__version__} here, the plan was described with "
                          f"{info.get('vllm')}: plan where the workers' vLLM is installed")
    from .models import dequantized_hf_folder, resolve_model

    start = time.perf_counter()
    s = dict(settings)
    resolved = resolve_model(s.get("intent_model"))
    model = dequantized_hf_folder(resolved, s.get("vllm_gguf_cache_dir"), log) if resolved["gguf_file"] \
        else str(resolved["model"])
    sampling = info["sampling"]
    params: Dict[str, Any] = {"max_tokens": sampling["max_tokens"], "temperature": sampling["temperature"]}
    if sampling["temperature"] > 0:
        params.update(top_p=sampling["top_p"], seed=sampling["seed"])
    engine = dict(enable_prefix_caching=True, dtype=info["dtype"],
                  max_model_len=int(s["vllm_max_model_len"]) if s.get("vllm_max_model_len") else None,
                  enforce_eager=bool(s.get("vllm_enforce_eager", False)),
                  gpu_memory_utilization=float(s.get("vllm_gpu_memory_utilization", 0.9) or 0.9),
                  seed=normalize_settings(settings).seed)
    config = vLLMEngineProcessorConfig(model_source=model, engine_kwargs=engine, concurrency=int(workers),
                                       batch_size=int(block_rows or default_block_rows(normalize_settings(settings), "vllm")))
    chat = bool(info.get("chat_template"))

    def pre(row):
        body = {"sampling_params": params, "key": row["key"], "prompt_text": row["prompt"]}
        if chat:
            body["messages"] = [{"role": "user", "content": row["prompt"]}]
        else:
            body["prompt"] = row["prompt"]
        return body

    def post(row):
        return {"key": row["key"], "prompt": row["prompt_text"], "answer": str(row["generated_text"]).strip()}

    processor = build_processor(config, preprocess=pre, postprocess=post)
    done = block_keys(folder)
    _init_ray(ray, address, log)
    stats = GenerateStats(planned=int(manifest["planned"]), skipped=len(done))
    stats.sent = stats.planned - len(done)
    ds = processor(_plan_dataset(ray, folder, manifest, done))
    _write_arriving(folder, ds.iter_batches(batch_size=None, batch_format="pyarrow"), stats, progress, stats.sent)
    stats.wall_s = time.perf_counter() - start
    return stats


__all__ = ["EXECUTORS", "GenerateStats", "BlockWorker", "RayBlockWorker", "generate_local", "generate_ray",
           "generate_ray_llm"]
