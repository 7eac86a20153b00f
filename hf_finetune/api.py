"""The Python API. `finetune` reads top to bottom in data-path order:

recipe → data → checks → model + preprocessing → Trainer → best-model check → metrics → output folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import DataError
from .recipe import Recipe, load_recipe

logger = logging.getLogger("hf_finetune")

SPLIT_PREFIX = {"validation": "eval", "test": "test", "train": "train"}


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
        headline = {
            k: round(v["accuracy"], 4) for k, v in self.metrics.items() if isinstance(v, dict) and "accuracy" in v
        }
        return f"Result(output_dir={str(self.output_dir)!r}, accuracy={headline})"


def finetune(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Any] = (),
    **kwargs: Any,
) -> Result:
    """Fine-tune as the recipe says and write the output folder.

    `recipe` is a path, a shipped recipe name (`quickstart`), a dict or a `Recipe`. Overrides are dotted strings
    (`["training.learning_rate=1e-4"]`), a dict, or keyword arguments — `training={"num_train_epochs": 1}` or
    `**{"data.source": "./pets"}`. `callbacks` are extra `transformers.TrainerCallback`s.
    """
    from . import metrics as metrics_lib
    from . import transfer
    from .checkpoints import (
        CheckpointMarker,
        ResumeWeightsCheck,
        interrupted,
        main_process_first,
        resolve_resume,
        stop_on_signals,
    )
    from .data import checks, sources
    from .loss import class_weights, classification_loss
    from .outputs import RECIPE_FILE, check_output_dir, clear_output_dir, recording, start_manifest, write_text_atomic
    from .recipe import find_recipe
    from .tasks import PrepareSettings, get_task
    from .trainer import (
        avoid_single_sample_last_batch,
        build_trainer,
        build_training_args,
        log_distribution,
        mixed_precision,
        training_defaults,
        verify_best_model,
    )

    setup_logging()
    started = time.time()
    recipe_file = find_recipe(recipe) if isinstance(recipe, (str, Path)) else None
    recipe = load_recipe(recipe, _merge_overrides(overrides, kwargs))
    task = get_task(recipe.task)
    out = recipe.output_dir
    claim = check_output_dir(  # before anything is loaded: a refused folder costs nothing and nothing is changed
        out,
        overwrite=recipe.overwrite,
        resume=bool(recipe.training.get("resume_from_checkpoint")),
        protected={
            "the recipe file": recipe_file,
            "data.source": recipe.data.source,
            **{f"data.files.{k}": v for k, v in recipe.data.files.items()},
        },
    )
    precision = mixed_precision(recipe.training, dict(os.environ))
    defaults = training_defaults(recipe.training, task.training_defaults(), recipe.metrics.metric_for_best_model)
    args = build_training_args(recipe.training, defaults)  # also sets up the processes under accelerate/torchrun
    main_process = args.process_index == 0
    # new heads and from-scratch models are initialised from the global RNG: seed it before they are built, not
    # only when Trainer starts, or two runs of one recipe start from different weights
    _seed(args)
    with main_process_first(args, "resume", local=False):  # one process sets incomplete checkpoints aside
        resume = resolve_resume(recipe.training.get("resume_from_checkpoint"), out, set_aside=args.should_save)
    with main_process_first(args, "data and model"):  # one process fills the caches; the others read them
        data = sources.load_data(recipe.data, task.INPUTS)
        if main_process:
            checks.check_inputs(data.splits, task.INPUTS, recipe.data)
        built = task.build_model(recipe.model, data.label_names)
        plan, transfer_callbacks, _ = transfer.setup(built.model, recipe.transfer)
        seed = args.data_seed if args.data_seed is not None else args.seed
        prepared = task.prepare(built, data.splits, PrepareSettings(recipe.augmentation, recipe.tokenization, seed))
    log_distribution(args, precision)
    if plan.trainable_later and args.world_size > 1:
        from .errors import RecipeError

        raise RecipeError(
            [
                "transfer.strategy lp_ft: unfreezing parameters in the middle of a run is not something "
                "DistributedDataParallel can follow; run lp_ft in one process, or run linear_probe and then full "
                "(model.name=<the probe's output folder>) as two runs"
            ]
        )
    train_labels = data.splits["train"]["label"]
    weights = class_weights(recipe.loss.class_weights, train_labels, data.label_names)
    mixup = task.batch_mixer(recipe.augmentation, len(data.label_names), args.label_smoothing_factor)
    custom_groups = recipe.transfer != type(recipe.transfer)()  # anything but plain full fine-tuning
    compute_metrics = metrics_lib.ClassificationMetrics(
        data.label_names, top_k=recipe.metrics.top_k, extra=recipe.metrics.extra
    )
    compute_metrics.load()  # an unavailable extra metric fails now, not after the first epoch
    if main_process:
        # only now, after every check passed, are the earlier run's entries (and only those) removed
        clear_output_dir(out, claim)
        start_manifest(out, resume=bool(resume))
        # written first so that a run stopped early can be resumed from its own folder
        write_text_atomic(out / RECIPE_FILE, recipe.to_saved_yaml())
    args.distributed_state.wait_for_everyone()
    run_callbacks = [CheckpointMarker(), *([ResumeWeightsCheck(resume)] if resume else [])]
    trainer = build_trainer(
        model=built.model,
        args=args,
        train_dataset=avoid_single_sample_last_batch(prepared.splits["train"], args, built.model, mixup is not None),
        eval_dataset=prepared.splits["validation"],
        collate=prepared.collate,
        processor=built.processor,
        compute_metrics=compute_metrics,
        preprocess_logits=metrics_lib.make_preprocess_logits(max([1, *recipe.metrics.top_k])),
        callbacks=[*run_callbacks, *transfer_callbacks, *callbacks],
        param_groups=(
            (lambda model, decay: transfer.param_groups(model, plan, args.learning_rate, args.weight_decay, decay))
            if custom_groups
            else None
        ),
        loss=classification_loss(weights, args.label_smoothing_factor, mixup is not None),
        mixup=mixup,
    )
    with stop_on_signals() as stop:
        trainer.add_callback(stop)
        train_output = trainer.train(resume_from_checkpoint=resume)
    if stop.signum is not None:
        raise interrupted(stop.signum, trainer.state.global_step, out)
    best = verify_best_model(trainer)

    results: dict[str, Any] = {"train": dict(train_output.metrics)}
    for split, ds in prepared.splits.items():
        if split == "train":
            continue
        prefix = SPLIT_PREFIX[split]
        scalars = trainer.evaluate(ds, metric_key_prefix=prefix)
        results[prefix] = _split_metrics(scalars, prefix, compute_metrics.last_report)
        results[prefix]["baseline"] = metrics_lib.majority_baseline(
            train_labels, data.splits[split]["label"], data.label_names
        )

    files: list[str] = []
    with recording(out, enabled=main_process):  # the model's file names vary by model and tokenizer
        trainer.save_model(str(out))  # every process: FSDP gathers the shards; only the main one writes
    if trainer.is_world_process_zero():
        run = run_info(data, args, best, time.time() - started)
        files = _write_results(out, recipe, args, data, built, results, run)
        if recipe.hub.push:
            from .hub import push_folder

            push_folder(
                out,
                recipe.hub.repo_id,
                private=recipe.hub.private,
                revision=recipe.hub.revision,
                include_checkpoints=recipe.hub.include_checkpoints,
                include=recipe.hub.include,
                delete_missing=recipe.hub.delete_missing,
            )
    logger.info("done: outputs in %s", out.resolve())
    return Result(out, results, data.label_names, recipe, best, files)


def evaluate(
    output_dir: str | Path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Metrics of a saved model — nothing is written.

    On the recipe's own data (its splits, caps and carved validation split, as in training) the numbers are those
    training wrote to metrics.json: same loss settings (class weights, label smoothing), `metrics.top_k` and
    `metrics.extra`. `data` (any source a recipe takes) is evaluated whole: no row caps, no carving; its split is
    reported by the data's name (`new.csv`, or `new_folder:test` for a folder or dataset with several splits).
    """
    import tempfile

    import torch
    from transformers import TrainingArguments

    from . import metrics as metrics_lib
    from .data import checks, sources
    from .errors import HFFinetuneError
    from .loss import classification_loss, saved_class_weights
    from .tasks import PrepareSettings, get_task, task_of_saved
    from .trainer import build_trainer

    setup_logging()
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise HFFinetuneError(f"batch size {batch_size!r}: give a whole number of at least 1")
    output_dir = Path(output_dir)
    task = get_task(task_of_saved(output_dir))
    recipe = _saved_recipe(output_dir, task.NAME)
    built = task.load_trained(output_dir)
    labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    spec = recipe.data
    if data is not None:
        # new data is evaluated whole: the recipe's row caps and split choices were about its own data
        spec = replace(
            spec,
            source=data,
            files={},
            validation_split=None,
            test_split=None,
            train_split="train",
            max_train_samples=None,
            max_eval_samples=None,
        )
    loaded = sources.load_data(spec, task.INPUTS, label_names=labels, carve_validation=data is None)
    if split is None:
        split = next((s for s in ("test", "validation", "train") if s in loaded.splits), None)
        if split is None:
            raise DataError(f"{loaded.description}: no split has labels ({list(loaded.unlabelled)} are hidden)")
    if split not in loaded.splits:
        if split in loaded.unlabelled:
            raise DataError(
                f"--split {split!r} has no labels (every row is -1 or empty: hidden, as GLUE's test sets), so it "
                f"cannot be scored; the splits with labels are {list(loaded.splits)}"
            )
        raise DataError(f"--split {split!r}: the data has splits {list(loaded.splits)}")
    chosen = {split: loaded.splits[split]}  # empty texts were already handled by load_data
    checks.check_inputs(chosen, task.INPUTS, spec)  # a truncated file is named here, not a traceback mid-evaluation
    seed = recipe.training.get("data_seed")
    seed = recipe.training.get("seed", 42) if seed is None else seed
    prepared = task.prepare(built, chosen, PrepareSettings(recipe.augmentation, recipe.tokenization, seed))
    compute_metrics = metrics_lib.ClassificationMetrics(labels, top_k=recipe.metrics.top_k, extra=recipe.metrics.extra)
    compute_metrics.load()
    smoothing = float(recipe.training.get("label_smoothing_factor") or 0.0)
    train_labels = loaded.splits["train"]["label"] if data is None and "train" in loaded.splits else None
    weights = saved_class_weights(recipe.loss.class_weights, output_dir, train_labels, labels)
    prefix = SPLIT_PREFIX.get(split, split) if data is None else "eval"
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=batch_size or recipe.training.get("per_device_eval_batch_size", 8),
            label_smoothing_factor=smoothing,
            dataloader_pin_memory=torch.cuda.is_available(),
            report_to="none",
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
            preprocess_logits=metrics_lib.make_preprocess_logits(max([1, *recipe.metrics.top_k])),
            # as in training: the toolkit's loss when it has class weights (or mixup: the same on hard labels)
            loss=classification_loss(weights, smoothing, _mixes(recipe)),
        )
        scalars = trainer.evaluate(prepared.splits[split], metric_key_prefix=prefix)
    result = _split_metrics(scalars, prefix, compute_metrics.last_report)
    result["split"] = split if data is None else _data_split_name(data, split, list(loaded.splits))
    result["data"] = loaded.description
    return result


def predict(
    output_dir: str | Path, inputs: Sequence[str | Path | tuple[str, str]], top_k: int = 5
) -> list[dict[str, Any]]:
    """Top-k labels and scores for each input — image files or texts, as the saved model's task takes.

    A model trained on sentence pairs takes `(text, text_pair)` tuples."""
    from .errors import HFFinetuneError
    from .tasks import get_task, task_of_saved

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise HFFinetuneError(f"top_k {top_k!r}: give a whole number of at least 1 (how many labels to list)")
    task = get_task(task_of_saved(output_dir))
    inputs = list(inputs)
    if task.NAME == "text-classification":
        pair_column = _saved_recipe(Path(output_dir), task.NAME).data.text_pair_column
        _check_pairs_given(inputs, pair_column, Path(output_dir))
    return task.predict(task.load_trained(output_dir), inputs, top_k)


def _check_pairs_given(inputs: list[Any], pair_column: str | None, output_dir: Path) -> None:
    pairs = [isinstance(x, (tuple, list)) for x in inputs]
    if pair_column and not all(pairs):
        raise DataError(
            f"{output_dir} was trained on sentence pairs (data.text_pair_column: {pair_column}): give each input as "
            "a pair (text, text_pair); on the command line --text A --text-pair B, or a .csv with both columns"
        )
    if not pair_column and any(pairs):
        raise DataError(f"{output_dir} was trained on single texts, not pairs: give one text per input")
    bad = [i for i, x in enumerate(inputs) if pairs[i] and len(x) != 2]
    if bad:
        raise DataError(f"inputs {bad[:10]}: a sentence pair is two texts (text, text_pair)")


def _data_split_name(data: str, split: str, splits: list[str]) -> str:
    """What `eval --data` reports instead of a role name that would mislead (a lone file loads as "train"): the
    file's or folder's name, with the data's own split name when it has several (`new_images:test`)."""
    path = Path(data).expanduser()
    if path.is_file():
        return path.name
    name = path.name if path.exists() else data
    return f"{name}:{split}" if len(splits) > 1 else name


def _mixes(recipe: Recipe) -> bool:
    aug = recipe.augmentation
    return bool(aug.mixup_alpha or aug.cutmix_alpha)


# --------------------------------------------------------------------------------------------- helpers


def setup_logging(level: int = logging.INFO) -> None:
    """Show the toolkit's progress lines unless the application configured logging itself.

    Under accelerate/torchrun only the main process (RANK 0) prints them; the others keep warnings and errors."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hf_finetune] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level if int(os.environ.get("RANK", "0")) == 0 else max(level, logging.WARNING))


def _merge_overrides(overrides: Sequence[str] | dict[str, Any] | None, kwargs: dict[str, Any]) -> Any:
    if not kwargs:
        return list(overrides) if isinstance(overrides, (list, tuple)) else overrides
    if overrides is None:
        return kwargs
    if isinstance(overrides, dict):
        return {**overrides, **kwargs}
    from .recipe import parse_override

    return {**dict(parse_override(o) for o in overrides), **kwargs}


def _split_metrics(scalars: dict[str, float], prefix: str, report: dict[str, Any] | None) -> dict[str, Any]:
    """Trainer's `eval_accuracy`… as `accuracy`…, plus the per-class table and confusion matrix of that pass."""
    out = {k.removeprefix(f"{prefix}_"): v for k, v in scalars.items()}
    for key in ("per_class", "confusion_matrix", "num_samples"):
        if report and key in report:
            out[key] = report[key]
    return out


def _saved_recipe(output_dir: Path, task: str) -> Recipe:
    """The run's resolved recipe (data section, tokenization), or defaults for a folder that has none."""
    from .outputs import RECIPE_FILE

    saved = output_dir / RECIPE_FILE
    return load_recipe(saved) if saved.is_file() else Recipe(task=task)


def _seed(args: Any) -> None:
    from transformers import enable_full_determinism, set_seed

    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def run_info(data: Any, args: Any, best: str | None, seconds: float) -> dict[str, Any]:
    """Provenance for metrics.json and the model card: data splits and class counts, hardware, versions, time."""
    import os
    import platform
    from collections import Counter
    from importlib.metadata import PackageNotFoundError, version

    import torch

    splits = {}
    for name, ds in data.splits.items():
        counts = Counter(int(v) for v in ds["label"])
        splits[name] = {"rows": len(ds), "class_counts": {n: counts.get(i, 0) for i, n in enumerate(data.label_names)}}
    if torch.cuda.is_available() and not args.use_cpu:
        device = f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = {}
    for package in ("hf_finetune", "transformers", "torch", "datasets", "accelerate", "timm", "evaluate"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    # what Trainer hands accelerate: the recipe's bf16/fp16, else accelerate launch's (ACCELERATE_MIXED_PRECISION)
    precision = {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision)
    return {
        "data": data.description,
        "splits": splits,
        "hardware": {"device": device, "processes": args.world_size, "precision": precision},
        "versions": versions,
        "wall_time_s": round(seconds, 1),
        "best_checkpoint": best,
    }


def _write_results(
    out: Path, recipe: Recipe, args: Any, data: Any, built: Any, results: dict[str, Any], run: dict
) -> list[str]:
    from . import metrics as metrics_lib
    from .card import CardFacts, write_model_card
    from .outputs import METRICS_FILE, RECIPE_FILE, finish_manifest, listing, write_json, write_text_atomic

    before = listing(out)
    write_text_atomic(out / RECIPE_FILE, recipe.to_saved_yaml())
    payload = {"label_names": data.label_names, **results, "run": run}
    if run["best_checkpoint"]:
        payload["best_checkpoint"] = run["best_checkpoint"]
    write_json(out / METRICS_FILE, payload)
    files = [RECIPE_FILE, METRICS_FILE]
    for prefix in ("eval", "test"):
        if prefix in results and "confusion_matrix" in results[prefix]:
            name = f"confusion_matrix_{prefix}"
            metrics_lib.write_confusion_matrix(
                results[prefix]["confusion_matrix"],
                data.label_names,
                out / f"{name}.csv",
                out / f"{name}.png",
                title=f"{recipe.name or 'model'} — {'validation' if prefix == 'eval' else 'test'} split",
            )
            files += [f"{name}.csv", f"{name}.png"]
    facts = CardFacts.from_run(recipe, args, data.label_names, results, data.description, built.description, run)
    write_model_card(out, facts)
    return finish_manifest(out, [*files, "README.md"], before=before)
