"""The classic small CNN, trained from scratch: conv → pool (→ conv → pool …) → flatten → dense → dropout → classifier.

`SimpleCNNConfig` / `SimpleCNNForImageClassification` are an ordinary transformers config/model pair. hf_finetune
registers them with the Auto classes (importing `hf_finetune.models`) and for `save_pretrained` to copy their code
into the folder (the Hub convention for custom architectures): a saved folder loads with
`AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` and runs in the image-classification
pipeline where hf_finetune is not installed. So this file and configuration_simple_cnn.py (its one relative import)
may import only the standard library, torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_simple_cnn import SimpleCNNConfig

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}
_POOLING_MODULES: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
# torch has no Kaiming gain for GELU; it is close enough to ReLU (zero for negatives, identity for large inputs).
_KAIMING_NONLINEARITY = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


class SimpleCNNConvBlock(nn.Module):
    """Conv2d (padding "same") → BatchNorm2d or identity → activation → 2x2 pooling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, config: SimpleCNNConfig) -> None:
        super().__init__()
        # BN's shift makes the conv bias redundant.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=not config.batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if config.batch_norm else nn.Identity()
        self.act = _ACTIVATION_MODULES[config.activation]()
        self.pool = _POOLING_MODULES[config.pooling](kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(hidden_states))))


class SimpleCNNDenseBlock(nn.Module):
    """Linear → activation → Dropout."""

    def __init__(self, in_features: int, out_features: int, config: SimpleCNNConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = _ACTIVATION_MODULES[config.activation]()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.linear(hidden_states)))


class SimpleCNNForImageClassification(PreTrainedModel):
    """The small CNN with its classification head. The loss follows `config.problem_type`: cross entropy on class ids
    or soft targets (single-label), BCE with logits on multi-hot rows (multi-label), MSE (regression)."""

    config_class = SimpleCNNConfig
    config: SimpleCNNConfig
    main_input_name = "pixel_values"
    base_model_prefix = "simple_cnn"
    input_modalities = ("image",)
    # With `**kwargs` in `forward` the Trainer would otherwise assume the loss is already normalised by
    # `num_items_in_batch` and stop dividing it by the gradient-accumulation steps; ours is a plain batch mean.
    accepts_loss_kwargs = False

    def __init__(self, config: SimpleCNNConfig) -> None:
        super().__init__(config)
        channels = [config.num_channels, *config.filters]
        self.blocks = nn.ModuleList(
            SimpleCNNConvBlock(channels[i], channels[i + 1], kernel, config)
            for i, kernel in enumerate(config.block_kernel_sizes)
        )
        self.flatten = nn.Flatten()
        features = [config.flat_features, *config.dense_units]
        self.dense = nn.ModuleList(
            SimpleCNNDenseBlock(features[i], features[i + 1], config) for i in range(len(config.dense_units))
        )
        self.classifier = nn.Linear(features[-1], config.num_labels)
        # transformers 5: post_init() runs `_init_weights` on every module not flagged as already initialised, which
        # is what lets from_pretrained skip the re-init of weights it has loaded.
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # `transformers.initialization` functions are no-ops on tensors loaded from a checkpoint; plain
        # `torch.nn.init` calls would overwrite them.
        if isinstance(module, nn.Conv2d):
            nonlinearity = _KAIMING_NONLINEARITY[self.config.activation]
            init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if module.num_batches_tracked is not None:
                init.zeros_(module.num_batches_tracked)

    def _check_pixel_values(self, pixel_values: torch.Tensor | None) -> None:
        cfg = self.config
        expected = f"[batch, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}]"
        if pixel_values is None:
            raise ValueError(f"pixel_values is required: a float tensor of shape {expected}")
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must have shape {expected}, got {list(pixel_values.shape)}")
        if pixel_values.shape[1] != cfg.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model expects num_channels="
                f"{cfg.num_channels} (shape {expected}, got {list(pixel_values.shape)}); convert the images "
                f"(e.g. to RGB) or build the model with num_channels={pixel_values.shape[1]}"
            )
        if tuple(pixel_values.shape[2:]) != (cfg.image_size, cfg.image_size):
            # The flatten → Linear size is fixed by image_size; other sizes would fail with a shape-mismatch matmul.
            raise ValueError(
                f"pixel_values is {pixel_values.shape[2]}x{pixel_values.shape[3]} but the model expects image_size="
                f"{cfg.image_size} (shape {expected}); resize the images to {cfg.image_size}x{cfg.image_size}"
            )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """By `config.problem_type`, as transformers' own classifiers: cross entropy (single-label, unset included),
        BCE with logits on multi-hot rows (multi-label), mean squared error (regression)."""
        problem_type = self.config.problem_type
        if problem_type == "multi_label_classification":
            if labels.is_complex() or labels.shape != logits.shape:
                raise ValueError(
                    f"labels for multi-label classification must be multi-hot rows (float tensor of shape "
                    f"{list(logits.shape)}), got {labels.dtype} of shape {list(labels.shape)}"
                )
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if problem_type == "regression":
            # one target per row ([batch] or [batch, 1]) for one output; a [batch, num_labels] row otherwise
            outputs = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
            targets = labels.squeeze(-1) if labels.ndim == outputs.ndim + 1 and labels.shape[-1] == 1 else labels
            if labels.is_complex() or targets.shape != outputs.shape:
                raise ValueError(
                    f"labels for regression must be one number per output (float tensor of shape "
                    f"{list(outputs.shape)}), got {labels.dtype} of shape {list(labels.shape)}"
                )
            return F.mse_loss(outputs, targets.to(logits.dtype))
        if problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"problem_type={problem_type!r} is not supported by SimpleCNN: expected single_label_classification, "
                "multi_label_classification or regression"
            )
        if labels.is_floating_point() and labels.shape == logits.shape:
            # Soft targets (mixup / cutmix / label smoothing done by the collator): class probabilities per row.
            return F.cross_entropy(logits, labels.to(logits.dtype))
        if not labels.is_floating_point() and not labels.is_complex() and labels.ndim == 1:
            return F.cross_entropy(logits, labels.long())
        raise ValueError(
            f"labels must be class ids (integer tensor of shape [{logits.shape[0]}]) or class probabilities "
            f"(float tensor of shape {list(logits.shape)}), got {labels.dtype} of shape {list(labels.shape)}"
        )

    def transfer_blocks(self) -> list[nn.Module]:
        """The blocks transfer strategies freeze and unfreeze, input side first: conv blocks, then dense layers."""
        return [*self.blocks, *self.dense]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify `pixel_values` ([batch, num_channels, image_size, image_size]).

        `labels` are class ids ([batch] integers) or class probabilities ([batch, num_labels] floats); multi-label:
        multi-hot rows ([batch, num_labels] floats); regression: targets ([batch] floats). With
        `output_hidden_states`, `hidden_states` holds the output of each conv block.
        """
        self._check_pixel_values(pixel_values)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict

        hidden_states: tuple[torch.Tensor, ...] = ()
        x = pixel_values
        for block in self.blocks:
            x = block(x)
            hidden_states += (x,)
        x = self.flatten(x)
        for block in self.dense:
            x = block(x)
        logits = self.classifier(x)

        loss = self._loss(logits, labels) if labels is not None else None
        all_hidden = hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (loss, logits, all_hidden) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=all_hidden)


__all__ = ["SimpleCNNForImageClassification"]
