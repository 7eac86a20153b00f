"""The fitted linear probe (`transfer.strategy: linear_probe`, and the probe phase of `lp_ft`).

The frozen backbone's features (the input of the classification head, caught with a forward hook in eval mode) are
computed once per split with eval preprocessing, kept in memory, and the new head is fitted on them to convergence:
scikit-learn's multinomial `LogisticRegression` (L-BFGS) on standardised features, L2 strength C picked from a small
log grid on the validation split by the run's metric. The standardisation is folded back into the head's weight and
bias, so the saved head is an ordinary `nn.Linear` on raw features and the output folder loads like any other.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import MetricError
from .models.structure import head_linear

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset as TorchDataset
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # L2 strength: smaller C = stronger regularisation
MAX_ITER = 5000  # L-BFGS iterations; standardised features converge well within this
# A feature whose spread is below this share of the median feature's is scaled as if it had that spread: a
# near-constant feature (MiniLM's mean-pooled features hold one with std 7.6e-33) would otherwise get a weight of
# ~1e32 once the scaling is folded into the head, harmless on the training rows and explosive on any other input.
STD_FLOOR = 1e-2


@dataclass
class ProbeFit:
    """What the fit chose and how long it took; `info()` goes into metrics.json's run info and onto the card."""

    C: float
    metric: str  # the validation metric C was chosen by (`loss` or a metrics.json key such as `accuracy`)
    grid: list[dict[str, float]]  # per C: the metric and the validation loss
    samples: int
    dim: int
    feature_seconds: float
    fit_seconds: float
    converged: bool
    train: dict[str, float] = field(default_factory=dict)  # the fitted head on the training features
    scaling: str = "feature"  # how the features were scaled for the fit (see fit_probe)

    def info(self) -> dict[str, Any]:
        return {
            "method": "multinomial logistic regression (scikit-learn, lbfgs) on standardised frozen features",
            "scaling": self.scaling,
            "fitted_on": f"fitted on {self.samples} cached features of dim {self.dim}",
            "C": self.C,
            "chosen_by": f"validation {self.metric}",
            "grid": self.grid,
            "converged": self.converged,
            "feature_seconds": round(self.feature_seconds, 3),
            "fit_seconds": round(self.fit_seconds, 3),
        }


def extract_features(
    model: nn.Module,
    dataset: TorchDataset,
    collate: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]],
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], labels [N]): the input of the head's Linear over `dataset`, in eval mode, no gradients."""
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
    return features, torch.cat(labels).numpy().astype(np.int64)


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
) -> tuple[np.ndarray, np.ndarray, ProbeFit]:
    """Fit the head for every C in the grid, pick C on the validation split, return (weight [K, D], bias [K], fit).

    The weight and bias apply to raw (unstandardised) features. Ties on the metric go to the lower validation
    loss, then to the stronger regularisation (the smaller C).

    `scaling`: `feature` centres and scales each feature by its own spread (floored at STD_FLOOR × the median's),
    the usual set-up for a probe that is only evaluated. `global` centres each feature and divides all by one number
    (their root-mean-square spread), for a head that gradient descent fine-tunes next (lp_ft): folded back, per-feature
    scaling puts weights up to 1/STD_FLOOR times larger on low-spread features, whose values are the first to move
    once the backbone trains, and their gradients flood the backbone."""
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    (x, y), (xv, yv) = train, validation
    scaler = _scaler(StandardScaler().fit(x), scaling)
    xs, xvs = scaler.transform(x), scaler.transform(xv)
    sample_weight = _sample_weights(yv, class_weight, y, num_labels)
    grid, fits = [], []
    for c in C_GRID:
        clf, converged = _fit_one(xs, y, c, class_weight)
        scores = _scores(_full_logits(clf, xvs, num_labels), yv, metrics, sample_weight)
        if metric not in scores:
            raise MetricError(
                f"metric_for_best_model {metric!r}: the probe picks its regularisation by a validation metric, and "
                f"this run computes {sorted(scores)}; set metrics.metric_for_best_model to one of them"
            )
        grid.append({"C": c, **({metric: scores[metric]} if metric != "loss" else {}), "loss": scores["loss"]})
        fits.append((clf, converged))
        logger.info("probe: C=%g  validation %s %.4f, loss %.4f", c, metric, scores[metric], scores["loss"])
    sign = 1.0 if greater_is_better else -1.0
    best = max(range(len(grid)), key=lambda i: (sign * grid[i][metric], -grid[i]["loss"], -grid[i]["C"]))
    clf, converged = fits[best]
    weight, bias = _unscaled(clf, scaler, num_labels)
    train_scores = _scores(x @ weight.T + bias, y, metrics, _sample_weights(y, class_weight, y, num_labels))
    fit = ProbeFit(
        C=C_GRID[best],
        metric=metric,
        grid=grid,
        samples=len(y),
        dim=x.shape[1],
        feature_seconds=0.0,
        fit_seconds=time.perf_counter() - started,
        converged=converged,
        scaling=scaling,
        train={"train_loss": train_scores["loss"], "train_accuracy": train_scores["accuracy"]},
    )
    logger.info("probe: chose C=%g by validation %s (grid %s)", fit.C, metric, list(C_GRID))
    # float64: `set_head` casts to the head's dtype; the linear baseline scores with these exact coefficients
    return weight, bias, fit


def _scaler(scaler: Any, scaling: str) -> Any:
    """The fitted StandardScaler with its scale floored (`feature`) or made one shared number (`global`)."""
    import numpy as np

    std = np.sqrt(scaler.var_)
    if scaling == "global":
        scaler.scale_ = np.full_like(std, max(float(np.sqrt(np.mean(scaler.var_))), np.finfo(np.float64).tiny))
    else:
        scaler.scale_ = np.maximum(std, STD_FLOOR * float(np.median(std)) or 1.0)
    return scaler


def _fit_one(x: np.ndarray, y: np.ndarray, c: float, class_weight: Any) -> tuple[Any, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        logger.warning("probe: L-BFGS did not converge in %d iterations at C=%g; its head may be off", MAX_ITER, c)
    return clf, converged


def _full_logits(clf: Any, x: np.ndarray, num_labels: int) -> np.ndarray:
    """Logits over every class (a class absent from the training split gets a very low one)."""
    weight, bias = _coefficients(clf, num_labels)
    return x @ weight.T + bias


def _coefficients(clf: Any, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row; softmax over (-z/2, z/2) is the same model
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, -1e4)  # absent classes: a very low logit, finite so the saved model stays finite
    weight[clf.classes_], bias[clf.classes_] = coef, intercept
    return weight, bias


def _unscaled(clf: Any, scaler: Any, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold the standardisation into the head: W (x - mu) / s + b = (W / s) x + (b - (W / s) mu)."""
    weight, bias = _coefficients(clf, num_labels)
    weight = weight / scaler.scale_
    return weight, bias - weight @ scaler.mean_


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


def _scores(
    logits: np.ndarray,
    labels: np.ndarray,
    metrics: Callable[[EvalPrediction], dict[str, float]],
    sample_weight: np.ndarray | None,
) -> dict[str, float]:
    """The run's own metrics (metrics.json keys) of these logits, plus the mean cross-entropy `loss`."""
    import numpy as np
    from transformers import EvalPrediction

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(len(labels)), labels]
    loss = float(np.average(nll, weights=sample_weight)) if len(labels) else float("nan")
    return {**metrics(EvalPrediction(predictions=logits, label_ids=labels)), "loss": loss}


def set_head(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write the fitted weight and bias into the head's Linear (its dtype and device kept)."""
    import torch

    linear = head_linear(model)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


# --------------------------------------------------------------------------------------------- metrics.baseline linear

# what metrics.json's run info says the linear baseline is
BASELINE_METHOD = (
    "multinomial logistic regression (scikit-learn, lbfgs) on the standardised frozen features of the pretrained "
    "model (the input of its head) before training, C chosen on validation"
)


@dataclass
class LinearBaseline:
    """`metrics.baseline: linear`: a logistic regression on the pretrained model's frozen features, scored per split.

    `scores` is keyed by the prepared split name (validation, test); `same_as` is set when the run itself is that
    regression (linear_probe), whose own scores are then the baseline's."""

    scores: dict[str, dict[str, float]]
    info: dict[str, Any]
    same_as: str | None = None

    def for_split(self, split: str, model_scores: Mapping[str, Any]) -> dict[str, Any]:
        """What metrics.json holds beside `split`'s majority baseline: the regression's metrics (same keys as the
        model's), its validation-chosen C, and `same_as` when the run is that regression."""
        if self.same_as is not None:
            return {"same_as": self.same_as, **_metric_values(model_scores)}
        return dict(self.scores[split])


def _metric_values(model_scores: Mapping[str, Any]) -> dict[str, float]:
    """The model's metric values among Trainer's evaluation output: numbers, not timings or sample counts."""
    timing = ("runtime", "samples_per_second", "steps_per_second", "num_samples", "epoch")
    return {
        k: v
        for k, v in model_scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in timing
    }


def check_baseline_head(model: nn.Module) -> None:
    """`metrics.baseline: linear` reads the input of the head's one Linear: refuse, naming the key, a head it cannot
    read (before the output folder is touched)."""
    from .errors import ModelError

    try:
        head_linear(model)
    except ModelError as e:
        raise ModelError(
            f"metrics.baseline linear fits a logistic regression on the features the model's head reads, which needs "
            f"a head that is one nn.Linear; {type(model).__name__}'s is not ({e}). Remove metrics.baseline (the "
            "majority-class baseline is always reported)"
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
) -> LinearBaseline:
    """The fitted regression (`fit_probe`'s weight and bias on raw features) scored on each split of `features` with
    the run's own metrics, plus its weighted cross-entropy `loss` (no label smoothing) and C."""
    import numpy as np

    num_labels = weight.shape[0]
    scores = {}
    for split, (x, y) in features.items():
        weights = _sample_weights(y, class_weight, train_labels, num_labels)
        # float64 as the fit: the standardisation folded into the weights loses digits in float32 (loss ~1e-3 off)
        logits = x.astype(np.float64) @ weight.T + bias
        scores[split] = {**_scores(logits, y, metrics, weights), "C": fit.C}
    info = {**fit.info(), "method": BASELINE_METHOD}
    if shared_with:
        info["shared_with"] = shared_with
    return LinearBaseline(scores, info)


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
