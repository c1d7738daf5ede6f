"""Reports rebuilt from the cells: ``report.md`` (Markdown tables), ``summary.csv`` (one row per
(base, variant)), ``cells.csv`` (one row per cell) and ``relative_gain.png`` (optional: matplotlib).

The report answers "is it the LLM?": every variant against the fairly trained stock base and every intent
variant against ``arch`` (the same wrapper with one constant intent), each with a paired t-test over seeds
and a paired bootstrap over test samples. Every table names the commits the cells were trained at (not
the commit that rewrote the report: ``--report_only`` runs at whatever HEAD is checked out).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from recbole_llm4sbr.benchmark.aggregate import (
    EFFICIENCY,
    HEADLINE_METRICS,
    aggregate,
    at_cap,
    best_by_validation,
    compare,
    comparisons,
    group,
    metric_names,
    no_harm_verdict,
)
from recbole_llm4sbr.benchmark.variants import STOCK, VARIANTS, role_variant, role_variants
from recbole_llm4sbr.model.bases import is_wrapped as is_wrapped_model

log = logging.getLogger("recbole_llm4sbr.benchmark")

#: metrics in the full Markdown tables (Hit@K equals Recall@K with one target per sample; it is in the CSV)
TABLE_METRICS = [f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (5, 10, 20)]
AT_CAP = "⚠ at cap"
CHART = "relative_gain.png"

# the intent variant and the controls, found by role (with the fusion as configured): the names the report
# compares with and writes (the reference, STOCK, is defined beside role_variant in variants.py)
INTENTS = role_variant("intents")  # llm4sbr: the LLM's intents, the variant the verdict is on
CONSTANT = role_variant("constant_control")  # arch
SHUFFLED = role_variant("shuffled_control")  # shuffled
TEXT = role_variant("text_control")  # text
PAPER = role_variant("intents", "paper")  # paper: the full model with the paper's fusion
#: the full model under each fusion (llm4sbr, paper): what "does wrapping cost the base?" compares
WRAPPED_MODELS = tuple(role_variants("intents"))


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


def fmt_signed(v, digits=4) -> str:
    return "n/a" if v is None else f"{(round(v, digits) or 0.0):+.{digits}f}"


def fmt_ci(boot: dict | None) -> str:
    """``+0.0606 [+0.0412, +0.0800]``: observed difference and its 95 % bootstrap CI."""
    if not boot:
        return "n/a"
    return f"{fmt_signed(boot['diff'])} [{fmt_signed(boot['lo'])}, {fmt_signed(boot['hi'])}]"


def fmt_schedule(setting: dict | None) -> str:
    if not setting or "lr_step_size" not in setting:
        return "n/a"
    step = setting.get("lr_step_size")
    if not step:
        return "constant"
    return f"×{setting.get('lr_gamma', 0.1):g} every {step} epochs"


def fmt_lr(setting: dict | None) -> str:
    lr = (setting or {}).get("learning_rate")
    return "n/a" if lr is None else f"{float(lr):g}"


def fmt_epochs(best, run, cap, capped) -> str:
    """``best / run / cap`` (best 0-based), flagged when the best epoch was the last one allowed."""
    text = " / ".join("n/a" if v is None else str(v) for v in (best, run, cap))
    return f"{text} {AT_CAP}" if capped else text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def is_wrapped(variant: str, cells: Sequence[dict] = ()) -> bool:
    """A variant that trains ``LLM4SBR_<Base>``; variants this checkout does not know are judged by
    their cells' model name (reports must read cells written by newer code)."""
    if variant in VARIANTS:
        return VARIANTS[variant].wrapped
    models = [c.get("model") or "" for c in cells if c.get("variant") == variant]
    return any(is_wrapped_model(m) for m in models) if models else variant != STOCK


def backend_label(intent: dict | None) -> str:
    if not intent:
        return "none"
    backend = intent.get("backend") or "unknown"
    model = intent.get("model")
    if backend == "text":
        return "text (LLM-free: the prefix's own item names)"
    return f"{backend} ({model})" if model else backend


def backends_by_variant(cells: Sequence[dict]) -> dict[str, str]:
    """variant -> the intent backend(s) its cells used; 'none' for the stock base."""
    out: dict[str, list[str]] = {}
    for cell in sorted(cells, key=lambda c: bool(c.get("stock_run"))):  # a stock run standing for a
        if cell.get("stock_run") and out.get(cell["variant"]):          # wrapped one adds no backend
            continue
        label = ("off (the stock base's run)" if cell.get("stock_run") else
                 backend_label(cell.get("intent")) if is_wrapped(cell["variant"], cells) else "none (stock base)")
        out.setdefault(cell["variant"], [])
        if label not in out[cell["variant"]]:
            out[cell["variant"]].append(label)
    return {v: "; ".join(labels) for v, labels in out.items()}


def backend_summary(cells: Sequence[dict]) -> str:
    per = backends_by_variant(cells)
    wrapped = {v: b for v, b in per.items() if v != STOCK}
    if not wrapped:
        return "none (stock bases only)"
    labels = list(dict.fromkeys(wrapped.values()))
    if len(labels) == 1:
        return labels[0]
    return "; ".join(f"{v}: {b}" for v, b in wrapped.items())


def cell_commits(cells: Sequence[dict]) -> list[tuple[str, int]]:
    """(commit, number of cells) in order of first appearance: what the numbers were trained with."""
    counts: dict[str, int] = {}
    for cell in cells:
        commit = str(cell.get("commit") or "unknown")
        counts[commit] = counts.get(commit, 0) + 1
    return list(counts.items())


def commits_phrase(cells: Sequence[dict], counts: bool = False) -> str:
    """``cells trained at git commit `a` `` / ``... commits `a` (30 cells), `b` (15 cells)``."""
    pairs = cell_commits(cells)
    if not pairs:
        return "no cells"
    word = "commit" if len(pairs) == 1 else "commits"
    names = [f"`{c}`" + (f" ({plural(n, 'cell')})" if counts and len(pairs) > 1 else "") for c, n in pairs]
    return f"cells trained at git {word} {', '.join(names)}"


def cell_setting(cell: dict) -> dict | None:
    return cell.get("setting") or None


def mean_std_of(by_seed: dict, metric: str) -> tuple:
    """(mean, std) of one group's test ``metric`` over its seeds."""
    c = compare(by_seed, {}, metric, bootstrap=False)
    return c["mean"], c["std"]


def controls_of(fusion: str | None = None) -> tuple:
    """``(stock, constant, shuffled, text)`` variant names for the full model of ``fusion`` (None: the
    default fusion's ``llm4sbr``; ``"paper"``: ``paper_arch``, ...)."""
    return (STOCK, *(role_variant(role, fusion) for role in ("constant_control", "shuffled_control", "text_control")))


def llm_verdict(vs_base: dict | None, vs_arch: dict | None, vs_shuffled: dict | None,
                vs_text: dict | None = None, names: tuple = (STOCK, CONSTANT, SHUFFLED, TEXT)) -> str:
    """The report's rule: a gain is the LLM's only if ``llm4sbr`` (``INTENTS``) beats the stock base and
    ``arch`` (``CONSTANT``) with the bootstrap CI above 0, and beats ``shuffled`` (other sessions'
    intents) too; and it needs the LLM only if LLM-free ``text`` intents do not match it (without
    ``text`` cells the verdict says so). ``names``: the controls' names (``controls_of``: the paper
    fusion's are ``paper_arch``, ...)."""
    def lo(c):
        return c["boot"]["lo"] if c and c.get("boot") else None

    stock, constant, shuffled, text = names
    for name, c in ((stock, vs_base), (constant, vs_arch), (shuffled, vs_shuffled)):
        if c is None:
            return f"open: no `{name}` cells"
        if lo(c) is None:
            return f"n/a: no bootstrap vs `{name}`"
        if lo(c) <= 0:
            return {stock: "no: not above the stock base",
                    constant: f"no: not above `{constant}` (the wrapper, not the intents)",
                    shuffled: f"no: `{shuffled}` intents do as well"}[name]
    if vs_text is None:
        return f"yes over the controls; no `{text}` cells: whether it needs the LLM is open"
    if lo(vs_text) is None:
        return f"yes over the controls; n/a: no bootstrap vs `{text}`"
    if lo(vs_text) <= 0:
        return f"no LLM needed: the intents help, but LLM-free `{text}` intents do as well"
    return "yes"


class Report:
    def __init__(self, bench, cells: Sequence[dict] | None = None):
        self.bench = bench
        self.cells = list(cells if cells is not None else bench.finished())
        self.metrics = list(metric_names(self.cells))
        self.bases = list(dict.fromkeys([*bench.bases, *(c["base"] for c in self.cells)]))
        self.variants = list(dict.fromkeys([*bench.variants, *(c["variant"] for c in self.cells)]))
        self.headline = [m for m in HEADLINE_METRICS if m in self.metrics]
        self.rows = aggregate(self.cells, self.bases, self.variants, self.metrics)
        self.backend = backend_summary(self.cells)
        self.groups = group(self.cells)
        self.vs_base = comparisons(self.cells, self.bases, self.variants, STOCK, self.headline)
        intent_variants = [v for v in self.variants if v not in (STOCK, CONSTANT) and is_wrapped(v, self.cells)]
        self.vs_arch = comparisons(self.cells, self.bases, intent_variants, CONSTANT, self.headline)
        self.chart_note = ""  # set by write(): why the chart is old or missing

    # -- labels ----------------------------------------------------------------------------------------

    def caption(self) -> str:
        return (f"_command: `{self.bench.command}` · {commits_phrase(self.cells)} · "
                f"intent backend: {self.backend}_")

    def provenance(self) -> list[str]:
        """Distinct (command, commit) pairs of the cells."""
        pairs = []
        for cell in self.cells:
            pair = (cell.get("command", ""), cell.get("commit", "unknown"))
            if pair not in pairs:
                pairs.append(pair)
        return [f"`{c}` at commit `{g}`" for c, g in pairs]

    def protocol_lines(self) -> list[str]:
        """Which training protocol, how many test samples and seeds the numbers rest on."""
        counts: dict[str, int] = {}
        for c in self.cells:
            name = str(c.get("protocol") or "not recorded")
            counts[name] = counts.get(name, 0) + 1
        tuned = sorted({str(c["tuned_on_seed"]) for c in self.cells if c.get("tuned_on_seed") is not None})
        on_seed = f"{'seed ' + ', '.join(tuned) if tuned else 'the first seed'}'s validation score"
        axes = getattr(self.bench, "base_axes", {}) or {}
        fixed = axes and all(len(v) == 1 for v in axes.values())
        explain = {
            "fair": (("the training setting not searched (" + ", ".join(f"{k} {v[0]}" for k, v in axes.items())
                      + "; shipped = each base's value in the shipped property files, the fair protocol's choice "
                      "on ml-100k-session's validation), the wrapped-only axes chosen on " + on_seed
                      + ", then every seed trained with the chosen setting") if fixed else
                     ("per (base, variant) a small grid over learning rate × lr schedule, the setting chosen on "
                      f"{on_seed}, then every seed trained with the chosen setting")),
            "paper": "the paper's step schedule for every model, no search",
            "not recorded": "cells from before cell format 2",
        }
        parts = [f"{p} ({plural(n, 'cell')}: {explain.get(p, 'see the cells')})" for p, n in counts.items()]
        sizes = sorted({int(c["per_sample"]["n"]) if (c.get("per_sample") or {}).get("n") is not None
                        else c.get("test_samples") for c in self.cells} - {None})
        lines = [f"- protocol: {'; '.join(parts) or 'n/a'}",
                 (f"- test samples per cell: n = {', '.join(map(str, sizes)) or 'n/a'} (one sample per test session; "
                 "the bootstrap resamples them)")]
        seeds = []
        for base in self.bases:
            per = {v: sorted(self.groups[(base, v)]) for v in self.variants if (base, v) in self.groups}
            if not per:
                continue
            distinct = {tuple(s) for s in per.values()}
            if len(distinct) == 1:
                only = next(iter(distinct))
                seeds.append(f"{base} {len(only)} ({', '.join(map(str, only))})")
            else:
                seeds.append(f"{base} " + ", ".join(f"{v} {len(s)}" for v, s in per.items()))
        lines.append(f"- seeds per base: {'; '.join(seeds) or 'n/a'}")
        return lines

    # -- markdown --------------------------------------------------------------------------------------

    def markdown(self, png: str | None = None) -> str:
        b = self.bench
        lines = [f"# LLM4SBR benchmark on `{b.dataset}`", ""]
        lines += [
            f"- command: `{b.command}`",
            f"- {commits_phrase(self.cells, counts=True)}",
            f"- intent backend: {self.backend}",
            f"- bases: {', '.join(b.bases)}; variants: {', '.join(b.variants)}; seeds: {', '.join(map(str, b.seeds))}",
            f"- cells finished: {len(self.cells)} of {len(b.plan())}",
            f"- config overrides for every cell: {', '.join(f'{k}={v}' for k, v in b.overrides.items()) or 'none'}",
        ]
        devices = sorted({str(c.get('device')) for c in self.cells})
        threads = sorted({str(c.get('torch_threads')) for c in self.cells})
        if self.cells:
            lines.append(f"- device: {', '.join(devices)}; torch threads: {', '.join(threads)}")
        prov = self.provenance()
        if prov:
            lines.append("- cells were produced by: " + "; ".join(prov))
        lines += self.protocol_lines()
        if self.cells and b.commit not in {c for c, _ in cell_commits(self.cells)}:
            lines.append(f"- this report was rebuilt from those cells by the code at commit `{b.commit}`")
        valid = ", ".join(sorted({str(c.get('valid_metric')) for c in self.cells})) or "n/a"
        lines += [
            "",
            (f"Test metrics from RecBole's full-ranking evaluator on the test split, with the epoch chosen on the "
             f"validation split by RecBole's Trainer (`valid_metric` {valid}). mean ± sample std (ddof 1) over "
             "seeds. Recall@K equals Hit@K here (one target per sample); Hit is in the CSV."),
            "",
        ]
        lines += self.headline_markdown()
        lines += self.cells_markdown()
        lines += self.full_tables_markdown()
        lines += self.efficiency_markdown()
        lines += self.stage1_markdown()
        lines += ["## Relative gains chart", ""]
        if png:
            lines += [f"![relative change vs {STOCK} and vs {CONSTANT}]({png})", ""]
            if self.chart_note:
                lines += [self.chart_note, ""]
            lines += [self.caption(), ""]
        else:
            lines += [self.chart_note or "(not drawn: matplotlib is not installed; `pip install matplotlib`)", ""]
        return "\n".join(lines).rstrip() + "\n"

    def user_markdown(self) -> list[str]:
        """What a user asks first: does wrapping cost my base (``WRAPPED_MODELS``: ``llm4sbr`` and ``paper`` against the
        stock base), and does the best wrapped model beat the best stock model (both picked on the
        validation split, then compared on test)."""
        wrapped = self._with_cells(WRAPPED_MODELS)
        if not wrapped or not self.headline:
            return []
        lines = ["## Does wrapping cost the base? Does the best wrapped model beat the best stock model?", "",
                 (f"`{INTENTS}`: the default fusion (`fusion: residual`: the base's own session vector plus an "
                  f"intent term that starts at zero); `{PAPER}`: the paper's gated fusion, which replaces the base's vector. "
                  "Verdict per metric: gains (bootstrap 95 % CI of the difference above 0), holds (mean at least the "
                  "stock base's, CI not wholly below 0), below (mean under it, CI across 0), costs (CI wholly below 0). "
                  "`off: the stock run`: the setting chosen on validation was `intent_strength: off`, under which "
                  "LLM4SBR_<Base> is <Base> weight for weight, so its cells are the stock base's own runs."),
                 ""]
        head = ["base", "seeds", *[f"stock {pretty_metric(m)}" for m in self.headline]]
        for v in wrapped:
            for m in self.headline:
                head += [f"{v} {pretty_metric(m)}", f"{v} − stock [95 % CI]", "verdict"]
        lines += [self._row(head), self._row(["---", "---:"] + ["---:"] * (len(head) - 2))]
        for base in self.bases:
            ref = self.groups.get((base, STOCK))
            if not ref or not any((base, v) in self.groups for v in wrapped):
                continue
            seeds = "/".join(str(len(self.groups.get((base, v), {}))) for v in [STOCK, *wrapped])
            cols = [base, seeds]
            cols += [fmt_mean_std(*mean_std_of(ref, m)) for m in self.headline]
            for v in wrapped:
                mine = self.groups.get((base, v))
                for m in self.headline:
                    if not mine:
                        cols += ["no cells", "", ""]
                        continue
                    c = compare(mine, ref, m)
                    off = all(cell.get("stock_run") for cell in mine.values())
                    cols += [fmt_mean_std(c["mean"], c["std"]), fmt_ci(c.get("boot")),
                             no_harm_verdict(c) + (" (off: the stock run)" if off else "")]
            lines.append(self._row(cols))
        lines += ["", self.caption(), ""]
        lines += self._best_against_best(
            "### The best wrapped model against the best stock model", wrapped, "the wrapped full models")
        lines += self._best_against_best(
            "### The best wrapped model with LLM-free text intents against the best stock model",
            self._with_cells(role_variants("text_control")),
            "the wrapped models fed the prefix's own item names instead of an LLM's answers (`intent_backend: "
            "text`; the `text` controls, a configuration a user can run without any LLM)")
        return lines

    def _with_cells(self, variants: Sequence[str]) -> list[str]:
        """``variants`` that have cells for at least one of the report's bases."""
        return [v for v in variants if any((b, v) in self.groups for b in self.bases)]

    def _best_against_best(self, title: str, candidates: Sequence[str], described: str) -> list[str]:
        """The best stock model and the best of ``candidates`` (each picked by mean validation score over
        seeds, never by test) compared on test, paired over the seeds both have; [] without cells."""
        stock = best_by_validation(self.cells, STOCK, self.bases)
        found = best_by_validation(self.cells, candidates, self.bases) if candidates else None
        if not (stock and found):
            return []
        best, variant = found
        lines = [title, "",
                 (f"Each picked by its mean validation score over seeds (`valid_metric`), never by test, among "
                  f"the stock bases and among {described} ({', '.join(f'`{v}`' for v in candidates)}): "
                  f"best stock model **{stock}**, best wrapped model **LLM4SBR_{best}** (`{variant}`). Their "
                  "test difference, paired over the seeds both have:"), "",
                 self._row(["metric", f"stock {stock}", f"LLM4SBR_{best} ({variant})", "difference [95 % CI]",
                            "t p", "boot p"]),
                 self._row(["---"] + ["---:"] * 5)]
        for m in self.headline:
            c = compare(self.groups[(best, variant)], self.groups[(stock, STOCK)], m)
            boot = c.get("boot")
            lines.append(self._row([pretty_metric(m), fmt_mean_std(c["ref mean"], c["ref std"]),
                                    fmt_mean_std(c["mean"], c["std"]), fmt_ci(boot), fmt_p(c["p"]),
                                    fmt_p(boot["p"]) if boot else "n/a"]))
        return lines + [""]

    def headline_markdown(self) -> list[str]:
        lines = self.user_markdown()
        lines += [
            "## Is it the LLM?", "",
            "### How to read this", "",
            (f"`{STOCK}` is the stock RecBole model, trained with the same protocol as the wrapped ones; "
             f"`{CONSTANT}` is the same LLM4SBR wrapper fed one constant intent vector for every session (what the "
             f"architecture alone buys); `{SHUFFLED}` feeds each session the intents of another session (a fixed "
             f"permutation of the table's rows); `{TEXT}` feeds LLM-free text intents (the prefix's own item "
             f"names); `{INTENTS}` feeds the LLM's intents. A gain is credited to the LLM only if `{INTENTS}` beats "
             f"both `{STOCK}` and `{CONSTANT}` with the bootstrap 95 % CI of the difference above 0, and "
             f"`{SHUFFLED}` does not match it (`{INTENTS}` vs `{SHUFFLED}` CI above 0 too). If `{TEXT}` does as "
             f"well as `{INTENTS}` (its CI not above 0), the gain needs no LLM: the verdict says so. The same rule "
             f"reads `{PAPER}` (the paper's fusion) against its own controls "
             f"({', '.join(f'`{c}`' for c in controls_of('paper')[1:])})."),
            "",
            ("Columns: mean ± std over seeds; Δ: relative change of the means; t p: two-sided paired t-test over "
             "seeds (2 degrees of freedom with 3 seeds: a rough guide); bootstrap: observed difference of the "
             "means (variant − reference, averaged over the paired seeds) and its 95 % percentile CI from "
             "resampling the test samples (the same samples for both sides, independently per seed, "
             f"{self._n_boot()} replicates); boot p: share of replicates ≤ 0 (one-sided). The bootstrap "
             "measures test-set noise given these seeds, not training noise beyond them."),
            "",
        ]
        lines += ["### Every variant vs the stock base", ""]
        lines += self.comparison_table(self.vs_base, STOCK)
        lines += [f"### Intent variants vs `{CONSTANT}` (the wrapper with a constant intent)", ""]
        if self.vs_arch:
            lines += self.comparison_table(self.vs_arch, CONSTANT)
        else:
            lines += [(f"No `{CONSTANT}` cells: without them a gain cannot be told apart from the wrapper's "
                       f"architecture (run `--variants={CONSTANT},...`)."), ""]
        lines += self.verdict_markdown()
        return lines

    def _n_boot(self) -> str:
        n = {c["boot"]["n_boot"] for r in self.vs_base + self.vs_arch for m in self.headline
             for c in [r[m]] if c.get("boot")}
        return ", ".join(map(str, sorted(n))) or "2000"

    def comparison_table(self, rows: list[dict], reference: str) -> list[str]:
        head = ["base", "variant", "seeds"]
        for m in self.headline:
            name = pretty_metric(m)
            head += [name, f"Δ {name}", "t p", f"bootstrap Δ {name} [95 % CI]", "boot p"]
        lines = [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        notes: dict[str, list[str]] = {}  # why the bootstrap is n/a -> the rows it concerns
        for base in self.bases:
            base_rows = [r for r in rows if r["base"] == base]
            if not base_rows:
                continue
            ref = self.groups.get((base, reference), {})
            cols = [base, f"{reference} (reference)", str(len(ref))]
            for m in self.headline:
                first = base_rows[0][m]
                cols += [fmt_mean_std(first["ref mean"], first["ref std"]), "", "", "", ""]
            lines.append(self._row(cols))
            for r in base_rows:
                cols = [base, r["variant"], str(len(r["seeds"]))]
                for m in self.headline:
                    c = r[m]
                    boot = c.get("boot")
                    ci = fmt_ci(boot)
                    if boot and boot["pairs"] < max(len(r["seeds"]), len(ref)):
                        ci += f" ({plural(boot['pairs'], 'seed')})"
                    if not boot and c.get("boot_reason"):
                        where = notes.setdefault(c["boot_reason"], [])
                        if f"{base} {r['variant']}" not in where:
                            where.append(f"{base} {r['variant']}")
                    cols += [fmt_mean_std(c["mean"], c["std"]), fmt_rel(c["rel"]), fmt_p(c["p"]), ci,
                             fmt_p(boot["p"]) if boot else "n/a"]
                lines.append(self._row(cols))
        lines.append("")
        for reason, where in notes.items():
            every = len(where) == len(rows)
            lines += [f"Bootstrap n/a {'for every row' if every else 'for ' + ', '.join(where)}: {reason}.", ""]
        return lines + [self.caption(), ""]

    def verdict_markdown(self) -> list[str]:
        """The rule above per base and headline metric, for the full model of each fusion that has cells
        (``llm4sbr`` against ``arch``/``shuffled``/``text``; ``paper`` against ``paper_arch``/...)."""
        if not self.headline:
            return []
        lines = []
        for intents in WRAPPED_MODELS:  # one full model per fusion, each with its own controls
            bases = [b for b in self.bases if (b, intents) in self.groups]
            if not bases:
                continue
            others = controls_of(VARIANTS[intents].fusion)
            lines += [f"### Verdict per base (the rule above, on `{intents}`)", "",
                      self._row(["base", "metric", *[f"vs {o}" for o in others], "credited to the LLM"]),
                      self._row(["---"] * 7)]
            for base in bases:
                mine = self.groups[(base, intents)]
                for m in self.headline:
                    found = {}
                    for other in others:
                        ref = self.groups.get((base, other))
                        done = next((r for r in (self.vs_base if other == STOCK else self.vs_arch if other == CONSTANT
                                                 else []) if r["base"] == base and r["variant"] == intents), None)
                        found[other] = done[m] if done else compare(mine, ref, m) if ref else None
                    cis = [fmt_ci((found[o] or {}).get("boot")) if found[o] else "no cells" for o in others]
                    verdict = llm_verdict(*(found[o] for o in others), names=others)
                    lines.append(self._row([base, pretty_metric(m), *cis, verdict]))
            lines += ["", f"Cells: bootstrap Δ of `{intents}` minus that variant [95 % CI].", ""]
        return [*lines, self.caption(), ""] if lines else []

    def cells_markdown(self) -> list[str]:
        lines = ["## Cells: protocol, setting, epochs", "",
                 (f"One row per cell. epochs: best epoch (0-based) / epochs run / cap; {AT_CAP}: the best epoch was "
                  "the last one allowed: the model may still have been improving when training stopped, and a longer "
                  "run could change the comparison."), ""]
        head = ["base", "variant", "seed", "protocol", "lr", "schedule", "epochs", *map(pretty_metric, self.headline),
                "commit"]
        lines += [self._row(head), self._row(["---"] * 6 + ["---:"] * (len(head) - 7) + ["---"])]
        order = {(b, v): i for i, (b, v) in enumerate((b, v) for b in self.bases for v in self.variants)}
        capped = 0
        for c in sorted(self.cells, key=lambda c: (order.get((c["base"], c["variant"]), 1e9), int(c["seed"]))):
            flag = at_cap(c)
            capped += bool(flag)
            lines.append(self._row([
                c["base"], c["variant"], str(c["seed"]), str(c.get("protocol") or "n/a"),
                fmt_lr(cell_setting(c)), fmt_schedule(cell_setting(c)),
                fmt_epochs(c.get("best_epoch"), c.get("epochs_run"), c.get("epochs_max"), flag),
                *(fmt_num(c.get("test_result", {}).get(m), 4) for m in self.headline), f"`{c.get('commit')}`"]))
        lines += ["", (f"{plural(capped, 'cell')} of {len(self.cells)} {'has' if capped == 1 else 'have'} the best "
                      "epoch at the cap."), ""]
        lines += self.grid_markdown()
        return [*lines, self.caption(), ""]

    def grid_markdown(self) -> list[str]:
        lines = ["### Tuning grid (fair protocol)", ""]
        rows = []
        for base in self.bases:
            for variant in self.variants:
                by_seed = self.groups.get((base, variant))
                if not by_seed:
                    continue
                cell = by_seed[min(by_seed)]
                grid = cell.get("grid") or []
                chosen = [cell_setting(c) for c in by_seed.values()]
                for g in grid:
                    setting = g.get("setting") or {}
                    capped = at_cap(g)
                    rows.append(self._row([
                        base, variant, str(cell.get("tuned_on_seed") or "n/a"), fmt_lr(setting), fmt_schedule(setting),
                        fmt_num(g.get("best_valid_score"), 4),
                        fmt_epochs(g.get("best_epoch"), g.get("epochs_run"), g.get("epochs_max"), capped),
                        "✓" if setting in chosen else ""]))
        if not rows:
            return [*lines, "No tuning grid in these cells (protocol `paper`, or cells from before format 2).", ""]
        valid = ", ".join(sorted({str(c.get('valid_metric')) for c in self.cells}))
        lines += [(f"Each setting's best validation score ({valid}) on the tuning seed; ✓: the setting every seed "
                  "then trained with."), "",
                  self._row(["base", "variant", "tuned on seed", "lr", "schedule", "best valid", "epochs", "chosen"]),
                  self._row(["---"] * 5 + ["---:", "---:", "---"]), *rows, ""]
        return lines

    def full_tables_markdown(self) -> list[str]:
        table_metrics = [m for m in TABLE_METRICS if m in self.metrics] or self.metrics
        lines = ["## Test metrics", ""]
        head = ["base", "variant", "seeds"] + [pretty_metric(m) for m in table_metrics]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            lines.append(self._row([r["base"], r["variant"], str(r["n"])]
                                   + [fmt_mean_std(r[m], r[f"{m} std"]) for m in table_metrics]))
        lines += ["", self.caption(), ""]

        lines += ["## Relative change vs the stock base", "",
                  ("100 × (mean variant − mean base) / mean base; p: two-sided paired t-test (scipy `ttest_rel`) "
                   "on per-seed values over the seeds both sides finished (n/a with fewer than 2 pairs)."), ""]
        head = ["base", "variant", "pairs"] + [pretty_metric(m) for m in table_metrics]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            if r["variant"] == STOCK:
                continue
            pairs = r.get(f"{table_metrics[0]} pairs", 0) if table_metrics else 0
            lines.append(self._row([r["base"], r["variant"], str(pairs)]
                                   + [f"{fmt_rel(r[f'{m} rel'])} (p {fmt_p(r[f'{m} p'])})" for m in table_metrics]))
        return [*lines, "", self.caption(), ""]

    def efficiency_markdown(self) -> list[str]:
        mem_kinds = sorted({str(c.get("peak_mem_kind")) for c in self.cells})
        repeats = getattr(self.bench, "inference_repeats", "n/a")
        lines = ["## Efficiency (stage 2)", "",
                 ("Means over seeds; ratio = variant / stock base measured in the same run. epoch: mean training "
                  "epoch; to best: wall time from the start of training to the end of the best epoch's validation "
                  "(best epoch 0-based, mean); inference: one full-sort evaluation of the test split with the best "
                  f"weights (best of {repeats}); memory: {', '.join(mem_kinds) or 'n/a'} over the cell "
                  "(MB); params: trainable parameters. Stage 1 is not included (below)."), ""]
        head = ["base", "variant", "epoch s", "ratio", "best epoch", "to best s", "ratio", "inference s", "ratio",
                "memory MB", "ratio", "params", "ratio"]
        lines += [self._row(head), self._row(["---"] * 2 + ["---:"] * (len(head) - 2))]
        for r in self.rows:
            best = [c.get("best_epoch") for c in self.groups[(r["base"], r["variant"])].values()
                    if c.get("best_epoch") is not None]
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
            threads = sorted({str(c.get('torch_threads')) for c in self.cells})
            lines += ["", (f"1-minute load average of the machine during the cells: {min(loads):.1f} to "
                           f"{max(loads):.1f} (torch threads {', '.join(threads)}); timings taken while other "
                           "processes ran are inflated, and the ratios are only as fair as the load was even.")]
        return [*lines, "", self.caption(), ""]

    def stage1_markdown(self) -> list[str]:
        tables: dict[str, dict] = {}
        users: dict[str, list[str]] = {}
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
            return [*lines, "No LLM4SBR cell finished yet.", ""]
        for path, info in tables.items():
            lines += [f"### `{info.get('tag')}` (variants: {', '.join(users[path])})", "",
                      f"- path: `{path}`",
                      f"- backend: {backend_label(info)}",
                      (f"- encoder: {info.get('encoder')}; r (intent_topr): {info.get('topr')}; "
                       f"samples: {info.get('intent_samples')}; views: {info.get('views')}; "
                       f"built {info.get('created')}")]
            # a table of the removed intent_representation: hidden, recorded by cells that trained on it
            if (info.get("backend_info") or {}).get("representation") == "hidden":
                lines.append("- intent_representation: hidden (each prompt's pooled last-layer LLM state, grounded in "
                             "the catalogue embedded by the same LLM; the encoder above only placed the typical "
                             "samples' clusters)")
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

    def summary_rows(self) -> list[dict]:
        per_variant = backends_by_variant(self.cells)
        out = []
        for r in self.rows:
            cells = list(self.groups[(r["base"], r["variant"])].values())
            settings = [cell_setting(c) for c in cells]
            row = {"dataset": self.bench.dataset, "base": r["base"], "variant": r["variant"],
                   "model": cells[0].get("model") or r["variant"], "seeds": " ".join(map(str, r["seeds"])),
                   "n": r["n"], "protocol": " ".join(sorted({str(c.get("protocol") or "") for c in cells})).strip(),
                   "learning_rate": " ".join(sorted({str(s["learning_rate"]) for s in settings
                                                     if s and s.get("learning_rate") is not None})),
                   "lr_step_size": " ".join(sorted({str(s["lr_step_size"]) for s in settings
                                                    if s and s.get("lr_step_size") is not None})),
                   "tuned on seed": " ".join(sorted({str(c.get("tuned_on_seed") or "") for c in cells})).strip(),
                   "cells at cap": sum(bool(at_cap(c)) for c in cells)}
            for m in self.metrics:
                row[f"{m} mean"], row[f"{m} std"] = r[m], r[f"{m} std"]
                row[f"{m} rel %"] = r.get(f"{m} rel")
                row[f"{m} p"] = r.get(f"{m} p")
                row[f"{m} pairs"] = r.get(f"{m} pairs")
            for reference, rows in ((STOCK, self.vs_base), (CONSTANT, self.vs_arch)):
                found = next((x for x in rows if x["base"] == r["base"] and x["variant"] == r["variant"]), None)
                for m in self.headline:
                    c = found[m] if found else {}
                    boot = c.get("boot") or {}
                    prefix = f"{m} vs {reference}"
                    row[f"{prefix} rel %"], row[f"{prefix} t p"] = c.get("rel"), c.get("p")
                    for key in ("diff", "lo", "hi", "rel_lo", "rel_hi", "p", "pairs"):
                        row[f"{prefix} boot {key}"] = boot.get(key)
            for key, _, _ in EFFICIENCY:
                row[f"{key} mean"], row[f"{key} std"], row[f"{key} ratio"] = r[key], r[f"{key} std"], r[f"{key} ratio"]
            row["intent backend"] = per_variant.get(r["variant"], "")
            row["command"] = self.bench.command
            row["commit"] = " ".join(dict.fromkeys(str(c.get("commit")) for c in cells))
            out.append(row)
        return out

    def cell_rows(self) -> list[dict]:
        out = []
        for c in self.cells:
            row = {k: c.get(k) for k in ("id", "base", "variant", "seed", "model", "protocol")}
            setting = cell_setting(c) or {}
            row.update({"learning_rate": setting.get("learning_rate"), "lr_step_size": setting.get("lr_step_size"),
                        "tuned_on_seed": c.get("tuned_on_seed")})
            row.update({m: c.get("test_result", {}).get(m) for m in self.metrics})
            row.update({k: c.get(k) for k in ("best_valid_score", "valid_metric", "best_epoch", "epochs_run",
                                               "epochs_max")})
            row["at_cap"] = at_cap(c)
            row.update({k: c.get(k) for k in ("epoch_time_s", "time_to_best_s", "inference_s", "peak_mem_mb",
                                               "peak_mem_kind", "params", "device")})
            per_sample = c.get("per_sample") or {}
            row["test samples"] = per_sample.get("n", c.get("test_samples"))
            row["order_sha1"] = per_sample.get("order_sha1")
            row["grid"] = json.dumps(c["grid"], sort_keys=True) if c.get("grid") else ""
            row["intent backend"] = backend_label(c.get("intent")) if c.get("intent") else "none"
            row["intent table"] = (c.get("intent") or {}).get("tag", "")
            row["command"], row["commit"], row["finished"] = c.get("command"), c.get("commit"), c.get("finished")
            out.append(row)
        return out

    # -- files -----------------------------------------------------------------------------------------

    def write(self, plot: bool = True) -> dict[str, Path]:
        """Write the reports. Without matplotlib an existing chart is kept and still linked (a report
        rebuilt on a machine without it must not lose the committed chart); "(not drawn)" only when
        there is no chart at all."""
        folder = self.bench.folder
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        chart = folder / CHART
        png = None
        if plot and self.rows:
            from recbole_llm4sbr.benchmark.plot import (
                matplotlib_available,
                plot_relative_gains,
            )

            if matplotlib_available():
                png = plot_relative_gains(self, chart)
                if png:
                    paths["png"] = png
                else:
                    self.chart_note = "(not drawn: no variant has a reference to compare with yet)"
            elif chart.is_file():
                png = chart
                self.chart_note = ("(not redrawn: matplotlib is not installed where this report was written; the "
                                   "chart is the one drawn earlier and may not show every cell above)")
                log.info(f"{CHART} not redrawn: matplotlib is not installed; the report keeps the existing chart")
            else:
                log.info(f"{CHART} not drawn: matplotlib is not installed "
                         "(pip install matplotlib, or pip install -e '.[plot]')")
        elif chart.is_file():
            png = chart  # drawn earlier (by this run or a previous one): still referenced
            if not plot:
                self.chart_note = "(not redrawn by this command; it may not show every cell above)"
        elif not plot:
            self.chart_note = "(not drawn by this command: `--no_plot`, or a report written while cells train)"
        paths["md"] = _write_text(folder / "report.md", self.markdown(png.name if png else None))
        paths["csv"] = _write_csv(folder / "summary.csv", self.summary_rows())
        paths["cells_csv"] = _write_csv(folder / "cells.csv", self.cell_rows())
        return paths


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    fields: list[str] = []
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


def write_reports(bench, plot: bool = True, quiet: bool = False) -> dict[str, Path]:
    paths = Report(bench).write(plot=plot)
    if not quiet:
        log.info("reports: " + ", ".join(str(p) for p in paths.values()))
    return paths
