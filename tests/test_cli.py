"""The CLI as a user runs it: end to end on a tiny dataset (real stage 1, text backend), and errors."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinydata import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / "run_recbole_llm4sbr.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


def test_llm4sbr_and_stock_model_end_to_end(tmp_path):
    write_tiny_dataset(tmp_path / "data", n_sessions=90)
    common = ["--dataset=tiny", f"--data_path={tmp_path / 'data'}", "--epochs=2", "--show_progress=False",
              "--embedding_size=16", "--intent_backend=text"]  # overall.yaml's auto may pick a real LLM
    out = run_cli(["--model=LLM4SBR_SRGNN", *common], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "test result" in log and "recall@20" in log and "mrr@10" in log and "ndcg@20" in log
    assert "OrderedDict" not in log and "np.float64" not in log  # RecBole's "recall@20 : 0.1695" form
    last = log.strip().splitlines()[-1]  # the run's outcome, after RecBole's own lines
    assert re.search(r"LLM4SBR_SRGNN on tiny: Recall@20 \d?\.\d{4}  MRR@20 \d?\.\d{4}  NDCG@20 \d?\.\d{4} "
                     r"\(best epoch [01]\)$", last), last
    assert "Intent table" in log  # stage 1 ran (text backend) and its table was attached
    tables = list((tmp_path / "data" / "tiny" / "intent").glob("text-*/vectors.npy"))
    assert len(tables) == 1
    assert list((tmp_path / "saved").glob("LLM4SBR_SRGNN-*.pth"))
    stock = run_cli(["--model=SRGNN", *common], cwd=tmp_path)
    assert stock.returncode == 0, stock.stderr[-3000:]
    assert "test result" in stock.stdout + stock.stderr


@pytest.mark.parametrize("args, needle", [
    (["--model=NoSuchModel"], "Unknown model 'NoSuchModel'"),
    (["--model=LLM4SBR_NoSuchBase"], "RecBole 1.2.1 has no model 'NoSuchBase'"),
    (["--model=LLM4SBR_BPR"], "not a sequential recommender"),
    (["--model=SRGNN", "--dataset=no-such-data"], "missing file"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    out = run_cli([*args, f"--data_path={tmp_path}"], cwd=tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Fix:" in out.stderr or "not supported" in out.stderr  # a refusal names its reason
    assert "Traceback" not in out.stderr


def test_help_names_every_command_and_flag(tmp_path):
    out = run_cli(["--help"], cwd=tmp_path)
    assert out.returncode == 0
    for flag in ("--benchmark", "--debug", "--eval_only", "--checkpoint", "--resume", "quick_start.hyper"):
        assert flag in out.stdout, flag
    bench = run_cli(["--benchmark", "--help"], cwd=tmp_path)
    assert bench.returncode == 0
    for flag in ("--protocol", "--grid_learning_rate", "--grid_lr_step_size", "--debug", "arch", "shuffled"):
        assert flag in bench.stdout, flag
    hyper = subprocess.run([sys.executable, "-m", "recbole_llm4sbr.quick_start.hyper", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert hyper.returncode == 0 and "--params_file" in hyper.stdout and "--algo" in hyper.stdout


@pytest.mark.parametrize("args, needle", [
    (["--benchmark", "--model=SRGNN"], "--model has no meaning with --benchmark"),
    (["--benchmark", "--protocol=paper", "--grid_learning_rate=0.1"], "only applies to --protocol=fair"),
    (["--benchmark", "--variants=nope"], "Unknown variant 'nope'"),
    (["--eval_only", "--checkpoint=nowhere.pth"], "checkpoint nowhere.pth not found"),
    (["--checkpoint=saved/x.pth"], "--checkpoint is the file --eval_only tests"),
    (["--eval_only"], "eval_only needs a checkpoint"),
])
def test_benchmark_and_checkpoint_errors_are_one_line(tmp_path, args, needle):
    out = run_cli(args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    debug = run_cli([*args, "--debug"], cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr  # --debug re-raises


def test_hyper_command_bad_params_file_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "recbole_llm4sbr.quick_start.hyper", "--model=GRU4Rec",
                          f"--params_file={tmp_path / 'none.hyper'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2 and "--params_file" in out.stderr and "Traceback" not in out.stderr
