"""Stage-1 backend on Hugging Face transformers: any local causal LM, or a GGUF file (de-quantized).

``intent_model`` is resolved by :func:`recbole_llm4sbr.intent.models.resolve_model` (packaged
aliases such as ``smollm2-135m-instruct``, HF names already in the local cache, local folders, paths
to ``.gguf`` files). Only local files are read: nothing is downloaded.

Per call: the chat template is applied to every prompt (user message, generation prompt added), the
prompts are tokenized once, sorted by length (less padding), cut into micro-batches of
``intent_batch_size``, LEFT padded and passed to ``model.generate``; only the new tokens are decoded,
and answers come back in the prompts' order. Greedy decoding when ``intent_temperature == 0``, else
sampling with ``intent_temperature`` / ``intent_top_p`` (top-k off, as in vLLM and OpenAI APIs) under
a torch RNG seeded with ``intent_seed`` at every call (the global RNG is left untouched).

Shared prefixes are paid once (``intent_prefix_sharing``, on by default): the prompts of one call
are put in a token prefix tree (the two views of a prefix differ only near the end; with every-prefix
datasets prefix k+1 extends prefix k; all share the chat template's system text), each tree edge is
prefilled once, depth by depth, on top of its parent's keys/values gathered from a flat per-layer
store, and every prompt then decodes from its own path's cache (``generate`` with a pre-filled
``DynamicCache``; only the prompt's last token is fed again). Answers equal the plain path's up to
float rounding (a greedy near-tie may flip, as it may between batch sizes). Models whose cache is not
a plain ``DynamicCache`` (sliding windows, hybrid layers) take the plain path.

While a call runs, each prompt's answer is handed to the pipeline as soon as its decoding ends
(``Backend.report_answers``: at its stop token in the greedy loop, at its batch's end otherwise), and
every prefill block and decode step is reported (``report_step``): the answer cache commits answers
as they come, so Ctrl-C keeps them, and the progress line moves between answers. The batches decoded
together are the same with or without these reports, so the answers are too.

Settings read: ``intent_model``, ``intent_max_tokens``, ``intent_temperature``, ``intent_top_p``,
``intent_seed``, ``intent_batch_size`` (prompts decoded together), ``intent_device``
(auto|cpu|cuda|cuda:N), and optionally

* ``intent_dtype`` (auto|float32|bfloat16|float16): auto = bfloat16 on CUDA when supported (else
  float16), and float32 on a CPU. On a CPU float32 answers do not depend on which prompts are
  decoded together (measured on SmolLM2: chunks of 1, 2 and 16 prompts, shared-prefix path on and
  off, all 16 answers equal), so a table tag names one table whatever ``intent_prompts_per_call``,
  ``intent_batch_size``, the shard count or a resumed build cut the prompts into
  (tests/test_table_batch_invariance.py). bf16 answers do depend on it (a bf16 row's rounding
  follows the batch's shapes and the prefix tree's cuts: on 8 of the same prompts, each of the five
  other chunkings and paths changed 1 of the 8 answers), and no setting could name that: a resumed
  build sends only the missing prompts, in other batches. So on a CPU bf16 is used only when asked
  for (about 2x faster per CPU-second on CPUs with ``amx_bf16`` / ``avx512_bf16``:
  benchmarks/results/stage1_throughput_avx512bf16.txt; without them it is emulated and slower).
  Any dtype but float32 (CUDA's auto included) logs a warning that its answers depend on the
  batches; auto logs one info line where it leaves a CPU's bf16 units unused.
  The resolved dtype is in ``describe()``, hence in the answer-cache key, and a non-float32 dtype
  is in the table tag (``identity.py``): bf16 answers differ from float32 ones.
* ``intent_num_threads`` (auto|N, default auto = the usable cores not already busy, i.e. minus the
  1-minute load average, at least 1): torch threads while generating, set for each call and
  restored after, so stage 1 uses the idle cores whatever ``torch_num_threads`` (training's
  setting, often 1) says.
* ``intent_prefix_sharing`` (default True): the prefix-tree prefill above; False = one left-padded
  ``generate`` per batch.
* ``intent_prompts_per_call`` (default 256): prompts ``answer_prompts`` hands over per call (more than
  ``intent_batch_size`` so that prompts sharing prefixes meet in one tree).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .base import Backend
from ..registry import SAMPLING_KEYS, register_backend
from ..models import resolve_model

_log = logging.getLogger("recbole_llm4sbr.intent")

__all__ = ["TransformersBackend", "prefix_tree", "cpu_has_fast_bf16", "resolve_num_threads",
           "resolved_dtype_name"]


def _pick_device(requested: Any):
    import torch

    req = str(requested or "auto").strip().lower()
    if req in ("", "auto", "none"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if req.isdigit():  # RecBole-style gpu id
        req = f"cuda:{req}"
    dev = torch.device(req)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"intent_device={requested!r} but CUDA is not available to torch "
                           f"{torch.__version__}; use intent_device=cpu or auto")
    return dev


def _pick_dtype(requested: Any, device):
    import torch

    req = str(requested or "auto").strip().lower()
    if req in ("", "auto", "none"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # float32 even with bf16 hardware: bf16 answers depend on the batches (module docstring)
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if req not in table:
        raise ValueError(f"intent_dtype={requested!r}: expected auto, float32, bfloat16 or float16")
    return table[req]


def _log_dtype_choice(requested: Any, device, dtype) -> None:
    """One line on what the dtype costs: a warning when it is not float32 (answers then depend on
    the batches, so one table tag may hold different answers), an info line where ``auto`` leaves
    a bf16 CPU's speed unused."""
    import torch

    name = str(dtype).replace("torch.", "")
    if dtype != torch.float32:
        _log.warning(f"intent_dtype {name}: greedy answers depend on which prompts are decoded together "
                     f"(intent_prompts_per_call, intent_batch_size, prefix sharing, --shard, a resumed "
                     f"build), so two builds of one table tag may differ; intent_dtype=float32 gives the "
                     f"same answers however the prompts are cut")
    elif device.type == "cpu" and str(requested or "auto").strip().lower() in ("", "auto", "none") \
            and cpu_has_fast_bf16():
        _log.info("intent_dtype auto -> float32 on this CPU: its bf16 units would decode about 2x faster "
                  "per CPU-second, but bf16 answers depend on how the prompts are batched; "
                  "intent_dtype=bfloat16 trades that for the speed")


def resolved_dtype_name(settings: Dict[str, Any]) -> str:
    """What ``intent_dtype`` (auto included) becomes on this machine for these settings, e.g.
    ``"float32"``, without loading a model: for a table identity that must change when ``auto``
    means bf16 here and float32 elsewhere (the answers may differ)."""
    device = _pick_device(settings.get("intent_device", "auto"))
    return str(_pick_dtype(settings.get("intent_dtype", "auto"), device)).replace("torch.", "")


#: CPU flags (/proc/cpuinfo) of bf16 matrix instructions: with either, torch's bf16 matmuls run on
#: hardware (several times float32's speed); without, bf16 is emulated and slower than float32
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AMX or AVX512-BF16): where ``intent_dtype:
    bfloat16`` is worth asking for (``auto`` stays float32 on a CPU: module docstring)."""
    return any(flag in _cpu_flags() for flag in BF16_CPU_FLAGS)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _busy_cores() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # no load average (Windows)
        return 0.0


def resolve_num_threads(requested: Any) -> int:
    """``intent_num_threads``: a count >= 1, or auto (or empty) = the usable cores not already busy
    (usable cores minus the 1-minute load average, rounded, at least 1), read when the backend starts.

    Not simply all cores: measured on a 2-core VM (benchmarks/results/stage1_throughput.txt), 2
    threads ran SmolLM2 1.8x faster than 1 while the machine was otherwise idle, and 1.6-3.4x SLOWER
    (CPU time tripled: threads wait for a core another process holds) when it was not."""
    req = str(requested if requested is not None else "auto").strip().lower()
    if req in ("", "auto", "none", "0"):
        cores = _usable_cores()
        return max(1, min(cores, cores - int(round(_busy_cores()))))
    try:
        n = int(req)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"intent_num_threads={requested!r}: expected auto or a positive thread count")
    return n


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then give the caller its own count back (training keeps its
    ``torch_num_threads``)."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _Node:
    """One edge of the compressed prefix tree: ``tokens`` follow the parent's path."""

    __slots__ = ("parent", "depth", "tokens", "start")

    def __init__(self, parent: int, depth: int, tokens: List[int], start: int):
        self.parent, self.depth, self.tokens, self.start = parent, depth, tokens, start


def prefix_tree(seqs: Sequence[Sequence[int]]) -> Tuple[List[_Node], List[int]]:
    """The compressed token trie of ``seqs``: (nodes, end) where ``end[i]`` is the node at which
    ``seqs[i]`` ends. A node splits where sequences branch or one ends, so every token shared by
    several sequences at the same position after the same prefix is in exactly one node; the sum of
    the nodes' token counts is what the shared prefill computes. Parents come before children."""
    nodes: List[_Node] = []
    end: List[int] = [-1] * len(seqs)
    if not seqs:
        return nodes, end
    todo: List[Tuple[List[int], int, int, int]] = [(list(range(len(seqs))), 0, -1, 0)]
    while todo:
        members, start, parent, depth = todo.pop()
        first = seqs[members[0]]
        stop = min(len(seqs[m]) for m in members)
        for m in members[1:]:
            s = seqs[m]
            j = start
            while j < stop and s[j] == first[j]:
                j += 1
            stop = j
        idx = len(nodes)
        nodes.append(_Node(parent, depth, list(first[start:stop]), start))
        branches: Dict[int, List[int]] = {}
        for m in members:
            if len(seqs[m]) == stop:
                end[m] = idx
            else:
                branches.setdefault(seqs[m][stop], []).append(m)
        for group in branches.values():
            todo.append((group, stop, idx, depth + 1))
    return nodes, end


@functools.lru_cache(maxsize=1)
def _grow_layer_class():
    """A ``DynamicLayer`` with room reserved for the answer: each decode step writes its key/value in
    place, where ``DynamicLayer`` re-allocates (``torch.cat``) the whole cache of every layer at every
    step; ``keep_rows`` drops finished answers so the next steps compute only the open ones."""
    from transformers.cache_utils import DynamicLayer

    class _GrowLayer(DynamicLayer):
        def __init__(self, keys, values, extra: int):
            super().__init__()
            b, h, n, d = keys.shape
            self._k = keys.new_zeros((b, h, n + extra, d))
            self._v = values.new_zeros((b, values.shape[1], n + extra, values.shape[-1]))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self._n = n
            self.device = keys.device
            self.is_initialized = True
            self._views()

        def _views(self):
            self.keys = self._k[:, :, :self._n]
            self.values = self._v[:, :, :self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            n = self._n + key_states.shape[-2]
            self._k[:, :, self._n:n] = key_states
            self._v[:, :, self._n:n] = value_states
            self._n = n
            self._views()
            return self.keys, self.values

        def keep_rows(self, index) -> None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)
            self._views()

    return _GrowLayer


def tokenizer_has_chat_template(resolved: Mapping[str, Any]) -> bool:
    """Whether the tokenizer of ``resolved`` (a ``resolve_model`` result) has a chat template,
    loading the tokenizer only (local files, a GGUF file's metadata): for ``describe_settings``."""
    from transformers import AutoTokenizer

    kw: Dict[str, Any] = dict(local_files_only=True)
    if resolved.get("gguf_file"):
        kw["gguf_file"] = resolved["gguf_file"]
    try:
        tok = AutoTokenizer.from_pretrained(resolved["tokenizer"], **kw)
    except OSError as err:
        raise OSError(f"the tokenizer of {resolved['tokenizer']!r} could not be loaded from local files: {err}") from err
    return bool(getattr(tok, "chat_template", None))


def _description(name: str, model_name: Optional[str], resolved: Mapping[str, Any], max_new_tokens: int,
                 temperature: float, top_p: float, seed: Optional[int], has_chat_template: bool,
                 device_type: str, dtype_name: str) -> Dict[str, Any]:
    """``describe()``'s dict, built in one place for the live backend and ``describe_settings``."""
    import torch

    sampling: Dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if temperature == 0:
        sampling["strategy"] = "greedy"
    else:
        sampling.update(strategy="sample", top_p=top_p, top_k=None, seed=seed)
    out = {
        "backend": name,
        "model": model_name,
        # a packaged model is named by its distribution and version, not by the folder it is
        # installed in, so the answer cache (keyed by describe()) survives a reinstall elsewhere
        "model_path": resolved.get("source") or resolved["model"],
        "gguf_file": resolved["gguf_file"],
        "alias": resolved["alias"],
        "chat_template": has_chat_template,
        "device": device_type,
        "dtype": dtype_name,
        "sampling": sampling,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    return out


def _step_report(backend: "TransformersBackend", note: str, prompt_width: int):
    """A ``StoppingCriteria`` that reports each ``generate`` step (``Backend.report_step``) and never
    stops a row (so ``generate`` decodes exactly as without it)."""
    import torch
    from transformers import StoppingCriteria

    class StepReport(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            step = input_ids.shape[1] - prompt_width
            head = f"{note}, " if note else ""
            backend.report_step(f"{head}step {step}/{backend.max_new_tokens}")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepReport()


class TransformersBackend(Backend):
    """``intent_backend: transformers``."""

    name = "transformers"

    def __init__(self, settings: Dict[str, Any]):
        super().__init__(settings)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = self.settings
        self.model_name = None if s.get("intent_model") is None else str(s.get("intent_model"))
        self.resolved = resolve_model(self.model_name)
        self.max_new_tokens = int(s.get("intent_max_tokens", 32))
        self.temperature = float(s.get("intent_temperature", 0.0) or 0.0)
        self.top_p = float(s.get("intent_top_p", 1.0) if s.get("intent_top_p") is not None else 1.0)
        seed = s.get("intent_seed", 2024)
        self.seed = None if seed is None else int(seed)
        self.batch_size = max(1, int(s.get("intent_batch_size", 32) or 32))
        self.device = _pick_device(s.get("intent_device", "auto"))
        self.dtype = _pick_dtype(s.get("intent_dtype", "auto"), self.device)
        _log_dtype_choice(s.get("intent_dtype", "auto"), self.device, self.dtype)
        self.num_threads = resolve_num_threads(s.get("intent_num_threads", "auto"))
        sharing = s.get("intent_prefix_sharing", True)
        self.prefix_sharing = str(sharing).strip().lower() not in ("false", "0", "no", "off", "none")
        loop = s.get("intent_greedy_loop", True)
        self.greedy_loop = str(loop).strip().lower() not in ("false", "0", "no", "off", "none")
        #: answer_prompts hands this many prompts per call (generation.chunk_size): prompts that share
        #: prefixes must meet in one call to share a tree
        self.prompts_per_call = max(self.batch_size, int(s.get("intent_prompts_per_call", 256) or 256))
        #: prefill read-out of the last generate() call: prompt tokens, tokens computed
        self.last_prefill = {"prompt_tokens": 0, "computed_tokens": 0}
        if self.temperature < 0:
            raise ValueError(f"intent_temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"intent_top_p must be in (0, 1], got {self.top_p}")

        gguf_file = self.resolved["gguf_file"]
        load_kw: Dict[str, Any] = dict(local_files_only=True)
        if gguf_file:
            load_kw["gguf_file"] = gguf_file
            for pkg, pip in (("gguf", "pip install gguf"), ("accelerate", "pip install accelerate")):
                if importlib.util.find_spec(pkg) is None:
                    raise ImportError(f"loading the GGUF model {self.resolved['path']} with transformers "
                                      f"needs the package {pkg!r}: {pip}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.resolved["tokenizer"], **load_kw)
            self.model = AutoModelForCausalLM.from_pretrained(self.resolved["model"], dtype=self.dtype,
                                                              **load_kw)
        except OSError as err:  # not in the local cache / not a model folder
            raise OSError(f"intent_model={self.model_name!r} could not be loaded from local files "
                          f"(nothing is downloaded: put the model in the HF cache or name a local "
                          f"folder or packaged alias): {err}") from err
        self.model.to(self.device)
        self.model.eval()

        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            if tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            elif tok.unk_token is not None:
                tok.pad_token = tok.unk_token
            else:
                tok.add_special_tokens({"pad_token": "<|pad|>"})  # id beyond the embeddings: only
                # ever used under attention_mask 0, but keep embeddings large enough anyway
                self.model.resize_token_embeddings(len(tok))
        self.pad_token_id = int(tok.pad_token_id)
        self.has_chat_template = bool(getattr(tok, "chat_template", None))
        self.eos_token_ids = self._stop_ids()
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self._keeps_logits = "logits_to_keep" in params

    # ------------------------------------------------------------------------------------------
    def _stop_ids(self) -> List[int]:
        ids: List[int] = []

        def add(v):
            if v is None:
                return
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                if x is not None and int(x) not in ids:
                    ids.append(int(x))

        add(getattr(self.model.generation_config, "eos_token_id", None))
        add(self.tokenizer.eos_token_id)
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(t)
            unk = self.tokenizer.unk_token_id
            if isinstance(tid, int) and tid >= 0 and tid != unk and t in self.tokenizer.get_vocab():
                add(tid)
        return ids

    def _chat_text(self, prompt: str) -> str:
        if not self.has_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)

    def _encode(self, prompts: Sequence[str]) -> List[List[int]]:
        texts = [self._chat_text(p) for p in prompts]
        # the template already holds BOS & co: no special tokens added a second time
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _generation_config(self):
        from transformers import GenerationConfig

        kw: Dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, num_beams=1,
                                  eos_token_id=self.eos_token_ids or None,
                                  pad_token_id=self.pad_token_id)
        if self.temperature == 0:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        return GenerationConfig(**kw)

    # ------------------------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        return _description(self.name, self.model_name, self.resolved, self.max_new_tokens, self.temperature,
                            self.top_p, self.seed, self.has_chat_template, self.device.type,
                            str(self.dtype).replace("torch.", ""))

    @classmethod
    def describe_settings(cls, settings: Mapping[str, Any]) -> Dict[str, Any]:
        """``describe()`` from the settings, reading the tokenizer (for its chat template) but never
        the weights: the same values ``__init__`` derives, through the same helpers."""
        s = dict(settings)
        model_name = None if s.get("intent_model") is None else str(s.get("intent_model"))
        resolved = resolve_model(model_name)
        top_p = float(s.get("intent_top_p", 1.0) if s.get("intent_top_p") is not None else 1.0)
        seed = s.get("intent_seed", 2024)
        device = _pick_device(s.get("intent_device", "auto"))
        return _description(cls.name, model_name, resolved, int(s.get("intent_max_tokens", 32)),
                            float(s.get("intent_temperature", 0.0) or 0.0), top_p,
                            None if seed is None else int(seed), tokenizer_has_chat_template(resolved),
                            device.type, resolved_dtype_name(s))

    def count_tokens(self, texts: Sequence[str]) -> int:
        texts = list(texts)
        if not texts:
            return 0
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str]) -> List[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        with _torch_threads(self.num_threads):
            encoded = self._encode(prompts)
            if self.prefix_sharing and len(prompts) > 1:
                shared = self._generate_shared(encoded)
                if shared is not None:
                    return shared
            self.last_prefill = {"prompt_tokens": sum(map(len, encoded)), "computed_tokens": 0}
            order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
            answers: List[Optional[str]] = [None] * len(prompts)
            n_batches = -(-len(order) // self.batch_size)
            for b, start in enumerate(range(0, len(order), self.batch_size)):
                idx = order[start:start + self.batch_size]
                batch = [encoded[i] for i in idx]
                self.last_prefill["computed_tokens"] += len(batch) * max(len(ids) for ids in batch)
                texts = self._generate_batch(batch, note=f"batch {b + 1}/{n_batches}")
                for i, text in zip(idx, texts):
                    answers[i] = text
                self.report_answers(idx, texts)
            return [a if a is not None else "" for a in answers]

    # ---- shared-prefix path ---------------------------------------------------------------------
    #: prefill sub-batches: at most this many chunk tokens (rows x padded width) ...
    PREFILL_TOKENS = 2048
    #: ... and this many key/value slots (rows x (past + chunk)), which bounds the gathered past
    PREFILL_SLOTS = 24576

    def _forward_chunk(self, past: Optional[List[Tuple[Any, Any]]], input_ids, attention, positions):
        """One forward over ``input_ids`` on top of ``past`` (per layer (keys, values), or None);
        returns the cache's per-layer (keys, values) of the new positions only, or None when the
        model's cache is not a plain DynamicCache of full-attention layers."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
        kw: Dict[str, Any] = {self._cache_kw: cache}
        if self._keeps_logits:
            kw["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         use_cache=True, **kw)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        width = input_ids.shape[1]
        return [(layer.keys[:, :, -width:, :], layer.values[:, :, -width:, :]) for layer in layers]

    def _generate_shared(self, encoded: List[List[int]]) -> Optional[List[str]]:
        """Answers for ``encoded`` with every shared token prefix prefilled once (module docstring);
        None when the model's cache layout does not allow it (the caller takes the plain path)."""
        import torch

        dev = self.device
        # the tree over all tokens but the last: generate() needs one input token per row
        heads = [ids[:-1] for ids in encoded]
        t_start = time.perf_counter()
        nodes, end = prefix_tree(heads)
        total = 1 + sum(len(node.tokens) for node in nodes)  # flat rows, row 0 the padding
        # flat store: per layer keys/values [tokens, kv_heads, head_dim]; row 0 stays zero (padding)
        store_k: List[Any] = []
        store_v: List[Any] = []
        n_flat = 1
        paths: List[List[int]] = [[] for _ in nodes]  # flat rows of each node's whole path
        computed = 0

        def gather(rows: List[List[int]]):
            """Per-layer (keys, values) [n, kv_heads, L, d] of ``rows`` (left padded with row 0), mask."""
            width = max(len(r) for r in rows)
            index = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                if r:
                    index[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                    mask[i, width - len(r):] = 1
            index = index.to(dev).reshape(-1)
            past = []
            for k, v in zip(store_k, store_v):
                gk = k.index_select(0, index).view(len(rows), width, *k.shape[1:]).transpose(1, 2)
                gv = v.index_select(0, index).view(len(rows), width, *v.shape[1:]).transpose(1, 2)
                past.append((gk.contiguous(), gv.contiguous()))
            return past, mask

        with torch.inference_mode():
            by_depth: Dict[int, List[int]] = {}
            for i, node in enumerate(nodes):
                by_depth.setdefault(node.depth, []).append(i)
            prefill_total = max(total - 1, 1)
            for depth in sorted(by_depth):
                todo = sorted((i for i in by_depth[depth] if nodes[i].tokens),
                              key=lambda i: (len(nodes[i].tokens), nodes[i].start))
                for i in by_depth[depth]:
                    if not nodes[i].tokens:  # an empty root
                        paths[i] = []
                pos = 0
                while pos < len(todo):
                    # a sub-batch of similar widths within the token budgets
                    batch = [todo[pos]]
                    while pos + len(batch) < len(todo):
                        nxt = todo[pos + len(batch)]
                        rows = len(batch) + 1
                        width = len(nodes[nxt].tokens)
                        past_w = max(nodes[j].start for j in batch + [nxt])
                        if rows * width > self.PREFILL_TOKENS or rows * (past_w + width) > self.PREFILL_SLOTS:
                            break
                        batch.append(nxt)
                    pos += len(batch)
                    width = max(len(nodes[i].tokens) for i in batch)
                    ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                    own = torch.zeros((len(batch), width), dtype=torch.long)
                    for r, i in enumerate(batch):
                        t = nodes[i].tokens
                        ids[r, width - len(t):] = torch.tensor(t, dtype=torch.long)
                        own[r, width - len(t):] = 1
                    parent_rows = [paths[nodes[i].parent] if nodes[i].parent >= 0 else [] for i in batch]
                    if store_k and any(parent_rows):
                        past, past_mask = gather(parent_rows)
                    else:
                        past, past_mask = None, torch.zeros((len(batch), 0), dtype=torch.long)
                    mask = torch.cat([past_mask, own], dim=1)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past_mask.shape[1]:]
                    new = self._forward_chunk(past, ids.to(dev), mask.to(dev), positions.to(dev))
                    if new is None:
                        return None
                    computed += len(batch) * width
                    self.report_step(f"prefill {min(computed, prefill_total)}/{prefill_total} tokens")
                    keep = own.reshape(-1).bool().to(dev)
                    n_new = int(own.sum())
                    if not store_k:  # allocated once: every node's tokens + the zero padding row 0
                        for k, v in new:
                            store_k.append(torch.zeros((total, k.shape[1], k.shape[3]), dtype=k.dtype, device=dev))
                            store_v.append(torch.zeros((total, v.shape[1], v.shape[3]), dtype=v.dtype, device=dev))
                    for layer, (k, v) in enumerate(new):
                        store_k[layer][n_flat:n_flat + n_new] = k.transpose(1, 2).reshape(-1, k.shape[1], k.shape[3])[keep]
                        store_v[layer][n_flat:n_flat + n_new] = v.transpose(1, 2).reshape(-1, v.shape[1], v.shape[3])[keep]
                    for i in batch:
                        parent = paths[nodes[i].parent] if nodes[i].parent >= 0 else []
                        paths[i] = parent + list(range(n_flat, n_flat + len(nodes[i].tokens)))
                        n_flat += len(nodes[i].tokens)
                    # rows were appended in batch order, so the running counter matches
            self.last_prefill = {"prompt_tokens": sum(map(len, encoded)),
                                 "computed_tokens": computed + len(encoded),  # + each last token
                                 "prefill_s": time.perf_counter() - t_start}

            # decode: batches of similar path length, each from its rows' gathered cache
            order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
            answers: List[str] = [""] * len(encoded)
            n_batches = -(-len(order) // self.batch_size)
            for b, start in enumerate(range(0, len(order), self.batch_size)):
                idx = order[start:start + self.batch_size]
                note = f"batch {b + 1}/{n_batches}"
                rows = [paths[end[i]] for i in idx]
                if store_k and any(rows):
                    past, past_mask = gather(rows)
                else:
                    past, past_mask = None, torch.zeros((len(idx), 0), dtype=torch.long)
                last = torch.tensor([[encoded[i][-1]] for i in idx], dtype=torch.long)
                input_ids = torch.cat([torch.full_like(past_mask, self.pad_token_id), last], dim=1)
                mask = torch.cat([past_mask, torch.ones_like(last)], dim=1)
                if past and self.greedy_loop and self.temperature == 0:
                    texts = self._greedy_decode(past, past_mask, last, note=note,
                                                finished=lambda rows, done, idx=idx: self.report_answers(
                                                    [idx[r] for r in rows], done))
                else:
                    from transformers import DynamicCache

                    cache = DynamicCache(ddp_cache_data=past) if past else None
                    texts = self._run_generate(input_ids.to(dev), mask.to(dev), cache, note=note)
                for i, text in zip(idx, texts):
                    answers[i] = text
                self.report_answers(idx, texts)  # those not reported as they finished
        self.last_prefill["decode_s"] = time.perf_counter() - t_start - self.last_prefill["prefill_s"]
        return answers

    def _greedy_decode(self, past: List[Tuple[Any, Any]], past_mask, last, note: str = "",
                       finished=None) -> List[str]:
        """Greedy answers from a pre-filled cache (``past``: per layer [rows, kv_heads, L, d], left
        padded as ``past_mask`` says; ``last``: [rows, 1] each prompt's last token), as
        ``generate`` decodes them (argmax, stop at a stop id or ``max_new_tokens``) but with the
        cache written in place and finished rows dropped once a quarter of the open ones are done.

        ``finished(rows, answers)`` is called at each step where rows hit a stop id, with their
        final answers (a finished row's tokens never change again); every step is reported
        (``report_step``). Neither changes what is decoded."""
        import torch
        from transformers import DynamicCache

        dev = self.device
        grow = _grow_layer_class()
        cache = DynamicCache()
        cache.layers = [grow(k, v, self.max_new_tokens) for k, v in past]
        stops = set(self.eos_token_ids)
        n = last.shape[0]
        rows = list(range(n))  # original row of each open row
        done = [False] * n
        out: List[List[int]] = [[] for _ in range(n)]
        mask = torch.cat([past_mask, torch.ones_like(last)], dim=1).to(dev)
        pos = past_mask.sum(dim=1, keepdim=True).to(dev)
        tok = last.to(dev)
        kw: Dict[str, Any] = {self._cache_kw: cache}
        if self._keeps_logits:
            kw["logits_to_keep"] = 1
        with torch.inference_mode():
            for step in range(self.max_new_tokens):
                self.report_step(f"{note}, step {step + 1}/{self.max_new_tokens}" if note
                                 else f"step {step + 1}/{self.max_new_tokens}")
                logits = self.model(input_ids=tok, attention_mask=mask, position_ids=pos, use_cache=True,
                                    **kw).logits[:, -1, :]
                nxt = logits.argmax(dim=-1)
                picked = nxt.tolist()  # one device->host copy per step
                ended = []
                for j, t in enumerate(picked):
                    if not done[j]:
                        out[rows[j]].append(t)
                        done[j] = t in stops
                        if done[j]:
                            ended.append(rows[j])
                if ended and finished is not None:
                    finished(ended, self._decode([out[r] for r in ended]))
                n_done = sum(done)
                if n_done == len(rows):
                    break
                if n_done and n_done * 4 >= len(rows):
                    keep = [j for j, d in enumerate(done) if not d]
                    index = torch.tensor(keep, dtype=torch.long, device=dev)
                    for layer in cache.layers:
                        layer.keep_rows(index)
                    rows = [rows[j] for j in keep]
                    done = [False] * len(keep)
                    mask, pos, nxt = mask[index], pos[index], nxt[index]
                tok = nxt[:, None]
                mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
                pos = pos + 1
        return self._decode(out)

    def _decode(self, tokens) -> List[str]:
        """Generated token rows -> stripped answers."""
        rows = [list(map(int, t)) for t in tokens]
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def _run_generate(self, input_ids, attention, cache=None, note: str = "") -> List[str]:
        """``model.generate`` (seeded when sampling) from ``input_ids`` (+ a pre-filled cache of all
        but the last column); the decoded new tokens, stripped. Each decoding step is reported
        (``report_step``) through a stopping criterion that never stops anything."""
        import torch

        gen_cfg = self._generation_config()
        kw: Dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention, generation_config=gen_cfg)
        if cache is not None:
            kw[self._cache_kw] = cache
        if self.on_step is not None:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList([_step_report(self, note, input_ids.shape[1])])
        with torch.inference_mode():
            if gen_cfg.do_sample:
                devices = []
                if self.device.type == "cuda":
                    devices = [self.device.index if self.device.index is not None
                               else torch.cuda.current_device()]
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed if self.seed is not None else 0)
                    out = self.model.generate(**kw)
            else:
                out = self.model.generate(**kw)
        new = out[:, input_ids.shape[1]:].cpu()
        return self._decode(new.tolist())

    def _generate_batch(self, batch: List[List[int]], note: str = "") -> List[str]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
        return self._run_generate(input_ids.to(self.device), attention.to(self.device), note=note)

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _auto(settings: Mapping[str, Any], machine: Any) -> Optional[str]:
    model = settings.get("intent_model")
    if machine.packaged_model(model):
        return f"no GPU+vLLM; the packaged model {model!r} is installed"
    return None


def _table_identity(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """``auto`` is bf16 on a GPU or a bf16 CPU, float32 elsewhere: greedy answers differ (44 of 128 on
    ml-100k-session), so a bf16 table is another table; float32 keeps the tags of every table built
    before this entry."""
    resolved = resolved_dtype_name(settings)
    return {"resolved_dtype": resolved} if resolved != "float32" else {}


register_backend("transformers", f"{__name__}:TransformersBackend",
                 keys=("intent_model", "intent_dtype") + SAMPLING_KEYS,
                 auto=_auto, auto_order=20, reuse_order=2,
                 block_rows=lambda settings: int(settings["intent_prompts_per_call"]), identity=_table_identity)
