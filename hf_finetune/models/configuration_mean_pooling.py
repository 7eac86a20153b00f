"""Configuration of a sequence classifier over any encoder's mean-pooled token states (see modeling_mean_pooling.py).

save_pretrained copies this file into every mean-pooled output folder (`auto_map` in config.json), so the folder loads
with plain transformers and `trust_remote_code=True` where hf_finetune is not installed: it may import only the
standard library, torch and transformers.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class MeanPoolingConfig(PretrainedConfig):
    """Configuration of `MeanPoolingForSequenceClassification`.

    `encoder_config` is the encoder's own config as a dict (its `to_dict()`, with its `model_type`): any model
    `AutoModel` builds (BERT, MiniLM, RoBERTa, DistilBERT…). Kept as plain JSON rather than a nested config object so
    that it reads the same on every transformers 5 release (composite-config support changed between them).
    `classifier_dropout` is applied to the pooled features before the linear head, in training only.
    """

    # Its own model type, never the encoder's: a loader without trust_remote_code=True must be refused, not handed a
    # plain BertForSequenceClassification that reads the [CLS] token through a random pooler.
    model_type = "mean_pooling"

    encoder_config: dict[str, Any] | None = None
    classifier_dropout: float = 0.1

    def __post_init__(self, **kwargs: Any) -> None:
        if self.encoder_config is None:
            # what a bare `MeanPoolingConfig()` builds (transformers makes one to compare a saved config against)
            self.encoder_config = {"model_type": "bert"}
        if not isinstance(self.encoder_config, dict) or not isinstance(self.encoder_config.get("model_type"), str):
            raise ValueError(
                f"encoder_config={self.encoder_config!r} is not allowed: expected the encoder's config as a dict "
                "with its model_type"
            )
        dropout = self.classifier_dropout
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"classifier_dropout={dropout!r} is not allowed: expected a float in [0, 1)")
        self.classifier_dropout = float(dropout)
        super().__post_init__(**kwargs)

    def build_encoder_config(self) -> PretrainedConfig:
        """The encoder's config object, built from `encoder_config`."""
        from transformers import AutoConfig

        values = dict(self.encoder_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)


__all__ = ["MeanPoolingConfig"]
