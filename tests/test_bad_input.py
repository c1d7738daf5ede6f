"""Bad input to any of the four command lines (run, benchmark, intent, serve) ends with exit code 2 and
ONE stderr line that names the bad key and the fix, before any data is converted or model trained;
``--debug`` gives the traceback instead. Every key with a rule in ``recbole_llm4sbr.validation`` is fed
a wrong type and an out-of-range value."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.validation import RULES, validate

ROOT = Path(__file__).resolve().parent.parent

#: (argument, words the error line must contain)
BAD = [
    ("--intent_backend=bogus", ["intent_backend", "Fix"]),
    ("--intent_budget=0", ["intent_budget", "Fix"]),
    ("--epochs=abc", ["epochs", "Fix"]),
    ("--intent_topr=-1", ["intent_topr", "Fix"]),
]

COMMANDS = {
    "run": [sys.executable, str(ROOT / "run_recbole_llm4sbr.py"), "--model=LLM4SBR_SRGNN"],
    "benchmark": [sys.executable, str(ROOT / "run_recbole_llm4sbr.py"), "--benchmark", "--base_models=SRGNN",
                  "--seeds=1", "--variants=text"],
    "intent": [sys.executable, "-m", "recbole_llm4sbr.intent", "--dataset=ml-100k-session"],
}

#: a wrong value of each kind for every key with a rule (the test below checks this covers RULES)
WRONG = {
    "epochs": ["abc", 0], "train_batch_size": ["x", 0], "eval_batch_size": [1.5, -1],
    "learning_rate": ["fast", 0], "weight_decay": ["x", -0.1], "stopping_step": ["x", 0], "seed": ["x", 1.5],
    "MAX_ITEM_LIST_LENGTH": ["x", 0], "torch_num_threads": ["x", -1], "lr_step_size": ["x", -1],
    "lr_gamma": ["x", 0, 1.5], "nproc": ["x", 0], "world_size": ["x", 0, -2], "offset": ["x", -1],
    "ip": ["", 3], "port": ["x", 0, 70000], "intent_backend": ["", 3], "intent_model": ["", 3],
    "intent_views": ["long", {}], "intent_template": ["no placeholders", 3], "intent_max_tokens": ["x", 0],
    "intent_temperature": ["x", -1], "intent_top_p": ["x", 0, 1.1], "intent_seed": ["x", 0.5],
    "intent_batch_size": ["x", 0], "intent_device": ["gpu", 1],
    "intent_dtype": ["int8", 16], "intent_num_threads": ["x", 0], "intent_prefix_sharing": ["maybe", 2],
    "intent_greedy_loop": ["maybe", 2], "intent_prompts_per_call": ["x", 0], "intent_encoder": ["", 2],
    "intent_encoder_batch_size": ["x", 0], "intent_topr": ["x", -1], "intent_faiss_threshold": ["x", -1],
    "intent_ann": ["approximate", 1], "intent_storage_dtype": ["int8", 16], "intent_mmap": ["maybe", 2],
    "intent_buffer_dtype": ["bfloat16", 16],
    "intent_samples": ["some", 1], "intent_budget": ["x", 0, 1.5], "intent_prompt_max_items": ["x", -1],
    "intent_short_items": ["x", -1],
    "vllm_tensor_parallel_size": ["x", 0], "vllm_gpu_memory_utilization": ["x", 0, 1.5],
    "vllm_max_model_len": ["x", 0], "vllm_dtype": ["", 1], "vllm_enforce_eager": ["maybe", 2],
    "vllm_prompts_per_call": ["x", 0], "openai_concurrency": ["x", 0], "openai_timeout": ["x", 0],
    "openai_max_retries": ["x", -1], "load_intent": ["maybe", 2], "llm4sbr_views": ["long", []],
    "view_behaviour": [{"long": "both"}, "global"], "au_weight": ["x", -0.1], "intent_localization": ["maybe", 2],
    "semantic_at_inference": ["maybe", 2],
    "text_target_weight": ["x", -1], "eimf_weight": ["x", -1], "intent_control": ["random", 1],
    "intent_shuffle_seed": ["x", 0.5], "intent_dropout": ["x", -0.1, 1.5],
    "fusion": ["gated", 1], "intent_strength": ["x", -1],
}


def env():
    out = {k: v for k, v in os.environ.items() if k != "LLM4SBR_DEBUG"}
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return out


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def assert_one_line_error(out, words):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


def test_wrong_values_cover_every_rule():
    assert set(WRONG) == set(RULES)


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_rule_refuses_wrong_type_and_range_and_names_key_and_fix(key):
    for value in WRONG[key]:
        with pytest.raises(ConfigError, match=rf"'{key}'.*Fix: --{key}="):
            validate({key: value})
    validate({key: None})  # unset is left to the code that reads the key


def test_intent_backend_must_be_registered():
    from recbole_llm4sbr.intent.backends import REGISTRY, check_backend_name

    with pytest.raises(ConfigError, match=r"'intent_backend' = 'bogus'.*Fix: --intent_backend=auto"):
        check_backend_name({"intent_backend": "bogus"})
    for name in ("auto", "AUTO", *REGISTRY):
        check_backend_name({"intent_backend": name})
    check_backend_name({})


def test_valid_defaults_pass():
    from recbole_llm4sbr.intent.settings import load_settings

    validate(load_settings(dataset="ml-100k-session"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("arg,words", BAD, ids=[b[0] for b in BAD])
def test_command_line_bad_input_is_one_line_and_exit_2(command, arg, words, tmp_path):
    out = run([*COMMANDS[command], arg, f"--data_path={tmp_path}"], cwd=tmp_path)
    assert_one_line_error(out, words)
    assert not (tmp_path / "ml-100k-session").exists(), "data was converted before the input was checked"


def test_debug_flag_shows_the_traceback(tmp_path):
    out = run([*COMMANDS["run"], "--epochs=abc", "--debug", f"--data_path={tmp_path}"], cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


@pytest.mark.parametrize("args,words", [
    (["--checkpoint=missing.pth", "--items=1 2"], ["missing.pth", "Fix"]),
    (["--checkpoint=garbage.pth", "--items=1 2"], ["garbage.pth", "Fix"]),
])
def test_serve_bad_input_is_one_line_and_exit_2(args, words, tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    out = run([sys.executable, "-m", "recbole_llm4sbr.serve", *args], cwd=tmp_path)
    assert_one_line_error(out, words)
