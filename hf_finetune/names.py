"""Names every stage shares: the splits, their keys in metrics.json, and the files of an output folder.

Defined once here (imported, never retyped) so that the data loader, the trainer, the card, the push and the CLI
cannot drift apart on what a split or a file is called.
"""

from __future__ import annotations

# The three roles a split can have, in the order they are reported.
SPLITS = ("train", "validation", "test")
# A split's prefix in Trainer's metric keys and its key in metrics.json (`eval_accuracy`, metrics["eval"]).
METRIC_PREFIX = {"train": "train", "validation": "eval", "test": "test"}
# ... and back: the split a metrics.json key stands for (the name a model card shows).
SPLIT_OF_PREFIX = {prefix: split for split, prefix in METRIC_PREFIX.items()}
# The evaluated splits' prefixes in metrics.json, in the order cards and tables list them.
EVALUATED_PREFIXES = ("eval", "test")

# The files hf_finetune writes into an output folder.
RECIPE_FILE = "recipe.yaml"  # the resolved recipe: resume or re-run from it
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
# What a run wrote (hidden, never pushed): `--overwrite` and a new run remove exactly that and nothing of the user's.
MANIFEST_FILE = ".hf_finetune_run.json"
# What the last push uploaded (hidden): the next push deletes only files it put there itself.
PUSH_MANIFEST_FILE = ".hf_finetune_push.json"
# `hf-finetune export`: the ONNX files' folder (Optimum's and transformers.js's layout on the Hub), and in it
ONNX_DIR = "onnx"
ONNX_MODEL_FILE = "model.onnx"
ONNX_QUANTIZED_FILE = "model_quantized.onnx"
ONNX_FIGURES_FILE = "export.json"  # labels, inputs, preprocessing and the verification figures, as plain JSON
# report_to tensorboard: Trainer's event files, in `runs/<date>_<host>/` (transformers' default_logdir()); kept out of
# a push unless --include names them (hub.py)
TENSORBOARD_DIR = "runs"
# Inside a checkpoint folder, written once every process has saved its part.
COMPLETE_MARKER = "hf_finetune_complete.json"


def confusion_matrix_files(prefix: str) -> tuple[str, str]:
    """The CSV and PNG of one evaluated split's confusion matrix (`prefix` as in metrics.json: eval, test)."""
    stem = f"confusion_matrix_{prefix}"
    return f"{stem}.csv", f"{stem}.png"


def reliability_diagram_file(prefix: str) -> str:
    """The reliability diagram (PNG) of one evaluated single-label split (`prefix` as in metrics.json: eval, test)."""
    return f"reliability_diagram_{prefix}.png"


def error_analysis_files(split: str) -> tuple[str, str, str]:
    """A single-label split's error analysis: the per-row JSON lines, the Markdown summary and the image grid of the
    highest-loss images (`split` as the data names it: validation, test). Row-level: never pushed unless asked."""
    return f"predictions_{split}.jsonl", f"errors_{split}.md", f"errors_{split}.png"


# Globs of the row-level files above: they hold the evaluated data's rows (texts, image paths, thumbnails).
ERROR_ANALYSIS_PATTERNS = ("predictions_*.jsonl", "errors_*.md", "errors_*.png")
# data.duplicates: every duplicate group the pre-flight found, naming the rows' files (row-level: never pushed
# unless asked, like the error analysis)
DUPLICATES_FILE = "duplicates.json"
ROW_LEVEL_PATTERNS = (*ERROR_ANALYSIS_PATTERNS, DUPLICATES_FILE)


# data.label_format → the transformers `config.problem_type` the model is built with (pipeline() reads it: softmax,
# sigmoid, or the raw output).
PROBLEM_TYPES = {
    "single": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
# Saved in a multi-label model's config.json: {label: threshold}, each label is predicted when sigmoid(logit) >= it.
LABEL_THRESHOLDS_KEY = "label_thresholds"
# Saved in a regression model's config.json when data.standardize_targets: {"mean", "std"} of train's targets. The
# head is refitted before saving so the model itself outputs the original units; this records what was undone.
TARGET_SCALER_KEY = "target_scaler"


def regression_plot_files(prefix: str) -> tuple[str, str]:
    """The predicted-vs-true scatter and the residual plot (PNG) of one evaluated split (`prefix`: eval, test)."""
    return f"regression_scatter_{prefix}.png", f"regression_residuals_{prefix}.png"


# Test-time augmentation's views (hf_finetune/tta.py): `metrics.tta`, `eval --tta`, `predict --tta`.
TTA_VIEWS = ("none", "flip", "crops")
