"""benchmarks/compare_variants.py: per seed the protocol's choice (best validation), never test."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("compare_variants", ROOT / "benchmarks" / "compare_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(folder, variant, seed, digest, valid, test, finished=True):
    cell = {"base": "NARM", "variant": variant, "seed": seed, "best_valid_score": valid,
            "valid_score_bigger": True, "finished": "2026" if finished else None,
            "test_result": {"recall@20": test}}
    (folder / f"NARM__{variant}__seed{seed}__{digest}.json").write_text(json.dumps(cell))


def test_chosen_cells_picks_best_validation_not_best_test(tmp_path):
    mod = _load()
    _cell(tmp_path, "au_hi", 2020, "aaaa", valid=0.05, test=0.10)
    _cell(tmp_path, "au_hi", 2020, "bbbb", valid=0.04, test=0.30)  # better on test: must not be chosen
    _cell(tmp_path, "au_hi", 2021, "cccc", valid=0.01, test=0.20)
    _cell(tmp_path, "au_hi", 2022, "dddd", valid=0.09, test=0.90, finished=False)  # unfinished: ignored
    _cell(tmp_path, "arch_au_hi", 2020, "eeee", valid=0.99, test=0.99)  # another variant
    got = mod.chosen_cells(tmp_path, "NARM", "au_hi")
    assert sorted(got) == [2020, 2021]
    assert got[2020]["test_result"]["recall@20"] == 0.10
