"""The benchmark: aggregation on hand-checked numbers, reports from fixed cells, and a two-cell end-to-end
run on a tiny dataset (resumable: a rerun trains nothing; a crash loses only the cell in progress)."""
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from recbole_llm4sbr.benchmark import aggregate as agg
from recbole_llm4sbr.benchmark.runner import (CELL_FORMAT, Benchmark, git_commit, relevant_settings, settings_digest,
                                              write_json_atomic)
from recbole_llm4sbr.benchmark.variants import parse_bases, parse_seeds, parse_variants
from recbole_llm4sbr.data import intents as intents_module
from tinydata import synthetic_intents, write_tiny_dataset


# ---- fixed inputs ------------------------------------------------------------------------------------

BASE_R20, LLM_R20 = [0.10, 0.12, 0.14], [0.12, 0.15, 0.15]
BASE_MRR, LLM_MRR = [0.05, 0.05, 0.05], [0.04, 0.04, 0.04]


def fake_cell(base, variant, seed, r20, mrr20, epoch, inference, params, mem=100.0, intent=None):
    return {"format": CELL_FORMAT, "id": f"{base}__{variant}__seed{seed}", "base": base, "variant": variant, "seed": seed,
            "model": base if variant == "base" else f"LLM4SBR_{base}",
            "test_result": {"recall@20": r20, "mrr@20": mrr20, "hit@20": r20},
            "epoch_time_s": epoch, "time_to_best_s": 10 * epoch, "inference_s": inference, "peak_mem_mb": mem,
            "params": params, "best_epoch": 9, "device": "cpu", "torch_threads": 1, "valid_metric": "MRR@20",
            "peak_mem_kind": "peak RSS growth", "intent": intent, "command": "cmd", "commit": "abc1234"}


def fixed_cells(intent=None):
    cells = []
    for i, seed in enumerate((2020, 2021, 2022)):
        cells.append(fake_cell("SRGNN", "base", seed, BASE_R20[i], BASE_MRR[i], 2.0, [0.1, 0.2, 0.3][i], 1000))
        cells.append(fake_cell("SRGNN", "llm4sbr", seed, LLM_R20[i], LLM_MRR[i], 3.0, 0.3, 1100, 150.0, intent))
    return cells


def test_mean_std_relative_change_and_ratios_hand_checked():
    rows = agg.aggregate(fixed_cells(), ["SRGNN"], ["base", "llm4sbr"])
    base, llm = rows
    assert (base["variant"], llm["variant"], llm["n"], llm["seeds"]) == ("base", "llm4sbr", 3, [2020, 2021, 2022])
    assert base["recall@20"] == pytest.approx(0.12) and base["recall@20 std"] == pytest.approx(0.02)
    assert llm["recall@20"] == pytest.approx(0.14)
    assert llm["recall@20 std"] == pytest.approx(math.sqrt(0.0003))  # deviations -.02, .01, .01; ddof 1
    assert llm["recall@20 rel"] == pytest.approx(100 * 0.02 / 0.12)  # +16.67 %
    assert llm["mrr@20 rel"] == pytest.approx(-20.0)
    # paired differences .02, .03, .01: t = .02 / (.01 / sqrt 3) = 2 sqrt 3, df 2,
    # two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6/7) (closed form of Student's t with 2 df)
    assert llm["recall@20 p"] == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-9)
    assert llm["recall@20 pairs"] == 3
    assert llm["mrr@20 p"] is None  # every difference -0.01: t undefined, reported n/a
    assert llm["epoch_time_s ratio"] == pytest.approx(1.5)
    assert llm["inference_s ratio"] == pytest.approx(0.3 / 0.2)
    assert llm["params ratio"] == pytest.approx(1.1)
    assert llm["peak_mem_mb ratio"] == pytest.approx(1.5)
    assert llm["time_to_best_s ratio"] == pytest.approx(1.5)
    assert base["epoch_time_s ratio"] == pytest.approx(1.0)
    assert "recall@20 p" not in base


def test_one_seed_has_no_std_and_no_test_and_unpaired_seeds_are_left_out():
    cells = fixed_cells()
    one = [c for c in cells if c["seed"] == 2020]
    _, llm = agg.aggregate(one, ["SRGNN"], ["base", "llm4sbr"])
    assert llm["recall@20 std"] is None and llm["recall@20 p"] is None and llm["recall@20 pairs"] == 1
    assert llm["recall@20 rel"] == pytest.approx(20.0)
    # the base lacks seed 2022: the test pairs 2020 and 2021 only; the means use what each side has
    partial = [c for c in cells if not (c["variant"] == "base" and c["seed"] == 2022)]
    base, llm = agg.aggregate(partial, ["SRGNN"], ["base", "llm4sbr"])
    assert base["n"] == 2 and llm["recall@20 pairs"] == 2
    # diffs .02, .03: t = .025 / (.00707 / sqrt 2) = 5, df 1 (Cauchy): p = 1 - 2 atan(5) / pi = 0.1257
    assert llm["recall@20 p"] == pytest.approx(1 - 2 * math.atan(5) / math.pi, rel=1e-9)
    assert agg.paired_ttest([1.0], [0.5]) is None
    assert agg.mean_std([]) == (None, None, 0)


def test_metric_order_and_parsers():
    cells = [{"test_result": {"mrr@5": 0, "recall@20": 0, "ndcg@10": 0, "recall@5": 0, "hit@10": 0}}]
    assert agg.metric_names(cells) == ["recall@5", "recall@20", "mrr@5", "ndcg@10", "hit@10"]
    assert parse_variants("llm4sbr,no_au") == ["base", "llm4sbr", "no_au"]
    assert parse_variants("text,base,text") == ["base", "text"]
    assert parse_variants("base") == ["base"] and parse_variants(None) == ["base", "llm4sbr"]
    assert parse_variants("r0,r1,r3,r5,no_loc,no_long,no_short") == \
        ["base", "r0", "r1", "r3", "r5", "no_loc", "no_long", "no_short"]
    with pytest.raises(ValueError, match="Unknown variant 'nope'"):
        parse_variants("nope")
    assert parse_seeds("3") == [2020, 2021, 2022] and parse_seeds("3", 7) == [7, 8, 9]
    assert parse_seeds("1,42") == [1, 42] and parse_seeds("2020,") == [2020]
    with pytest.raises(ValueError, match=r"asks for 2020 seeds.*--seeds=2020,"):
        parse_seeds("2020")  # a seed typed where the count goes
    assert parse_bases("SRGNN, GRU4Rec") == ["SRGNN", "GRU4Rec"]
    with pytest.raises(ValueError, match="stock base"):
        parse_bases("LLM4SBR_SRGNN")


def test_cell_digest_ignores_llm_keys_for_the_stock_base_only():
    a = {"epochs": "10", "intent_backend": "text"}
    b = {"epochs": "10", "intent_backend": "transformers", "show_progress": "True"}
    digest = lambda v, o: settings_digest(relevant_settings("ds", v, o))  # noqa: E731
    assert digest("base", a) == digest("base", b)
    assert digest("llm4sbr", a) != digest("llm4sbr", b)
    assert digest("base", a) != digest("base", {"epochs": "5"})
    assert digest("base", {"epochs": "5"}) == digest("base", {"epochs": 5})  # "5" on the command line is 5
    # the variant's own keys win: text stays text whatever --intent_backend says, so its cells are shared
    from recbole_llm4sbr.benchmark.variants import variant_config
    bench = Benchmark("ds", ["SRGNN"], ["base", "text"], [1, 2, 3], b, "unused", protocol="paper")
    other = Benchmark("ds", ["SRGNN"], ["base", "text"], [1, 2, 3], a | {"show_progress": "False"}, "unused",
                      protocol="paper")
    assert [(c.variant, c.seed) for c in bench.plan()] == [("base", 1), ("text", 1), ("text", 2), ("base", 2),
                                                           ("base", 3), ("text", 3)]
    assert [c.id for c in bench.plan()] == [c.id for c in other.plan()]
    assert variant_config("text", b)["intent_backend"] == "text"


def test_every_llm4sbr_yaml_key_leaves_the_stock_digest_alone(tmp_path, monkeypatch):
    """The stock base's digest skips exactly the keys of properties/model/LLM4SBR.yaml (derived from the
    file, not a hand-kept list) and the stage-1 prefixes; a wrapped variant's digest sees them all."""
    import shutil

    import yaml

    from recbole_llm4sbr.benchmark.runner import llm4sbr_only_keys
    from recbole_llm4sbr.paths import properties_dir

    digest = lambda v, o: settings_digest(relevant_settings("ds", v, o))  # noqa: E731
    keys = yaml.safe_load((properties_dir() / "model" / "LLM4SBR.yaml").read_text())
    assert {"semantic_at_inference", "text_target_weight", "eimf_weight", "au_weight"} <= set(keys)
    for key in [*keys, "intent_topr", "vllm_dtype", "openai_base_url"]:
        assert digest("base", {"epochs": 3, key: "changed"}) == digest("base", {"epochs": 3}), key
        assert digest("llm4sbr", {"epochs": 3, key: "changed"}) != digest("llm4sbr", {"epochs": 3}), key
    # a key added to the yaml is left out of the stock digest without touching the runner
    shutil.copytree(properties_dir(), tmp_path / "props")
    with open(tmp_path / "props" / "model" / "LLM4SBR.yaml", "a") as f:
        f.write("\nbrand_new_wrapper_key: 1\n")
    assert "brand_new_wrapper_key" not in llm4sbr_only_keys()
    before = digest("base", {"brand_new_wrapper_key": 2})
    monkeypatch.setenv("LLM4SBR_PROPERTIES", str(tmp_path / "props"))
    assert "brand_new_wrapper_key" in llm4sbr_only_keys()
    assert digest("base", {"brand_new_wrapper_key": 2}) == digest("base", {}) != before


def test_attribution_variants_config_and_digests():
    from recbole_llm4sbr.benchmark.variants import VARIANTS, variant_config

    assert parse_variants("arch,shuffled") == ["base", "arch", "shuffled"]
    user = {"intent_backend": "vllm", "epochs": "9"}
    assert variant_config("arch", user) == {**user, "intent_control": "constant"}
    assert variant_config("shuffled", user) == {**user, "intent_control": "shuffled"}
    assert "intent_control" not in variant_config("llm4sbr", user)  # the configured backend, real intents
    assert VARIANTS["arch"].model("GRU4Rec") == VARIANTS["shuffled"].model("GRU4Rec") == "LLM4SBR_GRU4Rec"
    # NARM's pairing question (docs/FIDELITY.md): the same views, paired the other way round
    assert variant_config("swapped", user)["view_behaviour"] == {"long": "local", "short": "global"}
    assert variant_config("all", user)["intent_samples"] == "all"  # per-prefix answers, not exemplars
    # au_hi's controls differ from au_hi only in the intent they read (text: the LLM-free backend wins)
    hi = variant_config("au_hi", user)
    assert variant_config("arch_au_hi", user) == {**hi, "intent_control": "constant"}
    assert variant_config("shuffled_au_hi", user) == {**hi, "intent_control": "shuffled"}
    assert variant_config("text_au_hi", user) == {**hi, "intent_backend": "text"}
    names = ["base", "llm4sbr", "text", "arch", "shuffled", "swapped", "no_au"]
    bench = Benchmark("ds", ["GRU4Rec"], names, [1], user, "unused", protocol="paper")
    assert len({c.digest for c in bench.plan()}) == len(names)
    assert bench.config_dict(bench.plan()[3])["intent_control"] == "constant"


def test_every_variant_declares_its_role_and_the_report_finds_its_controls_by_role():
    from recbole_llm4sbr.benchmark import report
    from recbole_llm4sbr.benchmark.variants import ROLES, VARIANTS, Variant, role_variant, role_variants

    assert all(v.role in ROLES for v in VARIANTS.values())
    with pytest.raises(TypeError):
        Variant("x", True, "no role")  # a role is declared, never guessed
    with pytest.raises(ValueError, match="role 'control'"):
        Variant("x", True, "bad role", role="control")
    # the reference and the controls under the fusion as configured, and their paper-fusion counterparts
    assert [role_variant(r) for r in ROLES[:5]] == ["base", "llm4sbr", "arch", "shuffled", "text"]
    assert [role_variant(r, "paper") for r in ROLES[1:5]] == ["paper", "paper_arch", "paper_shuffled", "paper_text"]
    assert role_variants("intents") == ["llm4sbr", "paper"]
    assert "no_au" in role_variants("ablation") and "arch_au_hi" in role_variants("investigation")
    assert (report.STOCK, report.INTENTS, report.CONSTANT, report.SHUFFLED, report.TEXT) == (
        "base", "llm4sbr", "arch", "shuffled", "text")
    assert report.WRAPPED_MODELS == ("llm4sbr", "paper") and agg.STOCK == "base"


def test_report_from_fixed_cells_and_png_optional(tmp_path, monkeypatch, caplog):
    from recbole_llm4sbr.benchmark.cli import run_benchmark

    intent = {"path": "/x/intent/text-1234", "tag": "text-1234", "backend": "text", "model": None,
              "encoder": "enc", "topr": 5, "summary": {"samples": 12, "sent": 24, "time LLM": 0.5}}
    bench = Benchmark("ds", ["SRGNN"], ["base", "llm4sbr"], [2020, 2021, 2022], {"epochs": "10"}, tmp_path,
                      command="python run_recbole_llm4sbr.py --benchmark", commit="abc1234", protocol="paper")
    by_key = {(c["base"], c["variant"], c["seed"]): c for c in fixed_cells(intent)}
    for cell in bench.plan():
        write_json_atomic(bench.cell_path(cell), by_key[(cell.base, cell.variant, cell.seed)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with caplog.at_level("INFO", logger="recbole_llm4sbr.benchmark"):
        _, paths = run_benchmark("ds", "SRGNN", "llm4sbr", "3", {"epochs": "10"}, tmp_path, report_only=True,
                                 command="python run_recbole_llm4sbr.py --benchmark", commit="abc1234",
                                 protocol="paper")
    assert "matplotlib is not installed" in (tmp_path / "ds" / "cells" / "benchmark.log").read_text()
    assert "png" not in paths
    md = paths["md"].read_text()
    assert "0.1400 ± 0.0173" in md and "0.1200 ± 0.0200" in md
    assert "+16.7% (p 0.074)" in md and "-20.0% (p n/a)" in md
    assert "| SRGNN | llm4sbr | 3.00 | 1.50x |" in md  # epoch time and its ratio
    assert md.count("git commit `abc1234`") >= 4  # every table's caption
    assert "intent backend: text (LLM-free" in md and "| sent | 24 |" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["variant"] for r in rows] == ["base", "llm4sbr"]
    assert float(rows[1]["recall@20 p"]) == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-6)
    assert rows[1]["commit"] == "abc1234" and rows[1]["intent backend"].startswith("text")
    assert len(list(csv.DictReader(open(paths["cells_csv"])))) == 6


def test_git_commit_outside_a_checkout(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    assert git_commit() != ""


# ---- end to end on a tiny dataset -----------------------------------------------------------------------

def benchmark_intents(folder: Path):
    """Synthetic intents with the meta a text-backend table would carry (the report reads it)."""
    meta = {"backend": "text", "backend_info": {"backend": "text", "model": None}, "encoder": "synthetic", "topr": 5}
    table = synthetic_intents(folder, meta=meta, path=folder / "intent" / "text-synthetic")
    table.meta["summary"] = {"samples": len(table.keys), "sent": 2 * len(table.keys), "time LLM": 0.1}
    return table


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    folder = write_tiny_dataset(tmp_path / "data", n_sessions=90)
    table = benchmark_intents(folder)
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    monkeypatch.chdir(tmp_path)  # RecBole's ./log and ./log_tensorboard
    import recbole_llm4sbr.quick_start.quick_start as qs

    calls = []
    real = qs.run_recbole_llm4sbr

    def counting(model, *args, **kwargs):
        calls.append(model)
        if getattr(counting, "fail_on", None) == len(calls):
            raise RuntimeError("simulated crash")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(qs, "run_recbole_llm4sbr", counting)
    return tmp_path, calls, counting


COMMON = ["--epochs=2", "--embedding_size=16", "--hidden_size=16", "--train_batch_size=32", "--state=WARNING"]


def test_fair_protocol_two_cells_end_to_end_then_rerun_trains_nothing(tiny):
    """Fair protocol through the command: a 2-point grid per (base, variant) on the first seed, the
    setting with the best validation score chosen, the grid recorded, per-sample outcomes kept."""
    from recbole_llm4sbr.cli import main

    tmp_path, calls, _ = tiny
    argv = ["--benchmark", "--dataset=tiny", "--base_models=GRU4Rec", "--seeds=1", "--variants=arch",
            "--grid_learning_rate=0.01,0.0001", "--grid_lr_step_size=0", "--stopping_step=2",
            f"--results_dir={tmp_path / 'res'}", f"--data_path={tmp_path / 'data'}", *COMMON]
    assert main(argv) == 0
    assert calls == ["GRU4Rec", "GRU4Rec", "LLM4SBR_GRU4Rec", "LLM4SBR_GRU4Rec"]  # 2 grid runs each
    folder = tmp_path / "res" / "tiny"
    runs = sorted((folder / "cells").glob("*.json"))
    assert len(runs) == 4 and not list((folder / "cells").glob(".*tmp*"))
    from recbole_llm4sbr.benchmark.cli import parse

    args, overrides = parse(argv)
    assert args.grid == {"learning_rate": ["0.01", "0.0001"], "lr_step_size": ["0"]}
    bench = Benchmark("tiny", ["GRU4Rec"], ["base", "arch"], [2020], overrides, tmp_path / "res", grid=args.grid)
    final = {c["variant"]: c for c in bench.finished()}
    assert list(final) == ["base", "arch"]
    for cell in final.values():
        assert cell["format"] == CELL_FORMAT and cell["protocol"] == "fair" and cell["tuned_on_seed"] == 2020
        grid = cell["grid"]
        assert [g["setting"] for g in grid] == [{"learning_rate": 0.01, "lr_step_size": 0},
                                                {"learning_rate": 0.0001, "lr_step_size": 0}]
        assert all(g["epochs_max"] == 2 and g["epochs_run"] >= 1 for g in grid)
        best = max(grid, key=lambda g: g["best_valid_score"])
        assert cell["setting"] == best["setting"] and cell["best_valid_score"] == best["best_valid_score"]
        assert cell["config_dict"]["learning_rate"] == best["setting"]["learning_rate"]
        assert cell["at_cap"] == (cell["best_epoch"] + 1 >= cell["epochs_max"])
        assert set(cell["test_result"]) >= {"recall@5", "recall@20", "mrr@10", "ndcg@20", "hit@20"}
        assert cell["epochs_run"] == len(cell["epoch_times"]) and cell["best_epoch"] in (0, 1)
        assert cell["inference_s"] > 0 and cell["params"] > 0 and cell["inference_reproduced"]
        assert cell["time_to_best_s"] > 0 and cell["peak_mem_kind"] in ("peak RSS growth", "cuda max allocated")
        assert Path(cell["model_file"]).is_file() and not Path(cell["model_file"]).is_absolute()  # under cwd
        assert (folder / "cells" / "checkpoints").resolve() in Path(cell["model_file"]).resolve().parents
        per = cell["per_sample"]
        assert per["n"] == cell["test_samples"] == len(per["recall@20"]) == len(per["ndcg@5"])
        assert sum(per["mrr@20"]) / per["n"] == pytest.approx(cell["test_result"]["mrr@20"], abs=1e-6)
    assert final["base"]["per_sample"]["order_sha1"] == final["arch"]["per_sample"]["order_sha1"]  # pairable
    assert final["base"]["intent"] is None and final["arch"]["intent"]["backend"] == "text"
    assert final["arch"]["config_dict"]["intent_control"] == "constant"
    assert final["arch"]["params"] > final["base"]["params"]
    command = "python run_recbole_llm4sbr.py " + " ".join(argv)
    md = (folder / "report.md").read_text()
    assert f"command: `{command}`" in md and f"git commit `{git_commit()}`" in md
    rows = list(csv.DictReader(open(folder / "summary.csv")))
    assert [(r["base"], r["variant"]) for r in rows] == [("GRU4Rec", "base"), ("GRU4Rec", "arch")]
    log = (folder / "cells" / "benchmark.log").read_text()
    assert log.count("Recall@20") == 4 and "ETA" in log and "GRU4Rec / arch: chose learning_rate=" in log
    # rerun: nothing trains, the reports are rebuilt from the cells
    (folder / "report.md").unlink()
    assert main(argv) == 0
    assert len(calls) == 4 and (folder / "report.md").is_file()
    # a cell trained on another intent table (e.g. bf16 answers where this machine's settings name a
    # float32 table) is kept aside, never overwritten, and trained again on this run's table
    other = sorted((folder / "cells").glob("GRU4Rec__arch__*.json"))[0]
    data = json.loads(other.read_text())
    data["intent"]["tag"] = "text-00000000"
    other.write_text(json.dumps(data))
    for seed_cell in sorted((folder / "cells").glob("GRU4Rec__base__*.json"))[:1]:
        seed_cell.unlink()  # something to train: the run then checks every finished cell's table
    assert main(argv) == 0
    assert calls[4:5] == ["GRU4Rec"]
    del calls[4]
    assert calls[4:] == ["LLM4SBR_GRU4Rec"]
    assert json.loads((folder / "cells" / "stale" / other.name).read_text())["intent"]["tag"] == "text-00000000"
    assert json.loads(other.read_text())["intent"]["tag"] == final["arch"]["intent"]["tag"] != "text-00000000"


def stub_trainer(trained, valid_of, test_of):
    """A trainer that records what it was asked to train and scores it without training."""

    def trainer(model, dataset, files, config_dict, **kwargs):
        lr, step = config_dict["learning_rate"], config_dict["lr_step_size"]
        trained.append((model, config_dict["seed"], lr, step))
        return {"test_result": {"recall@20": test_of(lr, step), "mrr@20": 0.01},
                "best_valid_score": valid_of(lr, step), "valid_score_bigger": True,
                "best_epoch": 3, "epochs_run": 9, "epochs_max": int(config_dict["epochs"])}

    return trainer


def test_fair_protocol_plans_grid_on_first_seed_and_chooses_on_validation(tmp_path):
    trained = []
    # the validation prefers lr 3e-4 with steps; the test would prefer the other: the choice must not peek
    trainer = stub_trainer(trained, lambda lr, step: 0.3 if (lr, step) == (0.0003, 3) else 0.1,
                           lambda lr, step: 0.1 if (lr, step) == (0.0003, 3) else 0.9)
    bench = Benchmark("ds", ["GRU4Rec"], ["base", "arch"], [7, 8, 9], {}, tmp_path, trainer=trainer, commit="abc")
    bench.prepare_stage1 = lambda cells: None  # no dataset here: the stub trains nothing
    assert bench.grid == {"learning_rate": (0.001, 0.0003), "lr_step_size": (0, 3)}  # the default grid
    assert len(bench.plan()) == 6 and bench.total_runs() == 2 * (4 + 2)
    finals = bench.run()
    grid = [(lr, s) for lr in (0.001, 0.0003) for s in (0, 3)]
    assert trained == ([("GRU4Rec", 7, lr, s) for lr, s in grid] + [("LLM4SBR_GRU4Rec", 7, lr, s) for lr, s in grid]
                       + [("LLM4SBR_GRU4Rec", 8, 0.0003, 3), ("GRU4Rec", 8, 0.0003, 3),
                          ("GRU4Rec", 9, 0.0003, 3), ("LLM4SBR_GRU4Rec", 9, 0.0003, 3)])
    assert [(c["variant"], c["seed"]) for c in finals] == [("base", 7), ("arch", 7), ("arch", 8), ("base", 8),
                                                           ("base", 9), ("arch", 9)]
    for cell in finals:
        assert cell["setting"] == {"learning_rate": 0.0003, "lr_step_size": 3} and cell["tuned_on_seed"] == 7
        assert len(cell["grid"]) == 4 and cell["protocol"] == "fair" and cell["at_cap"] is False
        assert cell["config_dict"]["epochs"] == 50 and cell["config_dict"]["stopping_step"] == 5
    first = next(c for c in finals if (c["variant"], c["seed"]) == ("base", 7))
    assert first["id"] in {Path(p).stem for p in map(str, bench.cells_dir.glob("*.json"))}  # the grid run itself
    assert len(list(bench.cells_dir.glob("*.json"))) == 12  # 8 grid runs + 4 other-seed cells, no retraining
    # a rerun trains nothing; a user's --learning_rate fixes that axis (a 2-point grid, new cells)
    Benchmark("ds", ["GRU4Rec"], ["base", "arch"], [7, 8, 9], {}, tmp_path, trainer=trainer, commit="abc").run()
    assert len(trained) == 12
    fixed = Benchmark("ds", ["GRU4Rec"], ["base"], [7], {"learning_rate": "0.01", "epochs": "9"}, tmp_path,
                      trainer=trainer, commit="abc")
    assert fixed.grid == {"learning_rate": (0.01,), "lr_step_size": (0, 3)}
    fixed.run()
    assert trained[12:] == [("GRU4Rec", 7, 0.01, 0), ("GRU4Rec", 7, 0.01, 3)]
    assert fixed.finished()[0]["at_cap"] is False and fixed.finished()[0]["epochs_max"] == 9


def test_the_plan_reads_finished_runs_only_through_its_load_function():
    from recbole_llm4sbr.benchmark.plan import Plan, Slot

    done = {}
    plan = Plan("ds", ["GRU4Rec"], ["base"], [1, 2], load=lambda cell: done.get(cell.id))
    grid = plan.grid_cells("GRU4Rec", "base")
    assert len(grid) == 4 and plan.total_runs() == 5 and plan.chosen("GRU4Rec", "base") is None
    assert plan.runs() == grid  # the other seed waits for the choice
    for cell, score in zip(grid, (0.1, 0.3, 0.2, 0.3)):
        done[cell.id] = {"best_valid_score": score, "valid_score_bigger": True}
    assert plan.chosen("GRU4Rec", "base") == grid[1]  # the best validation score, the first of a tie
    final = plan.plan()
    assert final[0] == grid[1] and final[1].seed == 2 and final[1].setting == grid[1].setting
    assert plan.unfinished() == [Slot("GRU4Rec", "base", 2)] and plan.runs() == grid + [final[1]]


def test_paper_protocol_trains_each_seed_once_with_the_paper_schedule(tmp_path):
    trained = []
    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1, 2], {}, tmp_path, protocol="paper", commit="abc",
                      trainer=stub_trainer(trained, lambda lr, s: 0.1, lambda lr, s: 0.1))
    finals = bench.run()
    assert trained == [("GRU4Rec", 1, 0.001, 3), ("GRU4Rec", 2, 0.001, 3)]
    assert [c["grid"] for c in finals] == [[], []] and {c["tuned_on_seed"] for c in finals} == {None}
    assert finals[0]["config_dict"]["epochs"] == 30 and finals[0]["config_dict"]["lr_gamma"] == 0.1
    assert {c["protocol"] for c in finals} == {"paper"}
    from recbole_llm4sbr.benchmark.cli import main

    assert main(["--benchmark", "--protocol=paper", "--grid_learning_rate=0.1", "--dataset=ds"]) == 2


def test_a_crash_loses_only_the_cell_in_progress(tiny):
    from recbole_llm4sbr.benchmark.cli import run_benchmark

    tmp_path, calls, counting = tiny
    kwargs = dict(overrides={"data_path": str(tmp_path / "data"), "epochs": "1", "embedding_size": "16",
                             "hidden_size": "16", "state": "WARNING"},
                  results_dir=tmp_path / "res", plot=False, inference_repeats=1, protocol="paper")
    counting.fail_on = 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark("tiny", "GRU4Rec", "base", "2", **kwargs)
    cells = tmp_path / "res" / "tiny" / "cells"
    assert [p.name.split("__")[2] for p in cells.glob("*.json")] == ["seed2020"]
    assert not list(cells.glob(".*tmp*"))
    counting.fail_on = None
    bench, _ = run_benchmark("tiny", "GRU4Rec", "base", "2", **kwargs)
    assert calls == ["GRU4Rec", "GRU4Rec", "GRU4Rec"]  # seed 2020, the crash (seed 2021), seed 2021 again
    assert len(bench.finished()) == 2


#: a stand-in for another benchmark process training a cell: holds the flock of the lock file argv[1]
HOLDER = ("import fcntl, json, os, sys, time\n"
          "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.write(fd, json.dumps({'host': 'elsewhere', 'pid': os.getpid(), 'since': 'T'}).encode())\n"
          "print('held', flush=True)\n"
          "time.sleep(120)\n")


@contextmanager
def held_elsewhere(lock: Path):
    """Another live process holding ``lock`` (its flock) while the block runs; killed after it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def one_stub_trained(trained):
    def trainer(model, dataset, files, config_dict, **kwargs):
        trained.append((model, config_dict["seed"]))
        return {"test_result": {"recall@20": 0.1, "mrr@20": 0.01}, "best_epoch": 0}
    return trainer


def test_concurrent_runs_share_cells_and_take_over_stale_locks(tmp_path):
    """A cell held by a live benchmark process is skipped (no double training), one finished meanwhile is
    not retrained, and the lock of a process that died is taken over."""
    trained = []

    def trainer(model, dataset, files, config_dict, **kwargs):
        trained.append((model, config_dict["seed"]))
        # meanwhile another process finishes the next cell
        bench.cell_path(meanwhile).write_text('{"format": %d, "test_result": {}}' % CELL_FORMAT)
        return {"test_result": {"recall@20": 0.1, "mrr@20": 0.01}, "best_epoch": 0}

    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1, 2, 3], {}, tmp_path, trainer=trainer, commit="abc",
                      protocol="paper")
    held, stale, meanwhile = bench.plan()
    bench.cells_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    bench.cell_path(stale).with_suffix(".lock").write_text(str(dead.pid))
    with held_elsewhere(bench.cell_path(held).with_suffix(".lock")) as holder:
        bench.run()
        assert bench.cell_path(held).with_suffix(".lock").exists()  # the live holder's lock is left alone
    assert trained == [("GRU4Rec", 2)]  # only the stale-locked cell; not the held one, not the one finished meanwhile
    assert bench.load(held) is None and bench.load(stale)["test_result"]["recall@20"] == 0.1
    assert not bench.cell_path(stale).with_suffix(".lock").exists()
    assert bench.held == {held: f"process {holder.pid} on host elsewhere since T"}
    assert [s.seed for s in bench.unfinished()] == [1]


def test_a_lock_file_naming_a_live_pid_that_holds_no_lock_is_taken_over(tmp_path):
    """A lock's PID may be reused by another process (or be this one's after a restart): only a held flock
    keeps a cell, so a lock file naming a live process (here this test's own) never skips it."""
    trained = []
    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1, 2], {}, tmp_path, trainer=one_stub_trained(trained),
                      commit="abc", protocol="paper")
    first, second = bench.plan()
    bench.cells_dir.mkdir(parents=True)
    bench.cell_path(first).with_suffix(".lock").write_text(str(os.getpid()))
    bench.cell_path(second).with_suffix(".lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "2020-01-01T00:00:00"}))
    bench.run()
    assert trained == [("GRU4Rec", 1), ("GRU4Rec", 2)] and not bench.unfinished() and not bench.held
    assert not list(bench.cells_dir.glob("*.lock"))


def test_the_lock_of_a_killed_run_is_free_at_once(tmp_path):
    trained = []
    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1], {}, tmp_path, trainer=one_stub_trained(trained),
                      commit="abc", protocol="paper")
    (cell,) = bench.plan()
    lock = bench.cell_path(cell).with_suffix(".lock")
    with held_elsewhere(lock) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert lock.exists() and str(holder.pid) in lock.read_text()  # left behind, naming a dead process
        bench.run()
    assert trained == [("GRU4Rec", 1)] and bench.load(cell) is not None and not lock.exists()


def test_a_cell_is_locked_for_its_whole_training_and_released_after_its_file_is_written(tmp_path, monkeypatch):
    from recbole_llm4sbr.benchmark.runner import CellLock

    seen = []

    def trainer(model, dataset, files, config_dict, **kwargs):
        lock = bench.cell_path(cell).with_suffix(".lock")
        other, who = CellLock.acquire(lock)  # a second claim (another open file) is refused while training
        info = json.loads(lock.read_text())
        seen.append((other, who, info["host"], info["pid"]))
        return {"test_result": {"recall@20": 0.1, "mrr@20": 0.01}, "best_epoch": 0}

    real = CellLock.release

    def release(self):
        seen.append(("released", bench.cell_path(cell).is_file()))
        real(self)

    monkeypatch.setattr(CellLock, "release", release)
    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1], {}, tmp_path, trainer=trainer, commit="abc", protocol="paper")
    (cell,) = bench.plan()
    bench.run()
    assert seen[0][0] is None and seen[0][1].startswith(f"process {os.getpid()} on host {socket.gethostname()} since")
    assert seen[0][2:] == (socket.gethostname(), os.getpid())
    assert seen[1:] == [("released", True)]  # the cell's JSON was in place before the lock went
    assert not bench.cell_path(cell).with_suffix(".lock").exists()


def test_a_crashed_cell_lets_go_of_its_lock(tmp_path):
    def trainer(model, dataset, files, config_dict, **kwargs):
        raise RuntimeError("simulated crash")

    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1], {}, tmp_path, trainer=trainer, commit="abc", protocol="paper")
    (cell,) = bench.plan()
    with pytest.raises(RuntimeError, match="simulated crash"):
        bench.run()
    assert not bench.cell_path(cell).with_suffix(".lock").exists() and bench.load(cell) is None


def test_a_results_folder_without_file_locks_is_refused_with_the_fix(tmp_path, monkeypatch):
    import errno
    import fcntl

    from recbole_llm4sbr.benchmark.runner import BenchmarkError

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    trained = []
    bench = Benchmark("ds", ["GRU4Rec"], ["base"], [1], {}, tmp_path, trainer=one_stub_trained(trained),
                      commit="abc", protocol="paper")
    with pytest.raises(BenchmarkError, match=r"\.lock: this file system does not support file locks .*"
                                             r"Fix: --results_dir="):
        bench.run()
    assert trained == []


def test_a_run_that_skips_a_held_cell_exits_3_with_one_line_and_an_honest_report(tmp_path, capsys, monkeypatch):
    """The command must not end with exit code 0 while another live process still trains one of its cells:
    one stderr line names that process and the fix; the report counts the cell as not finished."""
    from recbole_llm4sbr.cli import main

    monkeypatch.delenv("LLM4SBR_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    bench = Benchmark("tiny", ["GRU4Rec"], ["base"], [2020], {}, tmp_path / "res", protocol="paper")
    (cell,) = bench.plan()
    lock = bench.cell_path(cell).with_suffix(".lock")
    argv = ["--benchmark", "--dataset=tiny", "--base_models=GRU4Rec", "--seeds=1", "--variants=base",
            "--protocol=paper", f"--results_dir={tmp_path / 'res'}", "--no_plot"]
    with held_elsewhere(lock) as holder:
        code = main(argv)
        assert lock.exists()  # still the holder's
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 3
    assert len(err) == 1 and err[0].startswith("incomplete: 1 of 1 cells are not finished")
    assert f"process {holder.pid} on host elsewhere since T is training {cell.id}" in err[0]
    assert "Fix: rerun this command" in err[0]
    assert "- cells finished: 0 of 1" in (tmp_path / "res" / "tiny" / "report.md").read_text()
    assert main([*argv, "--report_only"]) == 0  # a report of what is there, by request


def test_a_run_of_one_base_keeps_the_other_bases_in_the_directorys_report(tmp_path):
    """Running --base_models=GRU4Rec after SRGNN into one results folder must not drop SRGNN from
    report.md; cells of another plan (other overrides) stay out."""
    trained = []
    trainer = stub_trainer(trained, lambda lr, s: 0.1, lambda lr, s: 0.2)
    for base in ("SRGNN", "GRU4Rec"):
        Benchmark("ds", [base], ["base"], [7], {}, tmp_path, trainer=trainer, commit="abc", protocol="paper").run()
    Benchmark("ds", ["NARM"], ["base"], [7], {"epochs": "3"}, tmp_path, trainer=trainer, commit="abc",
              protocol="paper").run()
    (tmp_path / "ds" / "cells" / "notes__x__seed1__y.json").write_text("{}")  # not a base: ignored
    gru = Benchmark("ds", ["GRU4Rec"], ["base"], [7], {}, tmp_path, trainer=trainer, commit="abc", protocol="paper")
    shown = gru.with_bases_on_disk()
    gru.store.table_tags = {"base": "text-other"}  # as after a run: the report's view must still move nothing
    shown = gru.with_bases_on_disk()
    assert shown.bases == ["GRU4Rec", "SRGNN"] and gru.bases == ["GRU4Rec"] and shown.store.table_tags is None
    assert sorted(c["base"] for c in shown.finished()) == ["GRU4Rec", "SRGNN"]
    alone = Benchmark("ds", ["SRGNN"], ["base"], [7, 8], {}, tmp_path / "elsewhere", trainer=trainer,
                      commit="abc", protocol="paper")
    assert alone.with_bases_on_disk() is alone


def test_reuse_mode_trains_other_variants_once_with_the_setting_chosen_for_llm4sbr(tmp_path):
    trained = []
    # validation prefers lr 1e-3 with steps (the test numbers are all alike: the choice cannot peek)
    trainer = stub_trainer(trained, lambda lr, step: 0.2 if (lr, step) in ((0.001, 3),) else 0.1,
                           lambda lr, step: 0.1)
    variants = ["base", "llm4sbr", "drop30", "short3"]
    bench = Benchmark("ds", ["GRU4Rec"], variants, [7, 8], {}, tmp_path, trainer=trainer, commit="abc", tune="reuse")
    bench.prepare_stage1 = lambda cells: None
    assert bench.total_runs() == 2 * (4 + 1) + 2 * 2  # base and llm4sbr: grid + 1; the others: 1 per seed
    finals = bench.run()
    grid = [(lr, s) for lr in (0.001, 0.0003) for s in (0, 3)]
    wrapped = "LLM4SBR_GRU4Rec"
    assert trained[:8] == [("GRU4Rec", 7, lr, s) for lr, s in grid] + [(wrapped, 7, lr, s) for lr, s in grid]
    assert trained[8:10] == [(wrapped, 7, 0.001, 3)] * 2  # drop30, short3: llm4sbr's choice, no grid
    assert len(trained) == 14
    by = {(c["variant"], c["seed"]): c for c in finals}
    assert len(by) == 8
    for seed in (7, 8):
        for name in ("drop30", "short3"):
            cell = by[(name, seed)]
            assert cell["setting"] == {"learning_rate": 0.001, "lr_step_size": 3} and cell["grid"] == []
            assert cell["setting_from"] == "llm4sbr" and cell["protocol"] == "fair (setting reused from llm4sbr)"
            assert cell["tuned_on_seed"] == 7
        assert by[("drop30", seed)]["config_dict"]["intent_dropout"] == 0.3
        assert by[("llm4sbr", seed)]["setting_from"] is None and len(by[("llm4sbr", seed)]["grid"]) == 4
        assert by[("base", seed)]["setting_from"] is None and len(by[("base", seed)]["grid"]) == 4  # its own
    # a rerun trains nothing; without llm4sbr among the variants its grid is still planned (for the setting)
    Benchmark("ds", ["GRU4Rec"], variants, [7, 8], {}, tmp_path, trainer=trainer, commit="abc", tune="reuse").run()
    assert len(trained) == 14
    alone = Benchmark("ds", ["GRU4Rec"], ["base", "au_hi"], [7], {}, tmp_path / "alone", trainer=trainer,
                      commit="abc", tune="reuse")
    alone.prepare_stage1 = lambda cells: None
    assert alone.total_runs() == 4 + 1 + 4
    alone.run()
    assert trained[14:] == ([("GRU4Rec", 7, lr, s) for lr, s in grid] + [(wrapped, 7, lr, s) for lr, s in grid]
                            + [(wrapped, 7, 0.001, 3)])
    assert [c["variant"] for c in alone.finished()] == ["base", "au_hi"]


def test_base_mode_tunes_the_intent_strength_around_the_stock_setting(tmp_path):
    """--tune=base: the stock base searches the training grid; each wrapped variant trains with the
    base's chosen setting and searches only the wrapped-only axis (intent_strength) on the first
    seed's validation split; the stock base is never trained once per intent_strength."""
    trained = []

    def trainer(model, dataset, files, config_dict, **kwargs):
        lr, step = config_dict["learning_rate"], config_dict["lr_step_size"]
        strength = config_dict.get("intent_strength")
        trained.append((model, config_dict["seed"], lr, step, strength))
        valid = 0.2 if (lr, step) == (0.0003, 0) else 0.1
        if strength is not None:
            valid += 0.05 if (strength == 0) == (config_dict.get("intent_control") == "constant") else 0
        return {"test_result": {"recall@20": 0.1, "mrr@20": 0.01}, "best_valid_score": valid,
                "valid_score_bigger": True, "best_epoch": 3, "epochs_run": 9, "epochs_max": 50}

    variants = ["base", "llm4sbr", "arch"]
    bench = Benchmark("ds", ["GRU4Rec"], variants, [7, 8], {}, tmp_path, trainer=trainer, commit="abc",
                      tune="base", grid={"intent_strength": [0, 1]})
    bench.prepare_stage1 = lambda cells: None
    assert bench.total_runs() == (4 + 1) + 2 * (2 + 1)
    # the paper's fusion replaces the base's vector: it keeps a grid of its own, without intent_strength
    paper = Benchmark("ds", ["GRU4Rec"], ["base", "paper"], [7, 8], {}, tmp_path / "paper", trainer=trainer,
                      commit="abc", tune="base", grid={"intent_strength": [0, 1]})
    assert not paper.reuses("paper") and paper.variant_grid("paper") == paper.variant_grid("base")
    assert len({c.id for c in paper.grid_cells("GRU4Rec", "paper")}) == 4
    finals = bench.run()
    wrapped = "LLM4SBR_GRU4Rec"
    grid = [(lr, s) for lr in (0.001, 0.0003) for s in (0, 3)]
    assert trained[:4] == [("GRU4Rec", 7, lr, s, None) for lr, s in grid]  # once per setting, no strength
    assert sorted(trained[4:8]) == sorted((wrapped, 7, 0.0003, 0, g) for g in (0, 1) for _ in (0, 1))
    assert len(trained) == 4 + 4 + 3
    by = {(c["variant"], c["seed"]): c for c in finals}
    assert by[("llm4sbr", 8)]["setting"] == {"learning_rate": 0.0003, "lr_step_size": 0, "intent_strength": 1}
    assert by[("arch", 8)]["setting"] == {"learning_rate": 0.0003, "lr_step_size": 0, "intent_strength": 0}
    assert by[("llm4sbr", 7)]["setting_from"] == "base" and len(by[("llm4sbr", 7)]["grid"]) == 2
    assert by[("base", 8)]["setting"] == {"learning_rate": 0.0003, "lr_step_size": 0}


def test_intent_strength_off_is_the_stock_run_and_wins_when_validation_prefers_it(tmp_path):
    """``--grid_intent_strength=0,1,off``: the off point of a residual variant is the stock base's own
    run (never trained as a wrapped model); when the stock base's validation score beats every intent
    strength, each seed's final cell of that variant IS the stock cell of that seed, labelled as the
    variant with ``intent_strength: off`` and ``stock_run`` naming the stock cell (a zero difference)."""
    trained = []

    def trainer(model, dataset, files, config_dict, **kwargs):
        lr, step = config_dict["learning_rate"], config_dict["lr_step_size"]
        strength = config_dict.get("intent_strength")
        trained.append((model, config_dict["seed"], lr, step, strength))
        valid = 0.2 if (lr, step) == (0.001, 0) else 0.1
        if strength is not None:  # llm4sbr: below stock at every strength; arch: above at strength 1
            valid += 0.05 if (strength == 1 and config_dict.get("intent_control") == "constant") else -0.05
        seed = config_dict["seed"]
        return {"test_result": {"recall@20": 0.1 + seed / 1000, "mrr@20": 0.01}, "best_valid_score": valid,
                "valid_score_bigger": True, "best_epoch": 3, "epochs_run": 9, "epochs_max": 50,
                "per_sample": None}

    variants = ["base", "llm4sbr", "arch"]
    bench = Benchmark("ds", ["GRU4Rec"], variants, [7, 8], {}, tmp_path, trainer=trainer, commit="abc",
                      tune="base", grid={"intent_strength": [0, 1, "off"]})
    bench.prepare_stage1 = lambda cells: None
    assert bench.total_runs() == (4 + 1) + 2 * (2 + 1)  # the off points train nothing
    finals = bench.run()
    wrapped = "LLM4SBR_GRU4Rec"
    assert not [t for t in trained if t[4] == "off"]
    assert [t for t in trained if t[0] == "GRU4Rec"] == [("GRU4Rec", 7, lr, s, None) for lr in (0.001, 0.0003)
                                                       for s in (0, 3)] + [("GRU4Rec", 8, 0.001, 0, None)]
    assert [t for t in trained if t[0] == wrapped and t[1] == 8] == [(wrapped, 8, 0.001, 0, 1)]  # arch only
    by = {(c["variant"], c["seed"]): c for c in finals}
    for seed in (7, 8):
        off, stock = by[("llm4sbr", seed)], by[("base", seed)]
        assert off["setting"] == {"learning_rate": 0.001, "lr_step_size": 0, "intent_strength": "off"}
        assert off["stock_run"] == stock["id"] and off["model"] == wrapped and off["variant"] == "llm4sbr"
        assert off["test_result"] == stock["test_result"] and off["setting_from"] == "base"
        assert by[("arch", seed)]["setting"]["intent_strength"] == 1 and "stock_run" not in by[("arch", seed)]
    assert [g["setting"]["intent_strength"] for g in by[("llm4sbr", 7)]["grid"]] == [0, 1, "off"]
    # a control keeps its intents on: what it measures is what they do
    assert [g["setting"]["intent_strength"] for g in by[("arch", 7)]["grid"]] == [0, 1]
    # a per-base default of off (no grid axis) is the stock run too
    plan = Benchmark("ds", ["GRU4Rec"], ["base", "llm4sbr"], [7], {"intent_strength": "off"}, tmp_path / "fixed",
                     trainer=trainer, commit="abc", protocol="paper")
    stock_cell, off_cell = plan.plan()
    assert off_cell == stock_cell and off_cell.stands_for[0] == "llm4sbr"


def test_grid_value_shipped_trains_each_base_with_its_property_files(tmp_path):
    """``--grid_learning_rate=shipped --grid_lr_step_size=shipped``: no training grid; each stock base
    trains with what its shipped property files set (SR-GNN lr 3e-4; NARM x0.1 every 3 epochs; SASRec
    RecBole's 1e-3 and the plugin's constant lr), named exactly as a run given those values is."""
    from recbole_llm4sbr.benchmark.plan import BenchmarkError, Plan

    grid = {"learning_rate": ["shipped"], "lr_step_size": ["shipped"], "intent_strength": [0, 1]}
    plan = Plan("ml-100k-session", ["SRGNN", "NARM", "SASRec"], ["base", "llm4sbr"], [7], tune="base", grid=grid)
    settings = {c.base: dict(c.setting) for c in plan.grid_cells("SRGNN", "base") + plan.grid_cells("NARM", "base")
                + plan.grid_cells("SASRec", "base")}
    assert settings == {"SRGNN": {"learning_rate": 0.0003, "lr_step_size": 0},
                        "NARM": {"learning_rate": 0.001, "lr_step_size": 3},
                        "SASRec": {"learning_rate": 0.001, "lr_step_size": 0}}
    explicit = Plan("ml-100k-session", ["SASRec"], ["base", "llm4sbr"], [7], tune="base",
                    grid={"learning_rate": [0.001], "lr_step_size": [0], "intent_strength": [0, 1]})
    assert plan.grid_cells("SASRec", "base") == explicit.grid_cells("SASRec", "base")
    with pytest.raises(BenchmarkError, match="no property file sets nope"):
        Plan("ml-100k-session", ["SASRec"], ["base"], [7], grid={"nope": ["shipped"], "x": [1, 2]}).grid_cells(
            "SASRec", "base")


def test_wrapped_cells_digest_their_fusion():
    """A cell trained with the paper's fusion can never stand for one with the residual fusion (the
    default), nor one intent strength for another; the stock base's digest ignores both."""
    digest = lambda v, o: settings_digest(relevant_settings("ds", v, o))  # noqa: E731
    assert digest("llm4sbr", {}) == digest("llm4sbr", {"fusion": "residual", "intent_strength": 1.0})
    assert digest("llm4sbr", {}) != digest("llm4sbr", {"fusion": "paper"})
    assert digest("llm4sbr", {"intent_strength": 0}) != digest("llm4sbr", {})
    assert digest("llm4sbr", {"fusion": "paper", "intent_strength": 0}) == digest("llm4sbr", {"fusion": "paper"})
    assert digest("base", {"fusion": "paper", "intent_strength": 0}) == digest("base", {})


def test_reuse_mode_refuses_what_it_cannot_mean(tmp_path):
    from recbole_llm4sbr.benchmark.cli import main
    from recbole_llm4sbr.benchmark.runner import BenchmarkError

    with pytest.raises(BenchmarkError, match="--tune=sometimes"):
        Benchmark("ds", ["GRU4Rec"], ["base"], [1], {}, tmp_path, tune="sometimes")
    assert main(["--benchmark", "--protocol=paper", "--tune=reuse", "--dataset=ds"]) == 2


def test_reuse_mode_end_to_end_on_the_tiny_dataset(tiny):
    """--tune=reuse through the command: base and llm4sbr tuned on a 2-point grid, drop30 trained once
    with llm4sbr's chosen setting and marked so in its cell and the report."""
    from recbole_llm4sbr.cli import main

    tmp_path, calls, _ = tiny
    argv = ["--benchmark", "--dataset=tiny", "--base_models=GRU4Rec", "--seeds=1", "--variants=llm4sbr,drop30",
            "--tune=reuse", "--grid_learning_rate=0.01,0.0001", "--grid_lr_step_size=0", "--stopping_step=2",
            f"--results_dir={tmp_path / 'res'}", f"--data_path={tmp_path / 'data'}", *COMMON]
    assert main(argv) == 0
    assert calls == ["GRU4Rec"] * 2 + ["LLM4SBR_GRU4Rec"] * 3  # drop30: one run, no grid
    from recbole_llm4sbr.benchmark.cli import parse

    args, overrides = parse(argv)
    bench = Benchmark("tiny", ["GRU4Rec"], ["base", "llm4sbr", "drop30"], [2020], overrides, tmp_path / "res",
                      grid=args.grid, tune="reuse")
    final = {c["variant"]: c for c in bench.finished()}
    assert final["drop30"]["setting"] == final["llm4sbr"]["setting"] and final["drop30"]["grid"] == []
    assert final["drop30"]["setting_from"] == "llm4sbr" and final["drop30"]["config_dict"]["intent_dropout"] == 0.3
    md = (tmp_path / "res" / "tiny" / "report.md").read_text()
    assert "fair (setting reused from llm4sbr)" in md
    log = (tmp_path / "res" / "tiny" / "cells" / "benchmark.log").read_text()
    assert "GRU4Rec / drop30: reuses the setting chosen for llm4sbr" in log


def test_cell_files_keep_outcome_lists_on_one_line_and_old_files_read_the_same(tmp_path, monkeypatch):
    """A cell's per-sample lists are one line each (a file of ~100 lines, not one per number); a
    report from files in the old one-number-per-line form is the same report."""
    from recbole_llm4sbr.benchmark.cli import run_benchmark

    rng = __import__("random").Random(0)
    cells = fixed_cells()
    for cell in cells:
        hits = [rng.random() < 0.3 for _ in range(200)]
        cell["per_sample"] = {"order_sha1": "abc", "n": 200, "recall@20": [int(h) for h in hits],
                              "mrr@20": [round(1 / rng.randint(1, 20), 6) if h else 0.0 for h in hits]}
    reports = {}
    for form in ("old", "new"):
        root = tmp_path / form
        bench = Benchmark("ds", ["SRGNN"], ["base", "llm4sbr"], [2020, 2021, 2022], {}, root, protocol="paper")
        by_key = {(c["base"], c["variant"], c["seed"]): c for c in cells}
        for cell in bench.plan():
            data = by_key[(cell.base, cell.variant, cell.seed)]
            path = bench.cell_path(cell)
            if form == "old":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data, indent=1), encoding="utf-8")
            else:
                write_json_atomic(path, data)
                text = path.read_text(encoding="utf-8")
                assert len(text.splitlines()) < 60 and json.loads(text) == data
                assert '"recall@20": [' + ",".join(str(v) for v in data["per_sample"]["recall@20"]) + "]" in text
                mrr = text.split('"mrr@20": [')[1].split("]")[0].split(",")
                assert "0" in mrr and "0.0" not in mrr  # misses written as 0
        _, paths = run_benchmark("ds", "SRGNN", "llm4sbr", "3", {}, root, report_only=True, command="cmd",
                                 commit="abc1234", protocol="paper", plot=False)
        reports[form] = paths["md"].read_text()
    assert "bootstrap" in reports["new"] and reports["old"] == reports["new"]


def test_cells_name_paths_under_the_working_directory_relatively(tmp_path, monkeypatch):
    from recbole_llm4sbr.benchmark.runner import intent_info, portable_path

    monkeypatch.chdir(tmp_path)
    table = tmp_path / "dataset" / "ds" / "intent" / "text-1234"
    info = intent_info(table, {"backend": "text", "backend_info": {"model_path": str(tmp_path / "models" / "m")}})
    assert info["path"] == str(Path("dataset/ds/intent/text-1234")) and info["tag"] == "text-1234"
    assert info["backend_info"]["model_path"] == str(Path("models/m"))
    assert portable_path("/elsewhere/x") == "/elsewhere/x" and portable_path("rel/x") == "rel/x"


def test_compact_cells_script_rewrites_old_cells_in_place(tmp_path):
    """benchmarks/compact_cells.py: an old one-number-per-line cell with absolute paths under the
    checkout becomes the compact form with relative paths; other values and outside paths unchanged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compact_cells", Path(__file__).resolve().parents[1] /
                                                  "benchmarks" / "compact_cells.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    checkout = tmp_path / "checkout"
    cell = fake_cell("SRGNN", "llm4sbr", 2020, 0.14, 0.05, 3.0, 0.3, 1100,
                     intent={"path": str(checkout / "dataset" / "ds" / "intent" / "text-1"), "tag": "text-1",
                             "backend_info": {"model_path": "/opt/models/m"}})
    cell["per_sample"] = {"order_sha1": "abc", "n": 4, "recall@20": [0, 1, 0, 1], "mrr@20": [0.0, 0.5, 0.0, 1.0]}
    path = tmp_path / "res" / "ds" / "cells" / "SRGNN__llm4sbr__seed2020__abcd1234.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(cell, indent=1), encoding="utf-8")
    assert mod.main([str(tmp_path / "res"), f"--root={checkout}"]) == 0
    new = json.loads(path.read_text(encoding="utf-8"))
    assert new["intent"]["path"] == str(Path("dataset/ds/intent/text-1"))
    assert new["intent"]["backend_info"]["model_path"] == "/opt/models/m"  # outside the checkout: kept
    new["intent"]["path"] = cell["intent"]["path"]
    assert new == cell and len(path.read_text(encoding="utf-8").splitlines()) < 40
    assert mod.compact(tmp_path / "res", str(checkout)) == 0  # a second run changes nothing
