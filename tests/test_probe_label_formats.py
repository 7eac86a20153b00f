"""The fitted probe and `metrics.baseline: linear` for multi-label and regression labels, and `fold_affine`.

A multi-label probe is one scikit-learn LogisticRegression per label, a regression probe is scikit-learn's Ridge, both
on the same standardised features and with the regularisation the validation split picks by the run's metric; the
baseline's scores are the run's metric objects applied to those scikit-learn predictions. `fold_affine` makes a
model's output `output * scale + shift` for every kind of model the toolkit builds."""

import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_finetune import probe
from hf_finetune.multilabel_metrics import SCALAR_KEYS, MultiLabelMetrics, tune_thresholds
from hf_finetune.regression_metrics import RegressionMetrics

LABELS = ["a", "b", "c"]


def _standardise(x: np.ndarray, *others: np.ndarray, floor: bool = False) -> list[np.ndarray]:
    """scikit-learn's StandardScaler; `floor` adds the probe's documented floor on tiny spreads (1e-2 × the median's),
    which only the digits' near-empty border pixels reach."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    if floor:
        std = np.sqrt(scaler.var_)
        scaler.scale_ = np.maximum(std, 1e-2 * float(np.median(std)))
    return [scaler.transform(a) for a in (x, *others)]


def _logistic_per_label(x: np.ndarray, y: np.ndarray, c: float, pos_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits' coefficients: one scikit-learn LogisticRegression per label, fitted here."""
    from sklearn.linear_model import LogisticRegression

    coef, intercept = [], []
    for j in range(y.shape[1]):
        weights = None if pos_weight is None else {0: 1.0, 1: pos_weight[j]}
        clf = LogisticRegression(C=c, max_iter=5000, class_weight=weights).fit(x, y[:, j].astype(int))
        coef.append(clf.coef_[0])
        intercept.append(clf.intercept_[0])
    return np.array(coef), np.array(intercept)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def synthetic_multi_label():
    """Features with a known linear structure per label (three labels of different prevalence), 600 rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 10)) * rng.uniform(0.5, 5.0, size=10) + rng.normal(size=10) * 3
    w = rng.normal(size=(3, 10))
    z = (x - x.mean(0)) / x.std(0) @ w.T + np.array([0.0, -1.5, 1.0]) + rng.normal(size=(600, 3)) * 1.5
    y = (z > 0).astype(np.float64)
    return (x[:300], y[:300]), (x[300:450], y[300:450]), (x[450:], y[450:])


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits: 64 pixel features; multi-label tags even / >= 5 / has a loop (0, 6, 8, 9); regression
    target the digit's value. 900 train, 400 validation, the rest (497) test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, d = data.data.astype(np.float64), data.target
    tags = np.stack([d % 2 == 0, d >= 5, np.isin(d, (0, 6, 8, 9))], axis=1).astype(np.float64)
    value = d.astype(np.float64)
    cut = ((0, 900), (900, 1300), (1300, len(d)))
    return {
        "multi": [(x[a:b], tags[a:b]) for a, b in cut],
        "regression": [(x[a:b], value[a:b]) for a, b in cut],
    }


def _check_multi_label(train, validation, test, *, floor: bool, pos_weight=None):
    (x, y), (xv, yv), (xt, _) = train, validation, test
    metrics = MultiLabelMetrics(LABELS)
    weight, bias, fit = probe.fit_probe(
        train, validation, 3, metrics, metric="map", label_format="multi_label", pos_weight=pos_weight
    )
    assert weight.shape == (3, x.shape[1]) and bias.shape == (3,)
    xs, xvs, xts = _standardise(x, xv, xt, floor=floor)

    # the chosen C is the one whose reference per-label regressions score best on validation by the run's map
    grid_map = {}
    for c in probe.C_GRID:
        coef, intercept = _logistic_per_label(xs, y, c, pos_weight)
        grid_map[c] = metrics(EvalPrediction(predictions=xvs @ coef.T + intercept, label_ids=yv))["map"]
    assert [g["C"] for g in fit.grid] == list(probe.C_GRID)
    assert [g["map"] for g in fit.grid] == pytest.approx([grid_map[c] for c in probe.C_GRID], abs=1e-6)
    assert grid_map[fit.C] == pytest.approx(max(grid_map.values()), abs=1e-9)
    assert fit.info()["chosen_by"] == "validation map" and fit.info()["C"] == fit.C and fit.converged

    # on raw test features, the probe's head is the reference at that C
    coef, intercept = _logistic_per_label(xs, y, fit.C, pos_weight)
    expected = _sigmoid(xts @ coef.T + intercept)
    got = _sigmoid(xt @ weight.T + bias)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert np.array_equal(got >= 0.5, expected >= 0.5)
    return weight, bias, fit, (coef, intercept, xvs, xts)


def test_multi_label_probe_equals_per_label_logistic_regression_on_synthetic_features(synthetic_multi_label):
    _, _, fit, _ = _check_multi_label(*synthetic_multi_label, floor=False)
    assert fit.label_format == "multi_label" and fit.constant_labels == []
    assert set(fit.train) == {"train_loss", "train_map"} and fit.train["train_map"] > 0.8


def test_multi_label_probe_with_pos_weight_equals_class_weighted_logistic_regression(synthetic_multi_label):
    _check_multi_label(*synthetic_multi_label, floor=False, pos_weight=[1.0, 4.0, 0.5])


def test_balanced_pos_weight_is_negatives_over_positives_in_train(synthetic_multi_label):
    train, validation, _ = synthetic_multi_label
    positives = train[1].sum(axis=0)
    explicit = ((len(train[1]) - positives) / positives).tolist()
    assert max(explicit) / min(explicit) > 2  # the labels' prevalences differ: the weights matter
    fits = [
        probe.fit_probe(
            train,
            validation,
            3,
            MultiLabelMetrics(LABELS),
            metric="map",
            label_format="multi_label",
            pos_weight=weights,
        )
        for weights in ("balanced", explicit)
    ]
    np.testing.assert_array_equal(fits[0][0], fits[1][0])
    np.testing.assert_array_equal(fits[0][1], fits[1][1])
    unweighted = probe.fit_probe(train, validation, 3, MultiLabelMetrics(LABELS), metric="map",
                                 label_format="multi_label")  # fmt: skip
    assert not np.allclose(unweighted[1], fits[0][1])


def test_multi_label_probe_equals_per_label_logistic_regression_on_digit_pixels(digits):
    train, validation, test = digits["multi"]
    weight, bias, _, _ = _check_multi_label(train, validation, test, floor=True)
    # the tags are nearly linear in the pixels: the probe is a real classifier, not a constant
    xt, yt = test
    accuracy = ((_sigmoid(xt @ weight.T + bias) >= 0.5) == yt).mean(axis=0)
    assert (accuracy > 0.8).all(), accuracy


def test_multi_label_validation_loss_is_the_weighted_bce_the_run_trains_with(synthetic_multi_label):
    train, validation, _ = synthetic_multi_label
    pos_weight = [1.0, 4.0, 0.5]
    weight, bias, fit = probe.fit_probe(
        train, validation, 3, MultiLabelMetrics(LABELS), metric="map", label_format="multi_label",
        pos_weight=pos_weight,
    )  # fmt: skip
    xv, yv = validation
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float64))
    expected = criterion(torch.as_tensor(xv @ weight.T + bias), torch.as_tensor(yv)).item()
    chosen = next(g for g in fit.grid if g["C"] == fit.C)
    assert chosen["loss"] == pytest.approx(expected, rel=1e-9)


def test_a_label_always_or_never_on_in_train_is_a_constant_not_a_crash(synthetic_multi_label):
    (x, y), (xv, yv), (xt, _) = synthetic_multi_label
    y, yv = y.copy(), yv.copy()
    y[:, 0], y[:, 2] = 0.0, 1.0  # label a never on, label c always on (train only: validation keeps both)
    weight, bias, fit = probe.fit_probe((x, y), (xv, yv), 3, MultiLabelMetrics(LABELS), metric="map",
                                        label_format="multi_label")  # fmt: skip
    assert fit.constant_labels == ["a", "c"] and fit.info()["constant_labels"] == ["a", "c"]
    assert np.all(weight[[0, 2]] == 0.0) and bias[0] == -probe.CONSTANT_LOGIT and bias[2] == probe.CONSTANT_LOGIT
    decisions = _sigmoid(xt @ weight.T + bias) >= 0.5
    assert not decisions[:, 0].any() and decisions[:, 2].all()
    assert np.isfinite([g["loss"] for g in fit.grid]).all()
    # the middle label is fitted as usual (the reference at the same C)
    xs, xts = _standardise(x, xt)
    coef, intercept = _logistic_per_label(xs, y[:, 1:2], fit.C)
    np.testing.assert_allclose(_sigmoid(xt @ weight[1] + bias[1]), _sigmoid(xts @ coef[0] + intercept[0]), atol=1e-3)


def _check_regression(train, validation, test, *, floor: bool, metrics=None):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error

    (x, y), (xv, yv), (xt, _) = train, validation, test
    metrics = metrics or RegressionMetrics(["value"])
    weight, bias, fit = probe.fit_probe(
        train, validation, 1, metrics, metric="rmse", greater_is_better=False, label_format="regression"
    )
    assert weight.shape == (1, x.shape[1]) and bias.shape == (1,)
    xs, xvs, xts = _standardise(x, xv, xt, floor=floor)
    rmse = {a: math.sqrt(mean_squared_error(yv, Ridge(alpha=a).fit(xs, y).predict(xvs))) for a in probe.ALPHA_GRID}
    assert [g["alpha"] for g in fit.grid] == list(probe.ALPHA_GRID)
    assert min(rmse, key=rmse.get) == fit.C
    info = fit.info()
    assert info["alpha"] == fit.C and "C" not in info and info["chosen_by"] == "validation rmse"
    expected = Ridge(alpha=fit.C).fit(xs, y).predict(xts)
    np.testing.assert_allclose((xt @ weight.T + bias)[:, 0], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    return weight, bias, fit, expected


def test_regression_probe_equals_ridge_on_synthetic_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 12)) * rng.uniform(0.2, 8.0, size=12) + 5.0
    y = x @ rng.normal(size=12) + 3.0 + rng.normal(size=500) * 4.0
    _, _, fit, _ = _check_regression((x[:250], y[:250]), (x[250:400], y[250:400]), (x[400:], y[400:]),
                                             floor=False)  # fmt: skip
    assert set(fit.train) == {"train_loss", "train_rmse", "train_r2"} and fit.train["train_r2"] > 0.5


def test_regression_probe_equals_ridge_on_digit_pixels(digits):
    train, validation, test = digits["regression"]
    expected = _check_regression(train, validation, test, floor=True)[3]
    assert np.corrcoef(expected, test[1])[0, 1] > 0.6  # a real fit of the digit's value, not the mean


def test_regression_probe_picks_alpha_by_lower_rmse_where_heavy_regularisation_wins():
    """Many noise features and few rows: the validation-best alpha is a large one, not the least-regularised."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(160, 120))
    y = x[:, 0] + rng.normal(size=160) * 2.0
    _, _, fit, _ = _check_regression((x[:60], y[:60]), (x[60:110], y[60:110]), (x[110:], y[110:]), floor=False)
    assert fit.C >= 10.0


def test_regression_validation_loss_is_the_runs_loss_mse_or_huber():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5))
    y = x @ rng.normal(size=5) + rng.standard_t(2, size=200)
    train, validation = (x[:120], y[:120]), (x[120:], y[120:])
    for delta, criterion in ((None, torch.nn.MSELoss()), (0.7, torch.nn.HuberLoss(delta=0.7))):
        weight, bias, fit = probe.fit_probe(train, validation, 1, RegressionMetrics(), metric="loss",
                                            greater_is_better=False, label_format="regression",
                                            huber_delta=delta)  # fmt: skip
        chosen = next(g for g in fit.grid if g["alpha"] == fit.C)
        expected = criterion(torch.as_tensor(x[120:] @ weight[0] + bias[0]), torch.as_tensor(y[120:])).item()
        assert chosen["loss"] == pytest.approx(expected, rel=1e-9)
        assert chosen["loss"] == min(g["loss"] for g in fit.grid)


def test_multi_label_baseline_scores_are_the_metrics_of_scikit_learn_predictions_with_tuned_thresholds(digits):
    from sklearn.metrics import f1_score, hamming_loss

    train, validation, test = digits["multi"]
    metrics = MultiLabelMetrics(LABELS)
    weight, bias, fit, (coef, intercept, xvs, xts) = _check_multi_label(train, validation, test, floor=True)
    baseline = probe.linear_baseline(
        weight, bias, fit, {"validation": validation, "test": test}, metrics, train_labels=train[1]
    )
    # thresholds: tune_thresholds on the reference's validation logits
    tuning = MultiLabelMetrics(LABELS)
    tuning(EvalPrediction(predictions=xvs @ coef.T + intercept, label_ids=validation[1]))
    choice = tune_thresholds(tuning)
    info = baseline.info["thresholds"]
    assert info["mode"] == "tune" and info["values"] == pytest.approx(choice.as_dict(), abs=2e-3)
    assert baseline.info["method"] == probe.BASELINE_METHODS["multi_label"] and baseline.info["C"] == fit.C

    reference_logits = xts @ coef.T + intercept
    expected = MultiLabelMetrics(LABELS, thresholds=list(choice.thresholds))(
        EvalPrediction(predictions=reference_logits, label_ids=test[1])
    )
    scores = baseline.for_split("test", {})
    assert set(scores) == {*SCALAR_KEYS, "loss", "C"} and scores["C"] == fit.C
    for key in SCALAR_KEYS:
        assert scores[key] == pytest.approx(expected[key], abs=2e-3), key
    # … and independently of the metric object, scikit-learn's own scores of the reference decisions
    decisions = _sigmoid(reference_logits) >= np.array(choice.thresholds)
    assert scores["f1_micro"] == pytest.approx(f1_score(test[1], decisions, average="micro"), abs=2e-3)
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(test[1], decisions), abs=2e-3)
    # the run's own metric object is untouched (its thresholds stay the run's)
    assert list(metrics.thresholds) == [0.5, 0.5, 0.5]


def test_multi_label_baseline_with_a_fixed_threshold_uses_it_for_every_label(synthetic_multi_label):
    train, validation, test = synthetic_multi_label
    metrics = MultiLabelMetrics(LABELS)
    weight, bias, fit = probe.fit_probe(train, validation, 3, metrics, metric="map", label_format="multi_label")
    baseline = probe.linear_baseline(weight, bias, fit, {"test": test}, metrics, train_labels=train[1], thresholds=0.3)
    assert baseline.info["thresholds"]["mode"] == "fixed"
    assert baseline.info["thresholds"]["values"] == dict.fromkeys(LABELS, 0.3)
    expected = MultiLabelMetrics(LABELS, thresholds=0.3)(
        EvalPrediction(predictions=test[0] @ weight.T + bias, label_ids=test[1])
    )
    assert {k: baseline.scores["test"][k] for k in SCALAR_KEYS} == {k: expected[k] for k in SCALAR_KEYS}


def test_regression_baseline_scores_are_scikit_learn_metrics_of_ridge_predictions(digits):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    train, validation, test = digits["regression"]
    # targets standardised as the data layer does; the metrics report MAE/RMSE in the original units
    mean, std = float(train[1].mean()), float(train[1].std())
    scaled = [(x, (y - mean) / std) for x, y in (train, validation, test)]
    metrics = RegressionMetrics(["value"], target_scaler={"mean": mean, "std": std})
    weight, bias, fit, expected_scaled = _check_regression(*scaled, floor=True, metrics=metrics)
    baseline = probe.linear_baseline(weight, bias, fit, {"test": scaled[2]}, metrics, train_labels=scaled[0][1])
    scores = baseline.for_split("test", {})
    predicted, truth = expected_scaled * std + mean, test[1]
    assert set(scores) == {"mae", "rmse", "r2", "pearson", "spearman", "loss", "alpha"} and scores["alpha"] == fit.C
    assert scores["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-4)
    assert scores["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)), rel=1e-4)
    assert scores["r2"] == pytest.approx(r2_score(truth, predicted), rel=1e-4)
    assert scores["pearson"] == pytest.approx(pearsonr(truth, predicted).statistic, rel=1e-4)
    assert scores["spearman"] == pytest.approx(spearmanr(truth, predicted).statistic, rel=1e-4)
    assert scores["loss"] == pytest.approx(mean_squared_error(scaled[2][1], expected_scaled), rel=1e-4)  # scaled
    assert baseline.info["method"] == probe.BASELINE_METHODS["regression"] and baseline.info["alpha"] == fit.C


def test_regression_baseline_leaves_out_a_constant_predictions_nan_correlations():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(80, 3)), rng.normal(size=80)
    fit = probe.ProbeFit(1.0, "rmse", [], 80, 3, 0.0, 0.0, True, label_format="regression")
    baseline = probe.linear_baseline(np.zeros((1, 3)), np.array([0.5]), fit, {"test": (x, y)}, RegressionMetrics(),
                                     train_labels=y)  # fmt: skip
    scores = baseline.scores["test"]
    assert "pearson" not in scores and "spearman" not in scores
    assert scores["mae"] == pytest.approx(np.abs(y - 0.5).mean())
    same = probe.LinearBaseline({}, {}, same_as="run").for_split("test", {"eval_rmse": 1.0, "eval_pearson": math.nan})
    assert same == {"same_as": "run", "eval_rmse": 1.0}


def test_probe_arguments_that_do_not_fit_the_label_format_are_refused(synthetic_multi_label):
    train, validation, _ = synthetic_multi_label
    metrics = MultiLabelMetrics(LABELS)
    with pytest.raises(ValueError, match="class_weight is for single-label"):
        probe.fit_probe(
            train, validation, 3, metrics, metric="map", label_format="multi_label", class_weight="balanced"
        )
    with pytest.raises(ValueError, match=r"multi-hot 0/1 of shape \[N, 4\]"):
        probe.fit_probe(train, validation, 4, metrics, metric="map", label_format="multi_label")
    with pytest.raises(ValueError, match="label_format must be one of"):
        probe.fit_probe(train, validation, 3, metrics, label_format="multilabel")
    with pytest.raises(ValueError, match="regression probe fits one output"):
        probe.fit_probe((train[0], train[1][:, 0]), (validation[0], validation[1][:, 0]), 3, RegressionMetrics(),
                        metric="rmse", label_format="regression")  # fmt: skip


# ---------------------------------------------------------------------------------------- features from a real model


def _simple_cnn(num_labels: int):
    from hf_finetune.models.configuration_simple_cnn import SimpleCNNConfig
    from hf_finetune.models.modeling_simple_cnn import SimpleCNNForImageClassification

    config = SimpleCNNConfig(num_labels=num_labels, image_size=16, filters=[4], dense_units=[8], dropout=0.0)
    return SimpleCNNForImageClassification(config)


@pytest.mark.parametrize(
    ("label", "shape"),
    [(lambda i: torch.tensor([i % 2, 1, 0], dtype=torch.float32), (24, 3)), (lambda i: torch.tensor(i * 0.5), (24,))],
    ids=["multi_label", "regression"],
)
def test_extract_features_keeps_float_labels(label, shape):
    torch.manual_seed(0)
    model = _simple_cnn(shape[1] if len(shape) == 2 else 1)
    rows = [{"pixel_values": torch.randn(3, 16, 16), "labels": label(i)} for i in range(24)]

    def collate(batch):
        return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}

    x, y = probe.extract_features(model, rows, collate, batch_size=10, num_workers=0, device=torch.device("cpu"))
    assert x.shape == (24, 8) and y.shape == shape and y.dtype == np.float64
    np.testing.assert_array_equal(y, torch.stack([r["labels"] for r in rows]).double().numpy())
    # the head fitted on these features answers exactly as the features say, once written into the model
    weight, bias = (
        np.random.default_rng(0).normal(size=(model.config.num_labels, 8)),
        np.arange(model.config.num_labels),
    )
    probe.set_head(model, weight, bias)
    probe.check_baseline_head(model)
    with torch.no_grad():
        logits = model(pixel_values=torch.stack([r["pixel_values"] for r in rows])).logits.double().numpy()
    np.testing.assert_allclose(logits, x @ weight.T + bias, atol=1e-4)


# ------------------------------------------------------------------------------------------------------- fold_affine


def _tiny_timm(num_labels: int):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=num_labels))


def _tiny_vit(num_labels: int):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_labels)  # fmt: skip
    return ViTForImageClassification(config)


def _tiny_text(cls_name: str):
    def build(num_labels: int):
        import transformers

        config_cls = getattr(transformers, cls_name.replace("ForSequenceClassification", "Config"))
        config = config_cls(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=40, num_labels=num_labels)  # fmt: skip
        return getattr(transformers, cls_name)(config)

    return build


def _inputs(model) -> dict[str, torch.Tensor]:
    if hasattr(model.config, "vocab_size"):
        ids = torch.randint(5, 50, (4, 12))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixel_values": torch.randn(4, 3, 16, 16)}


@pytest.mark.parametrize(
    "build",
    [
        _tiny_timm,
        _tiny_vit,
        _simple_cnn,
        _tiny_text("BertForSequenceClassification"),
        _tiny_text("RobertaForSequenceClassification"),
    ],
    ids=["timm", "vit", "simple_cnn", "bert", "roberta"],
)
@pytest.mark.parametrize("num_labels", [1, 3])
def test_fold_affine_makes_the_model_output_scale_times_output_plus_shift(build, num_labels):
    torch.manual_seed(0)
    model = build(num_labels).eval()
    with torch.no_grad():  # some heads start at zero (timm's), whose output any fold of the scale would keep
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    inputs = _inputs(model)
    with torch.no_grad():
        before = model(**inputs).logits.clone()
        scale, shift = 3.7, -12.25
        probe.fold_affine(model, scale, shift)
        after = model(**inputs).logits
    assert before.abs().max() > 1e-3  # a real output, not zeros that any fold would keep
    torch.testing.assert_close(after, before * scale + shift, atol=1e-5, rtol=1e-5)


def test_fold_affine_refuses_a_non_finite_or_zero_scale():
    model = _simple_cnn(1)
    for scale, shift in ((0.0, 1.0), (math.nan, 0.0), (1.0, math.inf)):
        with pytest.raises(ValueError, match="finite, non-zero scale"):
            probe.fold_affine(model, scale, shift)
