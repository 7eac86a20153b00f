"""A sequence classifier that mean-pools an encoder's last hidden state over the attention mask, then applies one
linear layer: the features sentence-transformers checkpoints (all-MiniLM-L6-v2…) were trained to produce, which a
`BertForSequenceClassification` head (the pooler's [CLS] output) throws away.

`MeanPoolingConfig` / `MeanPoolingForSequenceClassification` are an ordinary transformers config/model pair. hf_finetune
registers them with the Auto classes (importing `hf_finetune.models`) and for `save_pretrained` to copy their code into
the folder: a saved folder loads with `AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` and runs in `pipeline("text-classification", model=folder, trust_remote_code=True)` where
hf_finetune is not installed. So this file and configuration_mean_pooling.py may import only the standard library,
torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_mean_pooling import MeanPoolingConfig


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of each row's token states over its attention mask (sentence-transformers' `pooling_mode_mean_tokens`):
    padding never counts, so a text's features are the same alone or in a padded batch."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    # clamp as sentence-transformers does: an all-padding row gives zeros, not NaN
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Encoder → mean over the attention mask → dropout (training only) → `classifier` (one nn.Linear).

    The loss is BertForSequenceClassification's: cross entropy for single-label classification, MSE for regression
    (one label), BCE with logits for multi-label; `config.problem_type` is inferred from the labels when unset.
    """

    config_class = MeanPoolingConfig
    config: MeanPoolingConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    # the loss is a plain batch mean, which the Trainer must divide by the gradient-accumulation steps itself
    accepts_loss_kwargs = False

    def __init__(self, config: MeanPoolingConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.build_encoder_config())
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.encoder.config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the head is ours; the encoder's modules are initialised by its own class (or loaded). The
        # `transformers.initialization` functions leave tensors loaded from a checkpoint alone.
        if module is self.classifier:
            std = getattr(self.encoder.config, "initializer_range", 0.02)
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        # the encoder's config can change after building (resized embeddings, overrides); save what it is now
        self.config.encoder_config = self.encoder.config.to_dict()
        return super().save_pretrained(*args, **kwargs)

    def pooled_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The features the head reads: the mean of the encoder's last hidden state over the attention mask."""
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids  # only encoders with segment embeddings take it (not DistilBERT)
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        return mean_pool(outputs.last_hidden_state, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)  # always a SequenceClassifierOutput (pipeline and Trainer read it by name)
        pooled = self.pooled_features(input_ids, attention_mask, token_type_ids, **kwargs)
        logits = self.classifier(self.dropout(pooled))
        loss = self._loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_labels = self.config.num_labels
        if self.config.problem_type is None:
            if num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


__all__ = ["MeanPoolingForSequenceClassification", "mean_pool"]
