"""The Python API. `finetune` reads top to bottom in data-path order:

recipe → data → checks → model + preprocessing → Trainer → best-model check → metrics → output folder.
"""

from __future__ import annotations

import logging
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
    from .data import checks, sources
    from .outputs import check_output_dir, clear_output_dir
    from .tasks import image_classification as task
    from .trainer import (
        avoid_single_sample_last_batch,
        build_trainer,
        build_training_args,
        verify_best_model,
        vision_defaults,
    )

    setup_logging()
    started = time.time()
    recipe = load_recipe(recipe, _merge_overrides(overrides, kwargs))
    out = recipe.output_dir
    resume = recipe.training.get("resume_from_checkpoint")
    check_output_dir(out, overwrite=recipe.overwrite, resume=bool(resume))

    data = sources.load_image_data(recipe.data)
    if recipe.data.check_images:
        checks.check_images(data.splits)
    built = task.build_model(recipe.model, data.label_names)

    channels = built.preprocess.channels
    train_ds = data.splits["train"].with_transform(
        task.make_batch_transform(task.build_train_transform(built.preprocess, recipe.augmentation), channels)
    )
    eval_transform = task.make_batch_transform(task.build_eval_transform(built), channels)
    eval_splits = {name: ds.with_transform(eval_transform) for name, ds in data.splits.items() if name != "train"}

    args = build_training_args(recipe.training, vision_defaults(recipe.training, recipe.metrics.metric_for_best_model))
    compute_metrics = metrics_lib.ClassificationMetrics(
        data.label_names, top_k=recipe.metrics.top_k, extra=recipe.metrics.extra
    )
    compute_metrics.load()  # an unavailable extra metric fails now, not after the first epoch
    if recipe.overwrite and not resume and args.process_index == 0:
        # only now, after every check passed, is the earlier run's folder emptied
        clear_output_dir(out)
    trainer = build_trainer(
        model=built.model,
        args=args,
        train_dataset=avoid_single_sample_last_batch(train_ds, args, built.model),
        eval_dataset=eval_splits["validation"],
        collate=task.collate,
        processor=built.processor,
        compute_metrics=compute_metrics,
        preprocess_logits=metrics_lib.make_preprocess_logits(max([1, *recipe.metrics.top_k])),
        callbacks=callbacks,
    )
    train_output = trainer.train(resume_from_checkpoint=resume)
    best = verify_best_model(trainer)

    results: dict[str, Any] = {"train": dict(train_output.metrics)}
    for split, ds in eval_splits.items():
        prefix = SPLIT_PREFIX[split]
        scalars = trainer.evaluate(ds, metric_key_prefix=prefix)
        results[prefix] = _split_metrics(scalars, prefix, compute_metrics.last_report)

    files: list[str] = []
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        files = _write_results(out, recipe, data, built, results, best, time.time() - started)
    logger.info("done: outputs in %s", out.resolve())
    return Result(out, results, data.label_names, recipe, best, files)


def evaluate(
    output_dir: str | Path,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of a saved model on its recipe's data (or `data`, any source a recipe takes) — nothing is written."""
    import torch
    from transformers import Trainer, TrainingArguments

    from . import metrics as metrics_lib
    from .data import sources
    from .tasks import image_classification as task

    setup_logging()
    output_dir = Path(output_dir)
    built = task.load_trained(output_dir)
    labels = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    spec = _saved_data_spec(output_dir)
    if data is not None:
        spec = replace(spec, source=data, files={}, validation_split=None, test_split=None, train_split="train")
    loaded = sources.load_image_data(spec, label_names=labels, carve_validation=data is None)
    available = list(loaded.splits)
    if split is None:
        split = next(s for s in ("test", "validation", "train") if s in loaded.splits)
    if split not in loaded.splits:
        raise DataError(f"--split {split!r}: the data has splits {available}")
    ds = loaded.splits[split].with_transform(
        task.make_batch_transform(task.build_eval_transform(built), built.preprocess.channels)
    )
    compute_metrics = metrics_lib.ClassificationMetrics(labels)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=batch_size,
            remove_unused_columns=False,
            dataloader_pin_memory=torch.cuda.is_available(),
            report_to="none",
        )
        trainer = Trainer(
            model=built.model,
            args=args,
            data_collator=task.collate,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=metrics_lib.make_preprocess_logits(1),
        )
        scalars = trainer.evaluate(ds, metric_key_prefix=SPLIT_PREFIX.get(split, split))
    result = _split_metrics(scalars, SPLIT_PREFIX.get(split, split), compute_metrics.last_report)
    result["split"] = split
    result["data"] = loaded.description
    return result


def predict(output_dir: str | Path, images: Sequence[str | Path], top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k labels and scores for each image file, with the saved model's own preprocessing."""
    import torch
    from PIL import Image

    from .tasks import image_classification as task

    built = task.load_trained(output_dir)
    transform = task.build_eval_transform(built)
    config = built.model.config
    k = max(1, min(top_k, config.num_labels))
    built.model.eval()
    rows = []
    for path in images:
        try:
            with Image.open(path) as img:
                img.load()
                pixels = transform(task.to_model_mode(img, built.preprocess.channels))
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {err})") from None
        with torch.no_grad():
            probs = built.model(pixel_values=pixels.unsqueeze(0)).logits.softmax(-1)[0]
        scores, ids = probs.topk(k)
        rows.append(
            {
                "image": str(path),
                "predictions": [
                    {"label": config.id2label[int(i)], "score": round(float(s), 6)}
                    for s, i in zip(scores, ids, strict=True)
                ],
            }
        )
    return rows


# --------------------------------------------------------------------------------------------- helpers


def setup_logging(level: int = logging.INFO) -> None:
    """Show the toolkit's progress lines unless the application configured logging itself."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hf_finetune] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


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


def _saved_data_spec(output_dir: Path) -> Any:
    from .outputs import RECIPE_FILE
    from .recipe import DataSpec

    saved = output_dir / RECIPE_FILE
    if not saved.is_file():
        return DataSpec()
    return load_recipe(saved).data


def _write_results(
    out: Path, recipe: Recipe, data: Any, built: Any, results: dict[str, Any], best: str | None, seconds: float
) -> list[str]:
    from . import metrics as metrics_lib
    from .card import write_model_card
    from .outputs import METRICS_FILE, RECIPE_FILE, write_json, write_text_atomic

    write_text_atomic(out / RECIPE_FILE, recipe.to_yaml())
    payload = {"label_names": data.label_names, **results}
    if best:
        payload["best_checkpoint"] = best
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
    write_model_card(
        out,
        recipe=recipe,
        label_names=data.label_names,
        results=results,
        data_description=data.description,
        model_description=built.description,
        seconds=seconds,
    )
    return [*files, "README.md"]
