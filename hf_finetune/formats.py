"""What each `data.label_format` changes in a run: its compute_metrics, loss, constant baseline, per-label
thresholds, run-info counts and plots. `api.py` asks this module instead of branching on the format itself.

Every format's metrics take the full logits batch by batch (Trainer's `batch_eval_metrics`, each batch gathered
across processes: bounded memory), or all at once where the recipe sets `training.batch_eval_metrics: false`.

- single: `SingleLabelMetrics` (accuracy, F1…, top-k, extras, and the score metrics: ROC/PR-AUC, log loss, Brier,
  ECE, with a reliability diagram per evaluated split), cross entropy, majority class.
- multi_label: `MultiLabelMetrics`, BCE with logits (`loss.pos_weight`), the prevalence baseline, thresholds tuned on
  the validation split (`metrics.thresholds`) and saved in the model's config.
- regression: `RegressionMetrics` in the targets' own units (undoing `data.standardize_targets`), MSE or Huber, the
  train-mean baseline, the scatter and residual plots.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import LABEL_THRESHOLDS_KEY, TARGET_SCALER_KEY, regression_plot_files, reliability_diagram_file

if TYPE_CHECKING:
    import numpy as np
    import torch
    from datasets import Dataset

    from .multilabel_metrics import MultiLabelMetrics, ThresholdChoice
    from .recipe import Recipe
    from .regression_metrics import PlotSample

logger = logging.getLogger("hf_finetune")

# the metric each format is judged by in logs and the Result's headline
HEADLINE = {"single": "accuracy", "multi_label": "f1_micro", "regression": "rmse"}
# metrics where lower is better (Trainer's greater_is_better defaults to True unless the name ends in "loss")
LOWER_IS_BETTER = {"loss", "mae", "rmse", "hamming_loss"}


def greater_is_better(metric: str) -> bool:
    return metric.removeprefix("eval_") not in LOWER_IS_BETTER and not metric.endswith("loss")


def make_metrics(recipe: Recipe, label_names: list[str], target_scaler: Mapping[str, float] | None = None) -> Any:
    """The run's compute_metrics. Multi-label starts at the recipe's fixed threshold (0.5 when tuning: the
    per-epoch evaluations that pick the best checkpoint use `map`, which needs none)."""
    fmt = recipe.data.label_format
    if fmt == "multi_label":
        from .multilabel_metrics import DEFAULT_THRESHOLD, TUNE, MultiLabelMetrics

        setting = recipe.metrics.thresholds
        fixed = DEFAULT_THRESHOLD if setting in (None, TUNE) else float(setting)
        return MultiLabelMetrics(label_names, thresholds=fixed)
    if fmt == "regression":
        from .regression_metrics import RegressionMetrics

        return RegressionMetrics(label_names, target_scaler=target_scaler)
    from .metrics import make_single_label_metrics

    compute_metrics = make_single_label_metrics(label_names, top_k=recipe.metrics.top_k, extra=recipe.metrics.extra)
    compute_metrics.load()  # an unavailable extra metric fails before training, not after it
    return compute_metrics


def batch_eval_metrics(recipe: Recipe) -> bool:
    """Whether evaluation streams batches into the metrics (memory bounded; the default) or hands them every logit
    at once (`training.batch_eval_metrics: false`, honoured: the metrics give the same numbers either way)."""
    return bool(recipe.training.get("batch_eval_metrics", True))


def make_loss(
    recipe: Recipe, train: Dataset, label_names: list[str], label_smoothing: float, mixing: bool
) -> Callable[..., torch.Tensor] | None:
    """The loss to hand Trainer for this format (None: the model's own)."""
    from . import loss

    fmt = recipe.data.label_format
    if fmt == "multi_label":
        from .data.labels import multi_hot

        y = multi_hot(train)
        weights = loss.pos_weights(recipe.loss.pos_weight, [int(c) for c in y.sum(0)], len(y), label_names)
        return loss.MultiLabelBCE(weights)
    if fmt == "regression":
        return loss.RegressionLoss(recipe.loss.regression, recipe.loss.huber_delta)
    weights = loss.class_weights(recipe.loss.class_weights, train["label"], label_names)
    return loss.classification_loss(weights, label_smoothing, mixing)


def saved_loss(
    recipe: Recipe, output_dir: Path, train: Dataset | None, label_names: list[str], config: Any = None
) -> Callable[..., torch.Tensor] | None:
    """The loss a saved run trained with, for `evaluate`: the same numbers as its metrics.json (a regression model
    trained on standardised targets is scored in those units, from the scaler its `config` records)."""
    from . import loss

    fmt = recipe.data.label_format
    if fmt == "multi_label":
        return loss.MultiLabelBCE(loss.saved_pos_weights(recipe.loss.pos_weight, output_dir, label_names))
    if fmt == "regression":
        scaler = getattr(config, TARGET_SCALER_KEY, None)
        return loss.RegressionLoss(recipe.loss.regression, recipe.loss.huber_delta, scaler)
    train_labels = train["label"] if train is not None else None
    weights = loss.saved_class_weights(recipe.loss.class_weights, output_dir, train_labels, label_names)
    smoothing = float(recipe.training.get("label_smoothing_factor") or 0.0)
    return loss.classification_loss(weights, smoothing, recipe.augmentation.mixes)


# --------------------------------------------------------------------------------------------- baselines


def constant_baseline(
    fmt: str,
    train: Dataset,
    split: Dataset,
    label_names: list[str],
    target_scaler: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The bar a model has to clear on `split`: always answering train's most frequent class (single), train's
    label prevalences as scores with the labels present in at least half of train predicted (multi_label), or
    train's mean target (regression), scored with the same metrics as the model."""
    import numpy as np

    if fmt == "single":
        from .metrics import majority_baseline

        return majority_baseline(_label_list(train), _label_list(split), label_names)
    from transformers import EvalPrediction

    from .data import labels

    if fmt == "multi_label":
        from .multilabel_metrics import MultiLabelMetrics

        prevalence = labels.multi_hot(train).mean(0).astype(np.float64)
        y = labels.multi_hot(split)
        # logit of the prevalence (clipped so a label present in every row stays finite); >= 0.5 ⇔ logit >= 0
        p = np.clip(prevalence, 1e-6, 1 - 1e-6)
        logits = np.repeat(np.log(p / (1 - p))[None, :], len(y), axis=0)
        metrics = MultiLabelMetrics(label_names, thresholds=0.5)
        scores = metrics(EvalPrediction(predictions=logits, label_ids=y))
        predicted = [n for n, share in zip(label_names, prevalence, strict=True) if share >= 0.5]
        return {"kind": "prevalence", "predicted_labels": predicted, **scores}
    from .regression_metrics import RegressionMetrics

    train_targets = labels.targets(train)
    y = labels.targets(split)
    metrics = RegressionMetrics(label_names, target_scaler=target_scaler)
    scores = metrics(EvalPrediction(predictions=np.full(len(y), train_targets.mean()), label_ids=y))
    mean = float(train_targets.mean())
    if target_scaler is not None:
        mean = mean * target_scaler["std"] + target_scaler["mean"]
    return {"kind": "mean", "value": mean, **scores}


# --------------------------------------------------------------------------------------------- thresholds


def threshold_setting(recipe: Recipe) -> str | float:
    from .multilabel_metrics import TUNE

    setting = recipe.metrics.thresholds
    return TUNE if setting is None else setting


def choose_thresholds(metrics: MultiLabelMetrics, setting: str | float) -> ThresholdChoice:
    """Each label's threshold from the validation pass `metrics` last computed (or the fixed one), set on it."""
    from .multilabel_metrics import tune_thresholds

    choice = tune_thresholds(metrics, setting)
    metrics.set_thresholds(list(choice.thresholds))
    shown = ", ".join(f"{n} {t:.3f}" for n, t in list(choice.as_dict().items())[:10])
    more = f" (+{len(choice.thresholds) - 10} more)" if len(choice.thresholds) > 10 else ""
    how = "tuned on the validation split (each label's F1-best)" if choice.mode == "tune" else "fixed"
    logger.info("thresholds: %s: %s%s", how, shown, more)
    return choice


def thresholds_info(choice: ThresholdChoice) -> dict[str, Any]:
    """metrics.json's run.thresholds."""
    return {
        "mode": choice.mode,
        "values": choice.as_dict(),
        "validation_f1": dict(zip(choice.label_names, choice.validation_f1, strict=True)),
        "untuned": list(choice.untuned),
    }


def record_in_config(config: Any, thresholds: ThresholdChoice | None, scaler: Mapping[str, float] | None) -> None:
    """What the saved config.json carries for predict, eval and pipeline() users."""
    if thresholds is not None:
        setattr(config, LABEL_THRESHOLDS_KEY, thresholds.as_dict())
    if scaler is not None:
        setattr(config, TARGET_SCALER_KEY, {"mean": float(scaler["mean"]), "std": float(scaler["std"])})


def saved_thresholds(config: Any, label_names: Sequence[str]) -> list[float] | None:
    """A saved multi-label model's per-label thresholds (None when its config has none)."""
    saved = getattr(config, LABEL_THRESHOLDS_KEY, None)
    if not isinstance(saved, Mapping):
        return None
    return [float(saved.get(name, 0.5)) for name in label_names]


# --------------------------------------------------------------------------------------------- results


def split_metrics(scalars: Mapping[str, float], prefix: str, fmt: str, report: Mapping[str, Any] | None) -> dict:
    """Trainer's `eval_f1_micro`… as `f1_micro`…, plus the per-class or per-label rows of that pass."""
    out: dict[str, Any] = {k.removeprefix(f"{prefix}_"): v for k, v in scalars.items()}
    keys = {
        "single": ("per_class", "confusion_matrix", "num_samples"),
        "multi_label": ("per_class", "num_samples", "thresholds", "map_error_bound", "labels_without_positives"),
        "regression": ("num_samples", "spearman_method"),
    }[fmt]
    for key in keys:
        if report and key in report:
            out[key] = report[key]
    return out


def label_counts(fmt: str, ds: Dataset, label_names: list[str], scaler: Mapping[str, float] | None) -> dict:
    """run.splits[split] beyond its row count: class counts, positives per label, or the target's summary."""
    from collections import Counter

    from .data import labels

    if fmt == "multi_label":
        y = labels.multi_hot(ds)
        return {"class_counts": {n: int(c) for n, c in zip(label_names, y.sum(0), strict=True)}}
    if fmt == "regression":
        t = labels.targets(ds)
        if scaler is not None:
            t = labels.unstandardize(t, scaler)
        return {"target": _summary(t)}
    counts = Counter(_label_list(ds))
    return {"class_counts": {n: counts.get(i, 0) for i, n in enumerate(label_names)}}


def _label_list(ds: Dataset) -> list[int]:
    """The label column as a list, through Arrow: iterating `ds["label"]` formats one row per step (1.5 s a run on
    12k rows)."""
    return ds.select_columns(["label"]).with_format("arrow")["label"].to_pylist()


def _summary(t: np.ndarray) -> dict[str, float | None]:
    if not len(t):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()), "max": float(t.max())}


def plot_sample(fmt: str, compute_metrics: Any) -> PlotSample | Mapping[str, Any] | None:
    """What the last evaluation leaves to plot: regression's points, single-label's score report (reliability)."""
    if fmt == "regression":
        return compute_metrics.last_plot_sample
    if fmt == "single":
        return compute_metrics.score_report
    return None


def write_plots(out: Path, prefix: str, sample: PlotSample | Mapping[str, Any], title: str) -> dict[str, str]:
    """One evaluated split's PNGs and their file names: the reliability diagram (single-label, from its score
    report), or the scatter and residual plots (regression, from its points)."""
    if isinstance(sample, Mapping):
        from .score_metrics import write_reliability_diagram

        name = reliability_diagram_file(prefix)
        write_reliability_diagram(sample, out / name, title=title)
        return {"reliability": name}
    from .regression_metrics import write_regression_plots

    scatter, residuals = regression_plot_files(prefix)
    write_regression_plots(sample, out / scatter, out / residuals, title=title)
    return {"scatter": scatter, "residuals": residuals}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------- what the CLI prints


def saved_label_format(output_dir: str | Path) -> str:
    """The label format of a saved run (single for folders written before there was a choice)."""
    from .recipe import read_saved_recipe

    data = read_saved_recipe(output_dir).get("data") or {}
    fmt = data.get("label_format") if isinstance(data, dict) else None
    return fmt if fmt in HEADLINE else "single"


def headline_scores(fmt: str, m: Mapping[str, Any]) -> str:
    """The few numbers that say how a split went, as one line."""
    keys = {
        "single": (("accuracy", "accuracy"), ("f1_macro", "macro-F1")),
        "multi_label": (
            ("f1_micro", "micro-F1"),
            ("f1_macro", "macro-F1"),
            ("map", "mAP"),
            ("subset_accuracy", "exact match"),
        ),
        "regression": (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("spearman", "Spearman")),
    }[fmt]
    return "  ".join(f"{name} {m[key]:.4f}" if finite(m.get(key)) else f"{name} n/a" for key, name in keys)


def summary_lines(fmt: str, name: str, m: Mapping[str, Any], table: bool = False) -> list[str]:
    """A split's headline, its constant baseline, and (table) its per-class or per-label table."""
    lines = [f"{name}: {headline_scores(fmt, m)}  ({m.get('num_samples')} rows)"]
    b = m.get("baseline")
    if b:
        what = {
            "single": lambda: f"majority-class baseline (always {b.get('majority_class')!r})",
            "multi_label": lambda: f"prevalence baseline (always {b.get('predicted_labels') or 'no label'})",
            "regression": lambda: f"mean baseline (always {b.get('value', float('nan')):.4g})",
        }[fmt]()
        lines.append(f"  {what}: {headline_scores(fmt, b)}")
    if table and fmt == "single":
        from .metrics import per_class_table

        lines.append(per_class_table(m))
    elif table and fmt == "multi_label" and m.get("per_class"):
        lines.append(per_label_table(m["per_class"]))
    return lines


def per_label_table(rows: Sequence[Mapping[str, Any]], limit: int = 30) -> str:
    """Multi-label: each label's precision, recall, F1, support, average precision and threshold."""
    width = max(5, *(len(str(r["label"])) for r in rows[:limit]))
    out = [f"{'label':<{width}}  precision  recall  f1      support  AP      threshold"]
    for r in rows[:limit]:
        ap = r.get("average_precision")
        out.append(
            f"{r['label']!s:<{width}}  {r['precision']:.4f}     {r['recall']:.4f}  {r['f1']:.4f}  "
            f"{r['support']:>7}  {'n/a   ' if ap is None else f'{ap:.4f}'}  {r['threshold']:.3f}"
        )
    if len(rows) > limit:
        out.append(f"… and {len(rows) - limit} more labels (metrics.json has them all)")
    return "\n".join(out)
