"""Tests for hf_finetune.multilabel_metrics: scikit-learn is the reference for every number."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)
from transformers import EvalPrediction

from hf_finetune.errors import MetricError, RecipeError
from hf_finetune.multilabel_metrics import (
    DEFAULT_THRESHOLD,
    SCALAR_KEYS,
    MultiLabelMetrics,
    apply_thresholds,
    parse_threshold_setting,
    tune_thresholds,
)

NAMES = ["a", "b", "c", "d", "e"]


@pytest.fixture(autouse=True)
def _quiet_sklearn():
    # zero_division cases are intended here; sklearn warns about each
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits with signal, multi-hot labels; label 'e' never occurs and some rows have no label at all."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(NAMES))) < [0.4, 0.2, 0.5, 0.05, 0.0]).astype(np.int64)
    logits = rng.normal(size=labels.shape) + 2.0 * labels - 0.5
    return logits, labels


def _sklearn_scalars(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    out = {}
    for avg in ("micro", "macro", "weighted", "samples"):
        out[f"f1_{avg}"] = f1_score(labels, predicted, average=avg, zero_division=0)
        out[f"precision_{avg}"] = precision_score(labels, predicted, average=avg, zero_division=0)
        out[f"recall_{avg}"] = recall_score(labels, predicted, average=avg, zero_division=0)
    has = labels.sum(axis=0) > 0
    out["map"] = float(np.mean(average_precision_score(labels[:, has], scores[:, has], average=None)))
    out["subset_accuracy"] = accuracy_score(labels, predicted)
    out["hamming_loss"] = hamming_loss(labels, predicted)
    return out


def test_scalars_and_rows_match_sklearn_at_fixed_threshold():
    logits, labels = _data()
    metrics = MultiLabelMetrics(NAMES)
    scalars = metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert list(scalars) == list(SCALAR_KEYS)
    assert all(type(v) is float for v in scalars.values())

    predicted = (expit(logits) >= 0.5).astype(int)
    expected = _sklearn_scalars(labels, predicted, expit(logits))
    for key in SCALAR_KEYS:
        # map from 1000 bins is within its reported bound; the rest are exact counts
        tolerance = metrics.last_report["map_error_bound"] if key == "map" else 1e-12
        assert scalars[key] == pytest.approx(expected[key], abs=tolerance), key

    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None, zero_division=0)
    rows = metrics.last_report["per_class"]
    assert [row["label"] for row in rows] == NAMES
    assert [row["support"] for row in rows] == support.tolist()
    np.testing.assert_allclose([row["precision"] for row in rows], precision, rtol=0, atol=1e-15)
    np.testing.assert_allclose([row["recall"] for row in rows], recall, rtol=0, atol=1e-15)
    np.testing.assert_allclose([row["f1"] for row in rows], f1, rtol=0, atol=1e-15)
    assert rows[4]["average_precision"] is None
    assert metrics.last_report["labels_without_positives"] == ["e"]
    assert metrics.last_report["map_labels"] == 4
    assert metrics.last_report["num_samples"] == len(labels)


def test_per_label_thresholds_match_sklearn_and_apply_thresholds():
    logits, labels = _data(seed=1)
    thresholds = [0.2, 0.35, 0.5, 0.8, 0.9]
    metrics = MultiLabelMetrics(NAMES, thresholds=thresholds)
    scalars = metrics(EvalPrediction(predictions=logits, label_ids=labels))
    predicted = (expit(logits) >= np.array(thresholds)).astype(int)
    assert predicted.sum(axis=0).tolist() != (expit(logits) >= 0.5).sum(axis=0).tolist()
    np.testing.assert_array_equal(apply_thresholds(logits, thresholds), predicted.astype(bool))
    for avg in ("micro", "macro", "weighted", "samples"):
        assert scalars[f"f1_{avg}"] == pytest.approx(f1_score(labels, predicted, average=avg, zero_division=0), 1e-12)
    assert scalars["subset_accuracy"] == accuracy_score(labels, predicted)
    assert scalars["hamming_loss"] == pytest.approx(hamming_loss(labels, predicted), rel=1e-15)
    assert [row["threshold"] for row in metrics.last_report["per_class"]] == thresholds


def test_map_is_exact_on_grid_scores():
    rng = np.random.default_rng(2)
    bins = 50
    labels = (rng.random((800, 4)) < 0.3).astype(int)
    # scores on the grid k/bins (many ties per bin): ties are the same threshold for sklearn and for the histogram
    grid = np.arange(bins + 1, dtype=np.float64) / bins
    scores = grid[np.clip(rng.integers(0, 30, labels.shape) + 15 * labels, 0, bins)]
    metrics = MultiLabelMetrics(NAMES[:4], bins=bins, inputs="probabilities")
    metrics.update(scores, labels)
    ap, _ = metrics.average_precision()
    np.testing.assert_allclose(ap, average_precision_score(labels, scores, average=None), rtol=0, atol=1e-13)
    assert metrics.compute()["map"] == pytest.approx(average_precision_score(labels, scores), abs=1e-13)


def test_map_is_exact_when_scores_fall_in_distinct_bins():
    rng = np.random.default_rng(3)
    bins = 1000
    labels = (rng.random((300, 2)) < 0.4).astype(int)
    # one sample per bin at a random place inside it: still one sample per threshold for both
    slots = np.stack([rng.permutation(bins)[:300] for _ in range(2)], axis=1)
    scores = (slots + rng.random(slots.shape)) / bins
    metrics = MultiLabelMetrics(["x", "y"], bins=bins, inputs="probabilities")
    metrics.update(scores, labels)
    ap, bound = metrics.average_precision()
    np.testing.assert_allclose(ap, average_precision_score(labels, scores, average=None), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(bound, [0.0, 0.0])


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_map_stays_within_its_reported_bound(seed):
    logits, labels = _data(n=5000, seed=seed)
    metrics = MultiLabelMetrics(NAMES)
    scalars = metrics(EvalPrediction(predictions=logits, label_ids=labels))
    has = labels.sum(axis=0) > 0
    exact = average_precision_score(labels[:, has], expit(logits)[:, has], average=None)
    bound = metrics.last_report["map_error_bound"]
    assert abs(scalars["map"] - exact.mean()) <= bound
    # the bound is informative, not 1: 5000 samples in 1000 bins
    assert bound < 0.01
    per_label = [row["average_precision"] for row in metrics.last_report["per_class"] if row["support"]]
    np.testing.assert_allclose(per_label, exact, rtol=0, atol=bound * has.sum())


def test_batches_in_any_order_and_merges_give_identical_results():
    logits, labels = _data(n=1000, seed=7)
    whole = MultiLabelMetrics(NAMES, thresholds=[0.3, 0.5, 0.5, 0.6, 0.5])
    expected = whole(EvalPrediction(predictions=logits, label_ids=labels))
    expected_report = whole.last_report

    rng = np.random.default_rng(0)
    batched = MultiLabelMetrics(NAMES, thresholds=[0.3, 0.5, 0.5, 0.6, 0.5])
    order = rng.permutation(len(labels))
    cuts = np.sort(rng.choice(np.arange(1, len(labels)), size=12, replace=False))
    chunks = np.split(order, cuts)
    for i, chunk in enumerate(chunks):
        out = batched(EvalPrediction(predictions=logits[chunk], label_ids=labels[chunk]), compute_result=False)
        assert out == {}
        assert batched.num_samples == sum(len(c) for c in chunks[: i + 1])
    final = batched(EvalPrediction(predictions=logits[:0], label_ids=labels[:0]), compute_result=True)
    assert final == expected
    assert batched.last_report == expected_report

    # two "processes" each see half, merged in either order
    first, second = (MultiLabelMetrics(NAMES, thresholds=[0.3, 0.5, 0.5, 0.6, 0.5]) for _ in range(2))
    first.update(logits[order[:377]], labels[order[:377]])
    second.update(logits[order[377:]], labels[order[377:]])
    assert second.merge(first).compute() == expected
    assert second.last_report == expected_report
    with pytest.raises(MetricError, match="different labels"):
        MultiLabelMetrics(NAMES).merge(MultiLabelMetrics(NAMES, bins=10))


def test_trainer_batch_protocol_with_torch_tensors_resets_between_evaluations():
    logits, labels = _data(n=96, seed=8)
    reference = MultiLabelMetrics(NAMES)(EvalPrediction(predictions=logits, label_ids=labels))
    metrics = MultiLabelMetrics(NAMES)
    for _ in range(2):  # two evaluations in a row: the second must not see the first's samples
        for start in range(0, 96, 32):
            batch = slice(start, start + 32)
            out = metrics(
                EvalPrediction(
                    predictions=(torch.tensor(logits[batch], dtype=torch.float64), torch.zeros(1)),
                    label_ids=torch.tensor(labels[batch], dtype=torch.float32),
                ),
                compute_result=start == 64,
            )
        assert out == reference
    assert metrics.num_samples == 0


def test_padding_rows_are_dropped_and_bad_labels_named():
    logits, labels = _data(n=50, seed=9)
    padded_logits = np.concatenate([logits, np.zeros((3, 5))])
    padded_labels = np.concatenate([labels, np.full((3, 5), -100)])
    metrics = MultiLabelMetrics(NAMES)
    assert metrics(EvalPrediction(padded_logits, padded_labels)) == MultiLabelMetrics(NAMES)(
        EvalPrediction(logits, labels)
    )
    assert metrics.last_report["num_ignored"] == 3

    bad = labels.copy()
    bad[7, 2] = 2
    with pytest.raises(MetricError, match=r"must be 0 or 1, got 2 at row 7, label 'c'"):
        metrics(EvalPrediction(logits, bad))
    assert metrics.num_samples == 0  # the failed evaluation left nothing behind
    with pytest.raises(MetricError, match=r"shape \[N, 5\]"):
        metrics(EvalPrediction(logits[:, :3], labels[:, :3]))
    with pytest.raises(MetricError, match="probabilities must lie in"):
        MultiLabelMetrics(NAMES, inputs="probabilities").update(logits, labels)
    with pytest.raises(MetricError, match="got 2 thresholds for 5 labels"):
        MultiLabelMetrics(NAMES, thresholds=[0.5, 0.5])


def test_state_does_not_grow_with_samples():
    def state_bytes(metrics: MultiLabelMetrics) -> int:
        return sum(v.nbytes for v in vars(metrics).values() if isinstance(v, np.ndarray))

    small, large = MultiLabelMetrics(NAMES, bins=200), MultiLabelMetrics(NAMES, bins=200)
    small.update(*_data(n=10))
    for seed in range(5):
        large.update(*_data(n=4000, seed=seed))
    assert state_bytes(small) == state_bytes(large)
    # the documented bound: 2·L·B + 8·L + 3 int64 counters, plus the thresholds and the B+1 edges (float64)
    assert state_bytes(large) == 8 * (2 * 5 * 200 + 8 * 5 + 3) + 8 * 5 + 8 * 201


# ---------------------------------------------------------------------------------------------------------------------
# Threshold tuning
# ---------------------------------------------------------------------------------------------------------------------


def _brute_force_best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    # every distinct score as a threshold (plus "predict nothing", F1 0): all the decisions a threshold can make
    predicted = scores[None, :] >= np.unique(scores)[:, None]
    true_positives = (predicted & (labels[None, :] == 1)).sum(axis=1)
    return float((2 * true_positives / (predicted.sum(axis=1) + labels.sum())).max())


def test_tuned_thresholds_reach_the_brute_force_best_f1_on_grid_scores():
    rng = np.random.default_rng(10)
    bins = 100
    labels = (rng.random((700, 4)) < [0.3, 0.1, 0.5, 0.02]).astype(int)
    raw = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    scores = np.floor(raw * bins) / bins  # on the grid
    metrics = MultiLabelMetrics(NAMES[:4], bins=bins, inputs="probabilities")
    with pytest.raises(MetricError, match="needs a validation pass first"):
        tune_thresholds(metrics)
    # as after Trainer.evaluate(): the last batch computed the result and reset the running state
    metrics(EvalPrediction(scores[:300], labels[:300]), compute_result=False)
    metrics(EvalPrediction(scores[300:], labels[300:]), compute_result=True)
    assert metrics.num_samples == 0
    choice = tune_thresholds(metrics)
    assert choice.mode == "tune" and choice.untuned == ()
    for i in range(4):
        best = _brute_force_best_f1(labels[:, i], scores[:, i])
        at_choice = f1_score(labels[:, i], scores[:, i] >= choice.thresholds[i])
        assert choice.validation_f1[i] == pytest.approx(best, rel=1e-15)
        assert at_choice == pytest.approx(best, rel=1e-15)
    assert choice.as_dict() == dict(zip(NAMES[:4], choice.thresholds, strict=True))

    # evaluating with the tuned thresholds reports those F1s per label
    metrics.set_thresholds(choice.thresholds)
    metrics(EvalPrediction(scores, labels))
    np.testing.assert_allclose([r["f1"] for r in metrics.last_report["per_class"]], choice.validation_f1, rtol=1e-15)
    assert tune_thresholds(metrics) == choice  # the same validation data, the same choice
    metrics.update(scores[:5], labels[:5])
    with pytest.raises(MetricError, match="only change between evaluations"):
        metrics.set_thresholds(0.5)


def test_tuned_threshold_never_beats_brute_force_on_raw_scores():
    logits, labels = _data(n=800, seed=11)
    metrics = MultiLabelMetrics(NAMES)
    metrics.update(logits, labels)
    choice = tune_thresholds(metrics)
    scores = expit(logits)
    for i in range(4):
        best = _brute_force_best_f1(labels[:, i], scores[:, i])
        at_choice = f1_score(labels[:, i], scores[:, i] >= choice.thresholds[i])
        # the histogram counts are exact at grid thresholds, and the grid is 1/1000 fine
        assert at_choice == pytest.approx(choice.validation_f1[i], rel=1e-15)
        assert best - 0.02 <= at_choice <= best


def test_ties_go_to_the_threshold_closest_to_half_and_empty_labels_keep_half():
    bins = 10
    # label 0: negatives at 0.1, positives at 0.9, so any threshold in (0.1, 0.9] is perfect: 0.5 wins
    # label 1: negatives at 0.1, positives at 0.3: perfect for (0.1, 0.3], the closest to 0.5 is 0.3
    # label 2: negatives at 0.0, positives at 0.7: perfect for t in (0, 0.7], which holds 0.5
    # label 3: no positive at all
    scores = np.array([[0.1, 0.1, 0.0, 0.2], [0.1, 0.1, 0.0, 0.6], [0.9, 0.3, 0.7, 0.4], [0.9, 0.3, 0.7, 0.1]])
    labels = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    metrics = MultiLabelMetrics(NAMES[:4], bins=bins, inputs="probabilities")
    metrics.update(scores, labels)
    choice = tune_thresholds(metrics)
    assert choice.thresholds[0] == 0.5
    assert choice.thresholds[1] == 0.3
    assert choice.thresholds[2] == 0.5
    assert choice.thresholds[3] == DEFAULT_THRESHOLD
    assert choice.untuned == ("d",)
    assert choice.validation_f1 == (1.0, 1.0, 1.0, None)

    # two separate best plateaus, equally far from 0.5: positives at 0.9 and 0.4, two negatives at 0.5.
    # t in [0, 0.4]: TP 2 FP 2 → 2/3; t in (0.4, 0.5]: TP 1 FP 2 FN 1 → 2/5; t in (0.5, 0.9]: TP 1 FN 1 → 2/3.
    # 0.4 and 0.6 are both 0.1 away from 0.5: the lower one wins
    split = MultiLabelMetrics(["x"], bins=bins, inputs="probabilities")
    split.update(np.array([[0.9], [0.5], [0.5], [0.4]]), np.array([[1], [0], [0], [1]]))
    tied = tune_thresholds(split)
    assert tied.thresholds == (0.4,)
    assert tied.validation_f1[0] == pytest.approx(2 / 3, rel=1e-15)
    assert f1_score([1, 0, 0, 1], np.array([0.9, 0.5, 0.5, 0.4]) >= 0.6) == pytest.approx(2 / 3, rel=1e-15)


def test_fixed_threshold_setting_and_parsing():
    metrics = MultiLabelMetrics(NAMES)
    choice = tune_thresholds(metrics, 0.3)
    assert choice.mode == "fixed" and choice.thresholds == (0.3,) * 5
    assert parse_threshold_setting("tune") == "tune"
    assert parse_threshold_setting(" Tune ") == "tune"
    assert parse_threshold_setting(0.5) == 0.5
    for bad in (0, 1, 1.5, -0.1, True, "0.5", None):
        with pytest.raises(RecipeError, match=r"metrics\.thresholds is .*expected 'tune'"):
            parse_threshold_setting(bad)
