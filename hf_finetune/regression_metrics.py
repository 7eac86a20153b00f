"""Streaming regression metrics: MAE, RMSE, R², Pearson and Spearman, and the predicted-vs-true / residual plots.

`RegressionMetrics` is a `compute_metrics` callable for `transformers.Trainer`, with or without
``batch_eval_metrics``, fed predictions [N] or [N, T] and targets of the same shape.

Exactness. MAE, RMSE, R² and Pearson come from seven sums per target (Σy, Σŷ, Σ|ŷ−y|, Σy², Σŷ², Σyŷ and n)
kept *exactly*: every product and difference is split into two doubles that add up to it exactly (Dekker's
two-product, Knuth's two-sum) and every double is added into a Python integer counting units of 2⁻¹¹²⁶. So
the metrics are the correctly computed values of the data, rounded once at the end (exact unless a product
underflows, i.e. for values below ~1e-150, or inputs beyond ±2⁵⁰⁰, which are refused), and they do not depend on
batch sizes, batch order, or how accumulators are merged.

Spearman needs ranks, so the (prediction, target) pairs are kept while there are at most `SPEARMAN_EXACT_CAP`
values (pairs × targets; 32 MB of float64); its ranks are then summed exactly as above. Past the cap every target
switches to a `SPEARMAN_BINS` × `SPEARMAN_BINS` joint histogram on a grid of quantiles of the pairs kept so far, and
Spearman becomes the rank correlation of the binned data (tied within a bin): ``spearman_exact`` in `last_report`
turns False and ``spearman_method`` says so. Memory is therefore at most 16·SPEARMAN_EXACT_CAP bytes plus, per
target, 8·SPEARMAN_BINS² bytes (2 MiB) of histogram and `MAX_PLOT_POINTS` plotted points (24 bytes each).

With `target_scaler` (``{"mean": m, "std": s}``, numbers or one per target) the inputs are in scaled units,
``(y − m) / s``: MAE and RMSE are reported times |s|, in the original units (R², Pearson and Spearman do not
change), and the plots show ``y·s + m``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_finetune.errors import MetricError
from hf_finetune.files import atomic_output
from hf_finetune.multilabel_metrics import BatchedMetrics, to_numpy

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

SCALAR_KEYS: tuple[str, ...] = ("mae", "rmse", "r2", "pearson", "spearman")

SPEARMAN_EXACT_CAP = 2_000_000
SPEARMAN_BINS = 512
MAX_PLOT_POINTS = 5_000

# Every finite double is an integer multiple of 2**-1074; 52 more bits keep frexp's 53-bit mantissas integral.
_SCALE_BITS = 1126
_LIMIT = 2.0**500  # two-product's splitting overflows near 2**996; squares overflow at 2**512
_CHUNK = 1 << 22  # bincount sums < 2**27 · 2**22 = 2**49 < 2**53: exact in float64
_SPLITTER = 134217729.0  # 2**27 + 1

# Exact sums kept per target, in this order.
_SUMS = ("y", "p", "abs", "yy", "pp", "yp")


def _exact_sum(values: np.ndarray) -> int:
    """Σ values exactly, in units of 2**-_SCALE_BITS (a Python integer)."""
    import numpy as np

    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    total = 0
    for start in range(0, values.shape[0], _CHUNK):
        part = values[start : start + _CHUNK]
        mantissa, exponent = np.frexp(part)  # part == mantissa · 2**exponent, 0.5 <= |mantissa| < 1
        integer = np.ldexp(mantissa, 53).astype(np.int64)  # |integer| < 2**53
        shift = exponent.astype(np.int64) + (_SCALE_BITS - 53)  # >= 0 for every finite double
        groups, inverse = np.unique(shift, return_inverse=True)
        high = np.bincount(inverse.reshape(-1), weights=(integer >> 26).astype(np.float64))
        low = np.bincount(inverse.reshape(-1), weights=(integer & ((1 << 26) - 1)).astype(np.float64))
        for group, h, lo in zip(groups.tolist(), high.tolist(), low.tolist(), strict=True):
            total += ((int(h) << 26) + int(lo)) << group
    return total


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLITTER * a
    high = c - (c - a)
    return high, a - high


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p, e with p + e == a·b exactly (Dekker), barring underflow."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s, e with s + e == a + b exactly (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _exact(values: int) -> Fraction:
    return Fraction(values, 1 << _SCALE_BITS)


def _batch_sums(p: np.ndarray, y: np.ndarray) -> list[int]:
    """The exact `_SUMS` of one target's batch."""
    import numpy as np

    diff, diff_err = _two_sum(p, -y)
    sign = np.sign(diff)  # |e| < ulp(diff)/2, so diff + e has diff's sign, and both are 0 together
    sums = [_exact_sum(y), _exact_sum(p), _exact_sum(np.abs(diff)) + _exact_sum(sign * diff_err)]
    for a, b in ((y, y), (p, p), (y, p)):
        prod, err = _two_product(a, b)
        sums.append(_exact_sum(prod) + _exact_sum(err))
    return sums


def _pearson(n: int, sx: Fraction, sy: Fraction, sxx: Fraction, syy: Fraction, sxy: Fraction) -> float:
    """Pearson's r from exact sums; NaN when either side is constant (as scipy)."""
    cxx = sxx - sx * sx / n
    cyy = syy - sy * sy / n
    cxy = sxy - sx * sy / n
    if cxx <= 0 or cyy <= 0:
        return math.nan
    r = math.copysign(math.sqrt(float(cxy * cxy / (cxx * cyy))), float(cxy))
    return max(-1.0, min(1.0, r))


def _hash_keys(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A pseudo-random uint64 per (prediction, target) value pair: the plot sample is the pairs with the lowest
    keys, which is the same sample however the data were batched or merged."""
    import numpy as np

    def mix(x: np.ndarray) -> np.ndarray:  # splitmix64's finaliser
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        return mix(p.view(np.uint64) ^ mix(y.view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))


@dataclass
class PlotSample:
    """At most `MAX_PLOT_POINTS` (prediction, target) pairs per target, in original units, for the plots."""

    target_names: list[str]
    predictions: list[np.ndarray]
    targets: list[np.ndarray]


class _SpearmanState:
    """One target's Spearman input: its pairs (exact) or a joint histogram on a quantile grid (approximate)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.count = 0
        self.x_edges: np.ndarray | None = None
        self.y_edges: np.ndarray | None = None
        self.table: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.table is None

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        self.count += p.shape[0]
        if self.exact:
            self.pairs.append((p.copy(), y.copy()))
        else:
            self._bin(p, y)

    def _bin(self, p: np.ndarray, y: np.ndarray) -> None:
        import numpy as np

        assert self.table is not None and self.x_edges is not None and self.y_edges is not None
        ix = np.searchsorted(self.x_edges, p, side="right")
        iy = np.searchsorted(self.y_edges, y, side="right")
        size = self.table.shape[1]
        self.table += np.bincount(ix * size + iy, minlength=self.table.size).reshape(self.table.shape)

    def to_binned(self, bins: int, edges: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        import numpy as np

        if not self.exact:
            return
        p, y = self.arrays()
        if edges is None:
            # inner edges at quantiles of the pairs seen so far; duplicates collapse (a value with many ties)
            q = np.linspace(0.0, 1.0, bins + 1)[1:-1]
            edges = (np.unique(np.quantile(p, q)), np.unique(np.quantile(y, q)))
        self.x_edges, self.y_edges = edges
        self.table = np.zeros((bins, bins), dtype=np.int64)
        self.pairs = []
        self._bin(p, y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        if not self.pairs:
            return np.zeros(0), np.zeros(0)
        return np.concatenate([a for a, _ in self.pairs]), np.concatenate([b for _, b in self.pairs])

    def merge(self, other: _SpearmanState, bins: int) -> None:
        import numpy as np

        if other.exact:
            for p, y in other.pairs:
                self.add(p, y)
            return
        if self.exact:
            self.to_binned(bins, (other.x_edges, other.y_edges))  # type: ignore[arg-type]
        elif not (np.array_equal(self.x_edges, other.x_edges) and np.array_equal(self.y_edges, other.y_edges)):
            raise MetricError(
                "cannot merge two approximate Spearman states built on different quantile grids; raise "
                "spearman_cap so both stay exact"
            )
        assert self.table is not None and other.table is not None
        self.table += other.table
        self.count += other.count

    def spearman(self) -> float:
        import numpy as np
        from scipy.stats import rankdata

        if self.exact:
            p, y = self.arrays()
            if p.shape[0] < 2:
                return math.nan
            # average ranks are halves of integers; doubled they are exact, and so are their products (< 2**53)
            rp, ry = 2.0 * rankdata(p), 2.0 * rankdata(y)
            sums = [_exact(_exact_sum(v)) for v in (rp, ry, rp * rp, ry * ry, rp * ry)]
            return _pearson(p.shape[0], *sums)
        assert self.table is not None
        table = self.table.astype(np.float64)
        n = table.sum()
        cx, cy = table.sum(axis=1), table.sum(axis=0)
        rx = np.cumsum(cx) - cx + (cx + 1) / 2  # mid-rank of each bin's (tied) members
        ry = np.cumsum(cy) - cy + (cy + 1) / 2
        mx, my = (cx * rx).sum() / n, (cy * ry).sum() / n
        dx, dy = rx - mx, ry - my
        vx, vy = (cx * dx * dx).sum(), (cy * dy * dy).sum()
        if vx <= 0 or vy <= 0:
            return math.nan
        return float((dx[:, None] * dy[None, :] * table).sum() / math.sqrt(vx * vy))


class RegressionMetrics(BatchedMetrics):
    """`compute_metrics` for `transformers.Trainer` on regression; see the module docstring.

    `target_names` names the T targets (default ``target`` or ``target_0``…); the top-level metrics are the mean
    over targets (scikit-learn's ``uniform_average``) and `last_report` holds one row per target.
    Called with ``compute_result=False`` it only accumulates; with ``compute_result=True`` (the default, hence also
    a plain whole-array call) it returns `SCALAR_KEYS`, stores `last_report` and `last_plot_sample`, and starts over.
    """

    def __init__(
        self,
        target_names: Sequence[str] | None = None,
        target_scaler: Mapping[str, Any] | None = None,
        spearman_cap: int = SPEARMAN_EXACT_CAP,
        spearman_bins: int = SPEARMAN_BINS,
        plot_points: int = MAX_PLOT_POINTS,
    ) -> None:
        self.target_names = None if target_names is None else [str(name) for name in target_names]
        if self.target_names is not None and not self.target_names:
            raise ValueError("target_names must name at least one target")
        for name, value, low in (
            ("spearman_cap", spearman_cap, 2),
            ("spearman_bins", spearman_bins, 2),
            ("plot_points", plot_points, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.spearman_cap = int(spearman_cap)
        self.spearman_bins = int(spearman_bins)
        self.plot_points = int(plot_points)
        self.target_scaler = None if target_scaler is None else dict(target_scaler)
        if self.target_scaler is not None:
            missing = {"mean", "std"} - set(self.target_scaler)
            if missing:
                raise MetricError(f"target_scaler lacks {sorted(missing)}; expected {{'mean': ..., 'std': ...}}")
        self.last_report: dict[str, Any] | None = None
        self.last_plot_sample: PlotSample | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen."""
        self.num_targets: int | None = None if self.target_names is None else len(self.target_names)
        self.num_samples = 0
        self._sums: list[list[int]] = []
        self._spearman: list[_SpearmanState] = []
        self._plot: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if self.num_targets is not None:
            self._allocate(self.num_targets)

    def _allocate(self, targets: int) -> None:
        import numpy as np

        self.num_targets = targets
        self._sums = [[0] * len(_SUMS) for _ in range(targets)]
        self._spearman = [_SpearmanState() for _ in range(targets)]
        empty = (np.zeros(0, dtype=np.uint64), np.zeros(0), np.zeros(0))
        self._plot = [empty for _ in range(targets)]

    def _scaler(self, targets: int) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        if self.target_scaler is None:
            return np.zeros(targets), np.ones(targets)
        out = []
        for key in ("mean", "std"):
            value = np.asarray(self.target_scaler[key], dtype=np.float64).reshape(-1)
            if value.shape[0] == 1:
                value = np.repeat(value, targets)
            if value.shape[0] != targets or not np.isfinite(value).all():
                raise MetricError(
                    f"target_scaler[{key!r}] must be a finite number or one per target ({targets}), got "
                    f"{self.target_scaler[key]!r}"
                )
            out.append(value)
        if (out[1] == 0).any():
            raise MetricError(f"target_scaler['std'] must not be 0, got {self.target_scaler['std']!r}")
        return out[0], out[1]

    # ----------------------------------------------------------------------------------------------- accumulating

    def _read_batch(self, predictions: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        pred = to_numpy(predictions)
        true = to_numpy(targets)
        for what, array in (("predictions", pred), ("targets", true)):
            if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
                raise MetricError(f"regression {what} must be real numbers, got dtype {array.dtype}")
        if pred.ndim == 0 or true.ndim == 0 or pred.ndim > 2 or true.ndim > 2 or pred.shape[:1] != true.shape[:1]:
            raise MetricError(
                f"regression predictions {pred.shape} and targets {true.shape} must both have shape [N] or "
                "[N, num_targets]"
            )
        shape = pred.shape
        pred = (pred[:, None] if pred.ndim == 1 else pred).astype(np.float64)
        true = (true[:, None] if true.ndim == 1 else true).astype(np.float64)
        if pred.shape != true.shape:
            raise MetricError(
                f"regression predictions {shape} and targets {true.shape} must both have shape [N] or [N, num_targets]"
            )
        for what, array in (("predictions", pred), ("targets", true)):
            bad = ~(np.abs(array) < _LIMIT)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise MetricError(
                    f"{int(bad.sum())} regression {what} are NaN, infinite or beyond ±2**500 (first at row {row}: "
                    f"{array[bad][0].item()!r}); check the data and the model's outputs"
                )
        if self.num_targets is None:
            self._allocate(pred.shape[1])
        elif pred.shape[1] != self.num_targets:
            raise MetricError(f"got {pred.shape[1]} regression targets per sample, expected {self.num_targets}")
        return pred, true

    def update(self, predictions: Any, targets: Any) -> None:
        """Add one batch: predictions and targets, both [N] or [N, T], in the model's (scaled) units."""
        import numpy as np

        pred, true = self._read_batch(predictions, targets)
        for t in range(pred.shape[1]):
            p, y = np.ascontiguousarray(pred[:, t]), np.ascontiguousarray(true[:, t])
            self._sums[t] = [a + b for a, b in zip(self._sums[t], _batch_sums(p, y), strict=True)]
            self._spearman[t].add(p, y)
            self._add_plot_points(t, _hash_keys(p, y), p, y)
        self.num_samples += pred.shape[0]
        self._check_cap()

    def _check_cap(self) -> None:
        if self.num_targets and self.num_samples * self.num_targets > self.spearman_cap:
            for state in self._spearman:
                if state.exact:
                    state.to_binned(self.spearman_bins)

    def _add_plot_points(self, t: int, keys: np.ndarray, p: np.ndarray, y: np.ndarray) -> None:
        import numpy as np

        old_keys, old_p, old_y = self._plot[t]
        keys, p, y = np.concatenate([old_keys, keys]), np.concatenate([old_p, p]), np.concatenate([old_y, y])
        if keys.shape[0] > self.plot_points:
            keep = np.lexsort((y, p, keys))[: self.plot_points]
            keep.sort()
            keys, p, y = keys[keep], p[keep], y[keep]
        self._plot[t] = (keys, p, y)

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        """Add `other`'s samples to this accumulator (in place; returns self): the same as having seen both."""
        if not isinstance(other, RegressionMetrics):
            raise TypeError(f"can only merge another RegressionMetrics, got {type(other).__name__}")
        if other.num_targets is None or other.num_samples == 0:
            return self
        if self.num_targets is None:
            self._allocate(other.num_targets)
        if other.num_targets != self.num_targets or other.plot_points != self.plot_points:
            raise MetricError("cannot merge regression metrics with different targets or plot sizes")
        for t in range(other.num_targets):
            self._sums[t] = [a + b for a, b in zip(self._sums[t], other._sums[t], strict=True)]
            self._spearman[t].merge(other._spearman[t], self.spearman_bins)
            self._add_plot_points(t, *other._plot[t])
        self.num_samples += other.num_samples
        self._check_cap()
        return self

    # ----------------------------------------------------------------------------------------------- results

    def _target_row(self, t: int, std: float) -> dict[str, Any]:
        n = self.num_samples
        sy, sp, sabs, syy, spp, syp = (_exact(v) for v in self._sums[t])
        sse = spp - 2 * syp + syy
        sst = syy - sy * sy / n
        # constant targets: scikit-learn's r2_score gives 1 for a perfect fit, else 0
        r2 = float(1 - sse / sst) if sst > 0 else float(sse == 0)
        state = self._spearman[t]
        return {
            "mae": float(sabs / n) * abs(std),
            "rmse": math.sqrt(float(sse / n)) * abs(std),
            "r2": r2,
            "pearson": _pearson(n, sp, sy, spp, syy, syp),
            "spearman": state.spearman(),
            "spearman_exact": state.exact,
        }

    def compute(self) -> dict[str, float]:
        """The scalars (`SCALAR_KEYS`) of every sample seen so far; sets `last_report` and `last_plot_sample`."""
        import numpy as np

        n = self.num_samples
        if n == 0 or self.num_targets is None:
            logger.warning("No samples to evaluate: every regression metric is NaN.")
            scalars = dict.fromkeys(SCALAR_KEYS, math.nan)
            self.last_report = {**scalars, "per_target": [], "num_samples": 0, "spearman_exact": True}
            self.last_plot_sample = None
            return scalars
        names = self.target_names or (
            ["target"] if self.num_targets == 1 else [f"target_{t}" for t in range(self.num_targets)]
        )
        mean, std = self._scaler(self.num_targets)
        rows = [{"target": names[t], **self._target_row(t, float(std[t]))} for t in range(self.num_targets)]
        scalars = {key: float(np.mean([row[key] for row in rows])) for key in SCALAR_KEYS}
        exact = all(row["spearman_exact"] for row in rows)
        self.last_report = {
            **scalars,
            "per_target": rows,
            "num_samples": n,
            "spearman_exact": exact,
            "spearman_method": "exact ranks"
            if exact
            else f"approximate: ranks of a {self.spearman_bins}x{self.spearman_bins} quantile-binned histogram "
            f"(more than {self.spearman_cap} values)",
            "target_scaler": None if self.target_scaler is None else dict(self.target_scaler),
        }
        self.last_plot_sample = PlotSample(
            target_names=list(names),
            predictions=[self._plot[t][1] * std[t] + mean[t] for t in range(self.num_targets)],
            targets=[self._plot[t][2] * std[t] + mean[t] for t in range(self.num_targets)],
        )
        return scalars


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _figure(sample: PlotSample, residuals: bool, title: str) -> Any:
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure registry to leak.
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(sample.target_names)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(4.5 * columns, 4.2 * rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for t, name in enumerate(sample.target_names):
        ax = fig.add_subplot(rows, columns, t + 1)
        p, y = sample.predictions[t], sample.targets[t]
        if residuals:
            ax.scatter(p, p - y, s=6, alpha=0.5, linewidths=0)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xlabel(f"Predicted {name}")
            ax.set_ylabel("Residual (predicted − true)")
        else:
            ax.scatter(y, p, s=6, alpha=0.5, linewidths=0)
            if p.size:
                low, high = float(np.min([y.min(), p.min()])), float(np.max([y.max(), p.max()]))
                ax.plot([low, high], [low, high], color="black", linewidth=0.8)
            ax.set_xlabel(f"True {name}")
            ax.set_ylabel(f"Predicted {name}")
        if count > 1:
            ax.set_title(name)
    if title:
        fig.suptitle(title)
    return fig


def write_regression_plots(sample: PlotSample, scatter_path: Path, residual_path: Path, title: str = "") -> None:
    """Predicted-vs-true scatter (with the y = x line) and residual-vs-predicted plot as PNGs, written atomically.

    They draw exactly the points of `sample` (`RegressionMetrics.last_plot_sample`), one panel per target.
    """
    for path, residuals in ((scatter_path, False), (residual_path, True)):
        fig = _figure(sample, residuals, title)
        with atomic_output(Path(path), "wb") as handle:
            fig.savefig(handle, format="png")
