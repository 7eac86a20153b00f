"""Models built here rather than downloaded. Importing this package registers them with transformers' Auto classes
(so hf_finetune loads their folders with its own classes, old folders without code included) and for their code to be
saved with them (so the folders load where hf_finetune is not installed)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_mean_pooling import MeanPoolingConfig
from .configuration_simple_cnn import SimpleCNNConfig
from .modeling_mean_pooling import MeanPoolingForSequenceClassification
from .modeling_simple_cnn import SimpleCNNForImageClassification

__all__ = [
    "MeanPoolingConfig",
    "MeanPoolingForSequenceClassification",
    "SimpleCNNConfig",
    "SimpleCNNForImageClassification",
]


def _same_class(a: type, b: type) -> bool:
    # A reloaded module defines new class objects with the same qualified name; treat those as "ours" too.
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register_one(config_class: type, model_class: type, auto_class: type) -> None:
    """Register a config/model pair with AutoConfig and `auto_class`; safe to run more than once."""
    model_type = config_class.model_type
    # transformers only raises for names of its own built-in models; a second *custom* registration silently
    # overwrites, so a clash with someone else's model type has to be detected here.
    if model_type in CONFIG_MAPPING:
        existing = CONFIG_MAPPING[model_type]
        if not _same_class(existing, config_class):
            raise ValueError(
                f"model_type {model_type!r} is already registered with AutoConfig as "
                f"{existing.__module__}.{existing.__qualname__}, not {config_class.__module__}.{config_class.__name__}"
            )
    AutoConfig.register(model_type, config_class, exist_ok=True)
    auto_class.register(config_class, model_class, exist_ok=True)
    # save_pretrained (ours and Trainer's checkpoints) then copies the configuration_/modeling_ files into the
    # folder and writes `auto_map` in config.json: the Hub convention for an architecture transformers lacks.
    config_class.register_for_auto_class()
    model_class.register_for_auto_class(auto_class.__name__)


def _register() -> None:
    _register_one(SimpleCNNConfig, SimpleCNNForImageClassification, AutoModelForImageClassification)
    _register_one(MeanPoolingConfig, MeanPoolingForSequenceClassification, AutoModelForSequenceClassification)


_register()
