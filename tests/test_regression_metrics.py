"""Tests for hf_finetune.regression_metrics: scikit-learn, scipy and exact rational arithmetic are the references."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from transformers import EvalPrediction

from hf_finetune.errors import MetricError
from hf_finetune.regression_metrics import (
    SCALAR_KEYS,
    RegressionMetrics,
    write_regression_plots,
)


def _reference(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {
        "mae": mean_absolute_error(true, pred),
        "rmse": root_mean_squared_error(true, pred),
        "r2": r2_score(true, pred),
        "pearson": pearsonr(pred, true)[0],
        "spearman": spearmanr(pred, true)[0],
    }


def _data(n: int, seed: int = 0, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = offset + rng.normal(0.0, 3.0, n)
    pred = true + rng.normal(0.0, 1.0, n) + 0.1 * np.sin(true)
    return pred, true


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_matches_sklearn_and_scipy_on_1e5_values(offset):
    pred, true = _data(100_000, offset=offset)
    metrics = RegressionMetrics()
    scalars = metrics(EvalPrediction(predictions=pred, label_ids=true))
    assert list(scalars) == list(SCALAR_KEYS)
    assert all(type(v) is float for v in scalars.values())
    for key, value in _reference(pred, true).items():
        assert scalars[key] == pytest.approx(value, rel=1e-9), key
    assert metrics.last_report["spearman_exact"] is True
    assert metrics.last_report["num_samples"] == 100_000


def test_sums_are_exact_where_float_sums_are_not():
    # |errors| of 1e16, 1 and -1e16 magnitudes: a float64 running sum loses the 1s
    true = np.array([0.0, 0.0, 0.0, 0.0, 1e-3])
    pred = np.array([1e16, 1.0, 1e16, 1.0, 0.1])
    metrics = RegressionMetrics()
    scalars = metrics(EvalPrediction(pred, true))
    fr = [Fraction(v) for v in pred], [Fraction(v) for v in true]
    n = len(true)
    mae = sum(abs(p - y) for p, y in zip(*fr, strict=True)) / n
    mse = sum((p - y) ** 2 for p, y in zip(*fr, strict=True)) / n
    assert scalars["mae"] == float(mae)
    assert scalars["rmse"] == math.sqrt(float(mse))
    # a plain float64 sum loses the 1s: this data tells exact sums from naive ones
    assert float(np.sum(np.abs(pred - true)) / n) != float(mae)


def test_several_targets_report_rows_and_uniform_averages():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.1]
    pred = true + rng.normal(size=true.shape) * [0.5, 2.0, 0.05]
    metrics = RegressionMetrics(target_names=["price", "area", "rate"])
    scalars = metrics(EvalPrediction(pred, true))
    rows = metrics.last_report["per_target"]
    assert [row["target"] for row in rows] == ["price", "area", "rate"]
    raw = {
        "mae": mean_absolute_error(true, pred, multioutput="raw_values"),
        "rmse": root_mean_squared_error(true, pred, multioutput="raw_values"),
        "r2": r2_score(true, pred, multioutput="raw_values"),
        "pearson": [pearsonr(pred[:, t], true[:, t])[0] for t in range(3)],
        "spearman": [spearmanr(pred[:, t], true[:, t])[0] for t in range(3)],
    }
    for key, values in raw.items():
        np.testing.assert_allclose([row[key] for row in rows], values, rtol=1e-12, err_msg=key)
        assert scalars[key] == pytest.approx(np.mean(values), rel=1e-12)
    assert scalars["mae"] == pytest.approx(mean_absolute_error(true, pred), rel=1e-12)
    assert scalars["rmse"] == pytest.approx(root_mean_squared_error(true, pred), rel=1e-12)
    assert scalars["r2"] == pytest.approx(r2_score(true, pred), rel=1e-12)


def test_batches_in_any_order_and_merges_give_identical_results():
    rng = np.random.default_rng(2)
    true = rng.normal(size=(3000, 2)) * 7 + 100
    pred = true + rng.normal(size=true.shape)
    true[::50, 0] = 100.0  # ties for the ranks
    whole = RegressionMetrics(plot_points=200)
    expected = whole(EvalPrediction(pred, true))
    expected_report, expected_sample = whole.last_report, whole.last_plot_sample

    batched = RegressionMetrics(plot_points=200)
    order = rng.permutation(3000)
    for i, chunk in enumerate(np.array_split(order, [1, 7, 500, 501, 2000])):
        assert batched(EvalPrediction(pred[chunk], true[chunk]), compute_result=False) == {}
        assert batched.num_samples == [1, 7, 500, 501, 2000, 3000][i]
    assert batched(EvalPrediction(pred[:0], true[:0])) == expected
    assert batched.last_report == expected_report
    for t in range(2):
        # the same points, in whatever order they were kept
        got = sorted(zip(batched.last_plot_sample.predictions[t], batched.last_plot_sample.targets[t], strict=True))
        want = sorted(zip(expected_sample.predictions[t], expected_sample.targets[t], strict=True))
        assert got == want

    first, second = RegressionMetrics(plot_points=200), RegressionMetrics(plot_points=200)
    first.update(pred[order[:1234]], true[order[:1234]])
    second.update(pred[order[1234:]], true[order[1234:]])
    assert second.merge(first).compute() == expected
    assert second.last_report == expected_report


def test_trainer_batch_protocol_with_torch_tensors_resets_between_evaluations():
    pred, true = _data(90, seed=3)
    reference = RegressionMetrics()(EvalPrediction(pred.reshape(-1, 1), true))
    metrics = RegressionMetrics()
    for _ in range(2):
        for start in range(0, 90, 30):
            batch = slice(start, start + 30)
            out = metrics(
                EvalPrediction(
                    predictions=torch.tensor(pred[batch], dtype=torch.float64).reshape(-1, 1),
                    label_ids=torch.tensor(true[batch], dtype=torch.float64),
                ),
                compute_result=start == 60,
            )
        assert out == reference
    assert metrics.num_samples == 0


def test_target_scaler_reports_original_units():
    pred, true = _data(2000, seed=4, offset=50.0)
    mean, std = 50.0, 3.0
    original = RegressionMetrics()(EvalPrediction(pred, true))
    scaled = RegressionMetrics(target_scaler={"mean": mean, "std": std})
    result = scaled(EvalPrediction((pred - mean) / std, (true - mean) / std))
    for key in SCALAR_KEYS:
        assert result[key] == pytest.approx(original[key], rel=1e-12), key
    # the plotted points are data points in original units
    plotted = scaled.last_plot_sample.targets[0]
    ordered = np.sort(true)
    nearest = ordered[np.clip(np.searchsorted(ordered, plotted), 0, len(ordered) - 1)]
    nearest_below = ordered[np.clip(np.searchsorted(ordered, plotted) - 1, 0, len(ordered) - 1)]
    assert np.minimum(abs(nearest - plotted), abs(nearest_below - plotted)).max() < 1e-12
    assert scaled.last_report["target_scaler"] == {"mean": mean, "std": std}
    with pytest.raises(MetricError, match="must not be 0"):
        RegressionMetrics(target_scaler={"mean": 0, "std": 0})(EvalPrediction(pred, true))
    with pytest.raises(MetricError, match="lacks"):
        RegressionMetrics(target_scaler={"mean": 0})


def test_spearman_turns_binned_and_says_so_above_the_cap():
    pred, true = _data(20_000, seed=5)
    exact = spearmanr(pred, true)[0]
    below = RegressionMetrics(spearman_cap=20_000)
    assert below(EvalPrediction(pred, true))["spearman"] == pytest.approx(exact, rel=1e-12)
    assert below.last_report["spearman_exact"] is True

    above = RegressionMetrics(spearman_cap=5_000, spearman_bins=256)
    for chunk in np.array_split(np.arange(20_000), 8):
        above.update(pred[chunk], true[chunk])
    assert all(not state.pairs for state in above._spearman)  # the pairs were dropped
    result = above.compute()
    assert above.last_report["spearman_exact"] is False
    assert "approximate" in above.last_report["spearman_method"]
    # 256 quantile bins per axis: ties within a bin move the rank correlation by ~1/256² here
    assert result["spearman"] == pytest.approx(exact, abs=1e-3)
    assert result["spearman"] != exact
    # the other metrics stay exact
    for key in ("mae", "rmse", "r2", "pearson"):
        assert result[key] == below.last_report[key]


def test_constant_targets_and_bad_inputs():
    true = np.full(10, 2.0)
    perfect = RegressionMetrics()(EvalPrediction(true.copy(), true))
    assert perfect["r2"] == r2_score(true, true) == 1.0
    off = RegressionMetrics()(EvalPrediction(true + np.arange(10), true))
    assert off["r2"] == r2_score(true, true + np.arange(10)) == 0.0
    assert math.isnan(off["pearson"]) and math.isnan(off["spearman"])

    metrics = RegressionMetrics()
    bad = np.arange(10, dtype=float)
    bad[4] = np.nan
    with pytest.raises(MetricError, match=r"1 regression predictions are NaN.*row 4"):
        metrics(EvalPrediction(bad, true))
    assert metrics.num_samples == 0
    with pytest.raises(MetricError, match="must both have shape"):
        metrics(EvalPrediction(np.zeros((10, 2)), true))
    metrics.update(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(MetricError, match="got 3 regression targets per sample, expected 2"):
        metrics.update(np.zeros((4, 3)), np.zeros((4, 3)))


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def test_plots_are_pngs_drawing_exactly_the_bounded_sample(tmp_path, monkeypatch):
    pred, true = _data(30_000, seed=6)
    metrics = RegressionMetrics(plot_points=1000)
    for chunk in np.array_split(np.arange(30_000), 10):
        metrics.update(pred[chunk], true[chunk])
    metrics.compute()
    sample = metrics.last_plot_sample
    assert sample.predictions[0].shape == (1000,)
    # a subsample of the actual pairs
    pairs = set(zip(pred.tolist(), true.tolist(), strict=True))
    assert set(zip(sample.predictions[0].tolist(), sample.targets[0].tolist(), strict=True)) <= pairs
    # spread over the data, not its first batch
    assert sample.targets[0].std() == pytest.approx(true.std(), rel=0.15)

    drawn: list[Figure] = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        drawn.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    scatter, residual = tmp_path / "scatter.png", tmp_path / "residuals.png"
    write_regression_plots(sample, scatter, residual, title="model — test split")
    for path in (scatter, residual):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size[0] > 200 and image.size[1] > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["residuals.png", "scatter.png"]  # no temp files left

    scatter_points = drawn[0].axes[0].collections[0].get_offsets()
    np.testing.assert_array_equal(scatter_points, np.column_stack([sample.targets[0], sample.predictions[0]]))
    residual_points = drawn[1].axes[0].collections[0].get_offsets()
    np.testing.assert_array_equal(
        residual_points, np.column_stack([sample.predictions[0], sample.predictions[0] - sample.targets[0]])
    )


def test_plots_have_a_panel_per_target(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    true = rng.normal(size=(300, 4))
    metrics = RegressionMetrics(target_names=["w", "x", "y", "z"])
    metrics(EvalPrediction(true + 0.1, true))
    drawn: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), original(self, *a, **k))[1])
    write_regression_plots(metrics.last_plot_sample, tmp_path / "s.png", tmp_path / "r.png")
    assert [ax.get_title() for ax in drawn[0].axes] == ["w", "x", "y", "z"]
    for t, ax in enumerate(drawn[0].axes):
        np.testing.assert_array_equal(ax.collections[0].get_offsets()[:, 0], metrics.last_plot_sample.targets[t])
