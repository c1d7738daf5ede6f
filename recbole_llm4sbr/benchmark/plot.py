"""``relative_gain.png``: relative difference of Recall@20 and MRR@20 vs the stock base (top row) and
vs ``arch`` (bottom row, when there are ``arch`` cells), with the paired-bootstrap 95 % CI as error bars.

matplotlib is optional (setup.py extra ``plot``): without it no PNG is drawn and one log line says so.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

from recbole_llm4sbr.benchmark.variants import role_variant

log = logging.getLogger("recbole_llm4sbr.benchmark")


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (a ``None`` in ``sys.modules`` counts as missing, as for import)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bar(comparison: dict) -> tuple[float | None, float, float]:
    """Height and error-bar extents of one bar: the bootstrap's relative difference and CI when there is
    one (the bar and its whiskers then describe the same paired seeds), else the relative change of the
    means without whiskers."""
    boot = comparison.get("boot")
    if boot and boot.get("rel") is not None:
        return boot["rel"], boot["rel"] - boot["rel_lo"], boot["rel_hi"] - boot["rel"]
    return comparison.get("rel"), 0.0, 0.0


def plot_relative_gains(report, path: Path, metrics=("recall@20", "mrr@20")) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("relative_gain.png not drawn: matplotlib is not installed "
                 "(pip install matplotlib, or pip install -e '.[plot]')")
        return None
    metrics = [m for m in metrics if m in report.headline]
    panels = [(ref, rows) for ref, rows in (("stock base", report.vs_base), (role_variant("constant_control"), report.vs_arch)) if rows]
    if not panels or not metrics:
        return None
    bases = [b for b in report.bases if any(r["base"] == b for _, rows in panels for r in rows)]
    shown = [v for v in report.variants if any(r["variant"] == v for _, rows in panels for r in rows)]
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    colors = {v: palette[i % len(palette)] for i, v in enumerate(shown)}  # one colour per variant in every panel
    fig, axes = plt.subplots(len(panels), len(metrics), squeeze=False,
                             figsize=(max(6.0, 1.4 * len(bases) * len(metrics) + 2), 3.8 * len(panels) + 0.6))
    for (reference, rows), ax_row in zip(panels, axes):
        variants = [v for v in report.variants if any(r["variant"] == v for r in rows)]
        width = 0.8 / max(1, len(variants))
        for ax, metric in zip(ax_row, metrics):
            for j, variant in enumerate(variants):
                xs, ys, lo, hi = [], [], [], []
                for i, base in enumerate(bases):
                    row = next((r for r in rows if r["base"] == base and r["variant"] == variant), None)
                    height, below, above = _bar(row[metric]) if row else (None, 0.0, 0.0)
                    if height is None:
                        continue
                    xs.append(i + (j - (len(variants) - 1) / 2) * width)
                    ys.append(height)
                    lo.append(below)
                    hi.append(above)
                ax.bar(xs, ys, width=width * 0.95, label=variant, color=colors[variant], yerr=[lo, hi], capsize=2,
                       error_kw={"linewidth": 0.8})
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xticks(range(len(bases)))
            ax.set_xticklabels(bases, rotation=20)
            name, _, k = metric.partition("@")
            ax.set_title(f"{ {'recall': 'Recall', 'mrr': 'MRR'}.get(name, name)}@{k}: vs {reference} (%)", fontsize=9)
            ax.set_ylabel("%")
        ax_row[0].legend(fontsize=7)
    commits = ", ".join(dict.fromkeys(str(c.get("commit")) for c in report.cells))
    title = [f"{report.bench.dataset} · cells trained at commit{'s' if ', ' in commits else ''} {commits}",
             *textwrap.wrap(f"intent backend: {report.backend}", 140),
             ("bars: relative difference of the means over the paired seeds; whiskers: paired bootstrap 95 % CI "
             "over test samples")]
    fig.suptitle("\n".join(title), fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
