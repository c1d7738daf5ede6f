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

Settings read: ``intent_model``, ``intent_max_tokens``, ``intent_temperature``, ``intent_top_p``,
``intent_seed``, ``intent_batch_size``, ``intent_device`` (auto|cpu|cuda|cuda:N), and optionally
``intent_dtype`` (auto|float32|bfloat16|float16; auto = float32 on CPU, bfloat16 on CUDA when
supported).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional, Sequence

from .base import Backend
from ..models import resolve_model

__all__ = ["TransformersBackend"]


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
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if req not in table:
        raise ValueError(f"intent_dtype={requested!r}: expected auto, float32, bfloat16 or float16")
    return table[req]


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
        import torch

        sampling: Dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                    "temperature": self.temperature}
        if self.temperature == 0:
            sampling["strategy"] = "greedy"
        else:
            sampling.update(strategy="sample", top_p=self.top_p, top_k=None, seed=self.seed)
        return {
            "backend": self.name,
            "model": self.model_name,
            # a packaged model is named by its distribution and version, not by the folder it is
            # installed in, so the answer cache (keyed by describe()) survives a reinstall elsewhere
            "model_path": self.resolved.get("source") or self.resolved["model"],
            "gguf_file": self.resolved["gguf_file"],
            "alias": self.resolved["alias"],
            "chat_template": self.has_chat_template,
            "device": self.device.type,
            "dtype": str(self.dtype).replace("torch.", ""),
            "sampling": sampling,
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        }

    def count_tokens(self, texts: Sequence[str]) -> int:
        texts = list(texts)
        if not texts:
            return 0
        return sum(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str]) -> List[str]:
        prompts = list(prompts)
        if not prompts:
            return []
        encoded = self._encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        answers: List[Optional[str]] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, text in zip(idx, self._generate_batch([encoded[i] for i in idx])):
                answers[i] = text
        return [a if a is not None else "" for a in answers]

    def _generate_batch(self, batch: List[List[int]]) -> List[str]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids):] = 1
        input_ids = input_ids.to(self.device)
        attention = attention.to(self.device)
        gen_cfg = self._generation_config()
        with torch.inference_mode():
            if gen_cfg.do_sample:
                devices = []
                if self.device.type == "cuda":
                    devices = [self.device.index if self.device.index is not None
                               else torch.cuda.current_device()]
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(self.seed if self.seed is not None else 0)
                    out = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                              generation_config=gen_cfg)
            else:
                out = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                          generation_config=gen_cfg)
        new = out[:, width:].cpu()
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
