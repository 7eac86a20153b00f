"""Test-time augmentation (TTA): a model's outputs averaged over a few views of each image.

Views are made from the preprocessed batch (`pixel_values`, already resized and normalised as the model expects), so
they cost no second decode and work the same for the PyTorch model and its ONNX export:

- ``flip``: the image and its horizontal mirror (2 views).
- ``crops``: the whole image and torchvision's five crops (four corners and the centre) of 7/8 of its height and
  width, each resized back to the model's input size with bilinear interpolation (6 views).

Flipping, cropping and bilinear resizing commute with the per-channel normalisation, so a view of the normalised
tensor is the normalised tensor of the view.

The views are combined where averaging means something for the label format:

- single-label: the mean of the views' softmax probabilities, returned as logits ``log(mean_v softmax(z_v))``
  (softmax of them gives back that mean exactly; computed with logsumexp, so it stays finite);
- multi-label: the mean of each label's sigmoid, returned as its logit ``log(mean σ) - log(1 - mean σ)`` (both terms
  by logsumexp of log-sigmoids: finite even for logits of ±1000, where ``mean σ`` rounds to 0 or 1);
- regression: the mean of the views' outputs.

Every consumer of logits downstream (metrics, calibration scores, error analysis, `predict`'s rows) thus sees one
ordinary logits tensor. Text models have no views: `check_tta` refuses TTA for them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms.v2 import functional as tvf
from transformers.modeling_outputs import ImageClassifierOutput

from .errors import HFFinetuneError
from .names import TTA_VIEWS

if TYPE_CHECKING:
    from transformers import Trainer

# `crops`: each crop's side, as a fraction of the image's (timm's and torchvision's usual eval crop ratio)
CROP_FRACTION = 7 / 8
VIEW_COUNTS = {"none": 1, "flip": 2, "crops": 6}


def check_tta(tta: str | None, task_name: str, where: str = "--tta") -> str:
    """The TTA setting, checked: one of TTA_VIEWS, and not for a text model (a text has no flips or crops)."""
    tta = "none" if tta is None else tta
    if tta not in TTA_VIEWS:
        raise HFFinetuneError(f"{where} {tta!r}: expected one of {', '.join(TTA_VIEWS)}")
    if tta != "none" and task_name != "image-classification":
        raise HFFinetuneError(
            f"{where} {tta}: test-time augmentation averages over flipped or cropped views of an image; this is a "
            f"{task_name} model, which has none. Drop {where} (or set it to none)"
        )
    return tta


def views(pixel_values: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a batch [N, C, H, W] (the batch itself first), each of the same shape."""
    if tta == "none":
        return [pixel_values]
    if tta == "flip":
        return [pixel_values, torch.flip(pixel_values, dims=[-1])]
    if tta == "crops":
        height, width = pixel_values.shape[-2:]
        size = [max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))]
        crops = tvf.five_crop(pixel_values, size)
        resized = [
            torch.nn.functional.interpolate(c, size=(height, width), mode="bilinear", align_corners=False)
            for c in crops
        ]
        return [pixel_values, *resized]
    raise HFFinetuneError(f"TTA {tta!r}: expected one of {', '.join(TTA_VIEWS)}")


def combine(logits: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """One logits tensor [N, C] from the views' logits [V, N, C], averaged as the module docstring says."""
    count = math.log(logits.shape[0])
    if problem_type == "regression":
        return logits.mean(dim=0)
    if problem_type == "multi_label_classification":
        positive = torch.logsumexp(torch.nn.functional.logsigmoid(logits), dim=0) - count
        negative = torch.logsumexp(torch.nn.functional.logsigmoid(-logits), dim=0) - count
        return positive - negative
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - count


class TTAModel(torch.nn.Module):
    """Stands in for a classifier (a PyTorch model or an `onnx_export.OnnxClassifier`): called with `pixel_values`,
    it runs the wrapped model on every view and answers with the combined `.logits` (and, given `labels`, the loss
    the wrapped model would compute on them, by its `config.problem_type`)."""

    def __init__(self, model: Any, tta: str) -> None:
        super().__init__()
        if isinstance(model, torch.nn.Module):
            self.inner = model  # a submodule: .to(), .eval() and parameters() reach it
        else:
            object.__setattr__(self, "inner", model)
        self.config = model.config
        self.tta = tta
        self.main_input_name = "pixel_values"

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> ImageClassifierOutput:
        outputs = [self.inner(pixel_values=v, **kwargs).logits for v in views(pixel_values, self.tta)]
        logits = combine(torch.stack(outputs), self.config.problem_type)
        loss = None if labels is None else _loss(logits, labels, self.config)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def eval(self) -> TTAModel:  # an OnnxClassifier is no submodule: Module.eval() alone would not reach it
        super().eval()
        self.inner.eval()
        return self


def wrap(model: Any, tta: str) -> Any:
    """`model` with TTA over `tta`'s views; `model` itself when tta is none."""
    return model if tta == "none" else TTAModel(model, tta)


def _loss(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> torch.Tensor:
    """The loss transformers' classifiers compute, by problem_type, on the combined logits."""
    problem = config.problem_type
    if problem == "regression":
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
    if problem == "multi_label_classification":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


@contextlib.contextmanager
def applied(trainer: Trainer, tta: str) -> Iterator[None]:
    """The trainer evaluates with TTA inside the block, and with its own model again after it. Evaluation never
    wraps the model for distributed training (Trainer._wrap_model returns it as it is outside training), so
    swapping `trainer.model` is enough."""
    if tta == "none":
        yield
        return
    model = trainer.model
    trainer.model = wrap(model, tta)
    try:
        yield
    finally:
        trainer.model = model
