"""hf_finetune: fine-tune classifiers on the Hugging Face stack from small YAML recipes.

    import hf_finetune as hff
    result = hff.finetune("quickstart", training={"num_train_epochs": 3})
    print(result.metrics["test"]["accuracy"], result.output_dir)

Attributes are imported on first use so that `hf-finetune --help` starts instantly.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Recipe",
    "Result",
    "SweepResult",
    "evaluate",
    "export",
    "finetune",
    "iter_predictions",
    "load_recipe",
    "predict",
    "sweep",
]

_LAZY = {
    "finetune": "api",
    "evaluate": "api",
    "predict": "api",
    "iter_predictions": "prediction",  # not a module named predict: it would shadow the predict function
    "export": "api",  # the stage module is onnx_export: a submodule named export would shadow this attribute
    "Result": "api",
    "sweep": "tuning",  # not a module named sweep: it would shadow this function
    "SweepResult": "tuning",
    "load_recipe": "recipe",
    "Recipe": "recipe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_finetune' has no attribute {name!r}")
