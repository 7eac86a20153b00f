"""The fitted linear probe (`transfer.strategy: linear_probe`, and the probe phase of `lp_ft`).

The frozen backbone's features (the input of the classification head, caught with a forward hook in eval mode) are
computed once per split with eval preprocessing, kept in memory, and the new head is fitted on them to convergence on
standardised features, its regularisation picked from a small log grid on the validation split by the run's metric:

- single-label: scikit-learn's multinomial `LogisticRegression` (L-BFGS), L2 strength C;
- multi-label: one binary `LogisticRegression` per label (the sigmoid head's model), one C for all labels;
- regression: scikit-learn's `Ridge` (least squares with an L2 penalty), strength alpha.

The standardisation is folded back into the head's weight and bias, so the saved head is an ordinary `nn.Linear` on
raw features and the output folder loads like any other.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import MetricError
from .models.structure import head_linear

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset as TorchDataset
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

LABEL_FORMATS = ("single", "multi_label", "regression")
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # L2 strength: smaller C = stronger regularisation
# Ridge's penalty: alpha·|w|² against the *sum* of squared errors, so on standardised features alpha ~ N weighs the
# penalty like one more copy of the data; the grid spans well below and above that for a few hundred to 10⁵ rows.
ALPHA_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0, 1e4, 1e5)
MAX_ITER = 5000  # L-BFGS iterations; standardised features converge well within this
# A feature whose spread is below this share of the median feature's is scaled as if it had that spread: a
# near-constant feature (MiniLM's mean-pooled features hold one with std 7.6e-33) would otherwise get a weight of
# ~1e32 once the scaling is folded into the head, harmless on the training rows and explosive on any other input.
STD_FLOOR = 1e-2
# A multi-label label that is always (or never) on in train: logistic regression has no optimum there (its bias runs
# off to ±∞), so the head answers it with zero weights and this bias: sigmoid(±20) is 1 - 2e-9 / 2e-9, a decision no
# threshold in (0, 1) that tuning can pick changes, and a finite logit keeps the loss and the saved model finite.
CONSTANT_LOGIT = 20.0

METHODS = {
    "single": "multinomial logistic regression (scikit-learn, lbfgs) on standardised frozen features",
    "multi_label": "one binary logistic regression per label (scikit-learn, lbfgs) on standardised frozen features, "
    "one C for all labels",
    "regression": "ridge regression (scikit-learn Ridge, least squares with an L2 penalty) on standardised frozen "
    "features",
}


@dataclass
class ProbeFit:
    """What the fit chose and how long it took; `info()` goes into metrics.json's run info and onto the card.

    `C` is the chosen value of the regularisation parameter: LogisticRegression's C (single- and multi-label) or,
    for regression, Ridge's alpha (info() then names it `alpha`)."""

    C: float
    metric: str  # the validation metric C was chosen by (`loss` or a metrics.json key such as `accuracy`)
    grid: list[dict[str, float]]  # per C (alpha): the metric and the validation loss
    samples: int
    dim: int
    feature_seconds: float
    fit_seconds: float
    converged: bool
    train: dict[str, float] = field(default_factory=dict)  # the fitted head on the training features
    scaling: str = "feature"  # how the features were scaled for the fit (see fit_probe)
    label_format: str = "single"
    constant_labels: list[str] = field(default_factory=list)  # multi-label: labels always / never on in train

    @property
    def parameter(self) -> str:
        """The name of the regularisation parameter the grid ran over: `C` or (regression) `alpha`."""
        return "alpha" if self.label_format == "regression" else "C"

    def info(self) -> dict[str, Any]:
        info = {
            "method": METHODS[self.label_format],
            "scaling": self.scaling,
            "fitted_on": f"fitted on {self.samples} cached features of dim {self.dim}",
            self.parameter: self.C,
            "chosen_by": f"validation {self.metric}",
            "grid": self.grid,
            "converged": self.converged,
            "feature_seconds": round(self.feature_seconds, 3),
            "fit_seconds": round(self.fit_seconds, 3),
        }
        if self.label_format != "single":
            info["label_format"] = self.label_format
        if self.label_format == "multi_label":
            info["constant_labels"] = list(self.constant_labels)
        return info


def extract_features(
    model: nn.Module,
    dataset: TorchDataset,
    collate: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], labels): the input of the head's Linear over `dataset`, in eval mode, no gradients.

    Labels come back as the batches carry them: class ids int64 [N]; multi-hot float64 [N, L] (multi-label);
    float64 [N] (regression)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    linear = head_linear(model)
    caught: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda _m, args: caught.append(args[0].detach().float().cpu()))
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    try:
        with torch.no_grad():
            for batch in loader:
                labels.append(batch["labels"])
                model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
        model.train(was_training)
    features = torch.cat([f.reshape(f.shape[0], -1) for f in caught]).numpy()
    y = torch.cat(labels)
    # float labels (multi-hot, regression targets) in float64, what the fits and the metrics compute in
    return features, y.double().numpy() if y.is_floating_point() else y.numpy().astype(np.int64)


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    num_labels: int,
    metrics: Callable[[EvalPrediction], dict[str, float]],
    *,
    metric: str = "accuracy",
    greater_is_better: bool = True,
    class_weight: dict[int, float] | str | None = None,
    scaling: Literal["feature", "global"] = "feature",
    label_format: str = "single",
    pos_weight: Sequence[float] | str | None = None,
    huber_delta: float | None = None,
) -> tuple[np.ndarray, np.ndarray, ProbeFit]:
    """Fit the head for every C (alpha) in the grid, pick it on the validation split, return (weight [K, D],
    bias [K], fit); K is the number of classes, of labels (multi-label), or 1 (regression).

    The weight and bias apply to raw (unstandardised) features. Ties on the metric go to the lower validation
    loss, then to the stronger regularisation (the smaller C, the larger alpha).

    `label_format`: `single` (labels: class ids [N]; `class_weight` as the run's loss.class_weights), `multi_label`
    (labels: multi-hot [N, num_labels]; `pos_weight`: one weight per label for its positives, as the run's BCE loss,
    or `balanced` = negatives / positives in train), `regression` (labels: targets [N]; the validation loss is the
    MSE, or the Huber loss with `huber_delta`). `metrics` is the run's compute_metrics for that format, called with
    EvalPrediction(predictions=logits [N, K], label_ids=labels as given).

    `scaling`: `feature` centres and scales each feature by its own spread (floored at STD_FLOOR × the median's),
    the usual set-up for a probe that is only evaluated. `global` centres each feature and divides all by one number
    (their root-mean-square spread), for a head that gradient descent fine-tunes next (lp_ft): folded back, per-feature
    scaling puts weights up to 1/STD_FLOOR times larger on low-spread features, whose values are the first to move
    once the backbone trains, and their gradients flood the backbone."""
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    (x, y), (xv, yv) = train, validation
    problem = _problem(label_format, y, yv, num_labels, class_weight, pos_weight, huber_delta, metrics)
    scaler = _scaler(StandardScaler().fit(x), scaling)
    xs, xvs = scaler.transform(x), scaler.transform(xv)
    grid, fits = [], []
    for c in problem.grid:
        coef, intercept, converged = problem.fit(xs, y, c)
        scores = problem.scores(xvs @ coef.T + intercept, yv, metrics)
        if metric not in scores:
            raise MetricError(
                f"metric_for_best_model {metric!r}: the probe picks its regularisation by a validation metric, and "
                f"this run computes {sorted(scores)}; set metrics.metric_for_best_model to one of them"
            )
        row = {problem.parameter: c, **({metric: scores[metric]} if metric != "loss" else {}), "loss": scores["loss"]}
        grid.append(row)
        fits.append((coef, intercept, converged))
        logger.info(
            "probe: %s=%g  validation %s %.4f, loss %.4f", problem.parameter, c, metric, scores[metric], scores["loss"]
        )
    sign = 1.0 if greater_is_better else -1.0
    # NaN (a constant prediction's Pearson, say) never wins: it sorts below every number
    best = max(
        range(len(grid)),
        key=lambda i: (
            _orderable(sign * grid[i][metric]),
            -grid[i]["loss"],
            problem.stronger * grid[i][problem.parameter],
        ),
    )
    coef, intercept, converged = fits[best]
    weight, bias = _unscaled(coef, intercept, scaler)
    train_scores = problem.scores(x @ weight.T + bias, y, metrics)
    fit = ProbeFit(
        C=problem.grid[best],
        metric=metric,
        grid=grid,
        samples=len(y),
        dim=x.shape[1],
        feature_seconds=0.0,
        fit_seconds=time.perf_counter() - started,
        converged=converged,
        scaling=scaling,
        train={
            "train_loss": train_scores["loss"],
            **{f"train_{k}": train_scores[k] for k in problem.train_keys if k in train_scores},
        },
        label_format=label_format,
        constant_labels=problem.constant_labels(y),
    )
    logger.info("probe: chose %s=%g by validation %s (grid %s)", problem.parameter, fit.C, metric, list(problem.grid))
    # float64: `set_head` casts to the head's dtype; the linear baseline scores with these exact coefficients
    return weight, bias, fit


def _orderable(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _scaler(scaler: Any, scaling: str) -> Any:
    """The fitted StandardScaler with its scale floored (`feature`) or made one shared number (`global`)."""
    import numpy as np

    std = np.sqrt(scaler.var_)
    if scaling == "global":
        scaler.scale_ = np.full_like(std, max(float(np.sqrt(np.mean(scaler.var_))), np.finfo(np.float64).tiny))
    else:
        scaler.scale_ = np.maximum(std, STD_FLOOR * float(np.median(std)) or 1.0)
    return scaler


def _unscaled(coef: np.ndarray, intercept: np.ndarray, scaler: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fold the standardisation into the head: W (x - mu) / s + b = (W / s) x + (b - (W / s) mu)."""
    weight = coef / scaler.scale_
    return weight, intercept - weight @ scaler.mean_


def _logistic(x: np.ndarray, y: np.ndarray, c: float, class_weight: Any) -> tuple[Any, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        logger.warning("probe: L-BFGS did not converge in %d iterations at C=%g; its head may be off", MAX_ITER, c)
    return clf, converged


# ------------------------------------------------------------------------------------------------ one per label format


class _Problem:
    """What differs between label formats: the grid, the fit in standardised space, the validation loss."""

    grid: tuple[float, ...] = C_GRID
    parameter = "C"
    stronger = -1.0  # sign that makes the stronger regularisation the larger key (smaller C)
    train_keys: tuple[str, ...] = ()

    def fit(self, x: np.ndarray, y: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray, bool]:
        raise NotImplementedError

    def loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        raise NotImplementedError

    def scores(
        self, logits: np.ndarray, labels: np.ndarray, metrics: Callable[[EvalPrediction], dict[str, float]]
    ) -> dict[str, float]:
        """The run's own metrics (metrics.json keys) of these logits, plus the mean validation `loss`."""
        from transformers import EvalPrediction

        loss = self.loss(logits, labels) if len(labels) else float("nan")
        return {**metrics(EvalPrediction(predictions=logits, label_ids=labels)), "loss": loss}

    def constant_labels(self, y: np.ndarray) -> list[str]:
        return []


class _Single(_Problem):
    train_keys = ("accuracy",)

    def __init__(self, num_labels: int, class_weight: dict[int, float] | str | None, train_labels: np.ndarray) -> None:
        self.num_labels, self.class_weight, self.train_labels = num_labels, class_weight, train_labels

    def fit(self, x: np.ndarray, y: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray, bool]:
        clf, converged = _logistic(x, y, value, self.class_weight)
        return (*_coefficients(clf, self.num_labels), converged)

    def loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        return _cross_entropy(
            logits, labels, _sample_weights(labels, self.class_weight, self.train_labels, self.num_labels)
        )


class _MultiLabel(_Problem):
    train_keys = ("map",)

    def __init__(self, num_labels: int, pos_weight: np.ndarray | None, names: Sequence[str] | None) -> None:
        self.num_labels, self.pos_weight = num_labels, pos_weight
        self.names = list(names) if names is not None else [str(i) for i in range(num_labels)]

    def fit(self, x: np.ndarray, y: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray, bool]:
        import numpy as np

        coef, intercept, converged = np.zeros((self.num_labels, x.shape[1])), np.zeros(self.num_labels), True
        for j in range(self.num_labels):
            column = y[:, j].astype(np.int64)
            if column.min() == column.max():  # always on / never on: no optimum to find (see CONSTANT_LOGIT)
                intercept[j] = CONSTANT_LOGIT if column[0] else -CONSTANT_LOGIT
                continue
            weights = None if self.pos_weight is None else {0: 1.0, 1: float(self.pos_weight[j])}
            clf, ok = _logistic(x, column, value, weights)
            coef[j], intercept[j], converged = clf.coef_[0], clf.intercept_[0], converged and ok
        return coef, intercept, converged

    def loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """BCE with logits, mean over every (row, label), positives weighted by pos_weight: the run's loss."""
        import numpy as np

        positive = np.logaddexp(0.0, -logits)  # -log sigmoid(z)
        negative = np.logaddexp(0.0, logits)  # -log (1 - sigmoid(z))
        weight = 1.0 if self.pos_weight is None else self.pos_weight[None, :]
        return float(np.mean(weight * labels * positive + (1.0 - labels) * negative))

    def constant_labels(self, y: np.ndarray) -> list[str]:
        return [self.names[j] for j in range(self.num_labels) if y[:, j].min() == y[:, j].max()]


class _Regression(_Problem):
    grid = ALPHA_GRID
    parameter = "alpha"
    stronger = 1.0
    train_keys = ("rmse", "r2")

    def __init__(self, huber_delta: float | None) -> None:
        self.huber_delta = huber_delta

    def fit(self, x: np.ndarray, y: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray, bool]:
        import numpy as np
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=value).fit(x, y)
        return (
            np.asarray(ridge.coef_, dtype=np.float64).reshape(1, -1),
            np.atleast_1d(ridge.intercept_).astype(np.float64),
            True,
        )

    def loss(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """The mean squared error, or the Huber loss with `huber_delta` (torch's HuberLoss): the run's loss."""
        import numpy as np

        error = np.abs(logits[:, 0] - labels.reshape(-1))
        if self.huber_delta is None:
            return float(np.mean(error**2))
        delta = self.huber_delta
        return float(np.mean(np.where(error < delta, 0.5 * error**2, delta * (error - 0.5 * delta))))


def _problem(
    label_format: str,
    y: np.ndarray,
    yv: np.ndarray,
    num_labels: int,
    class_weight: Any,
    pos_weight: Any,
    huber_delta: float | None,
    metrics: Any,
) -> _Problem:
    """The format's fit, its labels checked against it (a wiring mistake, not the user's: ValueError)."""
    import numpy as np

    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if class_weight is not None and label_format != "single":
        raise ValueError(f"class_weight is for single-label probes; a {label_format} probe got {class_weight!r}")
    if pos_weight is not None and label_format != "multi_label":
        raise ValueError(f"pos_weight is for multi-label probes; a {label_format} probe got {pos_weight!r}")
    if huber_delta is not None and label_format != "regression":
        raise ValueError(f"huber_delta is for regression probes; a {label_format} probe got {huber_delta!r}")
    if label_format == "single":
        return _Single(num_labels, class_weight, y)
    if label_format == "multi_label":
        for split, labels in (("train", y), ("validation", yv)):
            if labels.ndim != 2 or labels.shape[1] != num_labels or not np.isin(labels, (0, 1)).all():
                raise ValueError(
                    f"multi-label probe: the {split} labels must be multi-hot 0/1 of shape [N, {num_labels}], got "
                    f"shape {labels.shape}"
                )
        return _MultiLabel(num_labels, _pos_weights(pos_weight, y, num_labels), getattr(metrics, "label_names", None))
    if num_labels != 1:
        raise ValueError(f"a regression probe fits one output, got num_labels={num_labels}")
    for split, labels in (("train", y), ("validation", yv)):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.floating):
            raise ValueError(f"regression probe: the {split} targets must be floats of shape [N], got {labels.shape}")
    return _Regression(huber_delta)


def _pos_weights(pos_weight: Sequence[float] | str | None, y: np.ndarray, num_labels: int) -> np.ndarray | None:
    """Per-label weights of the positives: as given, or `balanced` = negatives / positives in train (1 where a label
    has no positive or no negative: it is fitted as a constant, and its weight only scales the loss)."""
    import numpy as np

    if pos_weight is None:
        return None
    if isinstance(pos_weight, str):
        if pos_weight != "balanced":
            raise ValueError(f"pos_weight must be 'balanced' or one number per label, got {pos_weight!r}")
        positives = y.sum(axis=0)
        negatives = len(y) - positives
        return np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    weights = np.asarray(pos_weight, dtype=np.float64).reshape(-1)
    if weights.shape[0] != num_labels:
        raise ValueError(f"pos_weight has {weights.shape[0]} values for {num_labels} labels; give one per label")
    return weights


def _coefficients(clf: Any, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits over every class (a class absent from the training split gets a very low one)."""
    import numpy as np

    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row; softmax over (-z/2, z/2) is the same model
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, -1e4)  # absent classes: a very low logit, finite so the saved model stays finite
    weight[clf.classes_], bias[clf.classes_] = coef, intercept
    return weight, bias


def _sample_weights(
    labels: np.ndarray, class_weight: dict[int, float] | str | None, train_labels: np.ndarray, num_labels: int
) -> np.ndarray | None:
    """Per-sample weights for the validation loss, as the run's weighted cross-entropy counts it."""
    import numpy as np

    if class_weight is None:
        return None
    if class_weight == "balanced":
        counts = np.bincount(train_labels, minlength=num_labels).astype(float)
        per_class = np.where(counts > 0, len(train_labels) / (num_labels * np.maximum(counts, 1)), 0.0)
    else:
        per_class = np.array([class_weight.get(i, 1.0) for i in range(num_labels)])
    return per_class[labels]


def _cross_entropy(logits: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None) -> float:
    """The mean (weighted) cross-entropy of softmax(logits) against class ids."""
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(len(labels)), labels]
    return float(np.average(nll, weights=sample_weight)) if len(labels) else float("nan")


def set_head(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write the fitted weight and bias into the head's Linear (its dtype and device kept)."""
    import torch

    linear = head_linear(model)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def fold_affine(model: nn.Module, scale: float, shift: float) -> None:
    """Make the model output ``output * scale + shift``: the head's final Linear becomes (scale·W, scale·b + shift).

    For a regression model trained on standardised targets (scale = the targets' std, shift = their mean), so that
    the saved model answers in the original units. The Linear is the one `set_head` writes or, for a head with more
    layers (RoBERTa's dense → out_proj), its one Linear producing the model's `num_labels` outputs, which is the
    head's last operation in every such head transformers and timm build."""
    import torch

    from .errors import ModelError

    if not (math.isfinite(scale) and math.isfinite(shift)) or scale == 0:
        raise ValueError(f"fold_affine needs a finite, non-zero scale and a finite shift, got {scale!r}, {shift!r}")
    linear = output_linear(model, "data.standardize_targets: the target scaling", "set data.standardize_targets false")
    if linear.bias is None:
        raise ModelError(
            f"{type(model).__name__}'s output layer {linear} has no bias, so the target mean cannot be folded into it; "
            "set data.standardize_targets false"
        )
    with torch.no_grad():
        # in float64, then back: one rounding per parameter instead of two
        weight, bias = linear.weight.double() * scale, linear.bias.double() * scale + shift
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))


def output_linear(model: nn.Module, setting: str, fix: str) -> nn.Linear:
    """The head's one Linear producing the model's `num_labels` outputs (see `fold_affine`); a ModelError starting
    with `setting` (the recipe key that needs it, and what it folds) and ending with `fix` when there is not exactly
    one."""
    import torch

    from .errors import ModelError
    from .models.structure import head_module

    try:
        return head_linear(model)
    except ModelError:
        pass
    head = head_module(model)
    outputs = getattr(getattr(model, "config", None), "num_labels", None)
    candidates = [
        m
        for m in (head.modules() if head is not None else ())
        if isinstance(m, torch.nn.Linear) and m.out_features == outputs
    ]
    if len(candidates) != 1:
        found = ", ".join(f"{type(m).__name__}(out={getattr(m, 'out_features', '?')})" for m in candidates) or "none"
        raise ModelError(
            f"{setting} is folded into the Linear that produces the model's {outputs} output(s), and "
            f"{type(model).__name__}'s head has not exactly one ({found}); {fix}"
        )
    return candidates[0]


# --------------------------------------------------------------------------------------------- metrics.baseline linear

# what metrics.json's run info says the linear baseline is, per label format
BASELINE_METHODS = {
    "single": "multinomial logistic regression (scikit-learn, lbfgs) on the standardised frozen features of the "
    "pretrained model (the input of its head) before training, C chosen on validation",
    "multi_label": "one binary logistic regression per label (scikit-learn, lbfgs) on the standardised frozen "
    "features of the pretrained model (the input of its head) before training, one C for all labels chosen on "
    "validation",
    "regression": "ridge regression (scikit-learn Ridge) on the standardised frozen features of the pretrained model "
    "(the input of its head) before training, alpha chosen on validation",
}
BASELINE_METHOD = BASELINE_METHODS["single"]


@dataclass
class LinearBaseline:
    """`metrics.baseline: linear`: a linear model on the pretrained model's frozen features, scored per split.

    `scores` is keyed by the prepared split name (validation, test); `same_as` is set when the run itself is that
    model (linear_probe), whose own scores are then the baseline's."""

    scores: dict[str, dict[str, float]]
    info: dict[str, Any]
    same_as: str | None = None

    def for_split(self, split: str, model_scores: Mapping[str, Any]) -> dict[str, Any]:
        """What metrics.json holds beside `split`'s majority baseline: the linear model's metrics (same keys as the
        model's), its validation-chosen C (alpha), and `same_as` when the run is that model."""
        if self.same_as is not None:
            return {"same_as": self.same_as, **_metric_values(model_scores)}
        return dict(self.scores[split])


def _metric_values(model_scores: Mapping[str, Any]) -> dict[str, float]:
    """The model's metric values among Trainer's evaluation output: finite numbers, not timings or sample counts."""
    timing = ("runtime", "samples_per_second", "steps_per_second", "num_samples", "epoch")
    return {
        k: v
        for k, v in model_scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in timing and math.isfinite(v)
    }


def check_baseline_head(model: nn.Module) -> None:
    """`metrics.baseline: linear` reads the input of the head's one Linear: refuse, naming the key, a head it cannot
    read (before the output folder is touched)."""
    from .errors import ModelError

    try:
        head_linear(model)
    except ModelError as e:
        raise ModelError(
            f"metrics.baseline linear fits a linear model (logistic or ridge regression) on the features the model's "
            f"head reads, which needs a head that is one nn.Linear; {type(model).__name__}'s is not ({e}). Remove "
            "metrics.baseline (the majority-class, prevalence or mean baseline is always reported)"
        ) from None


def linear_baseline(
    weight: np.ndarray,
    bias: np.ndarray,
    fit: ProbeFit,
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metrics: Callable[[EvalPrediction], dict[str, float]],
    *,
    train_labels: np.ndarray,
    class_weight: dict[int, float] | str | None = None,
    shared_with: str | None = None,
    pos_weight: Sequence[float] | str | None = None,
    huber_delta: float | None = None,
    thresholds: str | float = "tune",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> LinearBaseline:
    """The fitted model (`fit_probe`'s weight and bias on raw features) scored on each split of `features` with the
    run's own metrics, plus its loss (the run's: weighted cross-entropy without label smoothing, BCE with pos_weight,
    MSE or Huber) and its C (alpha). Non-finite values (a constant prediction's Pearson) are left out.

    Multi-label: decisions use per-label thresholds set as the run sets its own (`thresholds`: `tune` = each label's
    F1-best threshold on the linear model's validation scores, `tune_thresholds`; a number = that for every label),
    from `validation` (features, labels), by default `features["validation"]`; run info `thresholds` says which."""
    import numpy as np

    label_format = fit.label_format
    num_labels = weight.shape[0]
    problem = _problem(
        label_format, train_labels, train_labels, num_labels, class_weight, pos_weight, huber_delta, metrics
    )

    def logits_of(x: np.ndarray) -> np.ndarray:
        # float64 as the fit: the standardisation folded into the weights loses digits in float32 (loss ~1e-3 off)
        return x.astype(np.float64) @ weight.T + bias

    info = {**fit.info(), "method": BASELINE_METHODS[label_format]}
    scorer = metrics
    if label_format == "multi_label":
        scorer, info["thresholds"] = _baseline_thresholds(
            metrics, logits_of, validation or features.get("validation"), thresholds
        )
    scores = {}
    for split, (x, y) in features.items():
        values = problem.scores(logits_of(x), y, scorer)
        scores[split] = {k: v for k, v in values.items() if math.isfinite(v)} | {fit.parameter: fit.C}
    if shared_with:
        info["shared_with"] = shared_with
    return LinearBaseline(scores, info)


def _baseline_thresholds(
    metrics: Any,
    logits_of: Callable[[np.ndarray], np.ndarray],
    validation: tuple[np.ndarray, np.ndarray] | None,
    setting: str | float,
) -> tuple[Any, dict[str, Any]]:
    """A MultiLabelMetrics like the run's, with the linear model's own thresholds, and what run info says of them."""
    from transformers import EvalPrediction

    from .multilabel_metrics import MultiLabelMetrics, tune_thresholds

    names, bins = list(metrics.label_names), metrics.bins
    if setting == "tune":
        if validation is None:
            raise ValueError("a multi-label linear baseline tunes its thresholds on validation features: pass them")
        tuning = MultiLabelMetrics(names, bins=bins)
        tuning(EvalPrediction(predictions=logits_of(validation[0]), label_ids=validation[1]))
    else:
        tuning = MultiLabelMetrics(names, bins=bins)
    choice = tune_thresholds(tuning, setting)
    described = {
        "mode": choice.mode,
        "values": choice.as_dict(),
        "validation_f1": dict(zip(names, choice.validation_f1, strict=True)),
        "untuned": list(choice.untuned),
        "source": "tuned on the linear model's own validation scores (tune_thresholds)"
        if choice.mode == "tune"
        else "the run's fixed metrics.thresholds",
    }
    return MultiLabelMetrics(names, thresholds=list(choice.thresholds), bins=bins), described


@contextlib.contextmanager
def preserved_rng(enabled: bool = True) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) global RNG states restored on exit as they were on entry.

    What only the baseline computes must not change the run: a DataLoader draws its base seed from torch's global
    RNG even with num_workers=0, so extracting features would otherwise shift every later random draw."""
    import random

    import numpy as np
    import torch

    if not enabled:
        yield
        return
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
