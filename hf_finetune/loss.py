"""The training loss: the model's own, or the toolkit's cross entropy when class weights or mixed batches need it.

Training (`finetune`) and evaluation of a saved model (`evaluate`) pick the loss through `classification_loss`, so
the two report one loss for one recipe.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RecipeError
from .names import METRICS_FILE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class CrossEntropy:
    """Cross entropy for Trainer's `compute_loss_func`: hard labels (with class weights and label smoothing) or soft
    targets from mixup/CutMix (already smoothed by the mixer). Returns the batch mean."""

    def __init__(self, class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        import torch

        self.weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.label_smoothing = label_smoothing

    def __call__(
        self, outputs: object, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        import torch.nn.functional as F

        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
        w = self.weights.to(logits.device) if self.weights is not None else None
        if labels.is_floating_point():
            logp = F.log_softmax(logits, dim=-1)
            if w is None:
                return -(labels * logp).sum(-1).mean()
            # F.cross_entropy's weighted mean: normalised by the weight of each row's target, so mixed and
            # unmixed batches (and evaluation) are on one scale
            return -(labels * w * logp).sum() / (labels * w).sum()
        return F.cross_entropy(logits, labels, weight=w, label_smoothing=self.label_smoothing)


def cross_entropy_loss(class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0) -> CrossEntropy:
    """The toolkit's cross entropy (see `CrossEntropy`) with these class weights and this label smoothing."""
    return CrossEntropy(class_weights, label_smoothing)


def classification_loss(
    class_weights: Sequence[float] | None, label_smoothing: float, mixing: bool
) -> Callable[..., torch.Tensor] | None:
    """The loss to hand Trainer: the toolkit's cross entropy with class weights or mixed batches (soft targets,
    which a model's own loss does not take), else None: the model's own loss."""
    if class_weights or mixing:
        return cross_entropy_loss(class_weights, label_smoothing)
    return None


def class_weights(
    setting: str | list[float] | None, train_labels: Sequence[int], names: list[str]
) -> list[float] | None:
    """`balanced`: n / (classes × count) per class, as scikit-learn's compute_class_weight; a list: checked."""
    if setting is None:
        return None
    if isinstance(setting, list):
        if len(setting) != len(names):
            raise RecipeError(
                [f"loss.class_weights: {len(setting)} weights given, the data has {len(names)} classes {names[:20]}"]
            )
        return [float(w) for w in setting]
    counts = Counter(int(v) for v in train_labels)
    n = len(train_labels)
    weights = [n / (len(names) * max(counts.get(i, 0), 1)) for i in range(len(names))]
    logger.info("loss: balanced class weights %s", {k: round(w, 3) for k, w in zip(names, weights, strict=True)})
    return weights


def saved_class_weights(
    setting: str | list[float] | None,
    output_dir: Path,
    train_labels: Sequence[int] | None,
    labels: list[str],
) -> list[float] | None:
    """The class weights a saved run trained with: the recipe's list (`setting`), or `balanced` from the train class
    counts its metrics.json recorded, else from `train_labels` (the train split's labels; None when not loaded)."""
    if setting is None or isinstance(setting, list):
        return class_weights(setting, [], labels)
    saved = output_dir / METRICS_FILE
    counts = {}
    if saved.is_file():
        run = json.loads(saved.read_text(encoding="utf-8")).get("run") or {}
        counts = ((run.get("splits") or {}).get("train") or {}).get("class_counts") or {}
    if counts:
        train_labels = [i for i, name in enumerate(labels) for _ in range(int(counts.get(name, 0)))]
    if train_labels is None:
        logger.warning("loss: class_weights balanced, but train's class counts are unknown; the loss is unweighted")
        return None
    return class_weights(setting, train_labels, labels)


# --------------------------------------------------------------------------------------------- multi-label, regression


class MultiLabelBCE:
    """BCE with logits on multi-hot float targets, each label's positive term weighted by `pos_weight` (as
    `torch.nn.BCEWithLogitsLoss`). Returns the mean over rows and labels."""

    def __init__(self, pos_weight: Sequence[float] | None = None) -> None:
        import torch

        self.pos_weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None

    def __call__(
        self, outputs: object, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        import torch.nn.functional as F

        logits = _logits(outputs)
        w = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=w)


class RegressionLoss:
    """Mean squared error or Huber loss between the model's one output and the float target (batch mean).

    `scaler` ({"mean", "std"}): outputs and targets are in the original units but the run trained on standardised
    ones (a saved model whose head absorbed the scaler); both are standardised first, so the loss is the one
    training reported."""

    def __init__(self, kind: str = "mse", delta: float = 1.0, scaler: Mapping[str, float] | None = None) -> None:
        self.kind, self.delta = kind, delta
        self.scaler = None if scaler is None else (float(scaler["mean"]), float(scaler["std"]))

    def __call__(
        self, outputs: object, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        import torch.nn.functional as F

        predicted = _logits(outputs).reshape(-1)
        target = labels.reshape(-1).to(predicted.dtype)
        if self.scaler is not None:
            mean, std = self.scaler
            predicted, target = (predicted - mean) / std, (target - mean) / std
        if self.kind == "huber":
            return F.huber_loss(predicted, target, delta=self.delta)
        return F.mse_loss(predicted, target)


def _logits(outputs: object) -> torch.Tensor:
    return (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()


def pos_weights(
    setting: str | list[float] | None, positives: Sequence[int], rows: int, names: list[str]
) -> list[float] | None:
    """`balanced`: negatives / positives of each label in train (BCEWithLogitsLoss's usual choice); a list: checked
    against the labels. `positives` counts each label's positive rows among `rows` train rows."""
    if setting is None:
        return None
    if isinstance(setting, list):
        if len(setting) != len(names):
            raise RecipeError(
                [f"loss.pos_weight: {len(setting)} weights given, the data has {len(names)} labels {names[:20]}"]
            )
        return [float(w) for w in setting]
    # a label on in every row (or in none) has no ratio to balance: weighted 1, as the probe does
    weights = [(rows - p) / p if 0 < p < rows else 1.0 for p in positives]
    logger.info("loss: balanced positive weights %s", {k: round(w, 3) for k, w in zip(names, weights, strict=True)})
    return weights


def saved_pos_weights(setting: str | list[float] | None, output_dir: Path, labels: list[str]) -> list[float] | None:
    """The positive weights a saved multi-label run trained with: the recipe's list, or `balanced` from the train
    positives its metrics.json recorded."""
    if setting is None or isinstance(setting, list):
        return pos_weights(setting, [], 0, labels)
    saved = output_dir / METRICS_FILE
    train = {}
    if saved.is_file():
        run = json.loads(saved.read_text(encoding="utf-8")).get("run") or {}
        train = (run.get("splits") or {}).get("train") or {}
    counts = train.get("class_counts") or {}
    if not counts or not train.get("rows"):
        logger.warning("loss: pos_weight balanced, but train's label counts are unknown; the loss is unweighted")
        return None
    return pos_weights(setting, [int(counts.get(n, 0)) for n in labels], int(train["rows"]), labels)
