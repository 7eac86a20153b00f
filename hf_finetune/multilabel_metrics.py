"""Streaming metrics for multi-label classification, and per-label decision thresholds.

- `MultiLabelMetrics` is a `compute_metrics` callable for `transformers.Trainer`, with or without
  ``batch_eval_metrics``: it accumulates batches of (logits [N, L], multi-hot labels [N, L]) and returns
  `SCALAR_KEYS` when asked for the result, keeping per-label rows in `last_report`.
- `tune_thresholds` picks each label's F1-best threshold from the score histograms of a validation pass;
  `apply_thresholds` turns logits into label decisions with the same sigmoid and the same ``p >= t`` rule.

Memory does not grow with the number of samples. With L labels and B histogram bins the state is
``2·L·B + 8·L + 3`` int64 counters, i.e. about ``16·L·B`` bytes (1.6 MB for L = 100, B = 1000); one batch of
N rows needs O(N·L) more while it is processed. Every counter is an integer, so the result does not depend on
how the samples are split into batches, in what order they come, or how accumulators are merged.

Conventions (those of scikit-learn with ``zero_division=0``): a ratio with a zero denominator is 0; macro
averages run over every label, weighted ones weigh labels by support; a sample with no true and no predicted
label scores 0 in the samples averages. A label is predicted when ``sigmoid(logit) >= threshold``.

`map` is the mean, over labels with at least one positive, of the average precision computed from the
histograms, i.e. the exact average precision of the scores rounded down to the bin grid ``k / B``. It equals
scikit-learn's `average_precision_score` when no two different scores share a bin (in particular for scores
on the grid), and in general differs from it by at most ``map_error_bound`` in `last_report`: the mean over
those labels of a per-label bound computed from the histograms (see `MultiLabelMetrics.average_precision`):
only positives sharing a bin with other samples can see their precision change, and by no more than the
spread of precisions that bin allows.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hf_finetune.errors import MetricError, RecipeError, listed
from hf_finetune.metrics import first_output

if TYPE_CHECKING:
    import numpy as np
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

DEFAULT_BINS = 1000
DEFAULT_THRESHOLD = 0.5
THRESHOLDS_KEY = "metrics.thresholds"
TUNE = "tune"

# What MultiLabelMetrics returns (and metrics.json holds) for every evaluation, in this order.
SCALAR_KEYS: tuple[str, ...] = (
    "f1_micro",
    "f1_macro",
    "f1_weighted",
    "f1_samples",
    "precision_micro",
    "precision_macro",
    "precision_weighted",
    "precision_samples",
    "recall_micro",
    "recall_macro",
    "recall_weighted",
    "recall_samples",
    "map",
    "subset_accuracy",
    "hamming_loss",
)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a (CUDA, bfloat16…) torch tensor, or a tuple whose first item is one."""
    import numpy as np

    value = first_output(value)
    if hasattr(value, "detach"):
        tensor = value.detach()
        if tensor.is_floating_point():
            # bfloat16/float16 have no numpy twin (bfloat16) or lose precision needlessly later on
            tensor = tensor.double()
        return tensor.cpu().numpy()
    return np.asarray(value)


def probabilities(logits: Any) -> np.ndarray:
    """sigmoid(logits) in float64: the scores every threshold applies to, in evaluation and in prediction."""
    import numpy as np
    from scipy.special import expit

    array = to_numpy(logits)
    if not np.issubdtype(array.dtype, np.number):
        raise MetricError(f"logits must be numbers, got dtype {array.dtype}")
    return expit(array.astype("float64"))


def apply_thresholds(logits: Any, thresholds: float | Sequence[float]) -> np.ndarray:
    """Label decisions [N, L] (bool): ``sigmoid(logits) >= threshold`` per label, exactly as the metrics count them."""
    probs = probabilities(logits)
    if probs.ndim != 2:
        raise MetricError(f"logits must have shape [N, num_labels], got {probs.shape}")
    return probs >= _threshold_vector(thresholds, probs.shape[1])[None, :]


def parse_threshold_setting(value: Any, key: str = THRESHOLDS_KEY) -> str | float:
    """`metrics.thresholds` as given in a recipe: ``"tune"`` or one threshold in (0, 1) for every label."""
    if isinstance(value, str) and value.strip().lower() == TUNE:
        return TUNE
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 < float(value) < 1.0:
        return float(value)
    raise RecipeError(
        [
            f"{key} is {value!r}; expected 'tune' (pick each label's F1-best threshold on the validation split) or a "
            f"number strictly between 0 and 1 used for every label, e.g. {DEFAULT_THRESHOLD}"
        ]
    )


def _threshold_vector(thresholds: float | Sequence[float], num_labels: int) -> np.ndarray:
    import numpy as np

    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        vector = np.full(num_labels, float(thresholds))
    else:
        vector = np.asarray(thresholds, dtype="float64").reshape(-1)
        if vector.shape[0] != num_labels:
            raise MetricError(f"got {vector.shape[0]} thresholds for {num_labels} labels; give one per label")
    bad = ~((vector >= 0.0) & (vector <= 1.0))
    if bad.any():
        raise MetricError(
            f"thresholds must lie in [0, 1], got {vector[bad].tolist()} (label indices {np.flatnonzero(bad).tolist()})"
        )
    return vector


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    import numpy as np

    num = np.asarray(numerator, dtype="float64")
    den = np.asarray(denominator, dtype="float64")
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


class BatchedMetrics:
    """Trainer's `compute_metrics` protocol for accumulating metrics: with `batch_eval_metrics` it is called once per
    batch (predictions already gathered across processes) and `compute_result=True` on the last; called once with
    everything, it gives the same numbers. Subclasses define update / compute / reset."""

    def update(self, predictions: Any, labels: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def __call__(self, eval_pred: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        try:
            self.update(eval_pred.predictions, eval_pred.label_ids)
        except Exception:
            # a failed evaluation must not leak its batches into the next one
            self.reset()
            raise
        if not compute_result:
            return {}
        try:
            return self.compute()
        finally:
            self.reset()


class MultiLabelMetrics(BatchedMetrics):
    """`compute_metrics` for `transformers.Trainer` on multi-label classification; see the module docstring.

    `thresholds` is one threshold for every label or one per label (e.g. from `tune_thresholds`). `inputs` says
    whether predictions are logits (the model's output; sigmoid is applied) or probabilities in [0, 1].
    Rows whose labels are all negative (-100 padding) are dropped and counted in ``num_ignored``.

    Called as ``metrics(eval_pred, compute_result=False)`` it only accumulates (Trainer's ``batch_eval_metrics``);
    with ``compute_result=True`` (the default, hence also a plain whole-array call) it accumulates, returns the
    scalars, stores `last_report`, and starts over for the next evaluation.
    """

    def __init__(
        self,
        label_names: Sequence[str],
        thresholds: float | Sequence[float] = DEFAULT_THRESHOLD,
        bins: int = DEFAULT_BINS,
        inputs: str = "logits",
    ) -> None:
        import numpy as np

        self.label_names = [str(name) for name in label_names]
        if not self.label_names:
            raise ValueError("label_names must name at least one label")
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        if inputs not in ("logits", "probabilities"):
            raise ValueError(f"inputs must be 'logits' or 'probabilities', got {inputs!r}")
        self.bins = int(bins)
        self.inputs = inputs
        self.thresholds = _threshold_vector(thresholds, self.num_labels)
        # bin b holds scores in [edges[b], edges[b+1]) (the last one also 1.0), so a sample is in a bin >= k exactly
        # when its score is >= edges[k]: the histograms count what threshold edges[k] would decide.
        self.edges = np.arange(self.bins + 1, dtype="float64") / self.bins
        self.last_report: dict[str, Any] | None = None
        # (positive, negative) histograms of the last computed evaluation, for `tune_thresholds` after Trainer's
        # evaluate() has reset the running state
        self.last_histograms: tuple[np.ndarray, np.ndarray] | None = None
        self.reset()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def set_thresholds(self, thresholds: float | Sequence[float]) -> None:
        """Use these thresholds from the next sample on (e.g. `ThresholdChoice.thresholds` for the test split)."""
        if self.num_samples:
            raise MetricError("thresholds can only change between evaluations: reset() first")
        self.thresholds = _threshold_vector(thresholds, self.num_labels)

    def reset(self) -> None:
        """Forget every sample seen (the thresholds stay)."""
        import numpy as np

        labels, bins = self.num_labels, self.bins
        self.positive_histogram = np.zeros((labels, bins), dtype=np.int64)
        self.negative_histogram = np.zeros((labels, bins), dtype=np.int64)
        self._tp = np.zeros(labels, dtype=np.int64)
        self._fp = np.zeros(labels, dtype=np.int64)
        self._fn = np.zeros(labels, dtype=np.int64)
        self._tn = np.zeros(labels, dtype=np.int64)
        # Per-sample ratios summed exactly: Σ numerators grouped by their integer denominator.
        self._f1_numerators = np.zeros(2 * labels + 1, dtype=np.int64)  # Σ 2·tp over samples with |y|+|ŷ| = d
        self._precision_numerators = np.zeros(labels + 1, dtype=np.int64)  # Σ tp over samples with |ŷ| = d
        self._recall_numerators = np.zeros(labels + 1, dtype=np.int64)  # Σ tp over samples with |y| = d
        self.num_samples = 0
        self.num_ignored = 0
        self._exact_matches = 0

    # ----------------------------------------------------------------------------------------------- accumulating

    def _read_batch(self, predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        raw = to_numpy(predictions)
        if raw.ndim != 2 or raw.shape[1] != self.num_labels:
            raise MetricError(
                f"multi-label predictions must have shape [N, {self.num_labels}] (one score per label), got {raw.shape}"
            )
        truth = to_numpy(labels)
        if truth.shape != raw.shape:
            raise MetricError(f"labels have shape {truth.shape} but predictions have shape {raw.shape}")
        if not (np.issubdtype(truth.dtype, np.number) or truth.dtype == bool):
            raise MetricError(f"labels must be a multi-hot matrix of 0/1, got dtype {truth.dtype}")
        padding = (truth < 0).all(axis=1)
        if padding.any():
            raw, truth = raw[~padding], truth[~padding]
        bad = ~((truth == 0) | (truth == 1))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise MetricError(
                f"multi-label labels must be 0 or 1, got {truth[row, col].item()!r} at row {row}, label "
                f"{self.label_names[col]!r} ({int(bad.sum())} bad value(s)); a row of -100 marks padding"
            )
        if self.inputs == "logits":
            probs = probabilities(raw)
        else:
            probs = raw.astype("float64")
            outside = ~((probs >= 0.0) & (probs <= 1.0))
            if outside.any():
                raise MetricError(
                    f"probabilities must lie in [0, 1], got {probs[outside][0].item()!r} "
                    f"({int(outside.sum())} value(s)); pass inputs='logits' for raw model outputs"
                )
        if not np.isfinite(probs).all():
            raise MetricError(f"{int((~np.isfinite(probs)).sum())} prediction(s) are NaN")
        self.num_ignored += int(padding.sum())
        return probs, truth.astype(bool)

    def update(self, predictions: Any, labels: Any) -> None:
        """Add one batch: predictions [N, L] (logits or probabilities, as `inputs` says) and 0/1 labels [N, L]."""
        import numpy as np

        probs, truth = self._read_batch(predictions, labels)
        labels_count, bins = self.num_labels, self.bins
        bin_index = np.clip(np.searchsorted(self.edges, probs, side="right") - 1, 0, bins - 1)
        flat = bin_index + (np.arange(labels_count) * bins)[None, :]
        size = labels_count * bins
        self.positive_histogram += np.bincount(flat[truth], minlength=size).reshape(labels_count, bins)
        self.negative_histogram += np.bincount(flat[~truth], minlength=size).reshape(labels_count, bins)

        predicted = probs >= self.thresholds[None, :]
        hits = predicted & truth
        self._tp += hits.sum(axis=0)
        self._fp += (predicted & ~truth).sum(axis=0)
        self._fn += (~predicted & truth).sum(axis=0)
        self._tn += (~predicted & ~truth).sum(axis=0)

        sample_tp = hits.sum(axis=1)
        sample_pred = predicted.sum(axis=1)
        sample_true = truth.sum(axis=1)
        self._f1_numerators += np.bincount(
            sample_true + sample_pred, weights=2 * sample_tp, minlength=2 * labels_count + 1
        ).astype(np.int64)
        self._precision_numerators += np.bincount(sample_pred, weights=sample_tp, minlength=labels_count + 1).astype(
            np.int64
        )
        self._recall_numerators += np.bincount(sample_true, weights=sample_tp, minlength=labels_count + 1).astype(
            np.int64
        )
        self._exact_matches += int((predicted == truth).all(axis=1).sum())
        self.num_samples += int(probs.shape[0])

    def merge(self, other: MultiLabelMetrics) -> MultiLabelMetrics:
        """Add `other`'s samples to this accumulator (in place; returns self): the same as having seen both."""
        import numpy as np

        if not isinstance(other, MultiLabelMetrics):
            raise TypeError(f"can only merge another MultiLabelMetrics, got {type(other).__name__}")
        if (
            other.label_names != self.label_names
            or other.bins != self.bins
            or not np.array_equal(other.thresholds, self.thresholds)
        ):
            raise MetricError("cannot merge multi-label metrics with different labels, bins or thresholds")
        for name in (
            "positive_histogram",
            "negative_histogram",
            "_tp",
            "_fp",
            "_fn",
            "_tn",
            "_f1_numerators",
            "_precision_numerators",
            "_recall_numerators",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.num_samples += other.num_samples
        self.num_ignored += other.num_ignored
        self._exact_matches += other._exact_matches
        return self

    # ----------------------------------------------------------------------------------------------- results

    def average_precision(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-label average precision from the histograms, and a bound on its distance to the exact one.

        In a bin with a positives and b negatives, below c positives and d negatives of higher bins, the exact
        precision of each of its positives lies in [(c+1)/(c+d+b+1), (c+a)/(c+d+a)], and so does the binned one,
        (c+a)/(c+d+a+b); the bound sums a·(that width) over bins, over the label's positives (0 for bins of one
        sample). Labels without positives get NaN in both.
        """
        from .score_metrics import average_precision  # one implementation for both streaming metrics

        return average_precision(self.positive_histogram, self.negative_histogram)

    def compute(self) -> dict[str, float]:
        """The scalars (`SCALAR_KEYS`) of every sample seen so far; also sets `last_report`. Does not reset."""
        n = self.num_samples
        if n == 0:
            logger.warning("No labelled samples to evaluate (%d padding rows were dropped).", self.num_ignored)
        tp, fp, fn = (self._tp.astype("float64"), self._fp.astype("float64"), self._fn.astype("float64"))
        support = self._tp + self._fn
        precision = _divide(tp, tp + fp)
        recall = _divide(tp, tp + fn)
        f1 = _divide(2 * tp, 2 * tp + fp + fn)
        total_support = int(support.sum())
        ap, ap_bound = self.average_precision()
        with_positives = support > 0

        scalars: dict[str, float] = {}
        per_sample = {
            "f1": self._f1_numerators,
            "precision": self._precision_numerators,
            "recall": self._recall_numerators,
        }
        sum_tp, sum_fp, sum_fn = int(self._tp.sum()), int(self._fp.sum()), int(self._fn.sum())
        micro = {
            "f1": _ratio(2 * sum_tp, 2 * sum_tp + sum_fp + sum_fn),
            "precision": _ratio(sum_tp, sum_tp + sum_fp),
            "recall": _ratio(sum_tp, sum_tp + sum_fn),
        }
        for name, values in (("f1", f1), ("precision", precision), ("recall", recall)):
            scalars[f"{name}_micro"] = micro[name]
            scalars[f"{name}_macro"] = float(values.mean())
            scalars[f"{name}_weighted"] = _ratio(float((values * support).sum()), total_support)
            numerators = per_sample[name]
            # fixed order over integer state: the same number however the samples were batched
            total = math.fsum(int(numerators[d]) / d for d in range(1, numerators.shape[0]))
            scalars[f"{name}_samples"] = _ratio(total, n)
        scalars["map"] = float(ap[with_positives].mean()) if with_positives.any() else 0.0
        scalars["subset_accuracy"] = _ratio(self._exact_matches, n)
        scalars["hamming_loss"] = _ratio(sum_fp + sum_fn, n * self.num_labels)
        scalars = {key: scalars[key] for key in SCALAR_KEYS}

        rows = [
            {
                "label": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "threshold": float(self.thresholds[i]),
                "average_precision": None if math.isnan(ap[i]) else float(ap[i]),
            }
            for i, name in enumerate(self.label_names)
        ]
        without_positives = [name for name, has in zip(self.label_names, with_positives, strict=True) if not has]
        self.last_report = {
            **scalars,
            "per_class": rows,
            "num_samples": n,
            "num_ignored": self.num_ignored,
            "label_names": list(self.label_names),
            "thresholds": [float(t) for t in self.thresholds],
            "labels_without_positives": without_positives,
            "map_labels": int(with_positives.sum()),
            "map_error_bound": float(ap_bound[with_positives].mean()) if with_positives.any() else 0.0,
            "bins": self.bins,
        }
        self.last_histograms = (self.positive_histogram.copy(), self.negative_histogram.copy())
        return scalars


# ---------------------------------------------------------------------------------------------------------------------
# Threshold tuning
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChoice:
    """Per-label thresholds and how they were chosen.

    `validation_f1` is each label's F1 on the validation pass at its threshold (tuned labels only; None for labels
    kept at the default and for a fixed setting). `untuned` names the labels without a positive in validation,
    kept at `DEFAULT_THRESHOLD`.
    """

    label_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    mode: str  # "tune" or "fixed"
    validation_f1: tuple[float | None, ...]
    untuned: tuple[str, ...]

    def as_dict(self) -> dict[str, float]:
        """{label: threshold}: what the model's config stores and the card shows."""
        return dict(zip(self.label_names, self.thresholds, strict=True))


def tune_thresholds(metrics: MultiLabelMetrics, setting: str | float = TUNE) -> ThresholdChoice:
    """Each label's threshold: F1-best on the samples `metrics` has seen (``"tune"``), or `setting` for every label.

    Candidates are the grid edges ``k / bins`` (k = 0 … bins-1), for which the histograms give the exact
    confusion counts, so the chosen threshold's F1 is the best F1 any threshold reaches on scores rounded down to
    the grid. Ties (e.g. the empty stretch between the scores of negatives and positives) go to the candidate
    closest to 0.5, then to the lower one. A label with no positive keeps 0.5 and is named in ``untuned``.
    The histograms are those of the samples `metrics` holds now or, when it holds none (Trainer's evaluate()
    has computed and reset it), those of its last computed evaluation.
    """
    import numpy as np

    names = tuple(metrics.label_names)
    if setting != TUNE:
        value = parse_threshold_setting(setting)
        return ThresholdChoice(names, (float(value),) * len(names), "fixed", (None,) * len(names), ())
    if metrics.num_samples:
        positive, negative = metrics.positive_histogram, metrics.negative_histogram
    elif metrics.last_histograms is not None:
        positive, negative = metrics.last_histograms
    else:
        raise MetricError("tune_thresholds needs a validation pass first: the metrics have seen no sample")
    pos_ge = np.cumsum(positive[:, ::-1], axis=1)[:, ::-1]  # positives scoring >= edges[k]
    neg_ge = np.cumsum(negative[:, ::-1], axis=1)[:, ::-1]
    positives = pos_ge[:, :1]
    # F1 = 2TP / (2TP + FP + FN) with FN = P - TP
    f1 = _divide(2 * pos_ge, pos_ge + neg_ge + positives)
    best = f1.max(axis=1, keepdims=True)
    # |k/B - 1/2| in integers (2k - B), so that k = B/2 ± j tie exactly; argmin keeps the lower k on a tie
    distance = np.abs(2 * np.arange(metrics.bins) - metrics.bins)[None, :].repeat(metrics.num_labels, axis=0)
    distance = np.where(f1 == best, distance, np.iinfo(np.int64).max)
    choice = distance.argmin(axis=1)
    thresholds: list[float] = []
    scores: list[float | None] = []
    untuned: list[str] = []
    for i, name in enumerate(names):
        if positives[i, 0] == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            scores.append(None)
            untuned.append(name)
        else:
            thresholds.append(float(metrics.edges[choice[i]]))
            scores.append(float(f1[i, choice[i]]))
    if untuned:
        logger.warning(
            "No positive sample in validation for %d label(s) (%s): they keep the threshold %s.",
            len(untuned),
            listed(untuned),
            DEFAULT_THRESHOLD,
        )
    return ThresholdChoice(names, tuple(thresholds), "tune", tuple(scores), tuple(untuned))
