"""Tests for hf_finetune.score_metrics: scikit-learn (and direct numpy formulas) are the reference for every number."""

from __future__ import annotations

import itertools
import struct
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.special import log_softmax, softmax
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from transformers import EvalPrediction

from hf_finetune.errors import MetricError
from hf_finetune.score_metrics import (
    BINARY_KEYS,
    RELIABILITY_DPI,
    RELIABILITY_FIGSIZE,
    SCALAR_KEYS,
    ScoreMetrics,
    softmax_probabilities,
    write_reliability_diagram,
)


def _data(n: int, classes: int = 4, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits with signal (and an offset per row, which softmax ignores) and class indices; every class occurs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + signal * (labels[:, None] == np.arange(classes)) + rng.normal(size=(n, 1))
    return logits, labels


def _numpy_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple[float, list[tuple[int, float, float]]]:
    """The textbook ECE (Guo et al. 2017): bins (lo, hi] of the top-label confidence; and (count, acc, conf) per bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece, table = 0.0, []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            acc, conf = correct[inside].mean(), confidence[inside].mean()
            ece += inside.mean() * abs(acc - conf)
            table.append((int(inside.sum()), float(acc), float(conf)))
        else:
            table.append((0, np.nan, np.nan))
    return float(ece), table


def _reference(logits: np.ndarray, labels: np.ndarray, calibration_bins: int = 15) -> dict[str, object]:
    probs = softmax(logits, axis=1)
    classes = probs.shape[1]
    onehot = labels[:, None] == np.arange(classes)
    ece, table = _numpy_ece(probs, labels, calibration_bins)
    per_class_ap = np.array([average_precision_score(onehot[:, c], probs[:, c]) for c in range(classes)])
    per_class_roc = np.array([roc_auc_score(onehot[:, c], probs[:, c]) for c in range(classes)])
    support = onehot.sum(axis=0)
    if classes > 2:
        ovr = {"multi_class": "ovr", "labels": range(classes)}
        macro = roc_auc_score(labels, probs, average="macro", **ovr)
        weighted = roc_auc_score(labels, probs, average="weighted", **ovr)
        np.testing.assert_allclose(
            [macro, weighted], [per_class_roc.mean(), np.average(per_class_roc, weights=support)]
        )
    else:  # scikit-learn has no one-vs-rest average for two classes: its per-class scores, averaged
        macro, weighted = per_class_roc.mean(), np.average(per_class_roc, weights=support)
    return {
        "roc_auc_macro": macro,
        "roc_auc_weighted": weighted,
        "pr_auc_macro": per_class_ap.mean(),
        "pr_auc_weighted": np.average(per_class_ap, weights=support),
        "log_loss": log_loss(labels, probs, labels=range(classes)),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "ece": ece,
        "table": table,
        "per_class_roc": per_class_roc,
        "per_class_ap": per_class_ap,
    }


def test_exact_on_tied_scores_each_distinct_score_in_its_own_bin():
    # 20 distinct probability vectors, each repeated many times: the ties are exact (identical rows give identical
    # probabilities), and every class's 20 distinct scores lie in 20 distinct bins, so the histograms lose nothing
    rng = np.random.default_rng(1)
    prototypes = rng.dirichlet(np.ones(4), size=20)
    which = rng.integers(0, 20, 3000)
    logits = np.log(prototypes)[which] + 3.0
    # labels drawn from the prototype's own probabilities: a calibrated model, with signal for the AUCs
    labels = (rng.random(3000)[:, None] > np.cumsum(prototypes[which], axis=1)).sum(axis=1)
    bins = 10_000
    probs = softmax_probabilities(logits)
    for c in range(4):
        assert len(np.unique(probs[:, c])) == len(np.unique(np.floor(probs[:, c] * bins))) == 20
    np.testing.assert_allclose(probs, softmax(logits, axis=1), rtol=1e-14, atol=0)

    metrics = ScoreMetrics(4, bins=bins)
    scalars = metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert list(scalars) == list(SCALAR_KEYS)
    assert all(type(v) is float for v in scalars.values())
    expected = _reference(logits, labels)
    for key in SCALAR_KEYS:
        assert scalars[key] == pytest.approx(expected[key], abs=1e-12), key
    rows = metrics.last_report["per_class"]
    np.testing.assert_allclose([r["roc_auc"] for r in rows], expected["per_class_roc"], rtol=0, atol=1e-12)
    np.testing.assert_allclose([r["pr_auc"] for r in rows], expected["per_class_ap"], rtol=0, atol=1e-12)
    # the bounds cannot tell exact ties from near ones, so they are not 0 here: they only have to hold
    assert metrics.last_report["roc_auc_macro_error_bound"] > 0
    assert metrics.last_report["classes_left_out"] == []


def test_binary_keys_exact_when_no_two_scores_share_a_bin():
    rng = np.random.default_rng(2)
    bins = 1000
    labels = (rng.random(400) < 0.4).astype(np.int64)
    # one sample per bin, away from the bin edges, so class 1's probability stays in its bin after softmax
    p1 = (rng.permutation(bins)[:400] + rng.uniform(0.05, 0.95, 400)) / bins
    logits = np.stack([np.zeros(400), np.log(p1) - np.log1p(-p1)], axis=1)
    np.testing.assert_allclose(softmax_probabilities(logits)[:, 1], p1, rtol=1e-13)

    metrics = ScoreMetrics(2, bins=bins)
    metrics.update(logits, labels)
    scalars = metrics.result()
    assert list(scalars) == list(SCALAR_KEYS + BINARY_KEYS)
    assert scalars["roc_auc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-12)
    assert scalars["pr_auc"] == pytest.approx(average_precision_score(labels, p1), abs=1e-12)
    report = metrics.last_report
    assert report["roc_auc_error_bound"] == 0.0 and report["pr_auc_error_bound"] == 0.0
    # class 0's score is 1 - p1: the same ranking reversed, so the same ROC-AUC
    assert scalars["roc_auc_macro"] == pytest.approx(scalars["roc_auc"], abs=1e-12)
    expected = _reference(logits, labels)
    for key in SCALAR_KEYS:
        assert scalars[key] == pytest.approx(expected[key], abs=1e-12), key
    assert "roc_auc" not in ScoreMetrics(3).result()


def test_roc_bound_is_reached_when_a_bin_hides_a_perfect_ranking():
    # all four scores in bin [0.5, 0.6), positives above negatives: exact AUC 1, binned 1/2, bound 2·2/(2·2·2) = 1/2
    p1 = np.array([0.51, 0.52, 0.55, 0.58])
    labels = np.array([0, 0, 1, 1])
    metrics = ScoreMetrics(2, bins=10)
    scalars = metrics(EvalPrediction(np.stack([np.zeros(4), np.log(p1 / (1 - p1))], axis=1), labels))
    report = metrics.last_report
    assert roc_auc_score(labels, p1) == 1.0
    assert scalars["roc_auc"] == 0.5
    assert report["roc_auc_error_bound"] == 0.5
    # average precision: exact 1, binned 2/4; the bound (2/3 here) covers it
    assert average_precision_score(labels, p1) == 1.0
    assert scalars["pr_auc"] == 0.5
    assert report["pr_auc_error_bound"] == pytest.approx(2 / 3, rel=1e-15)


def test_random_data_within_reported_bounds_and_exact_losses():
    logits, labels = _data(100_000, classes=5, seed=3)
    metrics = ScoreMetrics(5)
    scalars = metrics(EvalPrediction(predictions=logits, label_ids=labels))
    expected = _reference(logits, labels)
    report = metrics.last_report
    for key in ("roc_auc_macro", "roc_auc_weighted", "pr_auc_macro", "pr_auc_weighted"):
        bound = report[f"{key}_error_bound"]
        assert 0 < bound < 0.005, key  # informative: 1e5 samples in 1000 bins
        assert abs(scalars[key] - expected[key]) <= bound + 1e-12, key
    for row, roc, ap in zip(report["per_class"], expected["per_class_roc"], expected["per_class_ap"], strict=True):
        assert abs(row["roc_auc"] - roc) <= row["roc_auc_error_bound"] + 1e-12
        assert abs(row["pr_auc"] - ap) <= row["pr_auc_error_bound"] + 1e-12
    # log loss, Brier and ECE do not depend on the bins
    for key in ("log_loss", "brier", "ece"):
        assert scalars[key] == pytest.approx(expected[key], rel=1e-12), key
    # the exact sum: the mean of the per-row losses, correctly rounded
    rows_loss = -log_softmax(logits, axis=1)[np.arange(len(labels)), labels]
    assert scalars["log_loss"] == pytest.approx(float(sum(map(Fraction, rows_loss.tolist())) / len(labels)), rel=1e-14)

    table = report["reliability"]
    assert [row["count"] for row in table] == [count for count, _, _ in expected["table"]]
    for row, (count, acc, conf) in zip(table, expected["table"], strict=True):
        if count:
            assert row["accuracy"] == pytest.approx(acc, abs=1e-12)
            assert row["mean_confidence"] == pytest.approx(conf, abs=1e-12)
        else:
            assert row["accuracy"] is None and row["mean_confidence"] is None
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels), abs=0)


def test_log_loss_is_stable_for_extreme_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0], [-745.0, -745.0, -745.0]])
    labels = np.array([1, 1, 2])
    metrics = ScoreMetrics(3)
    scalars = metrics(EvalPrediction(logits, labels))
    expected = -log_softmax(logits, axis=1)[np.arange(3), labels]
    assert np.isfinite(expected).all()
    assert scalars["log_loss"] == pytest.approx(expected.mean(), rel=1e-15)
    # p = (1, 0, 0), (0, 1, 0), (1/3, 1/3, 1/3)
    assert scalars["brier"] == pytest.approx((2.0 + 0.0 + (1 / 9 + 1 / 9 + 4 / 9)) / 3, rel=1e-15)


def test_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # confidences exactly 0.5 and 0.75 (edges of 4 bins) and 1.0: bins are (k/K, (k+1)/K], as the numpy reference
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, -800.0], [np.log(3.0), 0.0]])
    labels = np.array([0, 1, 0, 1])
    assert softmax_probabilities(logits).max(axis=1).tolist() == [0.5, 0.5, 1.0, 0.75]
    metrics = ScoreMetrics(2, calibration_bins=4)
    scalars = metrics(EvalPrediction(logits, labels))
    ece, table = _numpy_ece(softmax(logits, axis=1), labels, 4)
    assert (
        [row["count"] for row in metrics.last_report["reliability"]] == [count for count, _, _ in table] == [0, 2, 1, 1]
    )
    assert scalars["ece"] == pytest.approx(ece, rel=1e-15)


def test_batches_in_any_order_and_merges_give_identical_results():
    logits, labels = _data(5000, classes=4, seed=4)
    whole = ScoreMetrics(4)
    expected = whole(EvalPrediction(predictions=logits, label_ids=labels))
    expected_report = whole.last_report

    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    chunks = np.split(order, np.sort(rng.choice(np.arange(1, len(labels)), size=17, replace=False)))
    batched = ScoreMetrics(4)
    for chunk in chunks:
        assert batched(EvalPrediction(logits[chunk], labels[chunk]), compute_result=False) == {}
    assert batched(EvalPrediction(logits[:0], labels[:0]), compute_result=True) == expected
    assert batched.last_report == expected_report

    first, second = ScoreMetrics(4), ScoreMetrics(4)
    first.update(logits[order[:1234]], labels[order[:1234]])
    second.update(logits[order[1234:]], labels[order[1234:]])
    assert second.merge(first).result() == expected
    assert second.last_report == expected_report
    with pytest.raises(MetricError, match="different labels, bins or calibration bins"):
        ScoreMetrics(4).merge(ScoreMetrics(4, bins=10))


def test_trainer_batch_protocol_with_torch_tensors_resets_between_evaluations():
    logits, labels = _data(96, classes=3, seed=5)
    logits32 = logits.astype(np.float32)
    reference = ScoreMetrics(3)(EvalPrediction(predictions=logits32, label_ids=labels))
    metrics = ScoreMetrics(3)
    for _ in range(2):  # two evaluations in a row: the second must not see the first's samples
        for start in range(0, 96, 32):
            batch = slice(start, start + 32)
            out = metrics(
                EvalPrediction(
                    predictions=(torch.tensor(logits32[batch]), torch.zeros(1)),
                    label_ids=torch.tensor(labels[batch]),
                ),
                compute_result=start == 64,
            )
            assert (out == {}) == (start != 64)
        assert out == reference
        assert metrics.last_report["num_samples"] == 96
    assert metrics.num_samples == 0


def test_padding_rows_are_dropped_and_bad_inputs_named():
    logits, labels = _data(50, classes=3, seed=6)
    padded_logits = np.concatenate([logits, np.full((3, 3), -100.0)])
    padded_labels = np.concatenate([labels, np.full(3, -100)])
    metrics = ScoreMetrics(3)
    assert metrics(EvalPrediction(padded_logits, padded_labels)) == ScoreMetrics(3)(EvalPrediction(logits, labels))
    assert metrics.last_report["num_ignored"] == 3
    assert metrics.last_report["num_samples"] == 50

    bad = labels.copy()
    bad[7] = 3
    with pytest.raises(MetricError, match=r"class indices 0 … 2 .*got 3 at row 7"):
        metrics(EvalPrediction(logits, bad))
    assert metrics.num_samples == 0  # the failed evaluation left nothing behind
    with pytest.raises(MetricError, match=r"shape \[N, 3\]"):
        metrics(EvalPrediction(logits[:, :2], labels))
    with pytest.raises(MetricError, match=r"shape \[50\]"):
        metrics(EvalPrediction(logits, labels[:, None]))
    nan = logits.copy()
    nan[4, 1] = np.nan
    with pytest.raises(MetricError, match=r"NaN or infinite .*row 4"):
        metrics(EvalPrediction(nan, labels))
    huge = logits.copy()
    huge[9] = [1e308, -1e308, 0.0]
    with pytest.raises(MetricError, match=r"row 9 .*span more than the float64 range"):
        metrics(EvalPrediction(huge, labels))
    assert metrics.num_samples == 0


def test_state_does_not_grow_with_samples():
    classes, bins, calibration = 6, 300, 10
    small, once, large = (ScoreMetrics(classes, bins, calibration) for _ in range(3))
    small.update(*_data(10, classes=classes))
    once.update(*_data(20_000, classes=classes))
    for seed in range(5):
        large.update(*_data(20_000, classes=classes, seed=seed))

    def arrays(metrics: ScoreMetrics) -> int:
        return sum(v.nbytes for v in vars(metrics).values() if isinstance(v, np.ndarray))

    # the documented bound: 2·C·B + 2·K int64 counters, B + K + 2 float64 edges, K + 2 exact sums under 200 bytes
    assert arrays(small) == arrays(large) == 8 * (2 * classes * bins + 2 * calibration) + 8 * (bins + calibration + 2)
    assert all(sys.getsizeof(s) < 200 for s in large._sums)
    assert large.state_bytes() <= arrays(large) + 200 * (calibration + 2) + 16
    # five times the samples: each exact sum grows by at most one 30-bit digit of a Python integer
    assert large.state_bytes() - once.state_bytes() <= 4 * (calibration + 2)


def test_class_without_positives_is_left_out_of_the_averages_and_named():
    logits, labels = _data(2000, classes=4, seed=7)
    labels = np.where(labels == 2, 0, labels)  # class 2 never occurs
    metrics = ScoreMetrics(4, label_names=["cat", "dog", "eel", "fox"])
    scalars = metrics(EvalPrediction(logits, labels))
    report = metrics.last_report
    assert report["classes_left_out"] == [{"label": "eel", "reason": "no positive sample"}]
    assert report["auc_classes"] == 3
    eel = report["per_class"][2]
    assert eel["positives"] == 0 and eel["roc_auc"] is None and eel["pr_auc"] is None and not eel["in_averages"]

    probs = softmax(logits, axis=1)
    present = [0, 1, 3]
    roc = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    ap = [average_precision_score(labels == c, probs[:, c]) for c in present]
    support = [int((labels == c).sum()) for c in present]
    for key, values in (("roc_auc", roc), ("pr_auc", ap)):
        bound = report[f"{key}_macro_error_bound"]
        assert abs(scalars[f"{key}_macro"] - np.mean(values)) <= bound + 1e-12
        weighted_bound = report[f"{key}_weighted_error_bound"]
        assert abs(scalars[f"{key}_weighted"] - np.average(values, weights=support)) <= weighted_bound + 1e-12
        assert abs(scalars[f"{key}_macro"] - np.mean(values)) < 0.01
    assert scalars["log_loss"] == pytest.approx(log_loss(labels, probs, labels=range(4)), rel=1e-12)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_reliability_diagram_is_a_png_of_the_stated_size(tmp_path):
    logits, labels = _data(3000, classes=3, seed=8)
    metrics = ScoreMetrics(3)
    metrics(EvalPrediction(logits, labels))
    width, height = round(RELIABILITY_FIGSIZE[0] * RELIABILITY_DPI), round(RELIABILITY_FIGSIZE[1] * RELIABILITY_DPI)

    from_report = write_reliability_diagram(metrics.last_report, tmp_path / "plots" / "reliability.png", "test split")
    assert _png_size(from_report.read_bytes()) == (width, height)
    assert imread(from_report).shape[:2] == (height, width)

    # the accumulator itself: its samples so far, here a fresh evaluation
    metrics.update(logits[:100], labels[:100])
    from_metrics = write_reliability_diagram(metrics, tmp_path / "again.png")
    assert _png_size(from_metrics.read_bytes()) == (width, height)
    assert metrics.last_report["num_samples"] == 100
    assert list(tmp_path.rglob(".*.tmp")) == []

    with pytest.raises(MetricError, match="seen no sample"):
        write_reliability_diagram(ScoreMetrics(3), tmp_path / "none.png")
    with pytest.raises(MetricError, match="'reliability' table"):
        write_reliability_diagram({"ece": 0.1}, tmp_path / "bad.png")
