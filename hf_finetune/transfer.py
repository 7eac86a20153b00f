"""Transfer learning: which parameters train, with which learning rate, and frozen BatchNorm that stays frozen.

Strategies (recipe section `transfer:`):
  full           every parameter trains
  linear_probe   the new head is fitted (multinomial logistic regression, hf_finetune/probe.py) on the frozen
                 backbone's features, computed once; no epochs, no optimizer
  head_only      only the new head trains, with the Trainer, for num_train_epochs; the backbone is frozen
  partial        the head, the layers after the last block, and the last `unfreeze_last` blocks train
  lp_ft          the fitted probe first, then fine-tune (all, or the last `unfreeze_last` blocks) with the backbone at
                 `learning_rate × fine_tune_lr_scale` — one run, one output. With `probe_epochs` written, the probe is
                 instead the head alone trained with the Trainer for that many epochs (the LP-FT of earlier versions)
Options: `layer_decay` (layer-wise learning-rate decay: each block down from the head gets `× layer_decay`) and
`head_lr` (the head's own learning rate).

"Blocks" come from the model's structure, not from per-architecture tables: timm's `group_matcher` for timm models
(through TimmWrapper), the encoder's largest `nn.ModuleList` for transformers models (BERT `encoder.layer`, ViT
`layers`, ResNet `encoder.stages`…), and `transfer_blocks()` where a model defines it (simple_cnn).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# imported by api.py only (the CLI imports that lazily), so `hf-finetune --help` stays free of torch
from transformers import TrainerCallback

from .errors import ModelError
from .recipe import DEFAULT_FINE_TUNE_LR_SCALE, TRANSFER_STRATEGIES, TransferSpec

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.hooks import RemovableHandle
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from .recipe import Recipe

logger = logging.getLogger(__name__)

STRATEGIES = TRANSFER_STRATEGIES

# Training settings each strategy gets when the recipe leaves them unset (Trainer's own 5e-5 suits full fine-tuning,
# not a lone head). linear_probe takes none: the recipe is refused if it writes them (recipe.py).
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    "head_only": {"learning_rate": 1e-3},
}


def fits_probe(spec: TransferSpec) -> bool:
    """The head is fitted on cached features before (or instead of) training: linear_probe, and lp_ft unless the
    recipe asks for an epoch-trained probe (`probe_epochs`)."""
    return spec.strategy == "linear_probe" or (spec.strategy == "lp_ft" and spec.probe_epochs is None)


def with_strategy_defaults(recipe: Recipe) -> Recipe:
    """The recipe with its strategy's defaults for the training keys it does not set (logged; saved in recipe.yaml)."""
    import dataclasses

    chosen = {k: v for k, v in STRATEGY_DEFAULTS.get(recipe.transfer.strategy, {}).items() if k not in recipe.training}
    for key, value in chosen.items():
        logger.info(
            "training: %s = %r (transfer.strategy %s default; set training.%s to change it)",
            key,
            value,
            recipe.transfer.strategy,
            key,
        )
    return dataclasses.replace(recipe, training={**recipe.training, **chosen}) if chosen else recipe


@dataclass
class LayerMap:
    """Each parameter's position: 0 = stem/embeddings, 1..num_blocks = blocks, num_blocks + 1 = neck, head apart."""

    layer: dict[str, int]  # parameter name -> layer index (head parameters excluded)
    head: list[str]  # parameter names of the classification head
    num_blocks: int

    @property
    def neck(self) -> int:
        return self.num_blocks + 1


@dataclass
class TransferPlan:
    spec: TransferSpec
    layers: LayerMap
    trainable_now: set[str]  # trainable from the first step
    trainable_later: set[str] = field(default_factory=set)  # lp_ft: unfrozen after the probe

    @property
    def needs_param_groups(self) -> bool:
        """Whether the optimizer needs `param_groups` (per-layer learning rates, frozen parameters it must already
        know): anything but plain full fine-tuning with the default options."""
        return self.spec != type(self.spec)()


def map_layers(model: nn.Module) -> LayerMap:
    """Find the stem, the blocks, the neck and the head of a classifier from its structure."""
    import torch

    from .models.structure import head_parameter_names

    head = head_parameter_names(model)
    if not head:
        raise ModelError(
            f"{type(model).__name__}: cannot find the classification head, so transfer strategies cannot tell it "
            "from the backbone; use transfer.strategy: full"
        )
    if hasattr(model, "timm_model"):
        return _map_timm(model, head)
    if hasattr(model, "transfer_blocks"):
        blocks = list(model.transfer_blocks())
    else:
        base = model.base_model if model.base_model is not model else model
        lists = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
        if not lists:
            raise ModelError(f"{type(model).__name__}: no repeated blocks (nn.ModuleList) found for transfer")
        blocks = list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))
    block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    head_set = set(head)
    layer: dict[str, int] = {}
    seen_block = 0
    for name, p in model.named_parameters():
        if name in head_set:
            continue
        if id(p) in block_of:
            seen_block = block_of[id(p)]
            layer[name] = seen_block
        else:
            # before the first block: stem/embeddings; after the last one: pooler, final norm (the neck)
            layer[name] = 0 if seen_block == 0 else len(blocks) + 1
    return LayerMap(layer, head, len(blocks))


def _map_timm(model: nn.Module, head: list[str]) -> LayerMap:
    from timm.models import group_parameters

    timm_model = model.timm_model
    prefix = "timm_model."
    groups = group_parameters(timm_model, timm_model.group_matcher(coarse=False))
    order = sorted(groups)
    # timm's matcher: the first group is the stem, unmatched parameters (head, final norm) form the last group
    num_blocks = max(0, len(order) - 2)
    layer: dict[str, int] = {}
    for rank, gid in enumerate(order):
        for name in groups[gid]:
            full = prefix + name
            if full not in head:
                layer[full] = min(rank, num_blocks + 1)
    return LayerMap(layer, head, num_blocks)


def plan_transfer(model: nn.Module, spec: TransferSpec) -> TransferPlan:
    """Decide which parameters train now and which after the probe; errors for impossible requests."""
    layers = map_layers(model)
    head = set(layers.head)
    everything = set(layers.layer) | head
    k = spec.unfreeze_last
    if k is not None and not 1 <= k <= layers.num_blocks:
        raise ModelError(
            f"transfer.unfreeze_last {k}: {type(model).__name__} has {layers.num_blocks} blocks; "
            f"use 1..{layers.num_blocks} (or strategy full to train everything)"
        )
    if spec.strategy == "partial" and k is None:
        raise ModelError(f"transfer.strategy partial needs transfer.unfreeze_last (1..{layers.num_blocks})")
    if spec.strategy in ("full", "linear_probe", "head_only") and k is not None:
        raise ModelError(
            f"transfer.unfreeze_last {k} applies to strategies partial and lp_ft, not {spec.strategy}; "
            "remove it or change the strategy"
        )
    top = {n for n, i in layers.layer.items() if k is not None and i > layers.num_blocks - k}
    if spec.strategy == "full":
        plan = TransferPlan(spec, layers, everything)
    elif spec.strategy in ("linear_probe", "head_only"):
        plan = TransferPlan(spec, layers, head)
    elif spec.strategy == "partial":
        plan = TransferPlan(spec, layers, head | top)
    else:  # lp_ft: after a fitted probe, fine-tuning starts at the first step
        later = (top if k is not None else everything) - head
        plan = TransferPlan(spec, layers, head | later) if fits_probe(spec) else TransferPlan(spec, layers, head, later)
    if fits_probe(spec):
        from .models.structure import head_linear

        head_linear(model)  # a head the probe cannot fit is refused now, before the output folder is touched
    if not plan.trainable_now:
        raise ModelError(f"transfer.strategy {spec.strategy}: nothing is left to train in {type(model).__name__}")
    return plan


def apply_plan(model: nn.Module, plan: TransferPlan) -> list[RemovableHandle]:
    """Freeze what must not train now and keep frozen BatchNorm (lp_ft after a fitted probe: every BatchNorm) in eval
    mode; returns the hook handles."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in plan.trainable_now)
    # lp_ft after a fitted probe: every BatchNorm keeps its pretrained running statistics (its scale and shift still
    # train). The probe was fitted on features normalised with them; re-estimating them on the new data's training
    # batches moves every feature at once and leaves the fitted head behind (EfficientNet-Lite0 on digits: validation
    # accuracy 0.99 after the probe, 0.13 after one such epoch, 0.88-0.89 after one with the statistics kept).
    keep_all = plan.spec.strategy == "lp_ft" and fits_probe(plan.spec)
    handles = freeze_batchnorm(model, every=keep_all)
    kept = "BatchNorm layers (lp_ft: all of them)" if keep_all else "frozen BatchNorm layers"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "transfer: %s — %s of %s parameters train (%d blocks found)%s",
        plan.spec.strategy,
        f"{trainable:,}",
        f"{total:,}",
        plan.layers.num_blocks,
        f"; {len(handles)} {kept} keep their statistics" if handles else "",
    )
    return handles


def _keep_eval(module: nn.Module, _args: tuple[object, ...]) -> None:
    # Trainer calls model.train() every step; a frozen BatchNorm must still normalise with (and not update) its
    # running statistics, or the "frozen" backbone drifts.
    module.training = False


def freeze_batchnorm(model: nn.Module, every: bool = False) -> list[RemovableHandle]:
    """A forward pre-hook on every BatchNorm whose parameters are all frozen (on every BatchNorm, `every`) keeps it
    in eval mode.

    A BatchNorm without parameters (`affine=False`) follows the module that holds it: frozen when every parameter
    of its parent is."""
    import torch

    handles = []
    modules = dict(model.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if not params:
                params = list(modules[name.rpartition(".")[0]].parameters())
            if every or (params and not any(p.requires_grad for p in params)):
                handles.append(module.register_forward_pre_hook(_keep_eval))
    return handles


def param_groups(
    model: nn.Module, plan: TransferPlan, learning_rate: float, weight_decay: float, decay_names: set[str]
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with per-layer learning rates; frozen parameters are included (lp_ft unfreezes
    them later and the optimizer must already know them; without a gradient they are not updated)."""
    spec, layers = plan.spec, plan.layers
    trains = plan.trainable_now | plan.trainable_later
    grouped: dict[tuple[str, float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if name not in trains:
            continue
        if name in layers.head:
            kind, lr = "head", spec.head_lr if spec.head_lr is not None else learning_rate
        else:
            depth = layers.neck - layers.layer[name]  # 0 for the neck, num_blocks + 1 for the stem
            lr = learning_rate * (spec.layer_decay**depth if spec.layer_decay else 1.0)
            if spec.strategy == "lp_ft":
                lr *= spec.fine_tune_lr_scale if spec.fine_tune_lr_scale is not None else DEFAULT_FINE_TUNE_LR_SCALE
            kind = f"layer {layers.layer[name]}"
        # Trainer's decay names exclude biases and LayerNorm, but not e.g. timm's BatchNorm (`bn1.weight`): no decay
        # for any 1-D tensor (biases, norm scales), as timm's own optimizer factory does
        wd = weight_decay if name in decay_names and p.ndim > 1 else 0.0
        grouped.setdefault((kind, lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd, "name": kind} for (kind, lr, wd), ps in grouped.items()]


class ProbeThenFineTune(TrainerCallback):
    """lp_ft with `probe_epochs`: after them, unfreeze the backbone (its BatchNorm trains again too).

    `handles`: the frozen-BatchNorm hooks `apply_plan` set, replaced here by those still frozen after the switch."""

    def __init__(self, model: nn.Module, plan: TransferPlan, handles: list[RemovableHandle]) -> None:
        self.model = model
        self.plan = plan
        self.handles = handles
        self.switched = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if args.max_steps <= 0 and args.num_train_epochs <= self.plan.spec.probe_epochs:
            logger.warning(
                "transfer: lp_ft probes for %g epochs but the run has %g: the backbone will never be fine-tuned "
                "(raise training.num_train_epochs or lower transfer.probe_epochs)",
                self.plan.spec.probe_epochs,
                args.num_train_epochs,
            )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        # `state.epoch` is the fraction of epochs done (batches seen / batches per epoch), also when `max_steps`
        # sets the run's length and after resuming from a checkpoint
        if not self.switched and (state.epoch or 0.0) >= self.plan.spec.probe_epochs - 1e-9:
            self.switch(state.global_step)

    def switch(self, step: int) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for name, p in self.model.named_parameters():
            if name in self.plan.trainable_later:
                p.requires_grad_(True)
        self.handles.extend(freeze_batchnorm(self.model))  # BatchNorm still frozen (partial) stays in eval mode
        self.switched = True
        logger.info(
            "transfer: probe done at step %d; fine-tuning %d more tensors", step, len(self.plan.trainable_later)
        )


def setup(model: nn.Module, spec: TransferSpec) -> tuple[TransferPlan, list[TrainerCallback], list[RemovableHandle]]:
    """Plan + apply; returns (plan, callbacks for Trainer, BatchNorm hook handles)."""
    plan = plan_transfer(model, spec)
    handles = apply_plan(model, plan)
    callbacks = [ProbeThenFineTune(model, plan, handles)] if plan.trainable_later else []
    return plan, callbacks, handles
