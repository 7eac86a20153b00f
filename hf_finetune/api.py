"""The Python API: `finetune`, `evaluate`, `predict`.

`finetune` is a table of contents: one named phase per step of the data path, each a helper below it that owns the
ordering rules of its step. The stages (data, tasks, transfer, trainer, checkpoints, metrics, outputs, card, hub) do
not import each other; this module joins them.

    recipe → training arguments → data and model → output folder claimed → Trainer → train → evaluate splits → save
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, HFFinetuneError, ModelError, RecipeError
from .names import METRIC_PREFIX, SPLIT_OF_PREFIX, SPLITS
from .recipe import (
    DataSpec,
    HubSpec,
    Recipe,
    find_recipe,
    is_count,
    load_recipe,
    load_saved_recipe,
    parse_override,
)
from .tasks import PrepareSettings, Task, get_task, task_of_saved

if TYPE_CHECKING:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from .data.duplicates import DuplicateReport
    from .data.sources import LoadedData
    from .metrics import SingleLabelMetrics
    from .multilabel_metrics import MultiLabelMetrics, ThresholdChoice
    from .outputs import OutputPlan
    from .probe import LinearBaseline, ProbeFit
    from .regression_metrics import PlotSample, RegressionMetrics
    from .tasks import BuiltModel, Prepared
    from .trainer import BatchMixer
    from .transfer import TransferPlan

logger = logging.getLogger("hf_finetune")


@dataclass
class Result:
    """What a run produced: where it is, and the metrics per split (`eval`, `test`)."""

    output_dir: Path
    metrics: dict[str, Any]
    label_names: list[str]
    recipe: Recipe
    best_checkpoint: str | None = None
    files: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        from .formats import HEADLINE, finite

        key = HEADLINE[self.recipe.data.label_format]
        headline = {k: round(v[key], 4) for k, v in self.metrics.items() if isinstance(v, dict) and finite(v.get(key))}
        return f"Result(output_dir={str(self.output_dir)!r}, {key}={headline})"


def finetune(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    **kwargs: Any,
) -> Result:
    """Fine-tune as the recipe says and write the output folder.

    `recipe` is a path, a shipped recipe name (`quickstart`), a dict or a `Recipe`. Overrides are dotted strings
    (`["training.learning_rate=1e-4"]`), a dict, or keyword arguments — `training={"num_train_epochs": 1}` or
    `**{"data.source": "./pets"}`. `callbacks` are extra `transformers.TrainerCallback`s.
    """
    setup_logging()
    started = time.time()
    recipe_file = find_recipe(recipe) if isinstance(recipe, (str, Path)) else None
    recipe = _with_strategy_defaults(load_recipe(recipe, _merge_overrides(overrides, kwargs)))
    if recipe.sweep.space:  # a search is a command of its own; this run is the recipe as written
        logger.info("sweep: training the recipe's own values; its sweep section is for `hf-finetune sweep`")
    recipe = _with_peft_defaults(recipe)  # peft.method lora: LoRA's learning rate unless the recipe sets one
    task = get_task(recipe.task)
    claim = _check_output_dir(recipe, recipe_file)  # before anything is loaded: a refusal costs nothing
    args = _training_args(recipe, task)  # defaults, processes, what they cannot run, the seed
    parts = _build_parts(recipe, task, args)  # resume point, data, checks, model, transfer, splits, loss, metrics
    # what building and preparing chose (pooling auto, max_length auto): saved, so a re-run does the same
    recipe = replace(recipe, **parts.built.settled, **parts.prepared.settled)
    _claim_output_dir(recipe, args, claim, parts.resume)  # every check passed: empty what we wrote, write recipe.yaml
    # linear_probe, lp_ft: the head fitted on frozen features computed once; metrics.baseline linear: the same fit,
    # scored per split (the model is left as it was)
    _fit_on_frozen_features(recipe, task, args, parts)
    trainer = _make_trainer(args, parts, [*_early_stopping(recipe), *callbacks])
    train_metrics, best = _train(trainer, parts, recipe.output_dir)  # linear_probe: the fit was the training
    results = {"train": train_metrics, **_evaluate_splits(trainer, recipe, parts)}
    files = _save(trainer, recipe, args, parts, results, best, time.time() - started)
    logger.info("done: outputs in %s", recipe.output_dir.resolve())
    return Result(recipe.output_dir, results, parts.data.label_names, recipe, best, files)


# --------------------------------------------------------------------------------------------- finetune's phases


@dataclass
class _Parts:
    """What a run is made of, all built (and checked) before the output folder is touched."""

    resume: str | None  # the checkpoint training continues from
    data: LoadedData
    built: BuiltModel
    plan: TransferPlan
    transfer_callbacks: list[TrainerCallback]
    prepared: Prepared  # the Trainer-ready splits and their collator
    compute_metrics: SingleLabelMetrics | MultiLabelMetrics | RegressionMetrics  # as data.label_format says
    loss: Callable[..., torch.Tensor] | None  # None: the model's own loss
    mixup: BatchMixer | None
    probe: ProbeFit | None = None  # set by _fit_on_frozen_features when the strategy fits its head
    baseline: LinearBaseline | None = None  # metrics.baseline linear, set by _fit_on_frozen_features
    thresholds: ThresholdChoice | None = None  # multi_label: chosen on the validation split after training
    # each evaluated split's plot input: regression's points, single-label's score report (reliability diagram)
    plots: dict[str, PlotSample | dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # metrics.calibration temperature: metrics.json's run.calibration
    tta: dict[str, Any] | None = None  # metrics.tta flip|crops: metrics.json's run.tta
    peft: dict[str, Any] | None = None  # peft.method lora: metrics.json's run.peft, set when the outputs are saved
    duplicates: DuplicateReport | None = None  # data.duplicates (not off): every group found
    duplicates_info: dict[str, Any] | None = None  # ... and metrics.json's run.duplicates
    # single-label: each evaluated split's final logits and labels (N×C, for the error analysis), by prefix
    logits: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _check_output_dir(recipe: Recipe, recipe_file: Path | None) -> OutputPlan:
    """May the run write its folder? Not over another run's results or the user's data or recipe; nothing changes."""
    from .outputs import check_output_dir

    return check_output_dir(
        recipe.output_dir,
        overwrite=recipe.overwrite,
        resume=bool(recipe.training.get("resume_from_checkpoint")),
        protected={
            "the recipe file": recipe_file,
            "data.source": recipe.data.source,
            **{f"data.files.{k}": v for k, v in recipe.data.files.items()},
        },
    )


def _training_args(recipe: Recipe, task: Task) -> TrainingArguments:
    """TrainingArguments from `training:` plus the toolkit's logged defaults; sets the processes up under a launcher.

    The global RNG is seeded here, before any head is built: new heads and from-scratch models are initialised from
    it, and seeding only when Trainer starts would give two runs of one recipe different starting weights."""
    from transformers import enable_full_determinism, set_seed

    from .formats import batch_eval_metrics
    from .recipe import best_metric
    from .trainer import build_training_args, log_distribution, mixed_precision, training_defaults

    _refuse_lora_under_fsdp(recipe, dict(os.environ))
    precision = mixed_precision(recipe.training, dict(os.environ))
    # every format's metrics accumulate batch by batch (gathered across processes): bounded memory
    task_defaults = {**task.training_defaults(), "batch_eval_metrics": batch_eval_metrics(recipe)}
    task_defaults |= _streaming_defaults(recipe)
    defaults = training_defaults(recipe.training, task_defaults, best_metric(recipe))
    args = build_training_args(recipe.training, defaults)
    _refuse_fsdp_on_cpu(recipe, args.device.type, dict(os.environ))
    if recipe.data.streaming:
        _stream_strategies(recipe, args)
    _refuse_what_processes_cannot_run(recipe, args.world_size)
    log_distribution(args, precision)
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
    return args


def _refuse_lora_under_fsdp(recipe: Recipe, env: dict[str, str]) -> None:
    """LoRA saves by merging the adapters into whole weights, which FSDP holds in shards across processes: not
    supported in this version (DDP, `multi_gpu_ddp.yaml`, is)."""
    if recipe.peft.enabled and _fsdp_requested(recipe, env):
        raise RecipeError(
            [
                "peft.method lora: FSDP (training.fsdp or accelerate launch with an FSDP config) shards the weights "
                "the adapters are merged into when saving, which this version does not do; launch with "
                "recipes/accelerate/multi_gpu_ddp.yaml (LoRA's few trainable parameters need no sharding), or set "
                "peft.method: none"
            ]
        )


def _fsdp_requested(recipe: Recipe, env: dict[str, str]) -> bool:
    from .fsdp import fsdp_launched

    return bool(recipe.training.get("fsdp")) or fsdp_launched(env)


def _refuse_fsdp_on_cpu(recipe: Recipe, device_type: str, env: dict[str, str]) -> None:
    from .fsdp import cpu_problem

    if device_type == "cpu" and _fsdp_requested(recipe, env):
        where = "training.fsdp" if recipe.training.get("fsdp") else "accelerate launch with an FSDP config"
        raise RecipeError([cpu_problem(where)])


def _refuse_fsdp_that_shards_nothing(model: Any, env: dict[str, str]) -> None:
    from .fsdp import wrap_problem

    problem = wrap_problem(model, env)
    if problem:
        raise RecipeError([problem])


def _with_strategy_defaults(recipe: Recipe) -> Recipe:
    from .transfer import with_strategy_defaults

    return with_strategy_defaults(recipe)


def _with_peft_defaults(recipe: Recipe) -> Recipe:
    from .lora import require_peft, with_peft_defaults

    if recipe.peft.enabled:
        require_peft()  # before anything is loaded
    return with_peft_defaults(recipe)


def _refuse_what_processes_cannot_run(recipe: Recipe, world_size: int) -> None:
    """What the recipe and the process count alone rule out: refused before any data or model is loaded."""
    if recipe.transfer.strategy == "lp_ft" and world_size > 1:
        raise RecipeError(
            [
                "transfer.strategy lp_ft: its probe (a fit on one process, or head-only epochs that unfreeze "
                "parameters mid-run, which DistributedDataParallel cannot follow) runs in one process only; run "
                "lp_ft in one process, or run linear_probe and then full (model.name=<the probe's output folder>) "
                "as two runs"
            ]
        )
    if recipe.transfer.strategy == "linear_probe" and world_size > 1:
        raise RecipeError(
            [
                f"transfer.strategy linear_probe: the probe is one full-batch fit on one process's cached features, "
                f"and {world_size} processes would each compute it; run it in one process (python -m hf_finetune "
                "train or hf-finetune train, without accelerate launch or torchrun)"
            ]
        )
    if recipe.metrics.baseline == "linear" and world_size > 1:
        raise RecipeError(
            [
                f"metrics.baseline linear: the baseline is one logistic-regression fit on cached features of every "
                f"split, and {world_size} processes would each compute all of it before training; run it in one "
                "process (python -m hf_finetune train, without accelerate launch or torchrun), or remove "
                "metrics.baseline for the distributed run"
            ]
        )


def _build_parts(recipe: Recipe, task: Task, args: TrainingArguments) -> _Parts:
    """Resume point, data (checked), model with its new head, transfer plan, Trainer-ready splits, loss and metrics."""
    from . import formats, transfer
    from .checkpoints import main_process_first, resolve_resume
    from .data import checks, sources
    from .probe import check_baseline_head

    with main_process_first(args, "resume", local=False):  # one process sets incomplete checkpoints aside
        resume = resolve_resume(
            recipe.training.get("resume_from_checkpoint"), recipe.output_dir, set_aside=args.should_save
        )
    streaming = recipe.data.streaming
    with main_process_first(args, "data and model"):  # one process fills the caches; the others read them
        data = sources.load_data(recipe.data, task.INPUTS, consumed=_consumed_rows(resume, args) if streaming else 0)
        if streaming:  # before the model is built: an unknown length without max_steps is refused at once
            _set_stream_max_steps(recipe, args, data.stream)
        checked = _sampled(data, recipe.data) if streaming else data  # streaming: a sample stands for train
        if args.process_index == 0:
            checks.check_inputs(checked.splits, task.INPUTS, recipe.data)
        if streaming:  # warn or off (data.duplicates drop/error are refused): reported, nothing dropped
            found = _check_duplicates(checked, recipe, task)[1]
        else:
            data, found = _check_duplicates(data, recipe, task)
        _return_freed_heap()
        built = task.build_model(recipe.model, data.label_names, label_format=data.label_format)
        _refuse_fsdp_that_shards_nothing(built.model, dict(os.environ))
        if recipe.peft.enabled:  # the plan only says which blocks; peft decides what trains (lora.wrap)
            plan, transfer_callbacks = transfer.plan_transfer(built.model, recipe.transfer), []
        else:
            plan, transfer_callbacks, _ = transfer.setup(built.model, recipe.transfer)
        if recipe.metrics.baseline == "linear":
            check_baseline_head(built.model)
        if recipe.metrics.calibration == "temperature":  # refused before the output folder is touched
            _calibrated_linear(built.model)
        if recipe.peft.enabled:
            from .lora import wrap

            built.model = wrap(built.model, recipe.peft, plan.layers, recipe.transfer.unfreeze_last)
        seed = args.data_seed if args.data_seed is not None else args.seed  # what Trainer's sampler starts from
        settings = PrepareSettings(recipe.augmentation, recipe.tokenization, seed, recipe.data.cache)
        prepared = task.prepare(built, data.splits, settings)
    if streaming:
        data = checked  # class weights, the majority baseline and the run's figures read the sample
    mixup = None  # mixing is refused for multi_label and regression (recipe check)
    if data.label_format == "single":
        mixup = task.batch_mixer(recipe.augmentation, len(data.label_names), args.label_smoothing_factor)
    train = data.splits["train"]
    loss = formats.make_loss(recipe, train, data.label_names, args.label_smoothing_factor, mixup is not None)
    compute_metrics = formats.make_metrics(recipe, data.label_names, data.target_scaler)
    parts = _Parts(resume, data, built, plan, transfer_callbacks, prepared, compute_metrics, loss, mixup)
    parts.duplicates, parts.duplicates_info = found
    return parts


def _return_freed_heap() -> None:
    """Give the operating system back the heap that loading and checking the data freed (glibc's `malloc_trim`;
    elsewhere nothing). datasets resolving a folder's files peaks at about 2 KB a file and frees it, but glibc keeps
    the pages: 119 MB of a 60,000-image folder's load stayed in the process for the whole run, and in every forked
    DataLoader worker's share of it (measured: 684 → 565 MB anonymous after the call; 1,000 images: 500 → 498)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries without it
        return
    import gc

    gc.collect()  # what only the cycle collector frees must be free before the heap is trimmed
    trim(0)


def _streaming_defaults(recipe: Recipe) -> dict[str, Any]:
    """data.streaming: each process reads its own shards (accelerate gives whole shards to each process; with
    dispatch_batches true the main process would read every batch and send the others theirs), and on resume the
    stream itself skips the consumed rows (data/streaming.py), so Trainer must not read through them again."""
    if not recipe.data.streaming:
        return {}
    return {"accelerator_config": {"dispatch_batches": False}, "ignore_data_skip": True}


def _stream_strategies(recipe: Recipe, args: TrainingArguments) -> None:
    """A pass over a stream ends when a process's shards run out, which under several processes is not the same step
    everywhere (shards differ in size): evaluating, saving or logging "per epoch" would have one process wait in a
    collective the others never join. The toolkit's per-epoch defaults become every 1/num_train_epochs of max_steps
    (one pass when max_steps is derived); a strategy the recipe names is kept as written."""
    from transformers.trainer_utils import IntervalStrategy

    pairs = {"eval_strategy": "eval_steps", "save_strategy": "save_steps", "logging_strategy": "logging_steps"}
    if any(key in recipe.training for key in pairs):  # the others follow the recipe's (trainer.strategy_defaults)
        return
    epochs = int(recipe.training.get("num_train_epochs", 3)) or 1
    for key, steps in pairs.items():
        if getattr(args, key) != IntervalStrategy.EPOCH:
            continue
        setattr(args, key, IntervalStrategy.STEPS)
        setattr(args, steps, 1 / epochs if epochs > 1 else 1.0 - 1e-9)
        logger.info(
            "training: %s = steps, %s = %.4g of max_steps (data.streaming: a pass ends at a different step on each "
            "process, so not per epoch; set training.%s to change it)", key, steps, getattr(args, steps), key,
        )  # fmt: skip


def _consumed_rows(resume: str | None, args: TrainingArguments) -> int:
    """Train rows (all processes together) a checkpoint's steps consumed: what a resumed stream skips. With
    ignore_data_skip false Trainer reads through them itself, so the stream skips none."""
    import json

    if resume is None or not args.ignore_data_skip:
        return 0
    state = json.loads((Path(resume) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0)) * _rows_per_step(args)


def _rows_per_step(args: TrainingArguments) -> int:
    """Train rows one optimizer step consumes, all processes together."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def _sampled(data: LoadedData, spec: DataSpec) -> LoadedData:
    """The data with the train stream's first data.check_sample rows in its place, for what reads train whole."""
    logger.info(
        "streaming: the pre-flight checks (images, duplicates), class weights and the majority baseline read the "
        "first %d train rows (data.check_sample: %d), not the whole stream",
        len(data.check_sample),
        spec.check_sample,
    )
    return replace(data, splits={**data.splits, "train": data.check_sample})


def _set_stream_max_steps(recipe: Recipe, args: TrainingArguments, stream: Any) -> None:
    """A stream has no length, so Trainer needs max_steps: the recipe's, else whole passes over the rows the
    dataset says it has (num_train_epochs of them); unknown rows and no max_steps is one clear error."""
    import math

    if recipe.training.get("max_steps", -1) not in (None, -1):
        logger.info("streaming: training.max_steps = %d (the recipe's)", args.max_steps)
        return
    if stream.num_examples is None:
        raise RecipeError(
            [
                f"training.max_steps: required under data.streaming when the number of train examples is unknown "
                f"({stream.how_counted}); set training.max_steps=N (optimizer steps), or stream Parquet files or a "
                "Hub dataset with split info"
            ]
        )
    per_step = _rows_per_step(args)
    epochs = int(recipe.training.get("num_train_epochs", 3))
    args.max_steps = math.ceil(stream.num_examples / per_step) * epochs
    logger.info(
        "streaming: training.max_steps = %d (derived: %d epochs × ceil(%d examples, by %s / %d per step))",
        args.max_steps,
        epochs,
        stream.num_examples,
        stream.how_counted,
        per_step,
    )


def check_data(recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """`hf-finetune check`: the data pre-flight a training run makes, without building a model or writing anything.

    Loading (columns, labels, splits: its errors are raised as they are) then every check at once: images decode,
    duplicates and conflicting labels (data.duplicates; as error only under `error`), groups in more than one
    split (data.group_column), and for texts the truncation length and what it cuts per split. Returns {"lines": the
    report, "errors": what would stop a run, "duplicates": the DuplicateReport's JSON or None, "text_lengths": the
    truncation figures or None}."""
    from .data import checks, sources
    from .data.duplicates import apply_policy

    setup_logging()
    recipe = load_recipe(recipe, list(overrides or []))
    task = get_task(recipe.task)
    data = sources.load_data(recipe.data, task.INPUTS)
    if recipe.data.streaming:  # the checks read the sample, as training's do
        data = _sampled(data, recipe.data)
    lines = [f"data: {data.description}: " + ", ".join(f"{s} {len(ds)} rows" for s, ds in data.splits.items())]
    lines.append(f"labels ({data.label_format}): {len(data.label_names)}: " + ", ".join(data.label_names[:20]))
    errors: list[str] = []
    unreadable = False
    try:
        checks.check_inputs(data.splits, task.INPUTS, recipe.data)
        if "image" in task.INPUTS and recipe.data.check_images:
            lines.append("images: every image decodes")
    except DataError as err:
        errors.append(str(err))
        unreadable = True
    report = None
    if recipe.data.duplicates != "off":
        kind = "image" if "image" in task.INPUTS else "text"
        # a policy of drop only reports here: nothing is trained, so nothing is dropped
        policy = "error" if recipe.data.duplicates == "error" else "warn"
        try:
            _, report, _ = apply_policy(data.splits, policy, kind, skip_unreadable=unreadable)
        except DataError as err:
            errors.append(str(err))
        if report is not None:
            lines += report.lines()
    else:
        lines.append("duplicates: not checked (data.duplicates: off)")
    lengths = None
    if "text" in task.INPUTS:
        more, lengths = _length_lines(recipe, data, errors)
        lines += more
    if recipe.data.group_column:
        shared = data.group_overlap.lines() if data.group_overlap is not None else []
        lines += [f"groups: {line}" for line in shared] or [
            f"groups: no group of {recipe.data.group_column!r} is in more than one split"
        ]
    duplicates = None if report is None else report.to_json()
    return {"lines": lines, "errors": errors, "duplicates": duplicates, "text_lengths": lengths}


def _length_lines(recipe: Recipe, data: LoadedData, errors: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """`check` for texts: the truncation length training would choose and how many texts of each split it cuts
    (the model's tokenizer is needed; a tokenizer that does not load is an error, as it would be for training)."""
    from .tasks.text_classification import text_lengths

    try:
        found = text_lengths(recipe.model, data.splits, recipe.tokenization.fixed_length)
    except ModelError as err:
        errors.append(str(err))
        return ["text lengths: not measured (the model's tokenizer or config did not load: see below)"], None
    lines = [f"text lengths: truncation to {found['max_length']} tokens ({found['chosen_by']})"]
    for split, r in found["splits"].items():
        line = f"text lengths: {split}: {r['truncated']} of {r['texts']} texts ({r['share']:.1%}) are longer"
        if r["truncated"]:
            line += f" (median {r['median_length_truncated']:g} tokens, longest {r['max_length_truncated']})"
        lines.append(line)
    return lines, found


def _check_duplicates(
    data: LoadedData, recipe: Recipe, task: Task
) -> tuple[LoadedData, tuple[DuplicateReport | None, dict[str, Any] | None]]:
    """data.duplicates on the splits as they will train and be scored (after carving and caps). Every process runs
    it (the drop must be the same everywhere, and it is deterministic); hashing is parallel on large data."""
    import datasets

    from .data.duplicates import apply_policy, decode_workers

    # the image check decoded each split already (and cached its keys): on images this is mostly a cache read
    num_proc = decode_workers(sum(len(ds) for ds in data.splits.values()))
    kind = "image" if "image" in task.INPUTS else "text"
    skip = not recipe.data.check_images  # the user chose to meet broken files mid-run: the check does not stop on them
    splits, report, info = apply_policy(data.splits, recipe.data.duplicates, kind, num_proc, skip_unreadable=skip)
    return replace(data, splits=datasets.DatasetDict(splits)), (report, info)


def _claim_output_dir(recipe: Recipe, args: TrainingArguments, claim: OutputPlan, resume: str | None) -> None:
    """Every check passed: only now are the earlier run's entries (and only those) removed. recipe.yaml is written
    first, so that a run stopped early can be resumed from its own folder. Every process waits for the main one."""
    from .outputs import clear_output_dir, start_manifest, write_recipe

    if args.process_index == 0:
        clear_output_dir(recipe.output_dir, claim)
        start_manifest(recipe.output_dir, resume=bool(resume))
        write_recipe(recipe.output_dir, recipe)
    args.distributed_state.wait_for_everyone()


def _fit_on_frozen_features(recipe: Recipe, task: Task, args: TrainingArguments, parts: _Parts) -> None:
    """linear_probe, lp_ft's fitted probe and `metrics.baseline: linear`: one logistic regression fitted on the
    frozen pretrained backbone's features of train (eval preprocessing, no augmentation) and validation, computed
    once, C chosen on validation. The probe strategies take it as their head; the baseline scores it on every split
    that gets evaluated. Features only the baseline needs leave the RNG as they found it."""
    from . import probe
    from .transfer import fits_probe

    fitting, baseline = fits_probe(recipe.transfer), recipe.metrics.baseline == "linear"
    if recipe.transfer.strategy == "linear_probe" and baseline:  # the run is that regression: its scores are it
        parts.baseline = probe.LinearBaseline({}, {"same_as": LINEAR_PROBE_RUN}, same_as=LINEAR_PROBE_RUN)
    if not (fitting or baseline):
        return
    scored = [s for s in parts.prepared.splits if s != "train"] if parts.baseline is None and baseline else []
    with probe.preserved_rng(enabled=not fitting):
        features, seconds = _frozen_features(recipe, task, args, parts, ["validation", *scored], fitting)
        labels = len(parts.data.label_names)
        choice = _probe_choice(recipe, parts.data)
        weight, bias, fit = probe.fit_probe(
            features["train"], features["validation"], labels, parts.compute_metrics, **choice
        )
    fit.feature_seconds = seconds
    logger.info("probe: %s; fit in %.1f s", fit.info()["fitted_on"], fit.fit_seconds)
    if fitting:
        probe.set_head(parts.built.model, weight, bias)
        parts.probe = fit
    if scored:
        splits, shared = {s: features[s] for s in scored}, LP_FT_PROBE if fitting else None
        by_format = {k: choice[k] for k in ("pos_weight", "huber_delta") if k in choice}
        if recipe.data.label_format == "multi_label":
            by_format["thresholds"] = recipe.metrics.thresholds or "tune"
        parts.baseline = probe.linear_baseline(
            weight, bias, fit, splits, parts.compute_metrics, train_labels=features["train"][1],
            class_weight=_probe_class_weight(recipe), shared_with=shared, **by_format,
        )  # fmt: skip


LP_FT_PROBE = "transfer.strategy lp_ft's fitted probe (run info: probe)"
LINEAR_PROBE_RUN = "this run (transfer.strategy linear_probe is a logistic regression on the frozen features)"


def _frozen_features(
    recipe: Recipe, task: Task, args: TrainingArguments, parts: _Parts, splits: list[str], fitting: bool
) -> tuple[dict[str, tuple[Any, Any]], float]:
    """Features (the head's input) of train with eval preprocessing, and of `splits` as prepared; each split once."""
    from . import probe
    from .recipe import AugmentationSpec

    started = time.perf_counter()
    settings = PrepareSettings(AugmentationSpec(), recipe.tokenization, args.seed)
    # not named "train": the task prepares every other split with its eval preprocessing
    plain = task.prepare(parts.built, {"probe": parts.data.splits["train"]}, settings)
    loader = {"batch_size": args.per_device_eval_batch_size, "num_workers": args.dataloader_num_workers}
    datasets = {"train": (plain.splits["probe"], plain.collate)}
    datasets |= {s: (parts.prepared.splits[s], parts.prepared.collate) for s in dict.fromkeys(splits)}
    features = {}
    for split, (ds, collate) in datasets.items():
        # the probe's own splits (train, validation) are what it always computed; any other is the baseline's alone
        with probe.preserved_rng(enabled=fitting and split not in ("train", "validation")):
            features[split] = probe.extract_features(parts.built.model, ds, collate, device=args.device, **loader)
    seconds = time.perf_counter() - started
    counts = " + ".join(f"{len(y)} {s}" for s, (_, y) in features.items())
    logger.info("frozen features: %s rows in %.1f s", counts, seconds)
    return features, seconds


def _probe_choice(recipe: Recipe, data: LoadedData) -> dict[str, Any]:
    """How the probe picks C (alpha) and weights classes: the run's metric_for_best_model, its direction, its class
    weights; multi-label its positive weights (the run's own list), regression its Huber delta."""
    from .formats import greater_is_better
    from .recipe import best_metric

    metric = recipe.training.get("metric_for_best_model") or best_metric(recipe)
    metric = metric.removeprefix(f"{METRIC_PREFIX['validation']}_")
    greater = recipe.training.get("greater_is_better", greater_is_better(metric))
    # lp_ft fine-tunes the fitted head by gradient descent: one shared scale, so no feature gets an outsized weight
    scaling = "global" if recipe.transfer.strategy == "lp_ft" else "feature"
    return {
        "metric": metric,
        "greater_is_better": bool(greater),
        "class_weight": _probe_class_weight(recipe),
        "scaling": scaling,
        "label_format": recipe.data.label_format,
        **_probe_loss(recipe, data),
    }


def _probe_loss(recipe: Recipe, data: LoadedData) -> dict[str, Any]:
    """The run's loss settings the probe's validation loss must share: the resolved positive weights (multi-label)
    or the Huber delta (regression)."""
    from .data.labels import multi_hot
    from .loss import pos_weights

    fmt = recipe.data.label_format
    if fmt == "multi_label" and recipe.loss.pos_weight is not None:
        y = multi_hot(data.splits["train"])
        return {"pos_weight": pos_weights(recipe.loss.pos_weight, [int(c) for c in y.sum(0)], len(y), data.label_names)}
    if fmt == "regression" and recipe.loss.regression == "huber":
        return {"huber_delta": recipe.loss.huber_delta}
    return {}


def _probe_class_weight(recipe: Recipe) -> dict[int, float] | str | None:
    weights = recipe.loss.class_weights
    return dict(enumerate(weights)) if isinstance(weights, list) else weights


def _make_trainer(args: TrainingArguments, parts: _Parts, callbacks: Sequence[TrainerCallback]) -> Trainer:
    from . import transfer
    from .checkpoints import CheckpointMarker, ResumeWeightsCheck
    from .lora import is_peft_model
    from .trainer import avoid_single_sample_last_batch, build_trainer

    model, plan, mixing = parts.built.model, parts.plan, parts.mixup is not None
    run_callbacks = [CheckpointMarker(), *([ResumeWeightsCheck(parts.resume)] if parts.resume else [])]
    fitted = plan.spec.strategy == "linear_probe"  # the fit was the training: the Trainer only evaluates and saves
    return build_trainer(
        model=model,
        args=args,
        train_dataset=None
        if fitted
        else parts.prepared.splits["train"]
        if parts.data.stream is not None  # a stream has no length to trim
        else avoid_single_sample_last_batch(parts.prepared.splits["train"], args, model, mixing),
        eval_dataset=parts.prepared.splits["validation"],
        collate=parts.prepared.collate,
        processor=parts.built.processor,
        compute_metrics=parts.compute_metrics,
        preprocess_logits=None,  # every format's metrics read the full logits
        callbacks=[*run_callbacks, *parts.transfer_callbacks, *callbacks],
        param_groups=(
            (lambda m, decay: transfer.param_groups(m, plan, args.learning_rate, args.weight_decay, decay))
            if plan.needs_param_groups and not is_peft_model(model)  # peft: what requires grad, at one rate
            else None
        ),
        loss=parts.loss,
        mixup=parts.mixup,
    )


def _early_stopping(recipe: Recipe) -> list[TrainerCallback]:
    from .trainer import early_stopping

    return early_stopping(recipe.training)


def _train(trainer: Trainer, parts: _Parts, output_dir: Path) -> tuple[dict[str, float], str | None]:
    """Train (stopping cleanly on SIGINT/SIGTERM after one checkpoint); returns the train metrics and the best
    checkpoint, whose weights are verified to be the ones in memory. linear_probe: the fit was the training."""
    from .checkpoints import interrupted, stop_on_signals
    from .trainer import early_stopping_info, log_early_stopping, verify_best_model

    if parts.plan.spec.strategy == "linear_probe" and parts.probe is not None:
        return dict(parts.probe.train), None
    with stop_on_signals() as stop:
        trainer.add_callback(stop)  # last: it also cancels any save into a checkpoint that is already complete
        output = trainer.train(resume_from_checkpoint=parts.resume)
    if stop.signum is not None:
        raise interrupted(stop.signum, trainer.state.global_step, output_dir)
    log_early_stopping(early_stopping_info(trainer.callback_handler.callbacks, trainer.state, trainer.args))
    return dict(output.metrics), verify_best_model(trainer)


def _evaluate_splits(trainer: Trainer, recipe: Recipe, parts: _Parts) -> dict[str, dict[str, Any]]:
    """Metrics of every split but train, keyed as in metrics.json (`eval`, `test`), each beside its constant baseline
    (formats.constant_baseline). Multi-label thresholds are chosen first, on a validation pass of the final model,
    and every split is then scored with them (validation's scores are optimistic: it chose them). With
    metrics.calibration temperature (single-label) every split is scored again once T is folded into the head, and
    those numbers (the saved model's) are the splits'; run.calibration holds both passes' log loss, ECE and Brier.
    With metrics.tta (images) every split is scored once more, each batch averaged over its views (hf_finetune/tta.py),
    and those are the splits' numbers; run.tta keeps the one-view scores beside them. Thresholds and the temperature
    are chosen without TTA: they are saved with the model, which predict and pipeline() run on one view."""
    from . import formats
    from .multilabel_metrics import TUNE

    fmt = parts.data.label_format
    if fmt == "multi_label":
        setting = formats.threshold_setting(recipe)
        if setting == TUNE:
            trainer.evaluate(parts.prepared.splits["validation"], metric_key_prefix="thresholds")
        parts.thresholds = formats.choose_thresholds(parts.compute_metrics, setting)
    results = _score_splits(trainer, parts)
    if fmt == "single" and recipe.metrics.calibration == "temperature":
        results = _calibrate(trainer, parts, results)
    if recipe.metrics.tta != "none":
        results = _with_tta(trainer, parts, recipe.metrics.tta, results)
    return results


# what metrics.json's run.tta keeps of each evaluated split's one-view scores
_TTA_SCORES = ("accuracy", "f1_macro", "log_loss", "ece", "brier", "loss", "map", "f1_micro", "rmse", "mae", "r2")


def _with_tta(trainer: Trainer, parts: _Parts, tta: str, plain: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """metrics.tta: every evaluated split scored again with the views averaged; those become the splits' metrics."""
    from .tta import VIEW_COUNTS, applied

    with applied(trainer, tta):
        results = _score_splits(trainer, parts)
    parts.tta = {
        "views": tta,
        "count": VIEW_COUNTS[tta],
        "without": {p: {k: plain[p][k] for k in _TTA_SCORES if k in plain[p]} for p in plain},
    }
    logger.info(
        "tta %s (%d views): %s",
        tta,
        VIEW_COUNTS[tta],
        "; ".join(
            f"{p} loss {plain[p].get('loss', float('nan')):.4f} -> {results[p].get('loss', float('nan')):.4f}"
            for p in results
        ),
    )
    return results


def _score_splits(trainer: Trainer, parts: _Parts) -> dict[str, dict[str, Any]]:
    """One evaluation of every split but train with the model as it is now (see `_evaluate_splits`)."""
    from . import formats

    fmt, data = parts.data.label_format, parts.data
    results = {}
    for split, ds in parts.prepared.splits.items():
        if split == "train":
            continue
        prefix = METRIC_PREFIX[split]
        if fmt == "single":
            scalars, parts.logits[prefix] = _scores_and_logits(trainer, ds, prefix)
        else:
            scalars = trainer.evaluate(ds, metric_key_prefix=prefix)
        results[prefix] = formats.split_metrics(scalars, prefix, fmt, parts.compute_metrics.last_report)
        sample = formats.plot_sample(fmt, parts.compute_metrics)
        if sample is not None:
            parts.plots[prefix] = sample
        results[prefix]["baseline"] = formats.constant_baseline(
            fmt, data.splits["train"], data.splits[split], data.label_names, data.target_scaler
        )
        if parts.baseline is not None:  # metrics.baseline linear: fitted before training, on the pretrained features
            results[prefix]["baseline_linear"] = parts.baseline.for_split(split, results[prefix])
    return results


def _scores_and_logits(trainer: Trainer, ds: Any, prefix: str) -> tuple[dict[str, float], tuple[Any, Any]]:
    """One pass that gives both the metrics (the same, batched or not, as `Trainer.evaluate`) and the logits and
    labels the error analysis needs: `Trainer.predict` keeps them where `evaluate` with batch_eval_metrics drops
    them. Its metrics are logged as `evaluate` logs them, so the log and the trackers see the final scores."""
    from .metrics import first_output

    output = trainer.predict(ds, metric_key_prefix=prefix)
    trainer.log(output.metrics)
    return output.metrics, (first_output(output.predictions), first_output(output.label_ids))


# what metrics.json's run.calibration reports of each evaluated split, before and after the temperature
_CALIBRATION_SCORES = ("log_loss", "ece", "brier", "loss")


def _calibrated_linear(model: torch.nn.Module) -> torch.nn.Linear:
    from .probe import output_linear

    return output_linear(
        model,
        "metrics.calibration temperature: the temperature",
        "set metrics.calibration none (the temperature divides the logits, so the head must end in one Linear)",
    )


def _calibrate(trainer: Trainer, parts: _Parts, before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """metrics.calibration temperature: fit T on the final model's validation logits (one pass, held in memory:
    8·N·C bytes), fold it into the head's output Linear, and score every split again with the calibrated model,
    which is the one saved. Every process fits on the same gathered logits, so all fold the same T."""
    from .calibration import CONFIG_KEY, fit_temperature, fold_temperature
    from .metrics import first_output

    output = trainer.predict(parts.prepared.splits["validation"], metric_key_prefix="calibration")
    fit = fit_temperature(first_output(output.predictions), first_output(output.label_ids))
    fold_temperature(_calibrated_linear(parts.built.model), fit.temperature)
    setattr(parts.built.model.config, CONFIG_KEY, fit.temperature)
    logger.info(
        "calibration: temperature %.6g fitted on %d validation rows (NLL %.4f -> %.4f)%s",
        fit.temperature,
        fit.rows,
        fit.nll_before,
        fit.nll_after,
        "" if fit.converged else f" ({fit.method}: clamped)",
    )
    after = _score_splits(trainer, parts)
    parts.calibration = {
        "method": "temperature",
        "fitted_on": "validation",
        **{k: v for k, v in fit.to_json().items() if k != "method"},
        "solver": fit.method,  # brentq, or the bound T was clamped to
        "before": {p: {k: before[p][k] for k in _CALIBRATION_SCORES if k in before[p]} for p in before},
        "after": {p: {k: after[p][k] for k in _CALIBRATION_SCORES if k in after[p]} for p in after},
    }
    return after


def _save(
    trainer: Trainer,
    recipe: Recipe,
    args: TrainingArguments,
    parts: _Parts,
    results: dict[str, Any],
    best: str | None,
    seconds: float,
) -> list[str]:
    """The model (every process: FSDP gathers the shards; only the main one writes), then on the main process the
    results, the card and, if asked, the push. Returns the result files written."""
    from .lora import is_peft_model
    from .outputs import recording, run_info
    from .tracking import log_final_results
    from .trainer import early_stopping_info

    out, data = recipe.output_dir, parts.data
    _settle_outputs(parts)  # thresholds into the config; standardised targets folded into the head
    if is_peft_model(parts.built.model):
        _save_lora(trainer, recipe, args, parts)
    else:
        with recording(out, enabled=args.process_index == 0):  # the model's file names vary by model and tokenizer
            trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return []
    run = run_info(
        data.splits, data.label_names, data.description, args, best, seconds, data.label_format, data.target_scaler
    )
    run |= parts.prepared.run_info  # e.g. text truncation figures
    if data.stream is not None:
        run["streaming"] = {
            "train_rows": data.stream.num_examples,
            "counted_by": data.stream.how_counted,
            "shards": data.stream.n_shards,
            "skipped_on_resume": data.stream.skipped,
            "check_sample": len(data.check_sample),
            "check_sample_class_counts": run["splits"]["train"].get("class_counts"),
        }
        # the stream's own row count (None: unknown), not the sample's; no class counts, which would need every row
        run["splits"]["train"] = {"rows": data.stream.num_examples, "streamed": True}
    if parts.thresholds is not None:
        from .formats import thresholds_info

        run["thresholds"] = thresholds_info(parts.thresholds)
    if data.label_format == "regression":
        run["target_scaler"] = data.target_scaler
    if parts.probe is not None:
        run["probe"] = parts.probe.info()
    if parts.peft is not None:
        run["peft"] = parts.peft
    if parts.baseline is not None:
        run["baseline_linear"] = parts.baseline.info
    if parts.calibration is not None:
        run["calibration"] = parts.calibration
    if parts.tta is not None:
        run["tta"] = parts.tta
    if parts.duplicates_info is not None:
        run["duplicates"] = parts.duplicates_info
    if data.group_overlap is not None:
        run["groups_across_splits"] = data.group_overlap.to_json()
    stopping = early_stopping_info(trainer.callback_handler.callbacks, trainer.state, args)
    if stopping:
        run["early_stopping"] = stopping
    files = _write_results(out, recipe, args, parts, results, run)
    with recording(out):  # report_to tensorboard; with no training (linear_probe) its folder appears only now
        log_final_results(trainer, out)
    if recipe.hub.push:
        _push(out, recipe.hub)
    return files


def _save_lora(trainer: Trainer, recipe: Recipe, args: TrainingArguments, parts: _Parts) -> None:
    """peft: `adapter/` (LoRA tensors + the trained head) first, then the merged model as a run without LoRA saves
    it (Trainer.save_model: weights, config, processor); then both are reloaded and must give the trained model's
    logits on validation rows, or the run fails."""
    from peft import get_peft_model_state_dict

    from . import lora
    from .outputs import recording

    out, model, main = recipe.output_dir, parts.built.model, args.process_index == 0
    parts.peft = lora.run_info(model, recipe.peft)
    batch = _first_rows(parts)
    reference = lora.logits_of(model, batch) if main else None
    trained = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()} if main else {}
    # a weights file is the base, and it is local: no Hub id then
    base_id = None if recipe.model.weights else lora.hub_id(recipe.model.name, model.config)
    with recording(out, enabled=main):
        if main:
            lora.save_adapter(model, out / lora.ADAPTER_DIR, base_id)
        merged = lora.merge(model)  # every process: Trainer.save_model gathers what it saves
        trainer.model = parts.built.model = merged
        trainer.save_model(str(out))
    if main:
        parts.peft["verified"] = _verify_lora(recipe, parts, reference, trained, batch)


def _first_rows(parts: _Parts, n: int = 8) -> dict[str, Any]:
    rows = parts.prepared.splits["validation"]
    return parts.prepared.collate([rows[i] for i in range(min(n, len(rows)))])


def _verify_lora(
    recipe: Recipe, parts: _Parts, reference: torch.Tensor, trained: dict[str, torch.Tensor], batch: dict[str, Any]
) -> dict[str, float]:
    """The merged model (in memory and reloaded from the folder) and the adapter loaded with peft onto a freshly
    built base model must reproduce the trained model: same tensors, logits within lora.TOLERANCE. Returns the
    largest |Δlogit| of each and the largest |logit| the tolerance scales with (metrics.json's run.peft.verified)."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict

    from . import lora

    task, out, merged = get_task(recipe.task), recipe.output_dir, parts.built.model
    checks = [lora.compare("the merged model", reference, merged, batch)]
    reloaded = task.load_trained(out).model.to(next(merged.parameters()).device)
    saved = lora.compare(f"{out.name}/ reloaded", reference, reloaded, batch)
    current, again = merged.state_dict(), reloaded.state_dict()
    saved.wrong = [k for k, v in current.items() if k not in again or not torch.equal(again[k].cpu(), v.cpu())]
    checks.append(saved)
    del reloaded
    base = task.build_model(recipe.model, parts.data.label_names, label_format=parts.data.label_format).model
    what = f"{out.name}/{lora.ADAPTER_DIR} on the base model"
    try:
        adapter = PeftModel.from_pretrained(base.to(next(merged.parameters()).device), str(out / lora.ADAPTER_DIR))
    except Exception as err:  # whatever peft raises (a missing head: KeyError), the run's error keeps it
        loaded = lora.Reloaded(what, float("inf"), [f"peft cannot load it ({type(err).__name__}: {err})"])
    else:
        loaded = lora.compare(what, reference, adapter, batch)
        state = get_peft_model_state_dict(adapter)
        loaded.wrong = [k for k, v in trained.items() if k not in state or not torch.equal(state[k].cpu(), v)]
    loaded.wrong += lora.adapter_tensors_differ(trained, out / lora.ADAPTER_DIR)
    checks.append(loaded)
    lora.check(checks)
    figures = {c.what: c.max_abs_diff for c in checks}
    logger.info(
        "peft: saved outputs verified (max |Δlogit|: %s)", ", ".join(f"{k} {v:.2g}" for k, v in figures.items())
    )
    names = ("merged", "reloaded", "adapter")
    return {**{n: c.max_abs_diff for n, c in zip(names, checks, strict=True)}, "largest_logit": checks[0].scale}


def _settle_outputs(parts: _Parts) -> None:
    """What the saved model carries beyond its weights: a multi-label model's per-label thresholds in its config; a
    regression model trained on standardised targets gets mean and std folded into its head's last Linear, so that
    it (and pipeline()) outputs the original units, and the scaler recorded in its config."""
    from .formats import record_in_config

    model, scaler = parts.built.model, parts.data.target_scaler
    if scaler is not None:
        from .probe import fold_affine

        fold_affine(model, float(scaler["std"]), float(scaler["mean"]))
        logger.info("regression: the head outputs the original units (× %.6g + %.6g)", scaler["std"], scaler["mean"])
    record_in_config(model.config, parts.thresholds, scaler)


def _write_results(
    out: Path, recipe: Recipe, args: TrainingArguments, parts: _Parts, results: dict[str, Any], run: dict[str, Any]
) -> list[str]:
    """recipe.yaml, metrics.json (with the run's provenance), the confusion matrices and the model card."""
    from .card import CardFacts, write_model_card
    from .formats import write_plots
    from .metrics import write_confusion_matrices
    from .outputs import finish_manifest, listing, write_metrics, write_recipe

    data, labels = parts.data, parts.data.label_names
    before = listing(out)
    files = []
    for prefix, sample in parts.plots.items():  # before metrics.json, which names them
        written = write_plots(out, prefix, sample, f"{recipe.name or 'model'}: {SPLIT_OF_PREFIX[prefix]}")
        results[prefix]["plots"] = written
        files += written.values()
    files += _write_error_analyses(out, parts, results)  # before metrics.json, which summarises them
    if parts.duplicates is not None and parts.duplicates.groups:
        from .files import write_json
        from .names import DUPLICATES_FILE

        write_json(out / DUPLICATES_FILE, parts.duplicates.to_json() | {"policy": recipe.data.duplicates})
        files.append(DUPLICATES_FILE)
    files = [write_recipe(out, recipe), write_metrics(out, labels, results, run), *files]
    if data.label_format == "single":
        files += write_confusion_matrices(out, results, labels, recipe.name or "model")
    facts = CardFacts.from_run(recipe, args, labels, results, data.description, parts.built.description, run)
    files.append(write_model_card(out, facts).name)
    return finish_manifest(out, files, before=before)


def _write_error_analyses(out: Path, parts: _Parts, results: dict[str, Any]) -> list[str]:
    """Single-label: each evaluated split's predictions_<split>.jsonl, errors_<split>.md (and the image grid), from
    the final pass's logits; metrics.json gets each split's summary (`error_analysis`), the card's "Where the model
    fails" section reads it."""
    from .error_analysis import analyse_split

    files: list[str] = []
    for prefix, (logits, labels) in parts.logits.items():
        split = SPLIT_OF_PREFIX[prefix]
        analysis = analyse_split(out, split, parts.data.splits[split], logits, labels, parts.data.label_names)
        results[prefix]["error_analysis"] = analysis.to_json()
        files += analysis.to_json()["files"]
    return files


def _push(out: Path, hub: HubSpec) -> None:
    from .hub import push_folder

    push_folder(
        out,
        hub.repo_id,
        private=hub.private,
        revision=hub.revision,
        include_checkpoints=hub.include_checkpoints,
        include=hub.include,
        delete_missing=hub.delete_missing,
    )


# --------------------------------------------------------------------------------------------- evaluate, predict


def evaluate(
    output_dir: str | Path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    tta: str | None = None,
) -> dict[str, Any]:
    """Metrics of a saved model; the trained folder is never written.

    On the recipe's own data (its splits, caps and carved validation split, as in training) the numbers are those
    training wrote to metrics.json: same loss settings (class weights, label smoothing), `metrics.top_k` and
    `metrics.extra`. `data` (any source a recipe takes) is evaluated whole: no row caps, no carving; its split is
    reported by the data's name (`new.csv`, or `new_folder:test` for a folder or dataset with several splits).

    `output` (single-label models): a folder, outside the trained one, that gets the split's error analysis —
    ``predictions_<name>.jsonl``, ``errors_<name>.md``, for images ``errors_<name>.png`` (`error_analysis`) — and
    ``eval_metrics.json`` (what this returns). `<name>` is the split (test, validation) on the recipe's data; on
    `data`, the data's split name when it has several, else ``data``. Files of those names already there are
    refused unless `overwrite`; nothing else in the folder is touched.

    `tta` (image models): none, flip or crops — each batch averaged over its views (hf_finetune/tta.py); None: the
    recipe's metrics.tta, so that the recipe's own data gets the numbers training wrote. The result says which.
    """
    from . import formats
    from .data import checks, sources
    from .tta import check_tta

    setup_logging()
    if batch_size is not None and not is_count(batch_size):
        raise HFFinetuneError(f"batch size {batch_size!r}: give a whole number of at least 1")
    output_dir = Path(output_dir)
    task = get_task(task_of_saved(output_dir))
    recipe = load_saved_recipe(output_dir, task.NAME)
    tta = check_tta(recipe.metrics.tta if tta is None else tta, task.NAME)
    if output is not None:
        _refuse_eval_output(recipe, output_dir, Path(output), overwrite)  # before anything is loaded
    built = task.load_trained(output_dir)
    labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    spec = recipe.data if data is None else _whole(recipe.data, data)
    # a saved regression model outputs the original units (its head absorbed the scaler): score them as they are
    spec = replace(spec, standardize_targets=False)
    loaded = sources.load_data(spec, task.INPUTS, label_names=labels, carve_validation=data is None)
    split = _split_to_score(loaded, split)
    name = split if data is None or len(loaded.splits) > 1 else "data"  # eval --output's files: <kind>_<name>.*
    if output is not None:  # before the pass: a refusal costs no evaluation
        _check_eval_files(output_dir, Path(output), name, overwrite)
    chosen = {split: loaded.splits[split]}  # empty texts were already handled by load_data
    checks.check_inputs(chosen, task.INPUTS, spec)  # a truncated file is named here, not a traceback mid-evaluation
    settings = PrepareSettings(
        recipe.augmentation, recipe.tokenization, _augmentation_seed(recipe.training), recipe.data.cache
    )
    # prepared under an evaluation name whatever the split is called: `prepare` gives a split named "train" the
    # training transform (augmentation), and a folder without split sub-folders loads as "train"
    prepared = task.prepare(built, {"eval": chosen[split]}, settings)
    train = loaded.splits["train"] if data is None and "train" in loaded.splits else None
    loss = formats.saved_loss(recipe, output_dir, train, labels, built.model.config)
    prefix = METRIC_PREFIX.get(split, split) if data is None else "eval"
    result, scored = _score(recipe, task, built, labels, prepared, "eval", prefix, loss, batch_size, tta)
    result["tta"] = tta
    result["split"] = split if data is None else _data_split_name(data, split, list(loaded.splits))
    result["data"] = loaded.description
    if output is not None and _is_main_process():  # under several processes every one has the gathered logits
        result["files"] = _write_eval_output(Path(output), name, chosen[split], scored, labels, result)
        result["output"] = str(output)
    return result


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


EVAL_METRICS_FILE = "eval_metrics.json"  # what `eval --output` writes beside the error analysis


def _refuse_eval_output(recipe: Recipe, trained: Path, output: Path, overwrite: bool) -> None:
    """What `eval --output` could not do, refused before the data and the model are loaded."""
    from .outputs import check_eval_output

    if recipe.data.label_format != "single":
        raise HFFinetuneError(
            f"--output writes the error analysis of a single-label classifier; this model is "
            f"{recipe.data.label_format}. Drop --output (eval prints the metrics), or write each row's prediction "
            "with `hf-finetune predict ... --output rows.jsonl`"
        )
    # the names are known only once the data is loaded; here the folder itself is checked
    check_eval_output(trained, output, [], overwrite)


def _check_eval_files(trained: Path, output: Path, name: str, overwrite: bool) -> None:
    from .names import error_analysis_files
    from .outputs import check_eval_output

    check_eval_output(trained, output, [*error_analysis_files(name), EVAL_METRICS_FILE], overwrite)


def _write_eval_output(
    output: Path, name: str, ds: Any, scored: tuple[Any, Any] | None, label_names: list[str], result: dict[str, Any]
) -> list[str]:
    """`eval --output`: the split's error analysis (from the pass's logits and labels) and eval_metrics.json."""
    from .error_analysis import analyse_split
    from .files import write_json

    if scored is None:
        raise HFFinetuneError("the evaluation kept no logits to analyse (a bug: single-label scoring keeps them)")
    output.mkdir(parents=True, exist_ok=True)
    analysis = analyse_split(output, name, ds, scored[0], scored[1], label_names)
    result["error_analysis"] = analysis.to_json()
    files = [*analysis.to_json()["files"], EVAL_METRICS_FILE]
    write_json(output / EVAL_METRICS_FILE, result)
    return files


def _whole(spec: DataSpec, data: str) -> DataSpec:
    """New data is evaluated whole: the recipe's row caps and split choices were about its own data."""
    return replace(
        spec,
        source=data,
        files={},
        validation_split=None,
        test_split=None,
        train_split="train",
        max_train_samples=None,
        max_eval_samples=None,
        group_column=None,  # new data is scored whole: no split is carved, so groups are not needed
        test_size=None,
    )


def _split_to_score(loaded: LoadedData, split: str | None) -> str:
    """The split asked for, checked; by default test, else validation, else train — the first with labels."""
    if split is None:
        split = next((s for s in reversed(SPLITS) if s in loaded.splits), None)
        if split is None:
            raise DataError(f"{loaded.description}: no split has labels ({list(loaded.unlabelled)} are hidden)")
    if split not in loaded.splits:
        if split in loaded.unlabelled:
            raise DataError(
                f"--split {split!r} has no labels (every row is -1 or empty: hidden, as GLUE's test sets), so it "
                f"cannot be scored; the splits with labels are {list(loaded.splits)}"
            )
        raise DataError(f"--split {split!r}: the data has splits {list(loaded.splits)}")
    return split


def _augmentation_seed(training: dict[str, Any]) -> int:
    """The seed augmentation starts from, as TrainingArguments resolves it: data_seed, else seed (default 42)."""
    seed = training.get("data_seed")
    return training.get("seed", 42) if seed is None else seed


def _score(
    recipe: Recipe,
    task: Task,
    built: BuiltModel,
    labels: list[str],
    prepared: Prepared,
    split: str,
    prefix: str,
    loss: Callable[..., torch.Tensor] | None,
    batch_size: int | None,
    tta: str = "none",
) -> tuple[dict[str, Any], tuple[Any, Any] | None]:
    """One evaluation pass with the run's own loss (`formats.saved_loss`), metrics settings (`metrics.top_k`,
    `metrics.extra`; a multi-label model's saved thresholds) and `tta` views, in a throwaway Trainer folder. Returns
    the split's metrics and, for a single-label model, the pass's logits and labels (else None)."""
    import tempfile

    import torch
    from transformers import TrainingArguments

    from . import formats
    from .trainer import _has_accelerator, build_trainer
    from .tta import applied

    fmt = recipe.data.label_format
    compute_metrics = formats.make_metrics(recipe, labels)
    if fmt == "multi_label":
        saved = formats.saved_thresholds(built.model.config, labels)
        if saved is not None:
            compute_metrics.set_thresholds(saved)
    smoothing = float(recipe.training.get("label_smoothing_factor") or 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=batch_size or recipe.training.get("per_device_eval_batch_size", 8),
            label_smoothing_factor=smoothing,
            dataloader_pin_memory=torch.cuda.is_available(),
            # as in training (trainer.training_defaults): without it, processes on a CPU-only machine (accelerate
            # launch) do not form one distributed evaluation, and each would score the whole split alone
            use_cpu=not _has_accelerator(),
            report_to="none",
            batch_eval_metrics=formats.batch_eval_metrics(recipe),
            **task.training_defaults(),
        )
        trainer = build_trainer(
            model=built.model,
            args=args,
            train_dataset=None,
            eval_dataset=None,
            collate=prepared.collate,
            processor=None,
            compute_metrics=compute_metrics,
            preprocess_logits=None,
            loss=loss,
        )
        scored = None
        with applied(trainer, tta):
            if fmt == "single":
                scalars, scored = _scores_and_logits(trainer, prepared.splits[split], prefix)
            else:
                scalars = trainer.evaluate(prepared.splits[split], metric_key_prefix=prefix)
    return formats.split_metrics(scalars, prefix, fmt, compute_metrics.last_report), scored


def predict(
    output_dir: str | Path,
    inputs: Iterable[str | Path | tuple[str, str]],
    top_k: int = 5,
    *,
    onnx: bool = False,
    batch_size: int = 32,
    device: str | None = None,
    tta: str = "none",
) -> list[dict[str, Any]]:
    """Top-k labels and scores for each input — image files or texts, as the saved model's task takes — in order.

    A model trained on sentence pairs takes `(text, text_pair)` tuples. An input that cannot be read (a missing or
    broken image, an empty text) is a row with `"error"` and no predictions, not an exception. `onnx=True` runs the
    folder's ONNX export (`export`) with onnxruntime instead of the PyTorch model, after the same preprocessing.
    `device`: cpu, cuda, mps or auto (None: the best available). `tta` (image models): flip or crops scores each
    image as the average over its views (hf_finetune/tta.py); none, the default, is what pipeline() computes.
    `iter_predictions` yields the same rows lazily."""
    from .prediction import iter_predictions

    rows = iter_predictions(output_dir, inputs, top_k, onnx=onnx, batch_size=batch_size, device=device, tta=tta)
    return list(rows)


def _data_split_name(data: str, split: str, splits: list[str]) -> str:
    """What `eval --data` reports instead of a role name that would mislead (a lone file loads as "train"): the
    file's or folder's name, with the data's own split name when it has several (`new_images:test`)."""
    path = Path(data).expanduser()
    if path.is_file():
        return path.name
    name = path.name if path.exists() else data
    return f"{name}:{split}" if len(splits) > 1 else name


# --------------------------------------------------------------------------------------------- helpers


def setup_logging(level: int = logging.INFO) -> None:
    """Show the toolkit's progress lines unless the application configured logging itself.

    Under accelerate/torchrun only the main process (RANK 0) prints them; the others keep warnings and errors."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hf_finetune] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level if int(os.environ.get("RANK", "0")) == 0 else max(level, logging.WARNING))


def _merge_overrides(
    overrides: Sequence[str] | dict[str, Any] | None, kwargs: dict[str, Any]
) -> list[str] | dict[str, Any] | None:
    if not kwargs:
        return list(overrides) if isinstance(overrides, (list, tuple)) else overrides
    if overrides is None:
        return kwargs
    if isinstance(overrides, dict):
        return {**overrides, **kwargs}
    return {**dict(parse_override(o) for o in overrides), **kwargs}


# --------------------------------------------------------------------------------------------- export


def export(
    output_dir: str | Path,
    format: str = "onnx",
    *,
    quantize: str | None = None,
    tolerance: float | None = None,
    samples: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Export a trained folder to ONNX (`OUTPUT/onnx/`), verified: onnxruntime and PyTorch run the run's validation
    split (as `evaluate` loads it; the first `samples` rows if given) through the same preprocessing, and the export
    is refused (`ExportError`, nothing written) when a logit differs by more than `tolerance` (default 1e-3).
    `quantize="int8"` adds a dynamically quantized model, reported by its accuracy change. The card gets an
    "## Export" section with the figures; returns them (also in `onnx/export.json`)."""
    import tempfile

    from . import onnx_export as onnx
    from .names import CARD_FILE, ONNX_DIR

    setup_logging()
    tolerance = onnx.DEFAULT_TOLERANCE if tolerance is None else tolerance
    _check_export_options(format, quantize, tolerance, samples, batch_size)
    onnx.require_packages()
    output_dir = Path(output_dir)
    _check_onnx_dir_ours(output_dir)
    task = get_task(task_of_saved(output_dir))
    built = task.load_trained(output_dir)
    batches, data = _verification_batches(output_dir, task, built, samples, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ONNX_DIR
        folder.mkdir()
        result = _export_and_verify(folder, task, built, batches, tolerance, quantize)
        result.update(split="validation", data=data)
        onnx.check_within_tolerance(result, str(output_dir))
        interface = _onnx_interface(task, built, output_dir)
        onnx.write_export_folder(folder, built.model.config, *interface, result, onnx.weights_fingerprint(output_dir))
        _install_export(folder, output_dir)
    section = onnx.card_section(result, output_dir, _predict_example(task, output_dir))
    if not onnx.write_card_section(output_dir / CARD_FILE, section):
        logger.info("export: %s has no %s, so no card was updated", output_dir, CARD_FILE)
    return result


def _check_export_options(
    format: str, quantize: str | None, tolerance: float, samples: int | None, batch_size: int
) -> None:
    import math

    from .onnx_export import FORMATS, QUANTIZATIONS

    if format not in FORMATS:
        raise HFFinetuneError(f"--format {format!r}: the formats are {list(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise HFFinetuneError(f"--quantize {quantize!r}: the quantizations are {list(QUANTIZATIONS)}")
    number = not isinstance(tolerance, bool) and isinstance(tolerance, (int, float)) and math.isfinite(tolerance)
    if not number or tolerance <= 0:
        raise HFFinetuneError(f"--tolerance {tolerance!r}: give a number above 0 (the largest |Δlogit| accepted)")
    for name, value in (("--samples", samples), ("--batch-size", batch_size)):
        if value is not None and not is_count(value):
            raise HFFinetuneError(f"{name} {value!r}: give a whole number of at least 1")


def _check_onnx_dir_ours(output_dir: Path) -> None:
    """An `onnx` entry the user put there is never replaced; checked before anything is loaded."""
    from .names import ONNX_DIR
    from .outputs import written_by_us

    if not output_dir.is_dir():
        raise HFFinetuneError(f"{output_dir}: no such folder (give a folder written by `hf-finetune train`)")
    if (output_dir / ONNX_DIR).exists() and not written_by_us(output_dir, ONNX_DIR):
        raise HFFinetuneError(
            f"{output_dir / ONNX_DIR} exists and hf_finetune did not write it, so the export would replace your "
            "files. Nothing was changed. Move it elsewhere, then export again."
        )


def _verification_batches(
    output_dir: Path, task: Task, built: BuiltModel, samples: int | None, batch_size: int
) -> tuple[Iterator[dict[str, torch.Tensor]], str]:
    """The run's validation split as `evaluate` loads it (first `samples` rows), prepared and collated in batches."""
    from .data import checks, sources

    recipe = load_saved_recipe(output_dir, task.NAME)
    labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    loaded = sources.load_data(recipe.data, task.INPUTS, label_names=labels, carve_validation=True)
    ds = loaded.splits["validation"]
    if samples is not None:
        ds = ds.select(range(min(samples, len(ds))))
    checks.check_inputs({"validation": ds}, task.INPUTS, recipe.data)
    # data.cache left off: a few rows, read once
    settings = PrepareSettings(recipe.augmentation, recipe.tokenization, _augmentation_seed(recipe.training))
    prepared = task.prepare(built, {"validation": ds}, settings)
    rows = prepared.splits["validation"]
    if not len(rows):
        raise DataError(f"{loaded.description}: the validation split is empty, so the export cannot be verified")
    # decoded one batch at a time while verifying: a large validation split is never held in memory whole
    batches = (
        prepared.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for start in range(0, len(rows), batch_size)
    )
    return batches, loaded.description


def _export_and_verify(
    folder: Path,
    task: Task,
    built: BuiltModel,
    batches: Iterator[dict[str, torch.Tensor]],
    tolerance: float,
    quantize: str | None,
) -> dict[str, Any]:
    """model.onnx (and model_quantized.onnx) in `folder`, and the figures of both against PyTorch on `batches`."""
    import itertools

    import onnxruntime
    import torch

    from . import onnx_export as onnx
    from .names import ONNX_MODEL_FILE, ONNX_QUANTIZED_FILE

    text = task.NAME == "text-classification"
    names = onnx.input_names(built.model, built.processor, text)
    first = next(batches)
    # torch.export fixes an axis of size 1: the example has at least 2 rows (and 2 tokens, which any text has)
    example = {n: torch.cat([first[n]] * 2)[: max(2, len(first[n]))] for n in names}
    opset = onnx.export_onnx(built.model, example, folder / ONNX_MODEL_FILE, text)
    sessions = [onnx.session(folder / ONNX_MODEL_FILE)]
    if quantize == "int8":
        onnx.quantize_int8(folder / ONNX_MODEL_FILE, folder / ONNX_QUANTIZED_FILE)
        sessions.append(onnx.session(folder / ONNX_QUANTIZED_FILE))
    result = onnx.figures(
        onnx.collect_logits(built.model, names, itertools.chain([first], batches), sessions), tolerance
    )
    axes = "batch and sequence axes" if text else "batch axis"
    return {**result, "opset": opset, "axes": axes, "onnxruntime": onnxruntime.__version__, "inputs": names}


def _onnx_interface(task: Task, built: BuiltModel, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The graph's inputs (name → axes) and the preprocessing that makes them, as plain JSON for export.json."""
    from dataclasses import asdict

    from .onnx_export import input_names

    if task.NAME == "text-classification":
        from .tasks.text_classification import max_length_for

        names = input_names(built.model, built.processor, True)
        pair_column = load_saved_recipe(output_dir, task.NAME).data.text_pair_column
        preprocessing = {
            "tokenizer": "../tokenizer.json",
            "max_length": max_length_for(built.processor, built.model, None),
            "sentence_pairs": bool(pair_column),
        }
        return {n: ["batch", "sequence"] for n in names}, preprocessing
    pre = built.preprocess
    preprocessing = {
        **asdict(pre),
        "image_processor": "../preprocessor_config.json" if built.processor is not None else None,
        # as tasks.image_classification.to_model_mode, which follows pipeline()'s transformers.image_utils.load_image
        "mode": "as pipeline()'s load_image: EXIF orientation, then PIL convert('RGB') (transparency dropped), then "
        "L for 1 channel",
    }
    return {"pixel_values": ["batch", pre.channels, *pre.size]}, preprocessing


def _install_export(folder: Path, output_dir: Path) -> None:
    """The verified export replaces the previous one whole (no stale int8 file), recorded in the manifest."""
    import shutil

    from .names import ONNX_DIR
    from .outputs import recording

    with recording(output_dir):
        target = output_dir / ONNX_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(folder), str(target))


def _predict_example(task: Task, output_dir: Path) -> str:
    if task.NAME != "text-classification":
        return "IMAGE.png"
    pairs = load_saved_recipe(output_dir, task.NAME).data.text_pair_column
    return '--text "some text"' + (' --text-pair "its second text"' if pairs else "")
