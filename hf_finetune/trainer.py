"""TrainingArguments straight from the recipe's `training:` section, and the Trainer around them.

The toolkit only fills in values the user did not write (and logs each one); it never overrides a user's setting.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

# imported by api.py only (the CLI imports that lazily), so `hf-finetune --help` stays free of torch
from transformers import Trainer, TrainerCallback

from .errors import HFFinetuneError, RecipeError
from .models.weights import sync_with_checkpoint
from .tracking import use_training_tensorboard

if TYPE_CHECKING:
    import datasets
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from transformers import (
        BaseImageProcessor,
        EvalPrediction,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

    Dataset: TypeAlias = "torch.utils.data.Dataset | datasets.Dataset"
    ProcessingClass: TypeAlias = "PreTrainedTokenizerBase | BaseImageProcessor | ProcessorMixin"
    ParamGroups: TypeAlias = "Callable[[nn.Module, set[str]], list[dict[str, Any]]]"
    BatchMixer: TypeAlias = "Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]"

logger = logging.getLogger(__name__)


def training_defaults(
    training: dict[str, Any], task_defaults: dict[str, Any], metric_for_best_model: str
) -> dict[str, Any]:
    """Defaults for classification (plus the task's own), for the keys the recipe leaves unset."""
    import torch

    defaults: dict[str, Any] = {
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_total_limit": 2,
        # pinned memory only helps copies to a GPU; without one torch warns on every loader
        "dataloader_pin_memory": torch.cuda.is_available(),
        # one loss term per example: averaging "tokens" across devices only rescales the loss under DDP
        "average_tokens_across_devices": False,
        # ddp_find_unused_parameters is left to transformers (True unless activation checkpointing): models such as
        # DINOv2 have parameters a classification forward pass never uses, and DDP stops with False
        "report_to": "none",
        **task_defaults,
        **{key: value for key, (value, _) in strategy_defaults(training).items()},
    }
    stopping = early_stopping_defaults(training, defaults)
    defaults |= {key: value for key, (value, _) in stopping.items()}
    if not _has_accelerator():
        # without it, several processes on a CPU-only machine (accelerate launch, torchrun) don't form one
        # distributed run: each would train alone on all the data
        defaults["use_cpu"] = True
    if training.get("load_best_model_at_end") or training.get("save_strategy") == "best" or stopping:
        defaults["metric_for_best_model"] = metric_for_best_model
    # transformers takes every metric but "…loss" as greater-is-better: wrong for errors such as rmse or mae
    chosen = training.get("metric_for_best_model") or defaults.get("metric_for_best_model")
    if chosen and str(chosen).removeprefix("eval_") in _LOWER_IS_BETTER:
        defaults["greater_is_better"] = False
    return {k: v for k, v in defaults.items() if k not in training}


# error metrics (lower is better) whose names transformers does not recognise as such
_LOWER_IS_BETTER = {"mae", "rmse", "hamming_loss"}
_STRATEGIES = ("eval_strategy", "save_strategy", "logging_strategy")
_STEPS = {"eval_strategy": "eval_steps", "save_strategy": "save_steps", "logging_strategy": "logging_steps"}


def strategy_defaults(training: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Evaluation, saving and logging follow each other: {key: (value, why)} for those the recipe leaves unset.

    Unset, all three are per epoch. When the recipe sets one of them (or a step count), the others follow it, so
    that transformers' own rules hold (load_best_model_at_end needs save_strategy == eval_strategy and save_steps a
    multiple of eval_steps): `eval_strategy: steps` alone must not meet a toolkit default of saving per epoch.
    """
    out: dict[str, tuple[Any, str]] = {}
    given = {k: training[k] for k in _STRATEGIES if k in training}
    # the strategy the others follow: evaluation's first (best-model selection hangs on it), then saving's
    leader = next((k for k in ("eval_strategy", "save_strategy") if given.get(k) in ("steps", "epoch")), None)
    for key in _STRATEGIES:
        if key in given:
            continue
        if leader is not None:
            out[key] = (given[leader], f"follows training.{leader}")
        else:
            out[key] = ("epoch", "toolkit default")
    strategy = {**given, **{k: v for k, (v, _) in out.items()}}
    # eval_steps if set, else save_steps, else logging_steps (which transformers itself falls back to for eval_steps)
    counts = {k: training[_STEPS[k]] for k in _STRATEGIES if _STEPS[k] in training}
    count_from = next(iter(counts), None)
    if count_from is not None:
        for key in _STRATEGIES:
            steps = _STEPS[key]
            if strategy[key] == "steps" and steps not in training:
                out[steps] = (counts[count_from], f"follows training.{_STEPS[count_from]}")
    return out


def early_stopping_defaults(training: dict[str, Any], defaults: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """With training.early_stopping, {key: (value, why)} for what it needs that the recipe leaves unset.

    The run that stops `patience` evaluations after its best one should end with the best model, so
    load_best_model_at_end defaults to true where transformers allows it (checkpoints saved at the evaluations). A
    recipe that saves on another schedule keeps its last model (transformers warns; the log says so). --resume goes on
    counting the evaluations without improvement: the callback's state is restored from the checkpoint."""
    if not training.get("early_stopping"):
        return {}
    why = "training.early_stopping"
    out: dict[str, tuple[Any, str]] = {
        "restore_callback_states_from_checkpoint": (True, f"{why}: --resume keeps counting evaluations"),
    }
    if "load_best_model_at_end" not in training and _saves_at_evaluations({**defaults, **training}):
        out["load_best_model_at_end"] = (True, f"{why}: the run ends with its best model, not its last")
    return {k: v for k, v in out.items() if k not in training}


def _saves_at_evaluations(settings: dict[str, Any]) -> bool:
    """Does every evaluation have a checkpoint to go back to (what load_best_model_at_end needs)?"""
    save, evaluation = str(settings.get("save_strategy")), str(settings.get("eval_strategy"))
    if save == "best":
        return True
    if save != evaluation or save not in ("epoch", "steps"):
        return False
    if save == "epoch":
        return True
    save_steps, eval_steps = settings.get("save_steps"), settings.get("eval_steps") or settings.get("logging_steps")
    if not save_steps or not eval_steps:
        return False  # transformers' own step defaults: left to it
    return float(save_steps) % float(eval_steps) == 0


def early_stopping(training: dict[str, Any]) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback as training.early_stopping says; [] without it."""
    from transformers import EarlyStoppingCallback

    stopping = training.get("early_stopping")
    if not stopping:
        return []
    return [EarlyStoppingCallback(stopping["patience"], stopping["threshold"])]


def early_stopping_info(callbacks: Sequence[TrainerCallback], state: TrainerState, args: TrainingArguments) -> dict:
    """metrics.json's run.early_stopping: the setting, the metric, whether it ended the run and where."""
    from transformers import EarlyStoppingCallback

    found = [c for c in callbacks if isinstance(c, EarlyStoppingCallback)]
    if not found:
        return {}
    cb = found[0]
    stopped = cb.early_stopping_patience_counter >= cb.early_stopping_patience
    best_step = getattr(state, "best_global_step", None)
    best_epoch = next((e.get("epoch") for e in state.log_history if e.get("step") == best_step and "epoch" in e), None)
    return {
        "patience": cb.early_stopping_patience,
        "threshold": cb.early_stopping_threshold,
        "metric": _eval_key(args.metric_for_best_model),
        "stopped": stopped,
        "epoch": state.epoch,  # where training ended
        "step": state.global_step,
        "max_steps": state.max_steps,
        "best_metric": state.best_metric,
        "best_step": best_step,
        "best_epoch": best_epoch,
        "kept": "best" if args.load_best_model_at_end else "last",
    }


def _eval_key(metric: str | None) -> str | None:
    return None if metric is None else metric if metric.startswith("eval_") else f"eval_{metric}"


def log_early_stopping(info: dict[str, Any]) -> None:
    if not info:
        return
    metric, best = info["metric"], info["best_metric"]
    where = f"best {metric} {best:.4g} at epoch {_num(info['best_epoch'])} (step {info['best_step']})"
    if info["stopped"]:
        logger.info(
            "early stopping: stopped at epoch %s (step %d of %d): %s did not improve by more than %g for %d "
            "evaluations; %s; the model kept is the %s one",
            _num(info["epoch"]),
            info["step"],
            info["max_steps"],
            metric,
            info["threshold"],
            info["patience"],
            where,
            info["kept"],
        )
    else:
        logger.info("early stopping: did not trigger (patience %d); %s", info["patience"], where)


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _has_accelerator() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(
        torch.cuda.is_available()
        or (mps is not None and mps.is_available())
        or (xpu is not None and xpu.is_available())
    )


def build_training_args(training: dict[str, Any], defaults: dict[str, Any]) -> TrainingArguments:
    """`transformers.TrainingArguments(**training, **defaults)`; its complaints become recipe errors."""
    from transformers import TrainingArguments

    from .recipe import TOOLKIT_TRAINING_KEYS

    reasons = {key: why for key, (_, why) in strategy_defaults(training).items()}
    reasons |= {key: why for key, (_, why) in early_stopping_defaults(training, defaults).items()}
    for key, value in defaults.items():
        why = reasons.get(key, "toolkit default")
        logger.info("training: %s = %r (%s; set training.%s to change it)", key, value, why, key)
    stopping = training.get("early_stopping")
    if stopping:
        logger.info(
            "training: early stopping after %d evaluations without an improvement of more than %g (training."
            "early_stopping)",
            stopping["patience"],
            stopping["threshold"],
        )
    arguments = {k: v for k, v in training.items() if k not in TOOLKIT_TRAINING_KEYS}
    try:
        return TrainingArguments(**arguments, **defaults)
    except (ValueError, TypeError) as err:
        raise RecipeError([f"training: transformers.TrainingArguments rejected the values: {err}"]) from None


class AugmentationEpoch(TrainerCallback):
    """At each epoch's start (a resumed one too, before its loader starts workers or skips batches), give the
    training split's transform the epoch and the run's seed when it takes them (`set_epoch`, as the image task's
    does), so random augmentation is a function of (seed, epoch, row) and not of the RNG's history."""

    def on_epoch_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        train_dataloader: DataLoader | None = None,
        **kwargs: object,
    ) -> None:
        dataset = getattr(train_dataloader, "dataset", None)
        transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if hasattr(transform, "set_epoch"):
            seed = args.seed if args.data_seed is None else args.data_seed
            transform.set_epoch(int(state.epoch or 0), seed)  # a resumed epoch starts at a fraction


@contextlib.contextmanager
def _keep_every_eval_sample(args: TrainingArguments) -> Iterator[None]:
    """`dataloader_drop_last` is meant for training batches; Trainer also applies it to evaluation, which would
    silently leave the last partial batch out of the metrics (or evaluate nothing on a small split)."""
    saved = args.dataloader_drop_last
    args.dataloader_drop_last = False
    try:
        yield
    finally:
        args.dataloader_drop_last = saved


class ClassificationTrainer(Trainer):
    """transformers.Trainer for one classification run, through public methods only.

    - evaluation always counts every sample (`dataloader_drop_last` applies to training batches only);
    - no weight decay on 1-D tensors (biases, every norm's scale);
    - `param_groups(model, decay_names)`: the optimizer's parameter groups (transfer strategies, layer-wise learning
      rates) instead of Trainer's two;
    - `mixup(pixels, labels)`: mixes training batches (timm's Mixup/CutMix); the loss then gets soft targets.

    A `compute_loss_func` given here is taken to return a per-batch mean (as `loss.CrossEntropy` does), so Trainer
    still divides it by the gradient-accumulation steps.
    """

    def __init__(
        self, *args: Any, param_groups: ParamGroups | None = None, mixup: BatchMixer | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.param_groups_fn = param_groups
        self.mixup_fn = mixup
        if self.compute_loss_func is not None:
            # our loss is a per-batch mean: Trainer must still divide it by the gradient-accumulation steps
            self.loss_is_scaled_for_ga = False

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.param_groups_fn is not None:
            opt_model = self.model if model is None else model
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = self.param_groups_fn(opt_model, set(self.get_decay_parameter_names(opt_model)))
            self.optimizer = cls(groups, **kwargs)
            for group in self.optimizer.param_groups:
                logger.info(
                    "optimizer: %-10s lr %.3g  weight decay %g  (%d tensors)",
                    group.get("name", "?"),
                    group["lr"],
                    group["weight_decay"],
                    len(group["params"]),
                )
        return super().create_optimizer(model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        # no weight decay on any 1-D tensor: biases and every norm's scale (timm's BatchNorm scales slip through
        # Trainer's name patterns)
        shapes = {n: p.ndim for n, p in model.named_parameters()}
        return [n for n in super().get_decay_parameter_names(model) if shapes.get(n, 2) > 1]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.get("labels")
        if self.mixup_fn is not None and model.training and labels is not None:
            pixels, soft = mix_batch(self.mixup_fn, inputs["pixel_values"], labels)
            inputs = {**inputs, "pixel_values": pixels, "labels": soft}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def get_eval_dataloader(self, eval_dataset: Dataset | str | None = None) -> DataLoader:
        with _keep_every_eval_sample(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        with _keep_every_eval_sample(self.args):
            return super().get_test_dataloader(test_dataset)


def build_trainer(
    *,
    model: nn.Module,
    args: TrainingArguments,
    train_dataset: Dataset | None,
    eval_dataset: Dataset | None,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    processor: ProcessingClass | None,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None,
    preprocess_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    callbacks: Sequence[TrainerCallback] = (),
    param_groups: ParamGroups | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    mixup: BatchMixer | None = None,
) -> ClassificationTrainer:
    """A `ClassificationTrainer` for one classification run, with `AugmentationEpoch` after `callbacks`.

    `loss(outputs, labels)` replaces the model's loss (class weights, soft targets; see `loss.classification_loss`).
    """
    trainer = ClassificationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate,
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
        callbacks=[*callbacks, AugmentationEpoch()],
        compute_loss_func=loss,
        param_groups=param_groups,
        mixup=mixup,
    )
    # report_to tensorboard: the evaluations after training are logged once, as final/… (tracking.log_final_results)
    use_training_tensorboard(trainer)
    return trainer


def mix_batch(mixer: BatchMixer, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixer(pixels, labels)` (timm's Mixup) for a batch of any size from 2 up.

    timm pairs sample i with its mirror n-1-i and refuses an odd batch (the middle sample would be its own partner).
    An odd batch gets one extra row, a copy of its second sample, so the first sample is paired with that copy and
    every other sample with its mirror; the extra row is dropped again. Every sample is mixed with another one.
    """
    import torch

    n = len(labels)
    if n % 2 == 0:
        return mixer(pixels, labels)
    if n == 1:
        # not reached in practice: the recipe check refuses per_device_train_batch_size 1, and the training rows are
        # trimmed so that no epoch ends on a batch of one (avoid_single_sample_last_batch)
        raise HFFinetuneError(
            "mixup/CutMix: a training batch of one sample has nothing to mix it with; use a larger "
            "training.per_device_train_batch_size or training.dataloader_drop_last: true"
        )
    mixed, soft = mixer(torch.cat([pixels, pixels[1:2]]), torch.cat([labels, labels[1:2]]))
    return mixed[:n], soft[:n]


def verify_best_model(trainer: Trainer) -> str | None:
    """After `load_best_model_at_end`, make sure the model in memory really holds the best checkpoint's weights
    (Trainer's own loading misses renamed tensors; see `sync_with_checkpoint`).
    Returns the checkpoint that was verified, or None when the run did not keep a best model.
    """
    best = trainer.state.best_model_checkpoint
    if not trainer.args.load_best_model_at_end or not best:
        return None
    wrong = sync_with_checkpoint(trainer.accelerator.unwrap_model(trainer.model), best)
    if wrong:
        logger.warning(
            "best model: Trainer left %d tensors different from %s (e.g. %s); restored them with from_pretrained",
            len(wrong),
            best,
            wrong[0],
        )
    logger.info("best model: weights verified against %s", Path(best).name)
    return best


def avoid_single_sample_last_batch(
    train_dataset: datasets.Dataset, args: TrainingArguments, model: nn.Module, mixing: bool = False
) -> datasets.Dataset:
    """Drop one training row when each epoch would end on a batch of one and the model has BatchNorm (or the
    batches are mixed: mixup/CutMix needs two samples).

    BatchNorm cannot normalise a single sample in training mode and the run would crash at the end of the first
    epoch. `dataloader_drop_last` is no fix: Trainer applies it to evaluation too, which would skip eval samples.
    """
    import math

    import torch

    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if args.dataloader_drop_last or not (batch_norm or mixing):
        return train_dataset
    per_rank = math.ceil(len(train_dataset) / max(1, args.world_size))
    if per_rank % args.per_device_train_batch_size != 1 or per_rank == 1:
        return train_dataset
    drop = max(1, args.world_size)
    logger.info(
        "data: dropped %d of %d training rows so no epoch ends on a batch of one (%s)",
        drop,
        len(train_dataset),
        "BatchNorm cannot train on it" if batch_norm else "mixup/CutMix has nothing to mix it with",
    )
    return train_dataset.select(range(len(train_dataset) - drop))


# --------------------------------------------------------------------------------------------- distributed runs


def mixed_precision(training: dict[str, Any], env: dict[str, str]) -> tuple[str, str]:
    """(precision, where it was set): the recipe's `training.bf16`/`fp16`, or `accelerate launch`'s config.

    Setting it in both places with different values is an error rather than a silent winner.
    """
    launched = env.get("ACCELERATE_MIXED_PRECISION", "no")
    asked = "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else None
    said_in_recipe = "bf16" in training or "fp16" in training
    if said_in_recipe and launched != "no" and (asked or "no") != launched:
        raise RecipeError(
            [
                f"training: the recipe asks for {asked or 'no mixed precision'} but accelerate launch was configured "
                f"with mixed_precision={launched}; set it in one place (drop training.bf16/fp16 from the recipe, or "
                "launch with --mixed_precision to match)"
            ]
        )
    precision, where = (
        (asked, "recipe training." + asked)
        if asked
        else (launched, "accelerate launch config")
        if launched != "no"
        else ("no", "default (fp32)")
    )
    on_cpu = bool(training.get("use_cpu")) or env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if precision == "fp16" and (on_cpu or not _has_accelerator()):
        # accelerate turns fp16 autocast off on a CPU and trains in fp32 without a word
        what, fix = (
            ("training.fp16: true", "set training.bf16: true instead (or drop fp16)")
            if asked
            else ("accelerate launch with mixed_precision=fp16", "launch with --mixed_precision bf16 (or no)")
        )
        raise RecipeError([f"{what}: fp16 needs a GPU and this run is on the CPU, where it would train in fp32; {fix}"])
    return precision, where


def log_distribution(args: TrainingArguments, precision: tuple[str, str]) -> None:
    """Once, on the main process: how many processes, the batch per device and the global batch."""
    if args.process_index != 0:
        return
    per_device = args.per_device_train_batch_size
    accumulation = args.gradient_accumulation_steps
    logger.info(
        "distributed: %d process%s (%s), per-device batch %d, global batch %d%s; mixed precision %s (%s)",
        args.world_size,
        "" if args.world_size == 1 else "es",
        args.parallel_mode.value if hasattr(args.parallel_mode, "value") else args.parallel_mode,
        per_device,
        per_device * args.world_size * accumulation,
        f" (with {accumulation} accumulation steps)" if accumulation > 1 else "",
        *precision,
    )
