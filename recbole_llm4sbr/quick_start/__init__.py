from recbole_llm4sbr.quick_start.quick_start import BuiltRun, build, make_config, run_recbole_llm4sbr

__all__ = ["run_recbole_llm4sbr", "make_config", "build", "BuiltRun", "objective_function"]


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for ``HyperTuning`` (``quick_start.hyper``)."""
    from recbole_llm4sbr.quick_start.hyper import objective_function as objective

    return objective(config_dict, config_file_list, saved)
