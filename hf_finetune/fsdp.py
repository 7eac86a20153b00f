"""FSDP settings the toolkit checks before training, read from the environment `accelerate launch` sets from its
config file (FSDP_* variables), so a run that would shard badly is refused before it starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def fsdp_launched(env: dict[str, str]) -> bool:
    """`accelerate launch` with an FSDP config (distributed_type: FSDP)."""
    return env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


def parallelism(world_size: int, fsdp: object, env: dict[str, str]) -> str | None:
    """How the processes shared the model, for metrics.json and the card: FSDP (each holds a shard), DDP (each a
    full copy), None for one process. `fsdp`: TrainingArguments.fsdp (the recipe's training.fsdp)."""
    if world_size <= 1:
        return None
    return "FSDP" if fsdp or fsdp_launched(env) else "DDP"


def cpu_problem(where: str) -> str:
    """accelerate (1.16, `AcceleratorState.__init__`) makes a run FSDP only when its distributed type is a GPU-like
    one (MULTI_GPU, MULTI_XPU, ...); on CPU the type is MULTI_CPU, so an FSDP config quietly becomes
    DistributedDataParallel with a full model copy per process, and `fsdp_cpu_ram_efficient_loading` (which
    transformers still honours when loading) leaves what the checkpoint lacks (a new head) on the meta device on
    every process but the first, so they crash in Trainer ("Cannot copy out of meta tensor"). torch's own
    `fully_shard` does run on CPU over gloo (tests/test_fsdp.py): the gap is accelerate's."""
    import accelerate

    return (
        f"{where}: FSDP needs GPUs; on CPU accelerate {accelerate.__version__} does not shard (it would run "
        "DistributedDataParallel, a full model copy per process, and fsdp_cpu_ram_efficient_loading would leave "
        "every process but the first without the new head's weights); on CPU use DistributedDataParallel "
        "(accelerate launch --multi_gpu --num_processes 2 --mixed_precision no: CPU processes over gloo), or run "
        "the FSDP config on GPUs"
    )


def block_class(model: nn.Module) -> str | None:
    """The class of the model's repeated blocks: the children of an nn.Sequential/nn.ModuleList whose instances
    together hold the most parameters (timm ViT `Block`, ResNet `BasicBlock`/`Bottleneck`, ConvNeXt
    `ConvNeXtBlock`: the blocks rather than the stages, because there are more of them at the same total)."""
    import torch

    held: dict[str, tuple[int, int]] = {}  # class name -> (parameters, instances)
    for container in model.modules():
        if not isinstance(container, (torch.nn.Sequential, torch.nn.ModuleList)):
            continue
        for child in container.children():
            if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)):
                continue
            params, count = held.get(type(child).__name__, (0, 0))
            held[type(child).__name__] = (params + sum(p.numel() for p in child.parameters()), count + 1)
    total = sum(p.numel() for p in model.parameters())
    # a block class holds most of the model and repeats; of those, the finest (most instances) shards best
    candidates = [(count, name) for name, (params, count) in held.items() if count > 1 and 2 * params >= total]
    return max(candidates)[1] if candidates else None


def wrap_problem(model: nn.Module, env: dict[str, str]) -> str | None:
    """Under TRANSFORMER_BASED_WRAP accelerate wraps the classes a model names in `_no_split_modules`; a model that
    names none it contains (timm through TimmWrapper names `TimmWrapperModel`, which a TimmWrapperFor* model does
    not hold) gets one FSDP unit, the whole model, gathered in full on every process at each step: not sharding."""
    if not fsdp_launched(env) or env.get("FSDP_AUTO_WRAP_POLICY", "").upper() != "TRANSFORMER_BASED_WRAP":
        return None
    if env.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        return None  # the user chose; accelerate says clearly if the class is not in the model
    from accelerate.utils.dataclasses import get_module_class_from_name

    named = sorted(getattr(model, "_no_split_modules", None) or [])
    if any(get_module_class_from_name(model, name) is not None for name in named):
        return None
    block = block_class(model)
    fix = (
        f"add --fsdp_transformer_layer_cls_to_wrap {block} to accelerate launch (or fsdp_transformer_layer_cls_to_wrap:"
        f" {block} under fsdp_config)"
        if block
        else "set fsdp_transformer_layer_cls_to_wrap under fsdp_config to the class of its blocks"
    )
    return (
        f"accelerate launch with an FSDP config, fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP: "
        f"{type(model).__name__} names no block class it contains (_no_split_modules: {named or 'none'}), so FSDP "
        f"would wrap only the whole model and gather all its weights on every process at each step; {fix}, or use "
        "fsdp_auto_wrap_policy: SIZE_BASED_WRAP with fsdp_min_num_params"
    )
