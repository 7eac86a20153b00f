"""Evaluation metrics for classifiers trained with the Hugging Face Trainer.

- `make_preprocess_logits(k)` shrinks logits to top-k class indices before Trainer gathers them.
- `ClassificationMetrics` is a `compute_metrics` callable, with or without Trainer's ``batch_eval_metrics``: it
  returns scalars for logging and keeps the full report (per-class rows, confusion matrix) of its last evaluation
  in `last_report`. It keeps each row's top-k class indices (int64), never the logits.
- `SingleLabelMetrics` (`make_single_label_metrics`) is what a single-label run evaluates with: those metrics and
  `hf_finetune.score_metrics.ScoreMetrics` (ROC/PR-AUC, log loss, Brier, ECE) on the same streamed logits.
- `per_class_table` and `write_confusion_matrix` turn that report into text, CSV and PNG.

The numbers come from the `classification_report` evaluate module shipped in `hf_finetune/metric_modules/`,
loaded by filesystem path, so no Hub access is needed. numpy, evaluate, torch and matplotlib are imported
inside functions: the CLI imports this module and must start fast.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import numbers
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_finetune.errors import MetricError
from hf_finetune.files import atomic_output
from hf_finetune.names import EVALUATED_PREFIXES, SPLIT_OF_PREFIX, confusion_matrix_files

if TYPE_CHECKING:
    import evaluate
    import numpy as np
    import torch
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

METRIC_MODULES_DIR: Path = Path(__file__).resolve().parent / "metric_modules"
CLASSIFICATION_REPORT_PATH: Path = METRIC_MODULES_DIR / "classification_report"

# Scalars that ClassificationMetrics returns for every call, in this order.
SCALAR_KEYS: tuple[str, ...] = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)

# Above this many classes the PNG drops per-cell counts (unreadable) and, further up, class-name ticks.
_MAX_ANNOTATED_CLASSES = 30
_MAX_NAMED_TICKS = 60
_MAX_TICK_LABEL_CHARS = 24


# ---------------------------------------------------------------------------------------------------------------------
# Loading evaluate modules
# ---------------------------------------------------------------------------------------------------------------------


def _offline_env() -> list[str]:
    truthy = {"1", "ON", "YES", "TRUE"}
    names = ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
    return [n for n in names if os.environ.get(n, "").upper() in truthy]


@contextlib.contextmanager
def _evaluate_follows_hub_offline() -> Iterator[None]:
    """Make evaluate honour HF_HUB_OFFLINE for the duration of a load.

    evaluate 0.4.6 reads only its own HF_EVALUATE_OFFLINE: with just HF_HUB_OFFLINE=1 it still tries the Hub
    (and a download-count ping) for a metric name, which stalls on firewalled machines.
    """
    import evaluate.config
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not evaluate.config.HF_EVALUATE_OFFLINE:
        evaluate.config.HF_EVALUATE_OFFLINE = True
        try:
            yield
        finally:
            evaluate.config.HF_EVALUATE_OFFLINE = False
    else:
        yield


def _load_module(path_or_name: str) -> evaluate.EvaluationModule:
    import evaluate

    # keep_in_memory: otherwise every DDP rank writes the same default-experiment cache file under
    # ~/.cache/huggingface/evaluate and they collide; each rank already holds the gathered predictions.
    with _evaluate_follows_hub_offline():
        return evaluate.load(path_or_name, keep_in_memory=True)


@functools.cache
def load_classification_report() -> evaluate.EvaluationModule:
    """Load the shipped `classification_report` evaluate module (once per process).

    Loading by absolute path never contacts the Hub, with or without the offline env vars.
    evaluate copies the script into ``$HF_MODULES_CACHE`` (default ``~/.cache/huggingface/modules``) and imports
    it from there, so that folder must be writable.
    """
    script = CLASSIFICATION_REPORT_PATH / "classification_report.py"
    if not script.is_file():
        raise MetricError(f"{script} is missing: the hf_finetune install is incomplete; reinstall the package.")
    try:
        return _load_module(str(CLASSIFICATION_REPORT_PATH))
    except OSError as err:
        raise MetricError(
            f"Could not load the classification_report metric from {CLASSIFICATION_REPORT_PATH}: {err}. "
            "evaluate copies metric scripts into $HF_MODULES_CACHE (default ~/.cache/huggingface/modules); "
            "point HF_MODULES_CACHE (or HF_HOME) at a writable folder."
        ) from err


def _load_extra(name: str) -> evaluate.EvaluationModule:
    path = Path(name).expanduser()
    # An absolute path keeps evaluate from falling back to a Hub lookup when the folder lacks its script.
    target = str(path.resolve()) if path.exists() else name
    try:
        return _load_module(target)
    except Exception as err:
        if path.exists():
            raise MetricError(
                f"Could not load extra metric {name!r} from the local folder {target}: {type(err).__name__}: {err}\n"
                "A local metric is a folder holding <folder name>.py that defines an evaluate.Metric subclass."
            ) from err
        offline = _offline_env()
        mode = (
            f"offline mode is on ({', '.join(offline)}), so nothing was downloaded"
            if offline
            else "no offline env var is set, so the Hub was tried"
        )
        raise MetricError(
            f"Could not load extra metric {name!r}: {type(err).__name__}: {err}\n"
            f"Metrics named by Hub id (e.g. 'accuracy', 'f1', 'evaluate-metric/matthews_correlation') need network "
            f"access the first time they are loaded; {mode}. Either go online once so evaluate caches it, or pass "
            f"the path of a local metric folder (a folder holding <name>.py with an evaluate.Metric subclass)."
        ) from err


def _metric_name(name: str, module: Any) -> str:
    module_name = getattr(module, "name", None)
    if isinstance(module_name, str) and module_name:
        return module_name
    return Path(name.rstrip("/\\")).stem or name


# ---------------------------------------------------------------------------------------------------------------------
# Trainer hooks
# ---------------------------------------------------------------------------------------------------------------------


class _TopKIndices:
    """Picklable `preprocess_logits_for_metrics` hook; see `make_preprocess_logits`."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.ndim != 2:
            raise ValueError(f"expected logits of shape [batch, num_classes], got {tuple(logits.shape)}")
        k = min(self.k, logits.shape[-1])
        return logits.topk(k, dim=-1, largest=True, sorted=True).indices

    def __repr__(self) -> str:
        return f"make_preprocess_logits(k={self.k})"


def make_preprocess_logits(k: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return a `Trainer(preprocess_logits_for_metrics=...)` hook mapping logits [N, C] to top-k indices [N, min(k, C)].

    Column 0 is the predicted class (the argmax). Trainer keeps and gathers what this returns, so evaluation memory
    grows with N×k instead of N×C. A tuple model output is reduced to its first element (the logits).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return _TopKIndices(int(k))


def first_output(value: Any) -> Any:
    # Models with several outputs hand Trainer a tuple of arrays; the classification logits/labels come first.
    if isinstance(value, tuple) and value and hasattr(value[0], "shape"):
        return value[0]
    return value


def _prediction_matrix(predictions: Any, need_columns: int) -> np.ndarray:
    """Class indices [N, k], column 0 the prediction, from indices [N], indices [N, k] or float logits [N, C]."""
    import numpy as np

    preds = np.asarray(first_output(predictions))
    if np.issubdtype(preds.dtype, np.floating):
        if preds.ndim == 2:
            # Raw logits (no preprocess_logits hook): rank them here. Stable sort on -logits breaks ties
            # towards the lower index, as argmax does.
            order = np.argsort(-preds, axis=-1, kind="stable")
            return order[:, : max(1, min(need_columns, preds.shape[1]))].astype(np.int64)
        if preds.ndim == 1 and np.all(np.isfinite(preds)) and np.all(preds == np.round(preds)):
            preds = preds.astype(np.int64)
        else:
            raise MetricError(f"cannot read predictions of shape {preds.shape} and dtype {preds.dtype} as classes")
    if not np.issubdtype(preds.dtype, np.integer):
        raise MetricError(f"predictions must be class indices or logits, got dtype {preds.dtype}")
    if preds.ndim == 1:
        return preds.astype(np.int64).reshape(-1, 1)
    if preds.ndim == 2 and preds.shape[1] >= 1:
        return preds.astype(np.int64)
    raise MetricError(f"predictions must have shape [N] or [N, k], got {preds.shape}")


def _label_vector(label_ids: Any) -> np.ndarray:
    import numpy as np

    labels = np.asarray(first_output(label_ids))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise MetricError(f"labels must have shape [N], got {labels.shape} (multi-label is not supported here)")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(labels == np.round(labels)):
            raise MetricError("labels must be integer class indices, got non-integer floats")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise MetricError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _as_float(value: Any) -> float | None:
    """A python float for a scalar metric value, None for anything else (lists, arrays, strings)."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        return float(value)
    return None


class ClassificationMetrics:
    """`compute_metrics` for `transformers.Trainer` on single-label classification.

    Returns python floats only: accuracy, precision/recall/f1 (macro and weighted), ``top{k}_accuracy`` for each
    k > 1 in `top_k`, and the scalar results of the `extra` evaluate metrics. The full report of the last call
    (per-class rows, confusion matrix, top-k, sample counts, extra results) is kept in `last_report`.

    Predictions may be class indices [N], top-k indices [N, k] from `make_preprocess_logits` (needs k >= max(top_k)),
    or raw float logits [N, C]. Rows whose label is negative (e.g. -100 padding) are dropped and counted.

    Called as ``metrics(eval_pred, compute_result=False)`` it only accumulates (Trainer's ``batch_eval_metrics``);
    with ``compute_result=True`` (the default, hence also a plain whole-array call) it accumulates, returns the
    scalars and starts over. Batched or whole, the numbers are the same: the report is computed once, on every
    accumulated row. Memory: ``8 · (max_k + 1)`` bytes per evaluated row.
    """

    def __init__(self, label_names: list[str], top_k: Sequence[int] = (), extra: Sequence[str] = ()) -> None:
        self.label_names = [str(name) for name in label_names]
        if not self.label_names:
            raise ValueError("label_names must name at least one class")
        for k in top_k:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"top_k values must be positive integers, got {k!r}")
        # k == 1 is plain accuracy, already reported.
        self.top_k: tuple[int, ...] = tuple(sorted({int(k) for k in top_k if k > 1}))
        if isinstance(extra, str):
            extra = [extra]
        self.extra: tuple[str, ...] = tuple(extra)
        self.last_report: dict[str, Any] | None = None
        self._extra_modules: list[tuple[str, str, Any]] | None = None
        # keys another metric reports beside these (SingleLabelMetrics' score keys): an extra metric's key is
        # renamed off them as off this class's own
        self.reserved_keys: frozenset[str] = frozenset()
        self.reset()

    @property
    def max_k(self) -> int:
        """How many top labels each prediction must carry: `make_preprocess_logits(max_k)` keeps just those."""
        return max([1, *self.top_k])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def load(self) -> None:
        """Load every metric module now (otherwise done on the first call); raises `MetricError` on failure.

        Call it before training so a bad `extra` name fails at start-up rather than at the first evaluation.
        """
        load_classification_report()
        if self._extra_modules is None:
            modules = []
            for name in self.extra:
                module = _load_extra(name)
                modules.append((name, _metric_name(name, module), module))
            self._extra_modules = modules

    def reset(self) -> None:
        """Forget the batches accumulated for the evaluation in progress."""
        self._batches: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, predictions: Any, label_ids: Any) -> None:
        """Add one batch (Trainer's ``batch_eval_metrics``): predictions as `__call__` takes them, labels [n].

        Only each row's top ``max_k`` class indices and its label are kept (int64), so an evaluation holds
        ``8 · (max_k + 1)`` bytes per row, never the logits."""
        from hf_finetune.multilabel_metrics import to_numpy

        labels = _label_vector(to_numpy(label_ids))
        preds = _prediction_matrix(to_numpy(predictions), max(self.top_k, default=1))
        if preds.shape[0] != labels.shape[0]:
            raise MetricError(f"got {preds.shape[0]} predictions but {labels.shape[0]} labels")
        self._batches.append((preds, labels))

    def compute(self) -> dict[str, float]:
        """The scalars of every batch added since the last `reset` (sets `last_report`; does not reset)."""
        import numpy as np

        if not self._batches:
            return self._score(np.zeros((0, 1), dtype=np.int64), np.zeros(0, dtype=np.int64))
        width = min(p.shape[1] for p, _ in self._batches)
        preds = np.concatenate([p[:, :width] for p, _ in self._batches])
        return self._score(preds, np.concatenate([y for _, y in self._batches]))

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        """Trainer's compute_metrics, with or without ``batch_eval_metrics``: ``compute_result=False`` only adds
        the batch; True (a plain whole-array call too) adds it, returns the scalars and starts over."""
        self.load()
        try:
            self.update(eval_pred.predictions, eval_pred.label_ids)
        except Exception:
            self.reset()  # a failed evaluation must not leak its batches into the next one
            raise
        if not compute_result:
            return {}
        try:
            return self.compute()
        finally:
            self.reset()

    def _score(self, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        keep = labels >= 0
        num_ignored = int((~keep).sum())
        labels, preds = labels[keep], preds[keep]
        if labels.size and labels.max() >= self.num_labels:
            raise MetricError(
                f"labels hold class index {int(labels.max())} but only {self.num_labels} label names were given"
            )
        if labels.size == 0:
            logger.warning("No labelled samples to evaluate (%d rows with a negative label were dropped).", num_ignored)

        top1 = preds[:, 0]
        try:
            report: dict[str, Any] = dict(
                load_classification_report().compute(
                    predictions=top1, references=labels, num_labels=self.num_labels, label_names=self.label_names
                )
            )
        except ValueError as err:
            raise MetricError(f"classification_report failed: {err}") from err

        scalars = {key: float(report[key]) for key in SCALAR_KEYS}
        for k in self.top_k:
            scalars[f"top{k}_accuracy"] = self._top_k_accuracy(preds, labels, k)

        extra_results = self._add_extra_results(top1, labels, scalars)

        report.update({f"top{k}_accuracy": scalars[f"top{k}_accuracy"] for k in self.top_k})
        report["num_samples"] = int(labels.size)
        report["num_ignored"] = num_ignored
        report["label_names"] = list(self.label_names)
        report["extra"] = extra_results
        self.last_report = report
        return scalars

    def _add_extra_results(
        self, top1: np.ndarray, labels: np.ndarray, scalars: dict[str, float]
    ) -> dict[str, dict[str, Any]]:
        """Run the `extra` metrics; their scalar results join `scalars` (renamed where a key is taken already)."""
        extra_results: dict[str, dict[str, Any]] = {}
        for name, metric_name, module in self._extra_modules or []:
            try:
                result = module.compute(predictions=top1, references=labels)
            except Exception as err:
                raise MetricError(
                    f"extra metric {name!r} failed: {type(err).__name__}: {err}\n"
                    "Extra metrics get only `predictions` and `references` (class indices); metrics that need "
                    "other arguments (e.g. the Hub 'f1' needs average= for more than two classes) must be wrapped "
                    "in a local metric module."
                ) from err
            extra_results[metric_name] = dict(result or {})
            for key, value in (result or {}).items():
                number = _as_float(value)
                if number is None:
                    continue
                taken = scalars.keys() | self.reserved_keys
                out_key = key if key not in taken else f"{metric_name}_{key}"
                suffix = 2
                while out_key in taken:
                    out_key = f"{metric_name}_{key}_{suffix}"
                    suffix += 1
                scalars[out_key] = number
        return extra_results

    def _top_k_accuracy(self, preds: np.ndarray, labels: np.ndarray, k: int) -> float:
        if labels.size == 0:
            return 0.0
        if k >= self.num_labels:
            # Every class is within the top k.
            return 1.0
        if preds.shape[1] < k:
            raise MetricError(
                f"top{k}_accuracy needs the top {k} class indices per sample but predictions have "
                f"{preds.shape[1]} column(s); pass preprocess_logits_for_metrics=make_preprocess_logits({k}) "
                f"(or larger) to the Trainer"
            )
        hits = (preds[:, :k] == labels[:, None]).any(axis=1)
        return float(hits.mean())


class SingleLabelMetrics:
    """The single-label run's `compute_metrics`: `ClassificationMetrics` and `ScoreMetrics` fed the same logits.

    Takes float logits [N, C] (a model's output) and class indices [N] (-100 rows dropped), batch by batch under
    Trainer's ``batch_eval_metrics`` (each batch gathered across processes, so several processes give the numbers
    of one) or all at once without it. Returns the classification scalars (`SCALAR_KEYS`, top-k, extras) followed
    by the score scalars (`hf_finetune.score_metrics.SCALAR_KEYS`, plus ``roc_auc``/``pr_auc`` for two classes);
    an extra metric's key that clashes with a score key is renamed as for any clash. `last_report` is the
    classification report with the score report under ``"scores"``.

    Memory: the classification side keeps each row's top ``max_k`` class indices and label (``8 · (max_k + 1)``
    bytes a row, what Trainer used to gather); the score side keeps a fixed number of counters (`ScoreMetrics`).
    No logits outlive their batch, except that Trainer itself keeps them all when ``batch_eval_metrics`` is false.
    """

    def __init__(self, classification: ClassificationMetrics, scores: Any) -> None:
        self.classification = classification
        self.scores = scores
        classification.reserved_keys = frozenset(scores.keys)
        self.last_report: dict[str, Any] | None = None

    @property
    def label_names(self) -> list[str]:
        return self.classification.label_names

    @property
    def max_k(self) -> int:
        return self.classification.max_k

    @property
    def score_report(self) -> dict[str, Any] | None:
        """The score report (calibration table included) of the last evaluation."""
        return None if self.last_report is None else self.last_report.get("scores")

    def load(self) -> None:
        """See `ClassificationMetrics.load`."""
        self.classification.load()

    def reset(self) -> None:
        self.classification.reset()
        self.scores.reset()

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        """Trainer's compute_metrics with or without ``batch_eval_metrics`` (see `ClassificationMetrics.__call__`)."""
        import numpy as np

        from hf_finetune.multilabel_metrics import to_numpy

        self.load()
        try:
            logits = to_numpy(eval_pred.predictions)
            if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
                raise MetricError(
                    f"single-label score metrics need the model's float logits [N, num_classes], got shape "
                    f"{logits.shape} and dtype {logits.dtype}; do not reduce them with preprocess_logits_for_metrics"
                )
            labels = to_numpy(eval_pred.label_ids)
            self.classification.update(logits, labels)
            self.scores.update(logits, labels)
        except Exception:
            self.reset()  # a failed evaluation must not leak its batches into the next one
            raise
        if not compute_result:
            return {}
        try:
            scalars = self.classification.compute()
            score_scalars = self.scores.compute()
        finally:
            self.reset()
        report = dict(self.classification.last_report or {})
        report["scores"] = self.scores.last_report
        self.last_report = report
        return {**scalars, **score_scalars}


def make_single_label_metrics(
    label_names: list[str], top_k: Sequence[int] = (), extra: Sequence[str] = ()
) -> SingleLabelMetrics:
    """`SingleLabelMetrics` for `label_names` (at least two: score metrics need a negative class)."""
    from hf_finetune.score_metrics import ScoreMetrics

    classification = ClassificationMetrics(label_names, top_k=top_k, extra=extra)
    return SingleLabelMetrics(classification, ScoreMetrics(len(label_names), label_names=label_names))


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------


def per_class_table(report: Mapping[str, Any]) -> str:
    """A plain-text aligned table of the report's per-class rows (label, precision, recall, f1, support).

    Macro and weighted averages and accuracy follow the class rows when the report has them.
    """
    rows = list(report.get("per_class") or [])
    total = sum(int(row["support"]) for row in rows)
    summary: list[list[str]] = []
    if "accuracy" in report:
        summary.append(["accuracy", "", "", f"{float(report['accuracy']):.4f}", str(total)])
    for avg in ("macro", "weighted"):
        keys = [f"{metric}_{avg}" for metric in ("precision", "recall", "f1")]
        if all(key in report for key in keys):
            values = [f"{float(report[key]):.4f}" for key in keys]
            summary.append([f"{avg} avg", *values, str(total)])

    body = [
        [str(row["label"]), f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"])]
        for row in rows
    ]
    header = ["label", "precision", "recall", "f1", "support"]
    widths = [max(len(cells[i]) for cells in [header, *body, *summary]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [line(header), line(["-" * w for w in widths])]
    lines.extend(line(cells) for cells in body)
    if summary:
        lines.append("")
        lines.extend(line(cells) for cells in summary)
    return "\n".join(lines) + "\n"


def _short(label: str) -> str:
    return label if len(label) <= _MAX_TICK_LABEL_CHARS else label[: _MAX_TICK_LABEL_CHARS - 1] + "…"


def write_confusion_matrix(
    matrix: list[list[int]], label_names: list[str], csv_path: Path, png_path: Path, title: str = ""
) -> None:
    """Write a confusion matrix (rows = true label, columns = predicted) as CSV and as an annotated PNG.

    The CSV header is ``true\\pred,<labels…>``, then one row per true label. Both files are written atomically.
    """
    n = len(label_names)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"confusion matrix must be {n}x{n} to match label_names")
    counts = [[int(v) for v in row] for row in matrix]
    labels = [str(name) for name in label_names]

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\pred", *labels])
    for label, row in zip(labels, counts, strict=True):
        writer.writerow([label, *row])
    with atomic_output(Path(csv_path)) as handle:
        handle.write(buffer.getvalue())

    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    side = min(max(5.0, 0.35 * n + 3.0), 24.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = max(1, max((max(row) for row in counts), default=0))
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)

    # Size text to the cell (about 80% of the figure side is the matrix): big enough to read, small enough
    # that a 4-digit count still fits its cell.
    cell_points = 72.0 * 0.8 * side / max(n, 1)
    font = max(5.0, min(10.0, 0.3 * cell_points))
    if n <= _MAX_NAMED_TICKS:
        ticks = list(range(n))
        short = [_short(label) for label in labels]
        ax.set_xticks(ticks, short, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=font)
        ax.set_yticks(ticks, short, fontsize=font)
    if n <= _MAX_ANNOTATED_CLASSES:
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                color = "white" if value > vmax / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=font)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title)

    with atomic_output(Path(png_path), "wb") as handle:
        fig.savefig(handle, format="png")


def write_confusion_matrices(
    path: Path, results: Mapping[str, Any], label_names: list[str], model_name: str
) -> list[str]:
    """Each evaluated split's confusion matrix as CSV and PNG in the folder `path`; returns the files' names."""
    files: list[str] = []
    for prefix in EVALUATED_PREFIXES:
        split = results.get(prefix)
        if not isinstance(split, dict) or "confusion_matrix" not in split:
            continue
        csv_name, png_name = confusion_matrix_files(prefix)
        title = f"{model_name} — {SPLIT_OF_PREFIX[prefix]} split"
        write_confusion_matrix(split["confusion_matrix"], label_names, path / csv_name, path / png_name, title=title)
        files += [csv_name, png_name]
    return files


def majority_baseline(train_labels: Sequence[int], labels: Sequence[int], label_names: Sequence[str]) -> dict[str, Any]:
    """What always answering train's most frequent class scores on `labels`: the bar a model has to clear."""
    from collections import Counter

    counts = Counter(int(v) for v in train_labels)
    # most frequent; ties go to the lower class id so the baseline is deterministic
    majority = min(counts, key=lambda c: (-counts[c], c))
    report = load_classification_report().compute(
        predictions=[majority] * len(labels), references=[int(v) for v in labels], num_labels=len(label_names)
    )
    return {
        "majority_class": label_names[majority],
        "accuracy": float(report["accuracy"]),
        "f1_macro": float(report["f1_macro"]),
    }
