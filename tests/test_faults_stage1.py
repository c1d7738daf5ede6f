"""Stage 1 under faults: kills at the table write and between the two renames of its swap, a full disk
(a small tmpfs where it can be mounted, and a simulated one), a damaged answer cache, table files that
do not belong together, and two builders of the same table. Each case checks the exit code, the one
error line with its fix, and that nothing committed is lost (cached answers, the last complete table)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from intent_helpers import DS, REPO, base_settings, subprocess_env, unique_prefix_count, write_dataset

from recbole_llm4sbr.intent import build_intent_table, ensure_intent_table, load_intent_table
from recbole_llm4sbr.intent import table as table_mod
from recbole_llm4sbr.intent.pipeline import locate_table
from recbole_llm4sbr.intent.__main__ import main
from recbole_llm4sbr.intent.cache import CACHE_FILE, AnswerCache, check_cache, recover_cache
from recbole_llm4sbr.intent.errors import CacheDamagedError, TableDamagedError
from recbole_llm4sbr.intent.table import read_meta, table_lock, verify_table

torch.set_num_threads(1)

N_ANSWERS = 2 * unique_prefix_count()  # two views per unique prefix, all sent by the text backend


def args(root: Path, *extra: str):
    return [f"--dataset={DS}", f"--data_path={root}", "--intent_backend=text", "--show_progress=False", *extra]


def run_cli(capsys, *argv):
    """``python -m recbole_llm4sbr.intent`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    """The only ``error:`` line of ``err`` (a user error is one line, no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def summary(out: str) -> dict:
    rows = [line.rsplit(None, 1) for line in out.splitlines() if line and not line.startswith("intent table")]
    return {k.strip(): v for k, v in rows}


def debris(folder: Path):
    """The temporary and moved-aside folders of ``folder``'s builds."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith((f".{folder.name}.tmp-",
                                                                                f".{folder.name}.old-")))


def cached(root: Path) -> int:
    with AnswerCache(root / DS / "intent" / CACHE_FILE, {}, "") as cache:
        return len(cache)


@pytest.fixture
def built(tmp_path):
    """A tiny dataset with its text-backend table built: (root, table folder, meta["files"])."""
    write_dataset(tmp_path)
    folder = ensure_intent_table(base_settings(tmp_path))
    return tmp_path, folder, read_meta(folder)["files"]


# ---- table files that do not belong together ---------------------------------------------------------


def _reorder_keys(folder, root):
    lines = (folder / "keys.txt").read_text().splitlines(keepends=True)
    (folder / "keys.txt").write_text("".join(lines[1:] + lines[:1]))


def _other_topr(folder, root):
    other = ensure_intent_table(base_settings(root, intent_topr=1))
    assert other != folder and (other / "vectors.npy").stat().st_size == (folder / "vectors.npy").stat().st_size
    shutil.copyfile(other / "vectors.npy", folder / "vectors.npy")


def _truncate(folder, root):
    with open(folder / "vectors.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)


def _nan(folder, root):
    a = np.load(folder / "vectors.npy")
    a[3, 1, 7] = np.nan
    np.save(folder / "vectors.npy", a)  # same size: only the checksum sees it


@pytest.mark.parametrize("damage, name, what", [
    (_other_topr, "vectors.npy", "differs from the sha256"),
    (_reorder_keys, "keys.txt", "differs from the sha256"),
    (_truncate, "vectors.npy", "bytes where meta.json records"),
    (_nan, "vectors.npy", "differs from the sha256"),
])
def test_a_file_from_elsewhere_is_named_with_the_fix(built, capsys, damage, name, what):
    root, folder, files = built
    damage(folder, root)
    code, out, err = run_cli(capsys, *args(root))  # judged up to date? no: named, with the fix
    line = one_error(err)
    assert code == 2 and f"{folder}: {name} " in line and what in line and "--force" in line and "answer cache is kept" in line
    for mmap in (True, False):  # what stage 2 (and serve, show) load it with
        with pytest.raises(TableDamagedError, match=name):
            load_intent_table(folder, mmap=mmap)
    code, out, err = run_cli(capsys, "verify", *args(root))
    assert code == 2 and name in one_error(err)

    code, out, err = run_cli(capsys, *args(root), "--force")  # the fix: from the cache, no LLM call
    assert code == 0, err
    assert (summary(out)["sent"], summary(out)["from cache"]) == ("0", str(N_ANSWERS))
    assert read_meta(folder)["files"] == files  # bit-identical to the first build
    code, out, err = run_cli(capsys, "verify", *args(root))
    assert code == 0 and "files match meta.json, no NaN/inf" in out


def test_a_deleted_file_is_rebuilt_not_up_to_date(built, capsys, caplog):
    caplog.set_level(logging.INFO, logger="recbole_llm4sbr.intent")
    root, folder, files = built
    (folder / "vectors.npy").unlink()
    with pytest.raises(TableDamagedError, match="vectors.npy is missing"):
        load_intent_table(folder, mmap=True)
    code, out, err = run_cli(capsys, *args(root))
    assert code == 0 and summary(out)["sent"] == "0"
    assert "stale: vectors.npy is missing: building it" in caplog.text
    assert read_meta(folder)["files"] == files


def test_a_table_without_checksums_names_nan_and_truncation(built):
    root, folder, _ = built
    meta = read_meta(folder)
    del meta["files"]  # as written before the checksums existed
    (folder / "meta.json").write_text(json.dumps(meta))
    _nan(folder, root)
    with pytest.raises(TableDamagedError, match=r"vectors.npy holds NaN or inf \(row 3\).*--force"):
        load_intent_table(folder)
    with open(folder / "raw.npy", "r+b") as f:  # truncated: named, not numpy's "mmap length ..."
        f.truncate(1000)
    with pytest.raises(TableDamagedError, match=r"raw.npy cannot be read .*--force"):
        load_intent_table(folder, mmap=True, verify=False)  # past the NaN scan of vectors.npy
    with pytest.raises(ValueError, match="row 1 holds NaN"):  # and a build never writes one
        table_mod.save_rows(root / "x.npy", np.array([[0.0], [np.inf]], dtype=np.float32))


# ---- a full disk ---------------------------------------------------------------------------------------


def _assert_old_table_kept(root, folder, files, capsys):
    assert read_meta(folder)["files"] == files and verify_table(folder, full=True) == len(files)
    assert debris(folder) == [] and cached(root) == N_ANSWERS


def test_too_little_space_is_one_line_before_anything_is_written(built, capsys, monkeypatch):
    root, folder, files = built
    real = shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=50_000)

    monkeypatch.setattr(table_mod.shutil, "disk_usage", tiny)
    code, out, err = run_cli(capsys, *args(root), "--force")
    line = one_error(err)
    assert code == 2 and f"not enough free space in {folder.parent} for the intent table {folder.name}" in line
    need = table_mod.table_bytes(["x"] * unique_prefix_count(), (unique_prefix_count(), 2, 384), "float32",
                                 ["x"] * 8, np.zeros((8, 384), np.float32))
    assert "it needs" in line and "50000 are free" in line and int(line.split("it needs ")[1].split()[0]) > need
    _assert_old_table_kept(root, folder, files, capsys)


def test_disk_filling_up_mid_write_removes_the_temp_folder(built, capsys, monkeypatch):
    root, folder, files = built
    calls = []

    def full(path, array, dtype="float32"):
        calls.append(path)
        if len(calls) == 2:  # raw.npy: vectors.npy is already in the temp folder
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, array, dtype)

    real = table_mod.save_rows
    monkeypatch.setattr(table_mod, "save_rows", full)
    code, out, err = run_cli(capsys, *args(root), "--force")
    line = one_error(err)
    assert code == 2 and "the disk filled up while it was written" in line and "bytes" in line and "Fix:" in line
    assert calls[0].parent.name.startswith(f".{folder.name}.tmp-") and not calls[0].parent.exists()
    _assert_old_table_kept(root, folder, files, capsys)


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MB tmpfs (skipped where this process may not mount one)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> None:
    """Fill the tmpfs until ``leave`` bytes are free."""
    free = shutil.disk_usage(mnt).free
    with open(mnt / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(free - leave, 0))
            f.flush()
        except OSError:
            pass


def test_a_real_full_tmpfs_is_one_line_and_keeps_the_table_and_cache(tmpfs, capsys, monkeypatch):
    write_dataset(tmpfs)
    folder = ensure_intent_table(base_settings(tmpfs))
    files = read_meta(folder)["files"]
    _fill(tmpfs, 60_000)  # less than the table needs
    code, out, err = run_cli(capsys, *args(tmpfs), "--force")
    assert code == 2 and f"not enough free space in {folder.parent}" in one_error(err)
    _assert_old_table_kept(tmpfs, folder, files, capsys)

    # past the check (as if the space went while the table was written): ENOSPC, not SIGBUS
    monkeypatch.setattr(table_mod, "check_free_space", lambda folder, need: None)
    code, out, err = run_cli(capsys, *args(tmpfs), "--force")
    assert code == 2 and "the disk filled up while it was written" in one_error(err)
    _assert_old_table_kept(tmpfs, folder, files, capsys)

    # a full disk while answers are cached: one line, the answers committed before it kept
    (tmpfs / "filler").unlink()
    shutil.rmtree(folder)
    with open(tmpfs / DS / f"{DS}.test.inter", "a") as f:  # new prefixes: their answers must be stored
        f.writelines(f"{9 + i}\t{i % 8 + 1} {(i + 3) % 8 + 1} {(i + 5) % 8 + 1}\t1\n" for i in range(40))
    _fill(tmpfs, 0)
    code, out, err = run_cli(capsys, *args(tmpfs))
    line = one_error(err)
    assert code == 2 and f"not enough free space in {folder.parent} for the answer cache" in line, line
    assert "answers committed so far are kept" in line
    (tmpfs / "filler").unlink()
    assert cached(tmpfs) >= N_ANSWERS
    assert [p for p in (tmpfs / DS / "intent").iterdir() if ".tmp-" in p.name] == []


# ---- a damaged answer cache ------------------------------------------------------------------------------


def _padded_cache(root: Path) -> Path:
    """The cache of a build plus 3000 answers of another backend (a file of many pages)."""
    ensure_intent_table(base_settings(root))
    path = root / DS / "intent" / CACHE_FILE
    with AnswerCache(path, {"backend": "other"}, "tv") as cache:
        for i in range(0, 3000, 500):
            cache.store([(f"prompt {j}", f"answer {j} " * 6) for j in range(i, i + 500)])
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_a_damaged_cache_is_one_line_and_recovered_keeping_readable_answers(tmp_path, capsys, damage):
    write_dataset(tmp_path)
    path = _padded_cache(tmp_path)
    with AnswerCache(path, {"backend": "other"}, "tv") as cache:
        before = cache.lookup([f"prompt {j}" for j in range(3000)])
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if damage == "garbage":  # 8 KB of garbage in the middle
            f.seek(size // 2)
            f.write(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
        else:
            f.truncate(size // 2)
    assert check_cache(path) is not None
    damaged = path.read_bytes()

    code, out, err = run_cli(capsys, *args(tmp_path), "--force")
    line = one_error(err)
    assert code == 2 and f"answer cache {path} is damaged" in line
    assert f"Fix: python -m recbole_llm4sbr.intent recover-cache --dataset={DS} --data_path={tmp_path}" in line
    with pytest.raises(CacheDamagedError):  # what training's build hits too: the same one-line error
        AnswerCache(path, {"backend": "other"}, "tv")

    code, out, err = run_cli(capsys, "recover-cache", f"--dataset={DS}", f"--data_path={tmp_path}")
    assert code == 0, err
    kept = list(path.parent.glob(f"{CACHE_FILE}.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the damaged file itself, untouched
    assert f"the damaged file is kept as {kept[0]}" in out and check_cache(path) is None
    with AnswerCache(path, {"backend": "other"}, "tv") as cache:
        after = cache.lookup([f"prompt {j}" for j in range(3000)])
    assert all(before[p] == a for p, a in after.items())  # every recovered answer is the one stored
    assert len(after) >= (2900 if damage == "garbage" else 1400), len(after)  # 8 KB is two pages of 3000 rows

    code, out, err = run_cli(capsys, *args(tmp_path), "--force")
    assert code == 0, err
    assert int(summary(out)["from cache"]) + int(summary(out)["sent"]) == N_ANSWERS
    code, out, err = run_cli(capsys, "recover-cache", f"--dataset={DS}", f"--data_path={tmp_path}")
    assert code == 0 and "nothing to recover" in out


def test_recover_reads_answers_sqlite_cannot_reach(tmp_path):
    """A garbage header ("file is not a database"): every answer is still in the raw pages."""
    path = tmp_path / "answers.sqlite"
    with AnswerCache(path, {"b": 1}, "tv") as cache:
        cache.store([(f"p{j}", f"an answer {j} " * 40) for j in range(600)])  # some spill to overflow pages
        cache.store([("long", "x" * 20000)])
    with open(path, "r+b") as f:
        f.write(b"\xff" * 100)
    with pytest.raises(CacheDamagedError, match="not a database"):
        AnswerCache(path, {"b": 1}, "tv")
    assert recover_cache(path)["recovered"] == 601
    with AnswerCache(path, {"b": 1}, "tv") as cache:
        got = cache.lookup([f"p{j}" for j in range(600)] + ["long"])
    assert got == {**{f"p{j}": f"an answer {j} " * 40 for j in range(600)}, "long": "x" * 20000}


# ---- kills at the table write and between the renames of its swap ----------------------------------------


KILLED_BUILD = textwrap.dedent(
    """
    import os, sys, time
    from recbole_llm4sbr.intent import build_intent_table, load_settings
    from recbole_llm4sbr.intent import table

    root, where, marker = sys.argv[1:4]
    real_save, real_replace = table.save_rows, os.replace

    def save_rows(path, array, dtype="float32"):
        real_save(path, array, dtype)
        if where == "write" and path.name == "vectors.npy":  # raw.npy, answers, meta still to come
            open(marker, "w").close()
            time.sleep(60)

    def replace(src, dst):
        real_replace(src, dst)
        if where == "swap" and ".old-" in os.fspath(dst):  # moved aside; the new one not yet in place
            open(marker, "w").close()
            time.sleep(60)

    table.save_rows, os.replace = save_rows, replace
    build_intent_table(load_settings(dataset="tiny", overrides={
        "data_path": root, "intent_backend": "text", "show_progress": False}))
    """
)


@pytest.mark.parametrize("where", ["write", "swap"])
def test_kill_9_at_the_table_write_loses_nothing(built, tmp_path, where):
    root, folder, files = built
    script, marker = tmp_path / "child.py", tmp_path / "marker"
    script.write_text(KILLED_BUILD)
    child = subprocess.Popen([sys.executable, str(script), str(root), where, str(marker)], env=subprocess_env(),
                             cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists():
        if child.poll() is not None or time.time() > deadline:
            child.kill()
            pytest.fail(f"child did not reach the kill point: {child.communicate()}")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    left = debris(folder)
    assert any(".tmp-" in n for n in left) and (where == "write") == folder.is_dir()
    assert cached(root) == N_ANSWERS

    again = ensure_intent_table(base_settings(root))  # the next run: the table as committed, debris gone
    assert again == folder and read_meta(folder)["files"] == files and debris(folder) == []
    build_intent_table(base_settings(root))  # and a rebuild is bit-identical
    assert read_meta(folder)["files"] == files and debris(folder) == []


# ---- two builders of one table ---------------------------------------------------------------------------


def _cli_child(root: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recbole_llm4sbr.intent", *args(root)], cwd=str(REPO),
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=open(log, "w"))


def test_a_second_builder_waits_then_finds_the_table_up_to_date(tmp_path):
    write_dataset(tmp_path)
    settings = base_settings(tmp_path)
    folder = locate_table(settings)[0]
    log = tmp_path / "child.log"
    with table_lock(folder):  # a build in progress (this process)
        child = _cli_child(tmp_path, log)
        deadline = time.time() + 120
        while "waiting for it to finish" not in log.read_text():
            assert child.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        assert ensure_intent_table(settings) == folder  # the lock is this thread's: it builds
    out, _ = child.communicate(timeout=120)
    text = log.read_text()
    assert child.returncode == 0, text
    assert "up to date" in text and "building it" not in text and "Traceback" not in text
    assert out.decode().strip().endswith(f"intent table: {folder}") and debris(folder) == []


def test_two_builds_at_once_build_once_and_leave_no_debris(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / DS / "intent").mkdir(parents=True)
    stale = tmp_path / DS / "intent" / ".text-00000000.tmp-1-dead"  # another table's debris: not ours to judge
    stale.mkdir()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    children = [_cli_child(tmp_path, log) for log in logs]
    for c in children:
        c.communicate(timeout=240)
    texts = [log.read_text() for log in logs]
    assert [c.returncode for c in children] == [0, 0], texts
    assert sum("building it" in t for t in texts) == 1 and all("Traceback" not in t for t in texts)
    folder = ensure_intent_table(base_settings(tmp_path))
    assert debris(folder) == [] and stale.is_dir() and cached(tmp_path) == N_ANSWERS


def test_debris_of_killed_builds_is_removed_unless_a_builder_is_alive(built, caplog):
    caplog.set_level(logging.INFO, logger="recbole_llm4sbr.intent")
    root, folder, files = built
    for name in (f".{folder.name}.tmp-4242-deadbeef", f".{folder.name}.old-4242-deadbeef"):
        shutil.copytree(folder, folder.parent / name)
    with table_lock(folder):  # a live builder: its folders are left alone (by another process)
        code = subprocess.run([sys.executable, "-c", "import sys; from recbole_llm4sbr.intent.table import tidy; "
                               "tidy(sys.argv[1])", str(folder)], env=subprocess_env(), cwd=str(REPO)).returncode
        assert code == 0 and len(debris(folder)) == 2
    ensure_intent_table(base_settings(root))  # up to date, and nobody builds: removed
    assert debris(folder) == [] and read_meta(folder)["files"] == files
    assert "removed 2 folder(s) left by killed builds" in caplog.text


# ---- what training sees ------------------------------------------------------------------------------------


def test_training_stops_on_a_damaged_table_or_cache_with_one_line(tmp_path):
    """``run_recbole_llm4sbr.py`` (stage 2 loads the table through ``ensure_intent_table``): the same
    one-line errors, exit code 2, before any training."""
    from tinydata import write_tiny_dataset

    from recbole_llm4sbr.intent import load_settings

    root = tmp_path / "data"
    write_tiny_dataset(root, n_sessions=30)
    folder = ensure_intent_table(load_settings(dataset="tiny", overrides={
        "data_path": str(root), "intent_backend": "text", "show_progress": False}))
    with open(folder / "vectors.npy", "r+b") as f:  # one byte, same size
        f.seek(-5, 2)
        f.write(b"\x7f")

    def train():
        return subprocess.run([sys.executable, str(REPO / "run_recbole_llm4sbr.py"), "--model=LLM4SBR_SRGNN",
                               "--dataset=tiny", f"--data_path={root}", "--epochs=1", "--show_progress=False",
                               "--embedding_size=8", "--intent_backend=text"], cwd=tmp_path, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)

    res = train()
    line = one_error(res.stderr)
    assert res.returncode == 2 and f"{folder}: vectors.npy differs from the sha256" in line and "--force" in line

    shutil.rmtree(folder)  # a build is needed now, and the cache is damaged
    cache = root / "tiny" / "intent" / CACHE_FILE
    with open(cache, "r+b") as f:
        f.write(b"\xff" * 100)
    res = train()
    line = one_error(res.stderr)
    assert res.returncode == 2 and f"answer cache {cache} is damaged" in line and "recover-cache" in line
