"""Streaming score metrics for single-label classification: ROC-AUC, PR-AUC, log loss, Brier score and calibration.

`ScoreMetrics` is a `compute_metrics` callable for `transformers.Trainer`, with or without ``batch_eval_metrics``
(the protocol of `hf_finetune.multilabel_metrics.BatchedMetrics`), fed logits [N, C] and integer labels [N];
rows labelled -100 (padding) are dropped. Probabilities are ``softmax(logits)`` in float64, computed stably (the
row maximum is subtracted first) and column by column, so a row's probabilities do not depend on the batch it
came in. `write_reliability_diagram` draws the calibration table as a PNG.

Returned keys (`SCALAR_KEYS`, plus `BINARY_KEYS` when C == 2):

- ``roc_auc_macro`` / ``roc_auc_weighted``, ``pr_auc_macro`` / ``pr_auc_weighted``: one-vs-rest per class (class c's
  probability as the score, rows of class c as positives), averaged over the classes with at least one positive and
  one negative (the others are named in ``last_report["classes_left_out"]``), unweighted or weighted by the
  number of positives. PR-AUC is average precision (scikit-learn's `average_precision_score`). NaN when no class
  qualifies. ``roc_auc`` / ``pr_auc`` are class 1's for binary tasks.
- ``log_loss``: mean of ``-log p[label]``, from ``logsumexp(z) - z[label]`` (no clipping: scikit-learn clips p to
  [eps, 1 - eps] and agrees whenever ``p[label] >= eps``).
- ``brier``: mean over rows of ``sum_c (p_c - [c == label])²`` (the multi-class Brier score, in [0, 2]).
- ``ece``: expected calibration error of the top-label confidence ``max_c p_c`` (prediction: the first class of
  highest probability, as argmax) over `calibration_bins` equal-width bins, bin k holding confidences in
  ``(k/K, (k+1)/K]``: ``sum_k (n_k / N) · |accuracy_k - mean confidence_k|``.

Exactness. Log loss, Brier and ECE are exact: each row's loss, Brier term and confidence is one float64, and
their sums (per calibration bin for the confidences) are kept as Python integers counting units of 2⁻¹¹²⁶, so
every finite double adds in exactly; the metrics are those exact sums, divided and rounded once. They do not
depend on batch sizes, batch order or how accumulators are merged, and neither does anything else here: the
AUCs come from integer histograms. Per class, `bins` equal-width bins hold the class's probability, bin b holding
``[b/B, (b+1)/B)`` (and 1.0 in the last), separately for positives and negatives:

- ROC-AUC is the Mann-Whitney statistic of the binned scores, computed exactly in integers: a positive beats the
  negatives of lower bins and ties (counts half) with those of its own bin. It equals the AUC of the raw scores
  when no two different scores share a bin (scores on the grid ``k / B``, or tied scores), and otherwise differs
  by at most ``Σ_b pos_b · neg_b / (2 · P · N)`` (every pair sharing a bin is off by at most one half).
- PR-AUC is the average precision of the binned scores, with the bound of
  `hf_finetune.multilabel_metrics.MultiLabelMetrics.average_precision`, which it follows (0 when every bin that
  holds a positive holds no other sample).

Every bound is in `last_report` (``*_error_bound``, per class and for each average: the same mean, unweighted or
weighted, of the per-class bounds), next to the per-class AUCs and the reliability table (per bin: count,
accuracy, mean confidence).

Memory does not grow with the number of samples. With C classes, B bins and K calibration bins the state is
``2·C·B + 2·K`` int64 counters (``16·C·B`` bytes: 1.6 MB for C = 100, B = 1000), ``K + 2`` exact sums of
about ``1126 + log2(N · largest term)`` bits each (under 200 bytes each as Python integers while N and every
row's loss stay below 2⁵³), two sample counts and the ``B + K + 2`` float64 bin edges (`state_bytes` adds them
up); one batch of N rows needs O(N·C) more while it is processed.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_finetune.errors import MetricError, listed
from hf_finetune.files import atomic_output
from hf_finetune.multilabel_metrics import BatchedMetrics, _divide, to_numpy

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BINS = 1000
DEFAULT_CALIBRATION_BINS = 15
IGNORE_INDEX = -100

# What ScoreMetrics returns (and metrics.json holds) for every evaluation, in this order; binary tasks add BINARY_KEYS.
SCALAR_KEYS: tuple[str, ...] = (
    "roc_auc_macro",
    "roc_auc_weighted",
    "pr_auc_macro",
    "pr_auc_weighted",
    "log_loss",
    "brier",
    "ece",
)
BINARY_KEYS: tuple[str, ...] = ("roc_auc", "pr_auc")

# Reliability diagram size: RELIABILITY_FIGSIZE inches at RELIABILITY_DPI, i.e. 500 x 600 pixels.
RELIABILITY_FIGSIZE = (5.0, 6.0)
RELIABILITY_DPI = 100

# Every finite double is an integer multiple of 2**-1074; 52 more bits keep frexp's 53-bit mantissas integral.
_SCALE_BITS = 1126
_SHIFT_BITS = 12  # shifts are 0 … 2097 (exponents -1073 … 1024), below 2**12
_CHUNK = 1 << 22  # bincount sums of 26-bit halves over 2**22 values stay below 2**49: exact in float64


def _grouped_exact_sums(values: np.ndarray, groups: np.ndarray, count: int) -> list[int]:
    """Σ values per group (0 … count-1) exactly, in units of 2**-_SCALE_BITS (Python integers).

    As `hf_finetune.regression_metrics`' exact sums: each double is an integer mantissa times a power of two, and
    mantissas of the same (group, power) are added exactly in two 26-bit halves before the shift.
    """
    import numpy as np

    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    groups = np.ascontiguousarray(groups, dtype=np.int64).reshape(-1)
    totals = [0] * count
    for start in range(0, values.shape[0], _CHUNK):
        part = values[start : start + _CHUNK]
        mantissa, exponent = np.frexp(part)  # part == mantissa · 2**exponent, 0.5 <= |mantissa| < 1
        integer = np.ldexp(mantissa, 53).astype(np.int64)  # |integer| < 2**53
        shift = exponent.astype(np.int64) + (_SCALE_BITS - 53)  # >= 0 for every finite double
        keys, inverse = np.unique((groups[start : start + _CHUNK] << _SHIFT_BITS) | shift, return_inverse=True)
        inverse = inverse.reshape(-1)
        high = np.bincount(inverse, weights=(integer >> 26).astype(np.float64))
        low = np.bincount(inverse, weights=(integer & ((1 << 26) - 1)).astype(np.float64))
        for key, h, lo in zip(keys.tolist(), high.tolist(), low.tolist(), strict=True):
            totals[key >> _SHIFT_BITS] += ((int(h) << 26) + int(lo)) << (key & ((1 << _SHIFT_BITS) - 1))
    return totals


def _exact_ratio(units: int, count: int) -> float:
    """units · 2**-_SCALE_BITS / count, correctly rounded (Python's int division is)."""
    return units / (count << _SCALE_BITS) if count else math.nan


def _softmax_parts(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p [N, C], row maxima m [N], log Σ exp(z - m) [N]) of finite float64 logits z."""
    import numpy as np

    top = logits.max(axis=1)
    exps = np.exp(logits - top[:, None])
    # column by column, in a fixed order: a row's sum does not depend on the other rows or the memory layout
    total = exps[:, 0].copy()
    for c in range(1, logits.shape[1]):
        total += exps[:, c]
    return exps / total[:, None], top, np.log(total)


def softmax_probabilities(logits: Any) -> np.ndarray:
    """softmax(logits) [N, C] in float64, exactly as `ScoreMetrics` computes it (numpy, torch or a tuple's first)."""
    import numpy as np

    array = to_numpy(logits)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise MetricError(f"logits must be a numeric array of shape [N, num_labels], got {array.shape} {array.dtype}")
    return _softmax_parts(np.ascontiguousarray(array, dtype=np.float64))[0]


def average_precision(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row average precision of [C, B] positive/negative score histograms, and a bound on its distance to the
    exact one; NaN for rows without positives.

    As `MultiLabelMetrics.average_precision`: in a bin with a positives and b negatives, below c positives and d
    negatives of higher bins, the exact precision of each of its positives lies in [(c+1)/(c+d+b+1), (c+a)/(c+d+a)],
    and so does the binned one, (c+a)/(c+d+a+b); the bound sums a·(that width) over bins, over the positives.
    """
    import numpy as np

    pos = positive[:, ::-1]
    neg = negative[:, ::-1]
    tp_cum = np.cumsum(pos, axis=1)
    fp_cum = np.cumsum(neg, axis=1)
    precision = _divide(tp_cum, tp_cum + fp_cum)
    above_tp, above_fp = tp_cum - pos, fp_cum - neg
    highest = _divide(tp_cum, tp_cum + above_fp)
    lowest = _divide(above_tp + 1, above_tp + fp_cum + 1)
    positives = tp_cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * precision).sum(axis=1) / positives
        bound = (pos * np.clip(highest - lowest, 0.0, None)).sum(axis=1) / positives
    ap[positives == 0] = np.nan
    bound[positives == 0] = np.nan
    return ap, bound


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ROC-AUC of [C, B] positive/negative score histograms (ties within a bin count half), and the bound
    ``Σ_b pos_b·neg_b / (2·P·N)`` on its distance to the AUC of the raw scores; NaN without positives or negatives.

    Computed in Python integers, so exact (then rounded once) for any number of samples.
    """
    import numpy as np

    pos = positive.astype(object)
    neg = negative.astype(object)
    below = np.cumsum(neg, axis=1) - neg  # negatives in lower bins
    twice_wins = (pos * (2 * below + neg)).sum(axis=1)
    shared = (pos * neg).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    auc = np.array([twice_wins[c] / (2 * pairs[c]) if pairs[c] else math.nan for c in range(pos.shape[0])])
    bound = np.array([shared[c] / (2 * pairs[c]) if pairs[c] else math.nan for c in range(pos.shape[0])])
    return auc, bound


def _mean(values: np.ndarray, weights: np.ndarray) -> float:
    import numpy as np

    total = float(weights.sum())
    return float(np.dot(values, weights) / total) if total else math.nan


class ScoreMetrics(BatchedMetrics):
    """`compute_metrics` for `transformers.Trainer` on single-label classification from logits; see the module
    docstring for the metrics, their exactness and the memory bound.

    Called as ``metrics(eval_pred, compute_result=False)`` it only accumulates (Trainer's ``batch_eval_metrics``);
    with ``compute_result=True`` (the default, hence also a plain whole-array call) it accumulates, returns the
    scalars, stores `last_report`, and starts over for the next evaluation. `update`, `merge` and `result` do the
    same steps by hand (`result` does not reset).
    """

    def __init__(
        self,
        num_labels: int,
        bins: int = DEFAULT_BINS,
        calibration_bins: int = DEFAULT_CALIBRATION_BINS,
        *,
        label_names: Sequence[str] | None = None,
    ) -> None:
        import numpy as np

        for name, value, low in (
            ("num_labels", num_labels, 2),
            ("bins", bins, 2),
            ("calibration_bins", calibration_bins, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.num_labels = int(num_labels)
        self.bins = int(bins)
        self.calibration_bins = int(calibration_bins)
        self.label_names = (
            [str(c) for c in range(self.num_labels)] if label_names is None else [str(n) for n in label_names]
        )
        if len(self.label_names) != self.num_labels:
            raise ValueError(
                f"got {len(self.label_names)} label_names for {self.num_labels} labels; give one per label"
            )
        self.edges = np.arange(self.bins + 1, dtype=np.float64) / self.bins
        self.calibration_edges = np.arange(self.calibration_bins + 1, dtype=np.float64) / self.calibration_bins
        self.last_report: dict[str, Any] | None = None
        self.reset()

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys `result` returns, in order."""
        return SCALAR_KEYS + (BINARY_KEYS if self.num_labels == 2 else ())

    def reset(self) -> None:
        """Forget every sample seen."""
        import numpy as np

        self.positive_histogram = np.zeros((self.num_labels, self.bins), dtype=np.int64)
        self.negative_histogram = np.zeros((self.num_labels, self.bins), dtype=np.int64)
        self.calibration_counts = np.zeros(self.calibration_bins, dtype=np.int64)
        self.calibration_correct = np.zeros(self.calibration_bins, dtype=np.int64)
        # exact sums in units of 2**-_SCALE_BITS: log loss, Brier, then the confidences of each calibration bin
        self._sums = [0] * (self.calibration_bins + 2)
        self.num_samples = 0
        self.num_ignored = 0

    def state_bytes(self) -> int:
        """Bytes held by the accumulated state (counters, exact sums, bin edges): bounded, see the module docstring."""
        arrays = (
            self.positive_histogram,
            self.negative_histogram,
            self.calibration_counts,
            self.calibration_correct,
            self.edges,
            self.calibration_edges,
        )
        return sum(a.nbytes for a in arrays) + sum(sys.getsizeof(s) for s in self._sums) + 2 * 8

    # ----------------------------------------------------------------------------------------------- accumulating

    def _read_batch(self, logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        raw = to_numpy(logits)
        if raw.ndim != 2 or raw.shape[1] != self.num_labels or not np.issubdtype(raw.dtype, np.number):
            raise MetricError(
                f"logits must be numbers of shape [N, {self.num_labels}] (one per class), got {raw.shape} {raw.dtype}"
            )
        truth = to_numpy(labels)
        if truth.shape != raw.shape[:1] or not np.issubdtype(truth.dtype, np.number):
            raise MetricError(
                f"labels must be class indices of shape [{raw.shape[0]}] for logits {raw.shape}, got {truth.shape} "
                f"{truth.dtype}"
            )
        padding = truth == IGNORE_INDEX
        raw, truth = raw[~padding], truth[~padding]
        bad = ~((truth >= 0) & (truth < self.num_labels) & (truth == np.round(truth)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise MetricError(
                f"labels must be class indices 0 … {self.num_labels - 1} (or {IGNORE_INDEX} for padding), got "
                f"{truth[row].item()!r} at row {row} of the unpadded batch ({int(bad.sum())} bad value(s))"
            )
        raw = np.ascontiguousarray(raw, dtype=np.float64)
        finite = np.isfinite(raw)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise MetricError(
                f"{int((~finite).sum())} logit(s) are NaN or infinite (first in row {row} of the unpadded batch); "
                "check the model's outputs"
            )
        with np.errstate(over="ignore"):
            spread = raw.max(axis=1) - raw.min(axis=1)
        if not np.isfinite(spread).all():
            row = int(np.flatnonzero(~np.isfinite(spread))[0])
            raise MetricError(
                f"the logits of row {row} of the unpadded batch span more than the float64 range, so their softmax "
                "overflows; check the model's outputs"
            )
        self.num_ignored += int(padding.sum())
        return raw, truth.astype(np.int64)

    def update(self, logits: Any, labels: Any) -> None:
        """Add one batch: logits [N, C] and class indices [N] (-100 rows are dropped)."""
        import numpy as np

        raw, truth = self._read_batch(logits, labels)
        n, classes = raw.shape
        if n == 0:
            return
        probs, top, log_total = _softmax_parts(raw)
        onehot = truth[:, None] == np.arange(classes)[None, :]

        bin_index = np.clip(np.searchsorted(self.edges, probs, side="right") - 1, 0, self.bins - 1)
        flat = bin_index + (np.arange(classes) * self.bins)[None, :]
        size = classes * self.bins
        self.positive_histogram += np.bincount(flat[onehot], minlength=size).reshape(classes, self.bins)
        self.negative_histogram += np.bincount(flat[~onehot], minlength=size).reshape(classes, self.bins)

        rows = np.arange(n)
        loss = log_total - (raw[rows, truth] - top)  # >= 0: log_total >= 0 and z[label] <= max
        squares = probs - onehot
        squares *= squares
        brier = squares[:, 0].copy()
        for c in range(1, classes):  # fixed order, as the softmax sum
            brier += squares[:, c]

        predicted = probs.argmax(axis=1)
        confidence = probs[rows, predicted]
        calibration_bin = np.clip(
            np.searchsorted(self.calibration_edges, confidence, side="left") - 1, 0, self.calibration_bins - 1
        )
        self.calibration_counts += np.bincount(calibration_bin, minlength=self.calibration_bins)
        self.calibration_correct += np.bincount(calibration_bin[predicted == truth], minlength=self.calibration_bins)
        batch = _grouped_exact_sums(
            np.concatenate([loss, brier, confidence]),
            np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64), calibration_bin + 2]),
            len(self._sums),
        )
        self._sums = [a + b for a, b in zip(self._sums, batch, strict=True)]
        self.num_samples += n

    def merge(self, other: ScoreMetrics) -> ScoreMetrics:
        """Add `other`'s samples to this accumulator (in place; returns self): the same as having seen both."""
        if not isinstance(other, ScoreMetrics):
            raise TypeError(f"can only merge another ScoreMetrics, got {type(other).__name__}")
        if (other.label_names, other.bins, other.calibration_bins) != (
            self.label_names,
            self.bins,
            self.calibration_bins,
        ):
            raise MetricError(
                f"cannot merge score metrics with different labels, bins or calibration bins: {self.num_labels} "
                f"labels/{self.bins}/{self.calibration_bins} here, {other.num_labels}/{other.bins}/"
                f"{other.calibration_bins} there; build both with the same settings"
            )
        for name in ("positive_histogram", "negative_histogram", "calibration_counts", "calibration_correct"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self._sums = [a + b for a, b in zip(self._sums, other._sums, strict=True)]
        self.num_samples += other.num_samples
        self.num_ignored += other.num_ignored
        return self

    # ----------------------------------------------------------------------------------------------- results

    def reliability(self) -> list[dict[str, Any]]:
        """The reliability table: per calibration bin its edges, count, accuracy and mean confidence (None if empty)."""
        rows = []
        for k in range(self.calibration_bins):
            count = int(self.calibration_counts[k])
            rows.append(
                {
                    "lower": float(self.calibration_edges[k]),
                    "upper": float(self.calibration_edges[k + 1]),
                    "count": count,
                    "correct": int(self.calibration_correct[k]),
                    "accuracy": int(self.calibration_correct[k]) / count if count else None,
                    "mean_confidence": _exact_ratio(self._sums[k + 2], count) if count else None,
                }
            )
        return rows

    def expected_calibration_error(self) -> float:
        """ECE from the exact per-bin sums: Σ_k |correct_k − Σ confidence_k| / N, rounded once."""
        gaps = sum(
            abs((int(correct) << _SCALE_BITS) - units)
            for correct, units in zip(self.calibration_correct.tolist(), self._sums[2:], strict=True)
        )
        return gaps / (self.num_samples << _SCALE_BITS) if self.num_samples else math.nan

    def _per_class(self) -> tuple[list[dict[str, Any]], dict[str, float], list[dict[str, Any]]]:
        """Per-class rows, the averaged AUCs with their bounds, and the classes left out of the averages."""
        import numpy as np

        roc, roc_bound = roc_auc(self.positive_histogram, self.negative_histogram)
        ap, ap_bound = average_precision(self.positive_histogram, self.negative_histogram)
        positives = self.positive_histogram.sum(axis=1)
        negatives = self.negative_histogram.sum(axis=1)
        included = (positives > 0) & (negatives > 0)
        rows, left_out = [], []
        for c, name in enumerate(self.label_names):
            keep = bool(included[c])
            rows.append(
                {
                    "label": name,
                    "positives": int(positives[c]),
                    "negatives": int(negatives[c]),
                    "in_averages": keep,
                    "roc_auc": float(roc[c]) if keep else None,
                    "roc_auc_error_bound": float(roc_bound[c]) if keep else None,
                    "pr_auc": float(ap[c]) if keep else None,
                    "pr_auc_error_bound": float(ap_bound[c]) if keep else None,
                }
            )
            if not keep:
                reason = "no positive sample" if positives[c] == 0 else "no negative sample"
                left_out.append({"label": name, "reason": reason})
        unit = included.astype(np.float64)
        support = np.where(included, positives, 0).astype(np.float64)
        averages: dict[str, float] = {}
        for key, values, bounds in (("roc_auc", roc, roc_bound), ("pr_auc", ap, ap_bound)):
            values, bounds = np.where(included, values, 0.0), np.where(included, bounds, 0.0)
            for average, weights in (("macro", unit), ("weighted", support)):
                averages[f"{key}_{average}"] = _mean(values, weights)
                averages[f"{key}_{average}_error_bound"] = _mean(bounds, weights)
        return rows, averages, left_out

    def result(self) -> dict[str, float]:
        """The scalars (`keys`) of every sample seen so far; also sets `last_report`. Does not reset."""
        n = self.num_samples
        if n == 0:
            logger.warning(
                "No labelled samples to evaluate (%d padding rows were dropped): every score is NaN.", self.num_ignored
            )
        rows, averages, left_out = self._per_class()
        if left_out and n:
            logger.warning(
                "%d class(es) left out of the AUC averages (no positive or no negative sample): %s.",
                len(left_out),
                listed(f"{row['label']} ({row['reason']})" for row in left_out),
            )
        scalars = {
            **{key: averages[key] for key in SCALAR_KEYS[:4]},
            "log_loss": _exact_ratio(self._sums[0], n),
            "brier": _exact_ratio(self._sums[1], n),
            "ece": self.expected_calibration_error(),
        }
        bounds = {f"{key}_error_bound": averages[f"{key}_error_bound"] for key in SCALAR_KEYS[:4]}
        if self.num_labels == 2:
            for key in BINARY_KEYS:
                value, bound = rows[1][key], rows[1][f"{key}_error_bound"]
                scalars[key] = math.nan if value is None else value
                bounds[f"{key}_error_bound"] = math.nan if bound is None else bound
        correct = int(self.calibration_correct.sum())
        self.last_report = {
            **scalars,
            **bounds,
            "accuracy": correct / n if n else math.nan,
            "per_class": rows,
            "classes_left_out": left_out,
            "auc_classes": sum(row["in_averages"] for row in rows),
            "reliability": self.reliability(),
            "num_samples": n,
            "num_ignored": self.num_ignored,
            "label_names": list(self.label_names),
            "bins": self.bins,
            "calibration_bins": self.calibration_bins,
        }
        return scalars

    def compute(self) -> dict[str, float]:
        """`result`, under the name `BatchedMetrics.__call__` uses."""
        return self.result()


# ---------------------------------------------------------------------------------------------------------------------
# Reliability diagram
# ---------------------------------------------------------------------------------------------------------------------


def _report_of(report_or_metrics: Mapping[str, Any] | ScoreMetrics) -> Mapping[str, Any]:
    if isinstance(report_or_metrics, ScoreMetrics):
        if report_or_metrics.num_samples:
            report_or_metrics.result()
        report = report_or_metrics.last_report
        if report is None:
            raise MetricError("the score metrics have seen no sample yet: evaluate first, then draw the diagram")
        return report
    if not isinstance(report_or_metrics, Mapping) or "reliability" not in report_or_metrics:
        raise MetricError(
            "write_reliability_diagram needs ScoreMetrics or its last_report (a dict with a 'reliability' table), "
            f"got {type(report_or_metrics).__name__}"
        )
    return report_or_metrics


def write_reliability_diagram(
    report_or_metrics: Mapping[str, Any] | ScoreMetrics, path: Path | str, title: str = ""
) -> Path:
    """The reliability diagram (accuracy and mean confidence per calibration bin, against the diagonal) above the
    bin-count histogram, as a PNG of `RELIABILITY_FIGSIZE` inches at `RELIABILITY_DPI`, written atomically.

    `report_or_metrics` is `ScoreMetrics.last_report` or the `ScoreMetrics` itself (its samples so far, else its
    last report). Returns the path written.
    """
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = _report_of(report_or_metrics)
    table = list(report["reliability"])
    lower = [float(row["lower"]) for row in table]
    width = [float(row["upper"]) - float(row["lower"]) for row in table]
    filled = [row for row in table if row["count"]]

    fig = Figure(figsize=RELIABILITY_FIGSIZE, dpi=RELIABILITY_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        [float(row["lower"]) for row in filled],
        [row["accuracy"] for row in filled],
        width=[float(row["upper"]) - float(row["lower"]) for row in filled],
        align="edge",
        edgecolor="black",
        linewidth=0.6,
        label="Accuracy",
    )
    top.plot(
        [(float(row["lower"]) + float(row["upper"])) / 2 for row in filled],
        [row["mean_confidence"] for row in filled],
        "o",
        color="tab:red",
        markersize=4,
        label="Mean confidence",
    )
    top.plot([0.0, 1.0], [0.0, 1.0], color="gray", linestyle="--", linewidth=0.8, label="Perfect calibration")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("Accuracy")
    top.legend(loc="upper left", fontsize=8)
    ece = report.get("ece")
    heading = f"ECE = {ece:.4f}" if isinstance(ece, float) and math.isfinite(ece) else "ECE undefined"
    top.set_title(f"{title}\n{heading}" if title else f"Reliability diagram ({heading})")
    bottom.bar(lower, [row["count"] for row in table], width=width, align="edge", edgecolor="black", linewidth=0.6)
    bottom.set_xlabel("Top-label confidence")
    bottom.set_ylabel("Samples")

    target = Path(path)
    with atomic_output(target, "wb") as handle:
        fig.savefig(handle, format="png")
    return target
