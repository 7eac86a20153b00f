"""Temperature scaling: the fit against scipy and scikit-learn on the same logits, folding into a head, and refusals."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from sklearn.metrics import log_loss

from hf_finetune.calibration import (
    CONFIG_KEY,
    METHOD_BRENTQ,
    METHOD_CONSTANT,
    METHOD_LOWER_BOUND,
    METHOD_UPPER_BOUND,
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
    TemperatureFit,
    apply_temperature,
    fit_temperature,
    fold_temperature,
    saved_temperature,
)
from hf_finetune.errors import MetricError, ModelError

ROWS, CLASSES = 20_000, 5


def calibrated(rows: int = ROWS, classes: int = CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, classes)) * 1.5
    labels = (softmax(logits, axis=1).cumsum(axis=1) > rng.random((rows, 1))).argmax(axis=1)
    return logits, labels


def reference_nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """The mean NLL of softmax(logits / t), written directly in t (no shift, no β)."""
    scaled = logits / t
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]))


def standard_error(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    """The asymptotic standard error of the fitted T at the true temperature `t` (M-estimator sandwich in β = 1/T:
    sd(score) / (√N · mean Hessian), then times T² for dT = −T² dβ)."""
    p = softmax(logits / t, axis=1)
    mean = (p * logits).sum(axis=1)
    score = mean - logits[np.arange(len(labels)), labels]
    hessian = ((p * logits**2).sum(axis=1) - mean**2).mean()
    return float(score.std() / math.sqrt(len(labels)) / hessian * t**2)


# --------------------------------------------------------------------------------------------- the fit


@pytest.mark.parametrize("scale", [3.0, 0.4, 1.0])
def test_fitted_temperature_is_scipys_optimum_and_beats_a_dense_grid(scale):
    logits, labels = calibrated()
    logits = logits * scale
    fit = fit_temperature(logits, labels)
    assert fit.converged and fit.method == METHOD_BRENTQ and fit.rows == ROWS

    # scipy's own minimiser over T itself, on scikit-learn's log loss
    def objective(t: np.ndarray) -> float:
        return log_loss(labels, softmax(logits / t[0], axis=1), labels=range(CLASSES))

    ref = minimize(objective, x0=[1.0], method="L-BFGS-B", bounds=[(TEMPERATURE_MIN, TEMPERATURE_MAX)])
    ref = minimize(objective, x0=ref.x, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-16})
    assert ref.success
    assert fit.temperature == pytest.approx(ref.x[0], rel=1e-6)

    at_fit = reference_nll(logits, labels, fit.temperature)
    assert fit.nll_after == pytest.approx(at_fit, rel=1e-12)
    near = fit.temperature * np.exp(np.concatenate([np.arange(1, 21), -np.arange(1, 21)]) * 1e-3)
    far = np.geomspace(TEMPERATURE_MIN, TEMPERATURE_MAX, 121)
    for t in np.concatenate([near, far]):
        assert at_fit <= reference_nll(logits, labels, t), t


def test_overconfident_logits_give_the_factor_they_were_scaled_by():
    # labels drawn from softmax(z): softmax(3z / T) is the true distribution at T = 3, the population optimum
    logits, labels = calibrated()
    fit = fit_temperature(logits * 3.0, labels)
    se = standard_error(logits * 3.0, labels, 3.0)
    assert se < 0.05  # 20k rows pin T well enough for the check below to mean something
    assert abs(fit.temperature - 3.0) < 5 * se  # saw |T − 3| = 0.002, se = 0.027
    assert fit.nll_after < fit.nll_before - 0.1


def test_underconfident_logits_give_a_temperature_below_one():
    logits, labels = calibrated(seed=1)
    fit = fit_temperature(logits * 0.4, labels)
    assert fit.temperature < 1
    assert abs(fit.temperature - 0.4) < 5 * standard_error(logits * 0.4, labels, 0.4)
    assert fit.nll_after < fit.nll_before


def random_cases():
    rng = np.random.default_rng(5)
    for i in range(12):
        rows, classes = int(rng.integers(1, 400)), int(rng.integers(2, 12))
        logits = rng.normal(size=(rows, classes)) * rng.choice(
            [0.05, 1.0, 4.0]
        )  # not beyond: log_loss clips p at 2.2e-16
        labels = rng.integers(0, classes, rows) if i % 3 == 0 else logits.argmax(axis=1)
        flip = rng.random(rows) < 0.3
        labels = np.where(flip, rng.integers(0, classes, rows), labels)
        yield logits, labels


@pytest.mark.parametrize("case", list(random_cases()), ids=lambda c: f"{c[0].shape}")
def test_nll_never_rises_and_both_nlls_are_scikit_learns_log_loss(case):
    logits, labels = case
    fit = fit_temperature(logits, labels)
    classes = range(logits.shape[1])
    assert fit.nll_after <= fit.nll_before
    assert fit.nll_before == pytest.approx(log_loss(labels, softmax(logits, axis=1), labels=classes), rel=1e-9)
    after = log_loss(labels, softmax(apply_temperature(logits, fit.temperature), axis=1), labels=classes)
    assert fit.nll_after == pytest.approx(after, rel=1e-9)
    assert TEMPERATURE_MIN <= fit.temperature <= TEMPERATURE_MAX


def test_huge_logits_are_fitted_without_overflow_or_clipping():
    # p_y down to e^-200: scikit-learn's log_loss would clip it at 2.2e-16, float64 exp(-z) would underflow
    logits, labels = calibrated(rows=2000, seed=3)
    labels = np.where(np.arange(2000) % 4 == 0, (labels + 1) % CLASSES, labels)
    fit = fit_temperature(logits * 40, labels)
    assert fit.converged and fit.temperature > 10
    assert fit.nll_before == pytest.approx(reference_nll(logits * 40, labels, 1.0), rel=1e-12)
    assert fit.nll_after == pytest.approx(reference_nll(logits * 40, labels, fit.temperature), rel=1e-12)
    assert fit.nll_after < fit.nll_before / 5


def test_temperature_never_changes_the_predicted_class():
    logits, labels = calibrated(rows=2000)
    accuracy = (logits.argmax(axis=1) == labels).mean()
    for t in (TEMPERATURE_MIN, 0.3, 1.0, 2.7, fit_temperature(logits * 3, labels).temperature, TEMPERATURE_MAX):
        scaled = apply_temperature(logits, t)
        np.testing.assert_array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))
        assert (softmax(scaled, axis=1).argmax(axis=1) == labels).mean() == accuracy


def test_torch_and_float32_logits_fit_like_float64_numpy():
    logits, labels = calibrated(rows=3000)
    logits = (logits * 2).astype(np.float32)
    reference = fit_temperature(logits.astype(np.float64), labels)
    assert fit_temperature(torch.from_numpy(logits), torch.from_numpy(labels)) == reference
    assert fit_temperature(logits, labels.astype(np.float64)) == reference


def test_separated_rows_clamp_to_the_lower_bound(caplog):
    logits, _ = calibrated(rows=500)
    with caplog.at_level(logging.WARNING, logger="hf_finetune.calibration"):
        fit = fit_temperature(logits, logits.argmax(axis=1))
    assert (fit.temperature, fit.converged, fit.method) == (TEMPERATURE_MIN, False, METHOD_LOWER_BOUND)
    assert fit.nll_after == pytest.approx(reference_nll(logits, logits.argmax(axis=1), TEMPERATURE_MIN), rel=1e-12)
    assert "separated" in caplog.text


def test_anti_informative_logits_clamp_to_the_upper_bound(caplog):
    logits, _ = calibrated(rows=500)
    labels = logits.argmin(axis=1)  # the lower a logit, the likelier its class: the best T > 0 is +inf
    with caplog.at_level(logging.WARNING, logger="hf_finetune.calibration"):
        fit = fit_temperature(logits, labels)
    assert (fit.temperature, fit.converged, fit.method) == (TEMPERATURE_MAX, False, METHOD_UPPER_BOUND)
    assert fit.nll_after < fit.nll_before
    assert "no information" in caplog.text


def test_constant_logits_keep_temperature_one(caplog):
    logits = np.repeat(np.array([[0.0], [7.5], [-3.0]]), 4, axis=1)
    with caplog.at_level(logging.WARNING, logger="hf_finetune.calibration"):
        fit = fit_temperature(logits, np.array([0, 1, 3]))
    assert fit == TemperatureFit(1.0, fit.nll_before, fit.nll_before, 3, True, METHOD_CONSTANT)
    assert fit.nll_before == pytest.approx(math.log(4), rel=1e-15)
    assert "constant" in caplog.text


def test_running_out_of_iterations_is_reported():
    logits, labels = calibrated(rows=2000)
    fit = fit_temperature(logits * 3, labels, max_iter=1)
    assert not fit.converged and fit.nll_after <= fit.nll_before


def test_to_json_is_plain_and_round_trips():
    logits, labels = calibrated(rows=1000)
    fit = fit_temperature(np.float32(logits * 2), labels)
    data = fit.to_json()
    assert json.loads(json.dumps(data)) == data
    assert {k: type(v) for k, v in data.items()} == {
        "temperature": float,
        "nll_before": float,
        "nll_after": float,
        "rows": int,
        "converged": bool,
        "method": str,
    }
    assert TemperatureFit(**data) == fit


GOOD = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "no rows to fit"),
        (np.zeros((4, 1)), np.zeros(4, dtype=int), "at least 2 classes"),
        (np.array([1.0, 2.0]), np.array([0]), "2-D array"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([0, 1]), r"1 row\(s\) of logits hold NaN or ±inf \(rows 0\)"),
        (np.array([[1.0, 2.0], [np.inf, 1.0]]), np.array([0, 1]), r"NaN or ±inf \(rows 1\)"),
        (np.array([["a", "b"]]), np.array([0]), "must be real numbers"),
        (GOOD, np.array([0, 3]), r"class indices in \[0, 2\].*rows 1 hold 3"),
        (GOOD, np.array([-100, 1]), r"rows 0 hold -100.*-100 is the ignore index"),
        (GOOD, np.array([0]), "1-D array of 2 class indices"),
        (GOOD, np.eye(3)[[0, 1]], "1-D array of 2 class indices"),
        (GOOD, np.array([0.5, 1.0]), "whole class indices; rows 0 hold 0.5"),
        (GOOD, np.array([True, False]), "integer class indices, got dtype bool"),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(logits, labels, match):
    with pytest.raises(MetricError, match=match):
        fit_temperature(logits, labels)


@pytest.mark.parametrize("max_iter", [0, -3, 2.5, True])
def test_bad_max_iter_is_refused(max_iter):
    with pytest.raises(MetricError, match="max_iter must be a positive integer"):
        fit_temperature(GOOD, np.array([0, 1]), max_iter=max_iter)


# --------------------------------------------------------------------------------------------- applying it

BAD_TEMPERATURES = [
    (0.0, "must be a finite number > 0"),
    (-2.0, "must be a finite number > 0"),
    (float("nan"), "must be a finite number > 0"),
    (float("inf"), "must be a finite number > 0"),
    ("2", "must be a number"),
    (True, "must be a number"),
    (None, "must be a number"),
]


def test_apply_temperature_on_numpy_and_torch():
    logits, _ = calibrated(rows=50)
    for dtype in (np.float16, np.float32, np.float64):
        narrow = logits.astype(dtype)
        out = apply_temperature(narrow, 2.7)
        assert isinstance(out, np.ndarray) and out.dtype == dtype
        np.testing.assert_array_equal(out, (narrow.astype(np.float64) / 2.7).astype(dtype))
    assert apply_temperature(np.array([[1, 3]]), 2).dtype == np.float64
    np.testing.assert_array_equal(apply_temperature([[1.0, 3.0]], 2.0), [[0.5, 1.5]])

    tensor = torch.from_numpy(logits).float()
    out = apply_temperature(tensor, 2.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, tensor / 2.5, rtol=0, atol=0)
    half = apply_temperature(tensor.bfloat16(), 0.5)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, tensor.bfloat16() * 2, rtol=0, atol=0)
    assert apply_temperature(torch.tensor([[1, 3]]), 2).dtype == torch.float64
    np.testing.assert_allclose(softmax(apply_temperature(logits, 3.0), axis=1), softmax(logits / 3, axis=1))


@pytest.mark.parametrize(("temperature", "match"), BAD_TEMPERATURES)
def test_apply_temperature_refuses_bad_temperatures(temperature, match):
    with pytest.raises(MetricError, match=f"the temperature {match}"):
        apply_temperature(GOOD, temperature)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_temperature_divides_a_linear_heads_outputs(bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 4, bias=bias)
    x = torch.randn(64, 16)
    before = head(x).detach().double()
    fold_temperature(head, 2.7)
    torch.testing.assert_close(head(x).detach().double(), before / 2.7, rtol=1e-6, atol=1e-6)
    probs = torch.softmax(head(x).detach().double(), dim=-1).numpy()
    np.testing.assert_allclose(probs, softmax(before.numpy() / 2.7, axis=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("temperature", "match"), BAD_TEMPERATURES)
def test_fold_temperature_refuses_bad_temperatures_and_leaves_the_head_alone(temperature, match):
    head = torch.nn.Linear(3, 2)
    weight = head.weight.detach().clone()
    with pytest.raises(MetricError, match=f"the temperature to fold {match}"):
        fold_temperature(head, temperature)
    assert torch.equal(head.weight, weight)


def test_fold_temperature_needs_a_linear():
    with pytest.raises(ModelError, match=r"needs the torch\.nn\.Linear that outputs the logits, got Sequential"):
        fold_temperature(torch.nn.Sequential(torch.nn.Linear(3, 2)), 2.0)


def test_pipeline_of_a_saved_folded_model_gives_calibrated_scores(tiny_bert_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.weight.mul_(200)  # a random head's logits are ~0; make the temperature visible
        model.classifier.bias.copy_(torch.linspace(1.5, -1.5, model.config.num_labels))  # initialised to 0
    texts = ["a great film", "dull and far too long", "the plot was fine", "loved it"]
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts]).double().numpy()
    temperature = 2.5
    fold_temperature(model.classifier, temperature)
    setattr(model.config, CONFIG_KEY, temperature)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    results = pipeline("text-classification", model=str(tmp_path), top_k=None, device="cpu")(texts)
    label2id = model.config.label2id
    scores = np.array([[{r["label"]: r["score"] for r in row}[name] for name in label2id] for row in results])
    expected = softmax(logits / temperature, axis=1)[:, [label2id[name] for name in label2id]]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert np.abs(expected - softmax(logits, axis=1)[:, list(label2id.values())]).max() > 0.05

    assert saved_temperature(AutoConfig.from_pretrained(tmp_path)) == temperature
    assert saved_temperature(json.loads((tmp_path / "config.json").read_text())) == temperature


def test_saved_temperature_reads_the_config_key():
    assert saved_temperature({}) is None
    assert saved_temperature({CONFIG_KEY: None}) is None
    assert saved_temperature({"temperature": 2.0}) is None  # a generation setting, not ours
    assert saved_temperature({CONFIG_KEY: 3}) == 3.0
    assert saved_temperature(type("Config", (), {CONFIG_KEY: 1.25})()) == 1.25
    assert saved_temperature(object()) is None


@pytest.mark.parametrize(("value", "match"), BAD_TEMPERATURES[:-1])
def test_saved_temperature_refuses_bad_values_naming_the_key(value, match):
    with pytest.raises(MetricError, match=rf"config's '{CONFIG_KEY}' {match}.*Delete the '{CONFIG_KEY}' entry"):
        saved_temperature({CONFIG_KEY: value})
