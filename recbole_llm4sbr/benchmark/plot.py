"""``relative_gain.png``: relative change vs the stock base of Recall@20 and MRR@20, per base and variant.

matplotlib is optional (setup.py extra ``plot``): without it no PNG is drawn and one log line says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger("recbole_llm4sbr.benchmark")


def plot_relative_gains(report, path: Path, metrics=("recall@20", "mrr@20")) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("relative_gain.png not drawn: matplotlib is not installed "
                 "(pip install matplotlib, or pip install -e '.[plot]')")
        return None
    rows = [r for r in report.rows if r["variant"] != "base"]
    metrics = [m for m in metrics if m in report.metrics]
    if not rows or not metrics:
        return None
    bases = [b for b in report.bench.bases if any(r["base"] == b for r in rows)]
    variants = [v for v in report.bench.variants if v != "base" and any(r["variant"] == v for r in rows)]
    width = 0.8 / max(1, len(variants))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.0, 1.3 * len(bases) * len(metrics) + 2), 4.2),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for j, variant in enumerate(variants):
            xs, ys, stars = [], [], []
            for i, base in enumerate(bases):
                row = next((r for r in rows if r["base"] == base and r["variant"] == variant), None)
                if row is None or row.get(f"{metric} rel") is None:
                    continue
                xs.append(i + (j - (len(variants) - 1) / 2) * width)
                ys.append(row[f"{metric} rel"])
                p = row.get(f"{metric} p")
                stars.append("*" if p is not None and p < 0.05 else "")
            bars = ax.bar(xs, ys, width=width * 0.95, label=variant)
            for bar, star in zip(bars, stars):
                if star:
                    y = bar.get_height()
                    ax.annotate(star, (bar.get_x() + bar.get_width() / 2, y), ha="center",
                                va="bottom" if y >= 0 else "top")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(bases)))
        ax.set_xticklabels(bases, rotation=20)
        name, _, k = metric.partition("@")
        ax.set_title(f"{ {'recall': 'Recall', 'mrr': 'MRR'}.get(name, name)}@{k}: change vs base (%)")
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report.bench.dataset} · commit {report.bench.commit} · intent backend: {report.backend}\n"
                 f"{report.bench.command}\n(* paired t-test p < 0.05 over seeds)", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
