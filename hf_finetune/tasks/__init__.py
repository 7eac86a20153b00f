"""Tasks: how a kind of model is built and how its inputs are prepared. One module per task, no base classes:
each module satisfies the `Task` Protocol below, and `api.py` calls it in data-path order."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..recipe import TASKS, AugmentationSpec, ModelSpec, read_saved_recipe
from ._common import BuiltModel, PredictInput, PredictInputs, Prepared, PrepareSettings

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from timm.data import Mixup

__all__ = [
    "MODULES",
    "BuiltModel",
    "PredictInput",
    "PredictInputs",
    "PrepareSettings",
    "Prepared",
    "Task",
    "get_task",
    "label_format_of_saved",
    "task_of_saved",
]

# the recipe's `task` -> its module here (image-classification -> image_classification)
MODULES = {name: name.replace("-", "_") for name in TASKS}


class Task(Protocol):
    """What a task module provides (the modules themselves satisfy it: its members are their module-level names)."""

    NAME: str
    """The recipe's `task`."""
    INPUTS: dict[str, str]
    """Canonical input column -> the DataSpec key naming it in the data (`{"image": "image_column"}`)."""

    def build_model(self, spec: ModelSpec, label_names: list[str], label_format: str = "single") -> BuiltModel:
        """The model with a head for `label_names` (id2label/label2id set) and its processor or tokenizer.
        `config.problem_type` is `names.PROBLEM_TYPES[label_format]`; a regression head has one output, named after
        the target (`label_names` is [the target column's name])."""
        ...

    def training_defaults(self) -> dict[str, Any]:
        """Task-specific TrainingArguments defaults, used only for keys the recipe leaves unset."""
        ...

    def prepare(self, built: BuiltModel, splits: Mapping[str, Dataset], settings: PrepareSettings) -> Prepared:
        """Trainer-ready datasets (the train split with the recipe's augmentation, the others without) + collator."""
        ...

    def batch_mixer(
        self, aug: AugmentationSpec, num_labels: int, label_smoothing: float = 0.0, label_format: str = "single"
    ) -> Mixup | None:
        """What mixes training batches (mixup/CutMix, soft targets), or None when nothing does (always None for
        multi-label and regression labels, which are not class ids)."""
        ...

    def load_trained(self, path: str | Path) -> BuiltModel:
        """The model and processor or tokenizer of a saved output folder."""
        ...

    def predict(
        self, built: BuiltModel, inputs: PredictInputs, top_k: int, device: str | torch.device = "cpu"
    ) -> list[dict[str, Any]]:
        """One dict per input of one batch, in order, as `hf-finetune predict` prints them, or `error` (and no
        predictions) for an input that cannot be read. Tensors go to `device`; the scores come back on the CPU.
        By the model's problem type: single-label `predictions` [top-k {label, score}] (softmax); multi-label
        `labels` [{label, score} with sigmoid score >= the label's threshold, highest first] and `predictions`
        [top-k {label, score, threshold}]; regression `value` and `predictions` [{label: target, score: value}]."""
        ...


def get_task(name: str) -> Task:
    # import_module says only "a module"; tests/test_tasks.py checks that every task module fits the Protocol
    return cast("Task", importlib.import_module(f".{MODULES[name]}", __name__))


def task_of_saved(path: str | Path) -> str:
    """The task of a saved output folder: from its resolved recipe, else from the model's architecture."""
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


def label_format_of_saved(path: str | Path) -> str:
    """The `data.label_format` a saved output folder's model was trained for, from its config.json's problem_type
    (single-label when unset or unreadable: the loader then says what is wrong with the folder)."""
    from ._common import LABEL_FORMAT_OF, SINGLE

    config = Path(path) / "config.json"
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SINGLE
    return LABEL_FORMAT_OF.get(saved.get("problem_type") if isinstance(saved, dict) else None, SINGLE)
