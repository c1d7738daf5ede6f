from recbole_llm4sbr.quick_start.quick_start import build, make_config, run_recbole_llm4sbr

__all__ = ["run_recbole_llm4sbr", "make_config", "build"]
