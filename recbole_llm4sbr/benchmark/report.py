"""Reports rebuilt from the cells: ``report.md`` (Markdown tables), ``summary.csv`` (one row per
(base, variant)), ``cells.csv`` (one row per cell) and ``relative_gain.png`` (optional: matplotlib).

Every table carries the command, the git commit and the intent backend that produced it.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from recbole_llm4sbr.benchmark.aggregate import EFFICIENCY, aggregate, metric_names
from recbole_llm4sbr.benchmark.variants import VARIANTS

log = logging.getLogger("recbole_llm4sbr.benchmark")

#: metrics in the Markdown tables (Hit@K equals Recall@K with one target per sample; it is in the CSV)
TABLE_METRICS = [f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (5, 10, 20)]
HEADLINE = ("recall@20", "mrr@20")


def pretty_metric(key: str) -> str:
    name, _, k = key.partition("@")
    name = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG", "hit": "Hit", "precision": "Precision"}.get(name, name)
    return f"{name}@{k}" if k else name


def fmt_mean_std(mean, std, digits=4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def fmt_rel(rel) -> str:
    return "n/a" if rel is None else f"{(round(rel, 1) or 0.0):+.1f}%"  # no "-0.0%"


def fmt_p(p) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ratio(r) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def fmt_num(v, digits=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.{digits}f}"


def backend_label(intent: Optional[dict]) -> str:
    if not intent:
        return "none"
    backend = intent.get("backend") or "unknown"
    model = intent.get("model")
    if backend == "text":
        return "text (LLM-free: the prefix's own item names)"
    return f"{backend} ({model})" if model else backend


def backends_by_variant(cells: Sequence[dict]) -> Dict[str, str]:
    """variant -> the intent backend(s) its cells used; 'none' for the stock base."""
    out: Dict[str, List[str]] = {}
    for cell in cells:
        label = backend_label(cell.get("intent")) if VARIANTS.get(cell["variant"]) and VARIANTS[cell["variant"]].wrapped \
            else "none (stock base)"
        out.setdefault(cell["variant"], [])
        if label not in out[cell["variant"]]:
            out[cell["variant"]].append(label)
    return {v: "; ".join(labels) for v, labels in out.items()}


def backend_summary(cells: Sequence[dict]) -> str:
    per = backends_by_variant(cells)
    wrapped = {v: b for v, b in per.items() if v != "base"}
    if not wrapped:
        return "none (stock bases only)"
    labels = list(dict.fromkeys(wrapped.values()))
    if len(labels) == 1:
        return labels[0]
    return "; ".join(f"{v}: {b}" for v, b in wrapped.items())


class Report:
    def __init__(self, bench, cells: Optional[Sequence[dict]] = None):
        self.bench = bench
        self.cells = list(cells if cells is not None else bench.finished())
        self.metrics = [m for m in metric_names(self.cells)]
        self.rows = aggregate(self.cells, bench.bases, bench.variants, self.metrics)
        self.backend = backend_summary(self.cells)

    # -- labels ----------------------------------------------------------------------------------------

    def caption(self) -> str:
        return (f"_command: `{self.bench.command}` · git commit `{self.bench.commit}` · "
                f"intent backend: {self.backend}_")

    def provenance(self) -> List[str]:
        """Distinct (command, commit) pairs of the cells, when they are not all from this invocation."""
        pairs = []
        for cell in self.cells:
            pair = (cell.get("command", ""), cell.get("commit", "unknown"))
            if pair not in pairs:
                pairs.append(pair)
        return [f"`{c}` at commit `{g}`" for c, g in pairs]

    # -- markdown --------------------------------------------------------------------------------------

    def markdown(self, png: Optional[str] = None) -> str:
        b = self.bench
        table_metrics = [m for m in TABLE_METRICS if m in self.metrics] or self.metrics
        n_plan = len(b.plan())
        lines = [f"# LLM4SBR benchmark on `{b.dataset}`", ""]
        lines += [
            f"- command: `{b.command}`",
            f"- git commit: `{b.commit}`",
            f"- intent backend: {self.backend}",
            f"- bases: {', '.join(b.bases)}; variants: {', '.join(b.variants)}; seeds: {', '.join(map(str, b.seeds))}",
            f"- cells finished: {len(self.cells)} of {n_plan}",
            f"- config overrides for every cell: {', '.join(f'{k}={v}' for k, v in b.overrides.items()) or 'none'}",
        ]
        devices = sorted({str(c.get('device')) for c in self.cells})
        threads = sorted({str(c.get('torch_threads')) for c in self.cells})
        if self.cells:
            lines.append(f"- device: {', '.join(devices)}; torch threads: {', '.join(threads)}")
        prov = self.provenance()
        if len(prov) > 1 or (prov and prov[0] != f"`{b.command}` at commit `{b.commit}`"):
            lines.append("- cells were produced by: " + "; ".join(prov))
        lines += [
            "",
            "Test metrics from RecBole's full-ranking evaluator on the test split, with the epoch chosen on the "
            "validation split by RecBole's Trainer (`valid_metric` "
            f"{', '.join(sorted({str(c.get('valid_metric')) for c in self.cells})) or 'n/a'}). "
            "mean ± sample std (ddof 1) over seeds. Recall@K equals Hit@K here (one target per sample); "
            "Hit is in the CSV.",
            "",
            "## Test metrics",
            "",
        ]
        head = ["base", "variant", "seeds"] + [pretty_metric(m) for m in table_metrics]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            lines.append(self._row([r["base"], r["variant"], str(r["n"])]
                                   + [fmt_mean_std(r[m], r[f"{m} std"]) for m in table_metrics]))
        lines += ["", self.caption(), ""]

        lines += ["## Relative change vs the stock base", "",
                  "100 × (mean variant − mean base) / mean base; p: two-sided paired t-test (scipy `ttest_rel`) "
                  "on per-seed values over the seeds both sides finished (n/a with fewer than 2 pairs).", ""]
        head = ["base", "variant", "pairs"] + [pretty_metric(m) for m in table_metrics]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            if r["variant"] == "base":
                continue
            pairs = r.get(f"{table_metrics[0]} pairs", 0)
            lines.append(self._row([r["base"], r["variant"], str(pairs)]
                                   + [f"{fmt_rel(r[f'{m} rel'])} (p {fmt_p(r[f'{m} p'])})" for m in table_metrics]))
        lines += ["", self.caption(), ""]

        mem_kinds = sorted({str(c.get("peak_mem_kind")) for c in self.cells})
        lines += ["## Efficiency (stage 2)", "",
                  "Means over seeds; ratio = variant / stock base measured in the same run. epoch: mean training "
                  "epoch; to best: wall time from the start of training to the end of the best epoch's validation "
                  "(best epoch 0-based, mean); inference: one full-sort evaluation of the test split with the best "
                  f"weights (best of {b.inference_repeats}); memory: {', '.join(mem_kinds) or 'n/a'} over the cell "
                  "(MB); params: trainable parameters. Stage 1 is not included (below).", ""]
        head = ["base", "variant", "epoch s", "ratio", "best epoch", "to best s", "ratio", "inference s", "ratio",
                "memory MB", "ratio", "params", "ratio"]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            best = [c.get("best_epoch") for c in self.cells if c["base"] == r["base"] and c["variant"] == r["variant"]
                    and c.get("best_epoch") is not None]
            lines.append(self._row([
                r["base"], r["variant"],
                fmt_num(r["epoch_time_s"]), fmt_ratio(r["epoch_time_s ratio"]),
                fmt_num(sum(best) / len(best), 1) if best else "n/a",
                fmt_num(r["time_to_best_s"]), fmt_ratio(r["time_to_best_s ratio"]),
                fmt_num(r["inference_s"], 3), fmt_ratio(r["inference_s ratio"]),
                fmt_num(r["peak_mem_mb"], 1), fmt_ratio(r["peak_mem_mb ratio"]),
                fmt_num(int(r["params"])) if r["params"] is not None else "n/a", fmt_ratio(r["params ratio"]),
            ]))
        loads = [x for c in self.cells for x in (c.get("load_avg") or []) if x is not None]
        if loads:
            lines += ["", f"1-minute load average of the machine during the cells: {min(loads):.1f} to {max(loads):.1f} "
                          f"(torch threads {', '.join(threads)}); timings taken while other processes ran are "
                          "inflated, and the ratios are only as fair as the load was even."]
        lines += ["", self.caption(), ""]

        lines += self.stage1_markdown()
        lines += ["## Relative gains chart", ""]
        if png:
            lines += [f"![relative change vs base]({png})", "", self.caption(), ""]
        else:
            lines += ["(not drawn: matplotlib is not installed; `pip install matplotlib`)", ""]
        return "\n".join(lines).rstrip() + "\n"

    def stage1_markdown(self) -> List[str]:
        tables: Dict[str, dict] = {}
        users: Dict[str, List[str]] = {}
        for cell in self.cells:
            intent = cell.get("intent")
            if not intent:
                continue
            tables.setdefault(intent["path"], intent)
            users.setdefault(intent["path"], [])
            if cell["variant"] not in users[intent["path"]]:
                users[intent["path"]].append(cell["variant"])
        lines = ["## Stage 1: the intent tables that fed these cells", ""]
        if not tables:
            return lines + ["No LLM4SBR cell finished yet.", ""]
        for path, info in tables.items():
            lines += [f"### `{info.get('tag')}` (variants: {', '.join(users[path])})", "",
                      f"- path: `{path}`",
                      f"- backend: {backend_label(info)}",
                      f"- encoder: {info.get('encoder')}; r (intent_topr): {info.get('topr')}; "
                      f"samples: {info.get('intent_samples')}; views: {info.get('views')}; built {info.get('created')}"]
            summary = info.get("summary") or {}
            if summary:
                lines += ["", "| stage 1 | value |", "|---|---:|"]
                for k, v in summary.items():
                    value = f"{v:.2f} s" if k.startswith("time") and isinstance(v, (int, float)) else str(v)
                    lines.append(f"| {k} | {value} |")
            else:
                lines.append("- summary: not recorded in the table's meta.json")
            lines += ["", self.caption(), ""]
        return lines

    @staticmethod
    def _row(cols: Sequence[str]) -> str:
        return "| " + " | ".join(str(c) for c in cols) + " |"

    # -- csv -------------------------------------------------------------------------------------------

    def summary_rows(self) -> List[dict]:
        per_variant = backends_by_variant(self.cells)
        out = []
        for r in self.rows:
            row = {"dataset": self.bench.dataset, "base": r["base"], "variant": r["variant"],
                   "model": VARIANTS[r["variant"]].model(r["base"]), "seeds": " ".join(map(str, r["seeds"])),
                   "n": r["n"]}
            for m in self.metrics:
                row[f"{m} mean"], row[f"{m} std"] = r[m], r[f"{m} std"]
                row[f"{m} rel %"] = r.get(f"{m} rel")
                row[f"{m} p"] = r.get(f"{m} p")
                row[f"{m} pairs"] = r.get(f"{m} pairs")
            for key, _, _ in EFFICIENCY:
                row[f"{key} mean"], row[f"{key} std"], row[f"{key} ratio"] = r[key], r[f"{key} std"], r[f"{key} ratio"]
            row["intent backend"] = per_variant.get(r["variant"], "")
            row["command"], row["commit"] = self.bench.command, self.bench.commit
            out.append(row)
        return out

    def cell_rows(self) -> List[dict]:
        out = []
        for c in self.cells:
            row = {k: c.get(k) for k in ("id", "base", "variant", "seed", "model")}
            row.update({m: c.get("test_result", {}).get(m) for m in self.metrics})
            row.update({k: c.get(k) for k in ("best_epoch", "epochs_run", "epoch_time_s", "time_to_best_s",
                                               "inference_s", "peak_mem_mb", "peak_mem_kind", "params", "device")})
            row["intent backend"] = backend_label(c.get("intent")) if c.get("intent") else "none"
            row["intent table"] = (c.get("intent") or {}).get("tag", "")
            row["command"], row["commit"], row["finished"] = c.get("command"), c.get("commit"), c.get("finished")
            out.append(row)
        return out

    # -- files -----------------------------------------------------------------------------------------

    def write(self, plot: bool = True) -> Dict[str, Path]:
        folder = self.bench.folder
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        png = None
        if plot and self.rows:
            from recbole_llm4sbr.benchmark.plot import plot_relative_gains

            png = plot_relative_gains(self, folder / "relative_gain.png")
            if png:
                paths["png"] = png
        elif (folder / "relative_gain.png").is_file():
            png = folder / "relative_gain.png"  # left from an earlier call of this run: still referenced
        paths["md"] = _write_text(folder / "report.md", self.markdown(png.name if png else None))
        paths["csv"] = _write_csv(folder / "summary.csv", self.summary_rows())
        paths["cells_csv"] = _write_csv(folder / "cells.csv", self.cell_rows())
        return paths


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, rows: List[dict]) -> Path:
    fields: List[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


def write_reports(bench, plot: bool = True, quiet: bool = False) -> Dict[str, Path]:
    paths = Report(bench).write(plot=plot)
    if not quiet:
        log.info("reports: " + ", ".join(str(p) for p in paths.values()))
    return paths
