"""Only the plugin's own errors (``LLM4SBRError`` and its subclasses) are user errors: a command line
prints one of them as ONE stderr line and exits 2; any other exception raised deep in a command, a
plain ``ValueError`` included, is a bug and keeps its traceback."""
from __future__ import annotations

import pytest

from recbole_llm4sbr.data.dataset import DatasetFileError
from recbole_llm4sbr.errors import USER_ERRORS, LLM4SBRError, MissingDependencyError, MissingFileError, run_command
from tinydata import write_tiny_dataset


def run_with(monkeypatch, capsys, tmp_path, error):
    """The run command on a tiny dataset, the dataset's file check (deep in the command) raising ``error``."""
    from recbole_llm4sbr.data import dataset
    from recbole_llm4sbr.quick_start.cli import main

    def check_benchmark_files(*args, **kwargs):
        raise error

    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)
    monkeypatch.setattr(dataset, "check_benchmark_files", check_benchmark_files)
    write_tiny_dataset(tmp_path / "data", n_sessions=20)
    code = main(["--model=LLM4SBR_GRU4Rec", "--dataset=tiny", f"--data_path={tmp_path / 'data'}",
                 "--load_intent=False", "--state=WARNING"])
    return code, capsys.readouterr().err


def test_a_plugin_error_deep_in_a_command_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, err = run_with(monkeypatch, capsys, tmp_path, DatasetFileError("tiny.train.inter is bad. Fix: rewrite it"))
    assert code == 2
    assert err.strip().splitlines()[-1] == ("error: tiny.train.inter is bad. Fix: rewrite it "
                                            "(rerun with --debug for the traceback)")


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), FileNotFoundError("a bug"),
                                 ImportError("a bug")])
def test_a_plain_exception_deep_in_a_command_is_a_bug_with_its_traceback(monkeypatch, capsys, tmp_path, bug):
    with pytest.raises(type(bug), match="a bug"):  # not turned into exit 2: the handler lets it through
        run_with(monkeypatch, capsys, tmp_path, bug)
    assert "error:" not in capsys.readouterr().err


def test_user_errors_are_the_plugins_own_and_still_value_errors():
    assert USER_ERRORS == (LLM4SBRError,)
    assert issubclass(LLM4SBRError, ValueError)  # callers catching ValueError keep working
    assert issubclass(MissingDependencyError, ImportError) and issubclass(MissingFileError, FileNotFoundError)


def test_the_handler_prints_a_plugin_error_and_lets_a_bug_through(capsys, monkeypatch):
    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)

    def missing(argv):
        raise MissingDependencyError("the feature needs faiss. Fix: pip install faiss-cpu")

    assert run_command(missing, []) == 2
    assert capsys.readouterr().err == ("error: the feature needs faiss. Fix: pip install faiss-cpu "
                                       "(rerun with --debug for the traceback)\n")
    with pytest.raises(MissingDependencyError):
        run_command(missing, ["--debug"])

    def bug(argv):
        raise ValueError("invalid literal for int() with base 10: 'x'")

    with pytest.raises(ValueError, match="invalid literal"):
        run_command(bug, [])
