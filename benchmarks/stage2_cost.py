"""Stage-2 cost: LLM4SBR_<Base> against the stock <Base>, side by side in one run.

    python benchmarks/stage2_cost.py                                  # six bases, 3 seeds, 2 epochs
    python benchmarks/stage2_cost.py --bases STAMP,GRU4Rec --seeds 1  # a quick look
    python benchmarks/stage2_cost.py --data_path dataset   # an already converted dataset
    python benchmarks/stage2_cost.py --bases GRU4Rec --set intent_buffer_dtype=float32  # another setting

Per (base, seed) the stock and the wrapped model train ``--epochs`` epochs on ``ml-100k-session``
with text intents (``intent_backend: text``, ``intent_samples: typical``; the table is built once,
before any timed run), each in its own fresh subprocess (one torch thread) so that peak memory is
per run. Each run is the benchmark runner's own cell measurement (``recbole_llm4sbr.benchmark.runner
.train_cell``): ``epoch_time_s`` (mean training epoch), ``peak_mem_mb`` (growth of the process's peak
RSS over the run on CPU; CUDA max allocated on a GPU). Modules are imported before the measurement
starts, so import memory counts for neither side. Runs are interleaved (stock, wrapped; the next seed
wrapped first) so drifting load hits both sides alike; the table gives per base the median over seeds
of the wrapped/stock ratio and the median absolute values. The machine is shared: the load average at
the start and end of each run is in the results file.

Inference (full-sort evaluation of the test split) is timed apart from training, in a third process
per (base, seed) that loads both trained checkpoints and alternates them, ``--inference_rounds``
rounds of (stock, wrapped) after one untimed warm-up each, the order flipped every round: the seed's
inference ratio is the median over rounds of wrapped/stock (each round's two runs are seconds apart,
so a load spike moves one round, not the figure), the absolute figures the median run per side.
(The runner's own in-cell ``inference_s``, best of ``--inference_repeats`` in each training process,
minutes apart between the two sides, is kept in the per-run log.)

Results: ``benchmarks/results/stage2_cost.txt`` (rewritten after every pair, so a partial run leaves
its pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASES = ("SRGNN", "GCSAN", "NARM", "STAMP", "GRU4Rec", "SASRec")
DATASET = "ml-100k-session"
#: the goals: wrapped / stock
GOALS = {"epoch": 1.2, "inference": 1.1, "memory": 1.1}
KEEP = ("epoch_time_s", "epoch_times", "inference_s", "inference_runs_s", "peak_mem_mb", "peak_mem_kind",
        "test_result", "load_avg", "params", "torch_threads", "model_file")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def config_dict(args, seed: int, checkpoints: str) -> dict:
    return {"data_path": args.data_path, "epochs": args.epochs, "seed": seed, "show_progress": False,
            "state": "WARNING", "intent_backend": "text", "intent_samples": "typical",
            "stopping_step": args.epochs + 1, "metric_decimal_place": 6, "torch_num_threads": 1,
            "checkpoint_dir": checkpoints, **extra_settings(args)}


def extra_settings(args) -> dict:
    """``--set KEY=VALUE`` (values read as YAML: ``float32``, ``0.1``, ``False``), for every run."""
    import yaml

    out = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: write KEY=VALUE, e.g. --set intent_buffer_dtype=float32")
        out[key.strip()] = yaml.safe_load(value)
    return out


def prepare_stage1(args) -> str:
    """Build (or find) the text intent table before any timed run, as the benchmark runner does."""
    import logging

    from recbole_llm4sbr.config import Config
    from recbole_llm4sbr.data import intents as intents_module
    from recbole_llm4sbr.quick_start.quick_start import prepare_dataset

    log = logging.getLogger("stage2_cost")
    with tempfile.TemporaryDirectory() as d:
        config = Config(model="LLM4SBR_" + args.bases[0], dataset=DATASET,
                        config_dict=config_dict(args, 2020, d), read_cmd_line=False)
        prepare_dataset(config, log)
        table = intents_module.load_dataset_intents(config, log)
    return str(table.path)


def _subprocess(cmd, what: str, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, __file__] + cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def common_args(args) -> list:
    return ["--data_path", args.data_path, "--epochs", str(args.epochs),
            "--inference_repeats", str(args.inference_repeats), "--inference_rounds", str(args.inference_rounds)] + [
            f"--set={item}" for item in args.set or []]


def run_cell(model: str, seed: int, args, checkpoints: str) -> dict:
    """One measured training run in a fresh process (``--cell``), its measurements as a dict; the
    trained checkpoint is left in ``checkpoints`` (its path: ``model_file``)."""
    with tempfile.TemporaryDirectory(prefix="llm4sbr-s2cost-") as d:
        out = Path(d) / "cell.json"
        cmd = ["--cell", model, "--cell_seed", str(seed), "--cell_out", str(out), "--cell_ckpt", checkpoints]
        return _subprocess(cmd + common_args(args), f"{model} seed {seed}", out)


def run_inference(base: str, seed: int, stock_file: str, wrapped_file: str, args) -> dict:
    """Interleaved full-sort inference of two checkpoints in one fresh process (``--inference_pair``)."""
    with tempfile.TemporaryDirectory(prefix="llm4sbr-s2cost-") as d:
        out = Path(d) / "inference.json"
        cmd = ["--inference_pair", stock_file, wrapped_file, "--cell", base, "--cell_seed", str(seed),
               "--cell_out", str(out)]
        return _subprocess(cmd + common_args(args), f"inference of {stock_file} vs {wrapped_file}", out)


def cell_main(args) -> int:
    """Inside the subprocess: import everything first, then the runner's cell measurement."""
    import torch

    torch.set_num_threads(1)
    import recbole.model.sequential_recommender  # noqa: F401 - imported before the memory baseline

    import recbole_llm4sbr.model.wrapper  # noqa: F401
    import recbole_llm4sbr.quick_start.quick_start  # noqa: F401
    from recbole_llm4sbr.benchmark.runner import train_cell

    measured = train_cell(args.cell, DATASET, None, config_dict(args, args.cell_seed, args.cell_ckpt),
                          inference_repeats=args.inference_repeats)
    Path(args.cell_out).write_text(json.dumps({k: measured.get(k) for k in KEEP}), encoding="utf-8")
    return 0


def load_for_inference(model_name: str, path: str, args):
    """(trainer, test dataloader) of a checkpoint, built with the settings its training run had."""
    from recbole_llm4sbr.quick_start.quick_start import build, make_config, read_checkpoint

    config = make_config(model_name, DATASET, config_dict=config_dict(args, args.cell_seed, os.path.dirname(path)),
                         read_cmd_line=False)
    state = read_checkpoint(path)
    _, (_, _, test), model, trainer = build(config)
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    return trainer, test


def inference_main(args) -> int:
    """Inside the subprocess: both checkpoints loaded, then ``--inference_rounds`` rounds of
    (stock, wrapped) full-sort evaluations, the order flipped every round, after one warm-up each."""
    import torch

    torch.set_num_threads(1)
    names = {"stock": args.cell, "wrapped": "LLM4SBR_" + args.cell}
    sides = {side: load_for_inference(names[side], path, args)
             for side, path in zip(("stock", "wrapped"), args.inference_pair)}

    def timed(side):
        trainer, test = sides[side]
        t0 = time.perf_counter()
        trainer.evaluate(test, load_best_model=False, show_progress=False)
        return time.perf_counter() - t0

    for side in sides:
        timed(side)  # warm-up: first-call allocations, lazy initialisation
    runs = {"stock": [], "wrapped": []}
    for r in range(max(1, args.inference_rounds)):
        for side in (("stock", "wrapped") if r % 2 == 0 else ("wrapped", "stock")):
            runs[side].append(timed(side))
    ratios = [w / s for s, w in zip(runs["stock"], runs["wrapped"])]
    result = {"stock_s": statistics.median(runs["stock"]), "wrapped_s": statistics.median(runs["wrapped"]),
              "ratio": statistics.median(ratios), "runs": runs}
    Path(args.cell_out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def table(pairs, bases, head) -> list:
    lines = ["", "| base | epoch | inference | peak memory | stock epoch s | wrapped epoch s | stock inference s | "
             "wrapped inference s | stock peak MB | wrapped peak MB | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for base in bases:
        got = [p for p in pairs if p["base"] == base]
        if not got:
            continue
        r = {key: median([p["wrapped"][m] / p["stock"][m] for p in got])
             for key, m in (("epoch", "epoch_time_s"), ("memory", "peak_mem_mb"))}
        r["inference"] = median([p["inference"]["ratio"] for p in got])
        cells = [f"**{r[k]:.2f}**" if r[k] > GOALS[k] else f"{r[k]:.2f}" for k in ("epoch", "inference", "memory")]
        absolute = [median([p[side][m] for p in got]) for m in ("epoch_time_s",) for side in ("stock", "wrapped")]
        absolute += [median([p["inference"][f"{side}_s"] for p in got]) for side in ("stock", "wrapped")]
        absolute += [median([p[side]["peak_mem_mb"] for p in got]) for side in ("stock", "wrapped")]
        lines.append(f"| {base} | {' | '.join(cells)} | {absolute[0]:.2f} | {absolute[1]:.2f} | {absolute[2]:.3f} | "
                     f"{absolute[3]:.3f} | {absolute[4]:.0f} | {absolute[5]:.0f} | {len(got)} |")
    lines.append("")
    lines.append("ratios = wrapped / stock, median over seeds of the per-seed ratio (inference: of the median "
                 "over interleaved rounds); **bold** = above the goal "
                 f"(epoch <= {GOALS['epoch']}, inference <= {GOALS['inference']}, memory <= {GOALS['memory']}); "
                 "absolute columns are medians over seeds")
    return head + lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default=",".join(BASES))
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, from 2020 (default 3)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--inference_repeats", type=int, default=3,
                    help="the runner's in-cell inference repeats (logged only; default 3)")
    ap.add_argument("--inference_rounds", type=int, default=9,
                    help="interleaved (stock, wrapped) inference rounds per seed (default 9)")
    ap.add_argument("--data_path", default=str(ROOT / "dataset"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage2_cost.txt"))
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a config setting for every run (repeatable), e.g. --set intent_buffer_dtype=float32")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--cell_seed", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cell_out", help=argparse.SUPPRESS)
    ap.add_argument("--cell_ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--inference_pair", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inference_pair:
        return inference_main(args)
    if args.cell:
        return cell_main(args)
    args.bases = [b.strip() for b in args.bases.split(",") if b.strip()]

    import platform

    import torch

    cmd = "python benchmarks/stage2_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table_path = prepare_stage1(args)
    head = [f"command: {cmd}",
            f"python {platform.python_version()}, torch {torch.__version__}; CPU {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, 1 torch thread per run; start load {load_average()}",
            f"dataset {DATASET} ({args.data_path}), text intents ({table_path}), {args.epochs} epochs, "
            f"seeds {', '.join(str(2020 + i) for i in range(args.seeds))}, inference: median of {args.inference_rounds} "
            "interleaved rounds per seed"]
    for line in head:
        print(line, flush=True)
    pairs, log_lines = [], []
    out = Path(args.out)
    for i in range(args.seeds):
        seed = 2020 + i
        for base in args.bases:
            order = ("stock", "wrapped") if i % 2 == 0 else ("wrapped", "stock")
            pair = {"base": base, "seed": seed}
            with tempfile.TemporaryDirectory(prefix="llm4sbr-s2cost-ckpt-") as checkpoints:
                for side in order:
                    model = base if side == "stock" else "LLM4SBR_" + base
                    t0 = time.perf_counter()
                    pair[side] = run_cell(model, seed, args, os.path.join(checkpoints, side))
                    m = pair[side]
                    log_lines.append(f"  {model} seed {seed}: epoch {m['epoch_time_s']:.2f} s "
                                     f"({', '.join(f'{x:.2f}' for x in m['epoch_times'])}), in-cell inference "
                                     f"{m['inference_s']:.3f} s, peak {m['peak_mem_mb']:.0f} MB ({m['peak_mem_kind']}), "
                                     f"MRR@20 {m['test_result'].get('mrr@20', float('nan')):.4f}, load {m['load_avg']}, "
                                     f"run {time.perf_counter() - t0:.0f} s")
                    print(log_lines[-1], flush=True)
                t0 = time.perf_counter()
                inf = pair["inference"] = run_inference(base, seed, pair["stock"]["model_file"],
                                                        pair["wrapped"]["model_file"], args)
            log_lines.append(f"  {base} seed {seed} inference, {args.inference_rounds} interleaved rounds: stock median "
                             f"{inf['stock_s']:.3f} s ({', '.join(f'{x:.3f}' for x in inf['runs']['stock'])}), wrapped "
                             f"median {inf['wrapped_s']:.3f} s ({', '.join(f'{x:.3f}' for x in inf['runs']['wrapped'])}), "
                             f"ratio {inf['ratio']:.2f}, run {time.perf_counter() - t0:.0f} s")
            print(log_lines[-1], flush=True)
            pairs.append(pair)
            lines = table(pairs, args.bases, head) + [f"end load {load_average()}", "", "per run:"] + log_lines
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, out)
    for line in table(pairs, args.bases, []):
        print(line)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
