"""Models built here rather than downloaded. Importing this package registers them with transformers' Auto classes
(so hf_finetune loads their folders with its own classes, old folders without code included) and for their code to be
saved with them (so the folders load where hf_finetune is not installed)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_simple_cnn import SimpleCNNConfig
from .modeling_simple_cnn import SimpleCNNForImageClassification

__all__ = ["SimpleCNNConfig", "SimpleCNNForImageClassification"]


def _same_class(a: type, b: type) -> bool:
    # A reloaded module defines new class objects with the same qualified name; treat those as "ours" too.
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register() -> None:
    """Register SimpleCNN with AutoConfig / AutoModelForImageClassification; safe to run more than once."""
    model_type = SimpleCNNConfig.model_type
    # transformers only raises for names of its own built-in models; a second *custom* registration silently
    # overwrites, so a clash with someone else's "simple_cnn" has to be detected here.
    if model_type in CONFIG_MAPPING:
        existing = CONFIG_MAPPING[model_type]
        if not _same_class(existing, SimpleCNNConfig):
            raise ValueError(
                f"model_type {model_type!r} is already registered with AutoConfig as "
                f"{existing.__module__}.{existing.__qualname__}, not {SimpleCNNConfig.__module__}.SimpleCNNConfig"
            )
    AutoConfig.register(model_type, SimpleCNNConfig, exist_ok=True)
    AutoModelForImageClassification.register(SimpleCNNConfig, SimpleCNNForImageClassification, exist_ok=True)
    # save_pretrained (ours and Trainer's checkpoints) then copies configuration_/modeling_simple_cnn.py into the
    # folder and writes `auto_map` in config.json: the Hub convention for an architecture transformers lacks.
    SimpleCNNConfig.register_for_auto_class()
    SimpleCNNForImageClassification.register_for_auto_class("AutoModelForImageClassification")


_register()
