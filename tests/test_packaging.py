"""A normal (non-editable) install works as a RecBole user runs it: wheel -> fresh venv -> the console
script in an empty folder, with the property files read from the installed package and the data
written under ``./dataset/`` of that folder.

The fresh venv gets only the wheel; its dependencies (torch, RecBole, ...) are borrowed from the
test's own environment through a path file, so the test needs no network and no 1.6 GB install, and
the checkout is never on its path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what a wheel is built from (the rest of the checkout: venvs, data, results, git)
SOURCE = ("setup.py", "README.md", "recbole_llm4sbr", "properties", "run_recbole_llm4sbr.py")


def _copy_source(dest: Path) -> Path:
    dest.mkdir()
    for name in SOURCE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin, venv site-packages) with the project installed from its wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("recbole_llm4sbr-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    site = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # borrow the dependencies (not the editable project: its finder .pth is not processed from here)
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed_dependencies.pth").write_text("\n".join(sorted(paths)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    return vpy, venv / "bin", site


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM4SBR_", "PYTHON"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_wheel_ships_the_property_files_and_imports_from_site_packages(installed, tmp_path):
    vpy, _, _ = installed
    code = ("import recbole_llm4sbr, recbole_llm4sbr.paths as p; "
            "print(recbole_llm4sbr.__file__); print(p.properties_dir()); "
            "print(sorted(f.name for f in (p.properties_dir() / 'model').glob('*.yaml')))")
    out = subprocess.run([str(vpy), "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert "site-packages" in out[0] and str(ROOT) not in out[0]
    assert out[1].endswith("site-packages/recbole_llm4sbr/properties")
    assert "LLM4SBR.yaml" in out[2] and "SRGNN.yaml" in out[2]


@pytest.mark.slow
def test_console_script_trains_llm4sbr_in_an_empty_folder(installed, tmp_path):
    _, bin_dir, site = installed
    work = tmp_path / "empty"
    work.mkdir()
    out = subprocess.run([str(bin_dir / "recbole-llm4sbr"), "--model=LLM4SBR_SRGNN", "--epochs=1",
                          "--intent_backend=text", "--intent_samples=typical", "--show_progress=False"],
                         cwd=work, env=_env(), capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = out.stdout + out.stderr
    assert "test result" in logged and "recall@20" in logged
    data = work / "dataset" / "ml-100k-session"
    assert (data / "ml-100k-session.train.inter").is_file()
    assert any((data / "intent").glob("text-*/vectors.npy"))
    assert not (site / "dataset").exists()  # never inside site-packages
