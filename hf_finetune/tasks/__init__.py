"""Tasks: how a kind of model is built and how its inputs are prepared. One module per task, no base classes.

Each task module provides the same names, which `api.py` calls in data-path order:

    NAME                                    the recipe's `task`
    INPUTS                                  canonical input column -> DataSpec key naming it in the data
    build_model(spec, label_names)          -> BuiltModel (model with a head for the labels + processor/tokenizer)
    training_defaults()                     task-specific TrainingArguments defaults (only for unset keys)
    prepare(built, splits, recipe)          -> Prepared (Trainer-ready datasets + collator)
    load_trained(path)                      -> BuiltModel from a saved output folder
    predict(built, inputs, top_k)           -> one dict per input with its top-k labels and scores
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

MODULES = {
    "image-classification": "image_classification",
    "text-classification": "text_classification",
}


def get_task(name: str) -> ModuleType:
    return importlib.import_module(f".{MODULES[name]}", __name__)


def task_of_saved(path: str | Path) -> str:
    """The task of a saved output folder: from its resolved recipe, else from the model's architecture."""
    from ..recipe import read_saved_recipe

    path = Path(path)
    task = read_saved_recipe(path).get("task")
    if task in MODULES:
        return task
    config = path / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "text-classification"
    return "image-classification"
