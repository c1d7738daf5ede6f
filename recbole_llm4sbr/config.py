"""RecBole's Config with the plugin's property files layered in.

Order, lowest first: RecBole's own defaults (overall, the base model's yaml, quick-start presets),
then the plugin's ``properties/overall.yaml``; for ``LLM4SBR_<Base>`` the plugin's
``properties/model/<Base>.yaml`` (so stock base and wrapper share hyper-parameters) and
``properties/model/LLM4SBR.yaml``; then ``properties/model/<model>.yaml`` and
``properties/dataset/<dataset>.yaml``; above them the
user's files, ``config_dict`` and ``--key=value`` on the command line, exactly as in RecBole.
"""
from __future__ import annotations

import os

import recbole
from recbole.config import Config as RecBoleConfig

from recbole_llm4sbr.errors import ConfigError, check_config_files
from recbole_llm4sbr.intent.backends import check_backend_name
from recbole_llm4sbr.known_keys import warn_unknown
from recbole_llm4sbr.paths import default_data_path, properties_dir
from recbole_llm4sbr.utils import get_model
from recbole_llm4sbr.validation import intents_off, validate

RECBOLE_PROPERTIES = os.path.join(os.path.dirname(recbole.__file__), "properties")


class Config(RecBoleConfig):
    """``recbole.config.Config`` that knows the plugin's models and property files.

    ``read_cmd_line=False`` ignores ``sys.argv`` (library use, tests, the benchmark runner). The
    plugin's keys (and RecBole's most used ones) are type- and range-checked once the layers are
    merged (``recbole_llm4sbr.validation``): a bad value is a ``ConfigError`` naming key and fix;
    a key the user set that nothing reads is one warning line naming the closest known key
    (``recbole_llm4sbr.known_keys``).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 read_cmd_line=True):
        self._read_cmd_line = read_cmd_line
        check_config_files(config_file_list)  # RecBole would print a traceback for a YAML syntax error
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list,
                         config_dict=config_dict)
        validate(self)
        apply_intents_off(self)
        check_backend_name(self)
        warn_unknown(self.external_config_dict)  # --epoch=2: RecBole would ignore it silently

    def _load_cmd_line(self):
        if not self._read_cmd_line:
            return {}
        return super()._load_cmd_line()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("No model given. Fix: pass --model=<name>, e.g. --model=LLM4SBR_SRGNN")
        return super()._get_model_and_dataset(get_model(model), dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = str(default_data_path())
        base = getattr(model_class, "base_model_name", None)
        plugin = properties_dir()
        files = []
        if base is not None:
            files.append(os.path.join(RECBOLE_PROPERTIES, "model", f"{base}.yaml"))
        files.append(os.path.join(plugin, "overall.yaml"))
        if base is not None:  # the base's settings apply to both sides of a comparison
            files.append(os.path.join(plugin, "model", f"{base}.yaml"))
            files.append(os.path.join(plugin, "model", "LLM4SBR.yaml"))
        files.append(os.path.join(plugin, "model", f"{model}.yaml"))
        dataset_file = os.path.join(plugin, "dataset", f"{dataset}.yaml")
        files.append(dataset_file)
        for file in files:
            if os.path.isfile(file):
                loaded = self._update_internal_config_dict(file)
                if file == dataset_file and loaded:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]



def apply_intents_off(config) -> None:
    """``intent_strength: off`` (residual fusion): ``LLM4SBR_<Base>`` is ``<Base>`` (no intent term, no
    training loss on the intents), so it needs no stage-1 table, in training or serving: ``load_intent``
    and ``semantic_at_inference`` are set False (the checkpoint's config says so to the server)."""
    if intents_off(config):
        config["intent_strength"] = "off"
        config["load_intent"] = False
        config["semantic_at_inference"] = False
