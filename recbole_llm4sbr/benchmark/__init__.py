"""One command that benchmarks LLM4SBR against stock RecBole baselines (``--benchmark``).

``runner``: cells (base, variant, seed), each trained and tested with ``run_recbole_llm4sbr`` and saved
as its own JSON; ``aggregate``: mean/std, relative change, paired t-test, efficiency ratios;
``report``: Markdown + CSV; ``plot``: the relative-gain PNG; ``cli``: the command line.
"""
from recbole_llm4sbr.benchmark.variants import VARIANTS, parse_variants

__all__ = ["VARIANTS", "parse_variants", "run_benchmark"]


def run_benchmark(*args, **kwargs):
    from recbole_llm4sbr.benchmark.cli import run_benchmark as run

    return run(*args, **kwargs)
