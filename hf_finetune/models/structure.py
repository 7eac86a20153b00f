"""Where a classifier's head is, read from the model's structure (used by transfer strategies, the fitted probe and
weight loading), and whether a built model or processor is timm's (through transformers' TimmWrapper)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import BaseImageProcessor, PreTrainedTokenizerBase


def is_timm_model(model: torch.nn.Module) -> bool:
    """A model wrapping a timm network (transformers' TimmWrapper): the network itself is `model.timm_model`.

    The recipe's side of the same question is `ModelSpec.is_timm` (the model's name)."""
    return hasattr(model, "timm_model")


def is_timm_processor(processor: BaseImageProcessor | PreTrainedTokenizerBase | None) -> bool:
    """timm's preprocessing inside transformers (TimmWrapperImageProcessor): its settings are timm's `data_config`,
    not the size/crop fields of transformers' image processors. By name, so that asking imports nothing."""
    return type(processor).__name__ == "TimmWrapperImageProcessor"


def head_module(model: torch.nn.Module) -> torch.nn.Module | None:
    """The classification head: timm's `get_classifier()`, a model's own `transfer_head()`, or the usual
    transformers attribute (`classifier`, `score`, `head`, `fc`); None when there is none."""
    if is_timm_model(model):
        head = model.timm_model.get_classifier()
        if isinstance(head, (tuple, list)):  # distilled models (DeiT, LeViT): the class head and the distillation head
            import torch

            head = torch.nn.ModuleList(trained_copy(h) for h in head)
        return trained_copy(head)
    if hasattr(model, "transfer_head"):
        return trained_copy(model.transfer_head())
    for attr in ("classifier", "score", "head", "fc"):
        module = getattr(model, attr, None)
        if module is not None and any(True for _ in module.parameters()):
            return trained_copy(module)
    return None


def trained_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module that trains in its place: under peft (hf_finetune/lora.py) the head is wrapped by `modules_to_save`
    in a `ModulesToSaveWrapper` that holds the frozen original and the trained copy, which is the one the model runs,
    the probe fits, calibration folds into and the adapter saves. By name, so that asking imports nothing."""
    if type(module).__name__ == "ModulesToSaveWrapper":
        active = module.active_adapter
        return module.modules_to_save[active[0] if isinstance(active, (list, tuple)) else active]
    return module


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names (as in `model.named_parameters()`) of the head's parameters."""
    module = head_module(model)
    ids = {id(p) for p in module.parameters()} if module is not None else set()
    return [n for n, p in model.named_parameters() if id(p) in ids]


def head_linear(model: nn.Module) -> nn.Linear:
    """The one `nn.Linear` of the model's head, whose input the probe fits on.

    A head with any other parameters (RoBERTa's dense + out_proj, DeiT's two heads) is refused rather than half
    fitted: its first layers would stay random while the last one is fitted on their output."""
    import torch

    from ..errors import ModelError

    head = head_module(model)
    with_params = [m for m in head.modules() if any(True for _ in m.parameters(recurse=False))] if head else []
    if len(with_params) != 1 or not isinstance(with_params[0], torch.nn.Linear) or with_params[0].bias is None:
        layers = ", ".join(type(m).__name__ for m in with_params) or "none found"
        raise ModelError(
            f"transfer.strategy linear_probe (and lp_ft's fitted probe) fits a head that is one nn.Linear with a "
            f"bias; {type(model).__name__}'s head has these layers with parameters: {layers}. Use "
            "transfer.strategy head_only (the head trains with the Trainer for num_train_epochs) instead"
        )
    return with_params[0]
