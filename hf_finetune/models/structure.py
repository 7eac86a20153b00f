"""Where a classifier's head is, read from the model's structure (used by transfer strategies and weight loading)."""

from __future__ import annotations

from typing import Any


def head_module(model: Any) -> Any:
    """The classification head: timm's `get_classifier()`, a model's own `transfer_head()`, or the usual
    transformers attribute (`classifier`, `score`, `head`, `fc`); None when there is none."""
    if hasattr(model, "timm_model"):
        head = model.timm_model.get_classifier()
        if isinstance(head, (tuple, list)):  # distilled models (DeiT, LeViT): the class head and the distillation head
            import torch

            head = torch.nn.ModuleList(head)
        return head
    if hasattr(model, "transfer_head"):
        return model.transfer_head()
    for attr in ("classifier", "score", "head", "fc"):
        module = getattr(model, attr, None)
        if module is not None and any(True for _ in module.parameters()):
            return module
    return None


def head_parameter_names(model: Any) -> list[str]:
    """Names (as in `model.named_parameters()`) of the head's parameters."""
    module = head_module(model)
    ids = {id(p) for p in module.parameters()} if module is not None else set()
    return [n for n, p in model.named_parameters() if id(p) in ids]
