"""Temperature scaling for single-label classifiers (Guo et al., 2017, "On Calibration of Modern Neural Networks").

- `fit_temperature` fits one scalar ``T > 0`` minimising the mean negative log-likelihood of
  ``softmax(logits / T)`` on validation logits [N, C] with integer labels [N]. Dividing by one positive number
  never changes a row's argmax, so accuracy (and every metric of the predicted class) is untouched; only the
  scores move.
- `apply_temperature` divides logits by T (numpy in, numpy out; torch in, torch out).
- `fold_temperature` divides a classifier head's weight and bias by T in place. Logits are linear in them, so the
  model's raw logits become ``logits / T``: a saved model then carries its calibration inside its weights, and
  ``transformers.pipeline("text-classification")`` / ``pipeline("image-classification")``, which only softmax the
  logits of a single-label model, return calibrated scores with no custom code.
- `CONFIG_KEY` names where the fitted T is recorded in the model's config.json; `saved_temperature` reads it back.

Conventions. The recorded T is the one *already folded* into the head: it is a record (for the model card, and to
recover the uncalibrated logits as ``logits · T``), never to be divided by again — folding twice would apply T².
The key is ``calibration_temperature``, not ``temperature``: transformers ≥ 5 treats ``temperature`` as a
generation parameter, refuses to save a model config that sets it and drops it when loading one.

Fitting. In β = 1/T the NLL, ``mean(logsumexp(β·z) − β·z_y)``, is convex (a log-sum-exp of functions linear in β
minus a linear function), and its derivative ``mean(E_softmax(βz)[z] − z_y)`` increases with β (its slope is the
mean variance of z under softmax(βz)). So the optimum is the unique root of the analytic derivative, which
`scipy.optimize.brentq` brackets and finds in log T on ``[log TEMPERATURE_MIN, log TEMPERATURE_MAX]`` to about
1e-12 relative: a root finder on a derivative computed to rounding error is far more precise than a minimiser
that compares NLL values, whose flatness near the optimum limits them to about 1e-8. When the derivative has one
sign on the whole interval the optimum lies beyond a bound and T is clamped to it (``converged`` False): T at the
lower bound means the validation rows are separated (every argmax right, the NLL keeps falling as T → 0), at the
upper bound that the logits carry no usable information about the labels (e.g. random labels).
Everything is float64, with logits shifted by their row maximum so that every exponent is ≤ 0.

Memory. The logits are converted once to float64 (8·N·C bytes); each NLL or derivative evaluation works through
them in blocks of at most `_BLOCK_ELEMENTS` values, so its temporaries stay under ~100 MB whatever N is.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hf_finetune.errors import MetricError, ModelError, listed

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

# Where the fitted temperature is recorded in a model's config.json ("temperature" itself is a generation
# parameter that transformers refuses to save in, and drops from, a model config).
CONFIG_KEY = "calibration_temperature"

TEMPERATURE_MIN = 0.01
TEMPERATURE_MAX = 100.0

# fit_temperature's `method`, one of these.
METHOD_BRENTQ = "brentq"  # the derivative's root was found inside the bounds
METHOD_LOWER_BOUND = "lower bound"  # the NLL still falls at TEMPERATURE_MIN: T is clamped there
METHOD_UPPER_BOUND = "upper bound"  # the NLL still falls at TEMPERATURE_MAX: T is clamped there
METHOD_CONSTANT = "constant logits"  # every row's logits are equal: T changes nothing, T = 1

_BLOCK_ELEMENTS = 1 << 22  # 32 MB per float64 temporary
# log T is found to this absolute tolerance, i.e. T to about 1e-12 relative
_XTOL = 1e-12

Logits = TypeVar("Logits")


@dataclass(frozen=True)
class TemperatureFit:
    """One fitted temperature. `nll_before` / `nll_after` are the mean NLL (natural log) of softmax(logits) and of
    softmax(logits / temperature) on the `rows` fitted rows; `converged` is False when T was clamped to a bound or
    the root finder ran out of iterations; `method` is one of the ``METHOD_*`` constants."""

    temperature: float
    nll_before: float
    nll_after: float
    rows: int
    converged: bool
    method: str

    def to_json(self) -> dict[str, Any]:
        """Plain Python floats, int, bool and str: what metrics.json or a model card can hold."""
        out = asdict(self)
        for key in ("temperature", "nll_before", "nll_after"):
            out[key] = float(out[key])
        out["rows"] = int(out["rows"])
        out["converged"] = bool(out["converged"])
        return out


# --------------------------------------------------------------------------------------------- checks


def _check_temperature(value: Any, what: str, fix: str) -> float:
    """`value` as a float when it is a finite real number > 0 (bools are refused: True is not a temperature)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MetricError(f"{what} must be a number, got {value!r} ({type(value).__name__}); {fix}")
    t = float(value)
    if not math.isfinite(t) or t <= 0:
        raise MetricError(f"{what} must be a finite number > 0, got {value!r}; {fix}")
    return t


def _check_inputs(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Logits as float64 [N, C] shifted by their row maximum, and labels as int64 [N], or MetricError."""
    import numpy as np

    from hf_finetune.multilabel_metrics import to_numpy

    z = to_numpy(logits)
    if z.dtype == object or not (np.issubdtype(z.dtype, np.number) and not np.issubdtype(z.dtype, np.complexfloating)):
        raise MetricError(f"logits must be real numbers, got dtype {z.dtype}; pass the model's raw logits [N, C]")
    if z.ndim != 2:
        raise MetricError(
            f"logits must be a 2-D array [N rows, C classes], got shape {z.shape}; temperature scaling is for "
            "single-label classifiers: pass the validation logits of one pass, one row per example"
        )
    n, c = z.shape
    if n == 0:
        raise MetricError("no rows to fit a temperature on (logits have shape (0, C)); pass a non-empty validation set")
    if c < 2:
        raise MetricError(
            f"logits have {c} class column(s); a temperature needs at least 2 classes (softmax over one class is "
            "always 1). A one-logit binary or regression head cannot be temperature-scaled this way"
        )
    z = z.astype(np.float64)  # a copy: shifted in place below
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise MetricError(
            f"{rows.size} row(s) of logits hold NaN or ±inf (rows {listed(rows.tolist())}); the model diverged or "
            "overflowed (e.g. fp16). Fix the model or drop those rows before fitting a temperature"
        )
    y = to_numpy(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise MetricError(
            f"labels must be a 1-D array of {n} class indices (one per logits row), got shape {y.shape}; "
            "temperature scaling takes single-label integer labels, not one-hot or multi-hot rows"
        )
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise MetricError(f"labels must be integer class indices, got dtype {y.dtype}; pass the label ids [N]")
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            rows = np.flatnonzero(~whole)
            raise MetricError(
                f"labels must be whole class indices; rows {listed(rows.tolist())} hold "
                f"{listed(y[rows].tolist())}; pass the integer label ids [N]"
            )
    y = y.astype(np.int64)
    out = (y < 0) | (y >= c)
    if out.any():
        rows = np.flatnonzero(out)
        raise MetricError(
            f"labels must be class indices in [0, {c - 1}] for {c} logit columns; rows {listed(rows.tolist())} hold "
            f"{listed(y[rows].tolist())}. Drop padding rows (-100 is the ignore index) and check that the labels "
            "and the model's head use the same classes"
        )
    z -= z.max(axis=1, keepdims=True)  # softmax(z/T) is unchanged, every exponent below is <= 0
    return z, y


# --------------------------------------------------------------------------------------------- the objective


def _blocks(z: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(logits, labels, their row positions) in blocks of at most `_BLOCK_ELEMENTS` logits (at least one row)."""
    import numpy as np

    n, c = z.shape
    step = max(1, _BLOCK_ELEMENTS // c)
    for start in range(0, n, step):
        block = z[start : start + step]
        yield block, y[start : start + step], np.arange(block.shape[0])


def _nll(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """mean(logsumexp(β·z) − β·z_y): the mean NLL of softmax(z / T) with β = 1/T (z shifted: rows' max is 0)."""
    import numpy as np
    from scipy.special import logsumexp

    total = 0.0
    for block, labels, rows in _blocks(z, y):
        s = beta * block
        total += float(np.sum(logsumexp(s, axis=1) - s[rows, labels]))
    return total / z.shape[0]


def _slope(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d NLL / dβ = mean(E_softmax(βz)[z] − z_y), increasing in β; d NLL / d log T is −β times it."""
    import numpy as np
    from scipy.special import softmax

    total = 0.0
    for block, labels, rows in _blocks(z, y):
        expected = np.einsum("ij,ij->i", softmax(beta * block, axis=1), block)
        total += float(np.sum(expected - block[rows, labels]))
    return total / z.shape[0]


# --------------------------------------------------------------------------------------------- public


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> TemperatureFit:
    """The temperature T in [TEMPERATURE_MIN, TEMPERATURE_MAX] minimising the mean NLL of softmax(logits / T) on
    validation `logits` [N, C] (numpy or torch, any real dtype) with integer `labels` [N] in [0, C).

    T > 1 softens an overconfident model, T < 1 sharpens an underconfident one; argmax, hence accuracy, never
    changes. `max_iter` bounds the root finder's iterations (it needs about 10–40). When every row's logits are
    constant the NLL is log C whatever T is: T = 1 is returned with ``method="constant logits"`` and a warning.
    Raises MetricError on empty input, fewer than 2 classes, NaN/inf logits, or labels that are not class indices.
    """
    import numpy as np
    from scipy.optimize import brentq

    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise MetricError(f"max_iter must be a positive integer, got {max_iter!r}; leave it at its default of 100")
    z, y = _check_inputs(logits, labels)
    n = int(z.shape[0])
    nll_before = _nll(z, y, 1.0)
    if not np.any(z):  # shifted by the row max, a constant row is all zeros
        logger.warning(
            "Every row's logits are constant: they carry no information, the NLL is log C for every temperature; "
            "T = 1 is kept."
        )
        return TemperatureFit(1.0, nll_before, nll_before, n, True, METHOD_CONSTANT)

    def dnll_dbeta(log_t: float) -> float:
        return _slope(z, y, math.exp(-log_t))

    lo, hi = math.log(TEMPERATURE_MIN), math.log(TEMPERATURE_MAX)
    # dnll_dbeta decreases in log T (β = 1/T falls); the NLL's minimum is where it crosses 0
    at_lo, at_hi = dnll_dbeta(lo), dnll_dbeta(hi)
    if at_lo <= 0:
        temperature, converged, method = TEMPERATURE_MIN, False, METHOD_LOWER_BOUND
        logger.warning(
            "The NLL still falls at T = %g: the %d validation rows are (nearly) separated by the logits, so the fitted "
            "temperature is clamped to that bound; fit it on more, or harder, held-out rows.",
            TEMPERATURE_MIN,
            n,
        )
    elif at_hi >= 0:
        temperature, converged, method = TEMPERATURE_MAX, False, METHOD_UPPER_BOUND
        logger.warning(
            "The NLL still falls at T = %g: the logits carry (almost) no information about these %d labels, so the "
            "fitted temperature is clamped to that bound; check that the labels match the model's classes.",
            TEMPERATURE_MAX,
            n,
        )
    else:
        log_t, result = brentq(dnll_dbeta, lo, hi, xtol=_XTOL, maxiter=int(max_iter), full_output=True, disp=False)
        temperature, converged, method = math.exp(log_t), bool(result.converged), METHOD_BRENTQ
        if not converged:
            logger.warning(
                "The temperature fit stopped after %d iterations (max_iter) at T = %g.", max_iter, temperature
            )
    nll_after = _nll(z, y, 1.0 / temperature)
    if nll_after > nll_before:
        # T = 1 is inside the bounds, so this only happens within rounding of T = 1, or on an unconverged fit
        temperature, nll_after = 1.0, nll_before
    return TemperatureFit(float(temperature), float(nll_before), float(nll_after), n, converged, method)


def apply_temperature(logits: Logits, temperature: float) -> Logits:
    """``logits / temperature``: a torch tensor for a torch tensor (same dtype and device), a numpy array otherwise
    (float dtypes kept, each value the correctly rounded quotient; integers become float64). softmax of the result
    is the calibrated probabilities. Raises MetricError unless the temperature is a finite number > 0."""
    import numpy as np

    t = _check_temperature(temperature, "the temperature", "fit one with fit_temperature (it is > 0)")
    torch = sys.modules.get("torch")  # without torch imported, `logits` cannot be a tensor
    if torch is not None and isinstance(logits, torch.Tensor):
        return logits / t if logits.is_floating_point() else logits.double() / t
    array = np.asarray(logits)
    if not np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64) / t
    if array.dtype.itemsize < 8:
        # divided in float64 and rounded once: T itself rounded to float16 would be off by up to 5e-4
        return (array.astype(np.float64) / t).astype(array.dtype)
    return array / t


def saved_temperature(config: Any) -> float | None:
    """The temperature recorded under `CONFIG_KEY` in a model config (a transformers config or the dict read from
    config.json), or None when there is none. It is the T already folded into the head (see the module docstring):
    a record, not something to divide the logits by again. A present but invalid value raises MetricError."""
    value = config.get(CONFIG_KEY) if isinstance(config, Mapping) else getattr(config, CONFIG_KEY, None)
    if value is None:
        return None
    return _check_temperature(
        value,
        f"the model config's {CONFIG_KEY!r}",
        f"it records the calibration temperature folded into the classifier head. Delete the {CONFIG_KEY!r} entry "
        "from the model's config.json (the weights are unaffected; the record is lost), or recalibrate the "
        "uncalibrated model and save it again",
    )


def fold_temperature(linear: torch.nn.Linear, temperature: float) -> None:
    """Divide `linear`'s weight and bias by `temperature` in place, so its outputs become ``logits / temperature``.

    Pass the Linear layer that outputs the logits (``model.classifier`` for BERT or ViT, ``model.classifier.out_proj``
    for RoBERTa). Once the model is saved, anything that softmaxes its logits — ``transformers.pipeline()``
    included — sees the calibrated probabilities softmax(logits / T) with no custom code. Exact up to float
    rounding of the weights (~1e-7 relative in float32). Fold once: record T under `CONFIG_KEY` so no one applies it
    again. Raises MetricError for a non-finite or non-positive temperature, ModelError for anything but a Linear.
    """
    import torch

    t = _check_temperature(temperature, "the temperature to fold", "fit one with fit_temperature (it is > 0)")
    if not isinstance(linear, torch.nn.Linear):
        raise ModelError(
            f"fold_temperature needs the torch.nn.Linear that outputs the logits, got {type(linear).__name__}; pass "
            "the head's last Linear (e.g. model.classifier for BERT/ViT, model.classifier.out_proj for RoBERTa)"
        )
    with torch.no_grad():
        linear.weight.div_(t)
        if linear.bias is not None:
            linear.bias.div_(t)
