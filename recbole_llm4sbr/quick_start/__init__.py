"""``run_recbole_llm4sbr`` and friends. Loaded on first use (module ``__getattr__``): importing the
package, as ``python run_recbole_llm4sbr.py --help`` does through the command line's module, must
not import torch and RecBole (seconds) before the help or a config error is printed."""

__all__ = ["run_recbole_llm4sbr", "make_config", "build", "BuiltRun", "objective_function"]

_LAZY = ("BuiltRun", "build", "make_config", "run_recbole_llm4sbr")


def __getattr__(name):
    if name in _LAZY:
        from recbole_llm4sbr.quick_start import quick_start

        return getattr(quick_start, name)
    raise AttributeError(f"module 'recbole_llm4sbr.quick_start' has no attribute {name!r}")


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for ``HyperTuning`` (``quick_start.hyper``)."""
    from recbole_llm4sbr.quick_start.hyper import objective_function as objective

    return objective(config_dict, config_file_list, saved)
