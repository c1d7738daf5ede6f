"""Raw data -> RecBole session benchmark files + item texts (docs/DESIGN.md, "Session dataset on
disk"). pandas/numpy/stdlib only: importing this package never imports RecBole or torch.

CLI: `python -m recbole_llm4sbr.data.converters {ml-1m,ml-100k,beauty} [--raw_dir=DIR] ...`.
"""
from recbole_llm4sbr.data.converters.amazon import convert_beauty
from recbole_llm4sbr.data.converters.common import (
    ConversionError, Sample, Session, build_dataset, filter_sessions, format_stats_table,
    make_samples, split_sessions)
from recbole_llm4sbr.data.converters.movielens import (
    DEFAULT_ML100K, convert_ml1m, convert_ml100k, ensure_default_dataset, ml100k_dir)

CONVERTERS = {"ml-1m": convert_ml1m, "ml-100k": convert_ml100k, "beauty": convert_beauty}

__all__ = ["CONVERTERS", "ConversionError", "DEFAULT_ML100K", "Sample", "Session",
           "build_dataset", "convert_beauty", "convert_ml1m", "convert_ml100k",
           "ensure_default_dataset", "filter_sessions", "format_stats_table", "make_samples",
           "ml100k_dir", "split_sessions"]
