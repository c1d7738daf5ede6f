"""One command that benchmarks LLM4SBR against stock RecBole baselines (``--benchmark``).

``runner``: cells (base, variant, seed), each trained and tested with ``run_recbole_llm4sbr`` and saved
as its own JSON; ``aggregate``: mean/std, relative change, paired t-test, efficiency ratios;
``report``: Markdown + CSV; ``plot``: the relative-gain PNG; ``cli``: the command line.
"""
__all__ = ["VARIANTS", "parse_variants", "run_benchmark"]


def __getattr__(name):
    """``VARIANTS`` and ``parse_variants`` on first use: the variants import the model registry (torch,
    RecBole), which ``--benchmark --help`` must not wait for."""
    if name in ("VARIANTS", "parse_variants"):
        from recbole_llm4sbr.benchmark import variants

        return getattr(variants, name)
    raise AttributeError(f"module 'recbole_llm4sbr.benchmark' has no attribute {name!r}")


def run_benchmark(*args, **kwargs):
    from recbole_llm4sbr.benchmark.cli import run_benchmark as run

    return run(*args, **kwargs)
