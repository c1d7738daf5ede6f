"""Shared test fixtures: a tiny random chat model built offline in seconds, and the ``vllm`` marker.

``tiny_chat_model`` is a real Hugging Face model folder (``save_pretrained`` of model + tokenizer):
a byte-level BPE (~4k tokens) trained with ``tokenizers`` on a few of Python's own stdlib files,
wrapped in ``PreTrainedTokenizerFast`` with a ChatML chat template, and a 2-layer Llama with random
weights. Llama rather than Qwen2: transformers swaps in its own Qwen2 tokenizer class on reload. One
attention head of 64 dims: vLLM's CPU attention refuses head_dim 16. ``initializer_range`` 0.3 so
greedy output varies with the prompt. Nothing here needs vllm, and nothing is downloaded.
"""
from __future__ import annotations

import faulthandler
import os
import sysconfig
from pathlib import Path

import pytest

# Ray reads this when it is first imported, and vLLM imports Ray: set before any test module runs, so
# the two-node loopback cluster of tests/test_scale_stage1.py stays on 127.0.0.1 even after the vLLM
# tests (otherwise a driver is redirected to this host's outward IP and ray.init waits forever).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_VOCAB = 4096

# a few stdlib modules (always on disk) + some movie-style lines as the BPE's training text
_STDLIB_FILES = ("textwrap.py", "string.py", "random.py", "os.py", "functools.py", "csv.py")
_MOVIE_LINES = [
    "Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "GoldenEye (1995)", "Casino (1995)",
    "The order in which users click on items is as follows:",
    "Please guess an item that the user is interested in in the long-term.",
    "Please guess an item that the user is interested in in the short-term.",
    "(Only output the item name without any explanation.)",
]


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory):
    """RecBole writes ``log/``, ``log_tensorboard/`` and ``saved/`` into the working directory, and the
    plugin's default ``data_path`` is ``./dataset``: run every test from a scratch folder so nothing
    lands in the checkout (tests name repository files by absolute path)."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


#: no single test runs this long (the README's blocks, the longest, take a few minutes): past it the
#: run stops with every thread's traceback instead of stalling until an outer timeout says nothing
TEST_DEADLINE_S = float(os.environ.get("LLM4SBR_TEST_DEADLINE_S", "1200"))
_real_stderr = None


def pytest_configure(config):
    global _real_stderr
    config.addinivalue_line(
        "markers", "vllm: needs the separate vLLM environment (.ci/vllm_env.sh); skipped when "
                   "vllm is not importable")
    # pytest's output capture is suspended while plugins configure: fd 2 is the terminal's stderr here
    _real_stderr = os.fdopen(os.dup(2), "w")


@pytest.fixture(autouse=True)
def _deadline():
    """A stalled test ends the run (``Timeout (h:mm:ss)!``) with a traceback of every thread, the test
    function among them, written past pytest's capture."""
    if TEST_DEADLINE_S <= 0 or _real_stderr is None:
        yield
        return
    faulthandler.dump_traceback_later(TEST_DEADLINE_S, exit=True, file=_real_stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _training_text():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in _STDLIB_FILES:
        path = stdlib / name
        if path.is_file():
            yield path.read_text(encoding="utf-8", errors="replace")
    for _ in range(20):
        yield "\n".join(_MOVIE_LINES)


def build_tiny_chat_model(folder: Path, seed: int = 0) -> Path:
    """Write the tiny random chat model (model + tokenizer) into ``folder`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_training_text(), trainer=trainer)

    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|pad|>", unk_token=None,
                                  additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 2048

    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = tok.convert_tokens_to_ids("<|pad|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                      head_dim=64, max_position_embeddings=2048, initializer_range=0.3,
                      bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id,
                      tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    """Path (str) of a tiny random ChatML Llama saved with save_pretrained (built once a session)."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return str(build_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat_model")))
