"""Multi-label and regression labels (`data.label_format`): every input form read into one `label` column, the
targets' scaler, and validation splits carved from train that keep each label's share (iterative stratification) or
the target's distribution (quantile bins).

After loading, a multi-label `label` is a multi-hot float32 list, one entry per label name (names sorted, from train;
a List(ClassLabel) column keeps its own names and order), as `BCEWithLogitsLoss` takes it; a regression `label` is a
float32 number (standardised with train's mean and standard deviation if `data.standardize_targets`).
Single-label classification stays in sources.py (`_encode_labels`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..names import SPLITS
from . import checks

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from ..recipe import DataSpec

logger = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = SPLITS
# Each row's place in the user's file (0-based), carried past the rows that `data.empty_text: skip` drops, so that
# label problems name the rows as the user counts them. Removed once the labels are encoded.
ROW = "__row"
# `data.label_columns` are kept under this prefix until they are folded into `label`, so that a label column cannot
# clash with a canonical input column (`text`, `image`)
LABEL_PART = "label:"
# the most quantile bins a regression target is stratified on
MAX_BINS = 10


def number_rows(raw: DatasetDict) -> DatasetDict:
    """Add the ROW column (each row's number in its split as loaded)."""
    import datasets

    return datasets.DatasetDict({split: ds.add_column(ROW, np.arange(len(ds))) for split, ds in raw.items()})


def label_source(spec: DataSpec) -> str:
    """Where the labels are read from, as the user wrote it."""
    if spec.label_columns:
        return f"data.label_columns {list(spec.label_columns)}"
    return f"column {spec.label_column!r}"


def has_any_label(ds: Dataset, spec: DataSpec) -> bool:
    """Whether at least one row has a label: a split with none is hidden labels (a published test set)."""
    if spec.label_columns:
        return any(_column(ds, LABEL_PART + c).null_count < len(ds) for c in spec.label_columns)
    if spec.label_format == "regression":
        return any(_target(v)[1] != "missing" for v in _column(ds, "label").to_pylist())
    tags, _ = _tags(ds, spec.label_delimiter)
    # a column of the wrong type is not "no labels": encode_multi_label says what is wrong with it
    return tags is None or any(tags)


# --------------------------------------------------------------------------------------------- multi-label


def encode_multi_label(
    raw: DatasetDict, spec: DataSpec, known: list[str] | None = None
) -> tuple[DatasetDict, list[str]]:
    """Every split's labels become one multi-hot `label` column, or one DataError lists every problem of every split.

    Names come from `known` (a trained model's labels), else from train: data.label_columns, a list column's
    ClassLabel names, or the distinct labels of train's rows, sorted (numbers in numeric order).
    """
    import datasets
    import pyarrow as pa

    problems: list[str] = []
    rows = {split: _user_rows(ds) for split, ds in raw.items()}
    if spec.label_columns:
        names = _names_from_columns(spec.label_columns, known, problems)
        matrices, unread = {}, {}
        for split, ds in raw.items():
            matrices[split], unread[split] = _read_indicators(
                ds, spec.label_columns, names, split, rows[split], problems
            )
        # a row with a cell already reported is not also reported as having no label
        empty = {split: (matrices[split].sum(1) == 0) & ~unread[split] for split in raw}
    else:
        tags = {}
        for split, ds in raw.items():
            tags[split], problem = _tags(ds, spec.label_delimiter)
            if problem:
                problems.append(f"split {split!r}: column {spec.label_column!r} {problem}")
        if problems:
            raise _labels_error(problems, spec)
        names = list(known) if known is not None else _names_from_train(raw, tags)
        matrices = {split: _multi_hot(tags[split], names, split, rows[split], known, problems) for split in raw}
        # no label written: a row with only unknown labels is reported for those
        empty = {split: np.array([not row for row in tags[split]], dtype=bool) for split in raw}
    if known is None and TRAIN in matrices:
        problems += checks.never_positive_in_train(matrices[TRAIN], names, by_column=bool(spec.label_columns))
    if not spec.allow_empty_labels:
        for split, mask in empty.items():
            problems += checks.rows_without_labels(mask, rows[split], split)
    if problems:
        raise _labels_error(problems, spec)
    feature = datasets.List(datasets.Value("float32"), length=len(names))
    out = {}
    for split, ds in raw.items():
        drop = [c for c in ds.column_names if c == "label" or c == ROW or c.startswith(LABEL_PART)]
        column = pa.FixedSizeListArray.from_arrays(pa.array(matrices[split].ravel()), len(names))
        out[split] = ds.remove_columns(drop).add_column("label", column, feature=feature)
    return datasets.DatasetDict(out), names


def _names_from_columns(columns: Sequence[str], known: list[str] | None, problems: list[str]) -> list[str]:
    names = sorted(columns, key=_tag_order)
    if known is not None and set(known) != set(columns):
        problems.append(
            f"data.label_columns {list(columns)} are not the model's labels {list(known)}; list exactly the "
            "model's labels (any order)"
        )
    return list(known) if known is not None else names


def _names_from_train(raw: DatasetDict, tags: Mapping[str, list[list[str]]]) -> list[str]:
    import datasets

    feature = raw[TRAIN].features["label"]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (datasets.List, datasets.LargeList)) and isinstance(inner, datasets.ClassLabel):
        return list(inner.names)  # the data's own ids, as single-label keeps a ClassLabel's order
    return sorted({t for row in tags[TRAIN] for t in row}, key=_tag_order)


def _tag_order(tag: str) -> tuple[bool, int, str]:
    """Numbers in numeric order (2 before 10), then text alphabetically."""
    number = tag.lstrip("-").isdigit()
    return (not number, int(tag) if number else 0, tag)


def _tags(ds: Dataset, delimiter: str) -> tuple[list[list[str]] | None, str | None]:
    """Each row's labels (an empty list for none), or (None, what is wrong with the column's type)."""
    import datasets

    feature = ds.features["label"]
    values = _column(ds, "label").to_pylist()
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        inner = feature.feature
        if isinstance(inner, datasets.ClassLabel):
            return [_unique(inner.names[i] for i in row or [] if i is not None and i >= 0) for row in values], None
        if isinstance(inner, datasets.Value):
            return [_unique(_tag(v) for v in row or []) for row in values], None
    elif isinstance(feature, datasets.ClassLabel):
        return [[feature.names[v]] if v is not None and v >= 0 else [] for v in values], None
    elif isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return [_unique(part for part in (v or "").split(delimiter)) for v in values], None
        return [_unique([_tag(v)]) for v in values], None
    return None, (
        f"holds {feature}; multi_label reads a list of labels per row, labels in one string separated by "
        "data.label_delimiter (e.g. cat|outdoor), or one 0/1 column per label (data.label_columns)"
    )


def _tag(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unique(tags: Any) -> list[str]:
    """Stripped, without empty parts (`cat||dog`, a trailing `|`) or repeats, in order."""
    return list(dict.fromkeys(t.strip() for t in tags if t and t.strip()))


def _multi_hot(
    tags: list[list[str]], names: list[str], split: str, rows: list[int], known: list[str] | None, problems: list[str]
) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    matrix = np.zeros((len(tags), len(names)), dtype=np.float32)
    unknown: dict[str, list[int]] = {}
    for i, row in enumerate(tags):
        for tag in row:
            if tag in index:
                matrix[i, index[tag]] = 1.0
            else:
                unknown.setdefault(tag, []).append(rows[i])
    problems += checks.unknown_labels(unknown, names, split, "the model" if known is not None else "train")
    return matrix


def _read_indicators(
    ds: Dataset, columns: Sequence[str], names: list[str], split: str, rows: list[int], problems: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot rows, which rows have an unreadable cell) from one 0/1 column per label (also true/false and
    "0"/"1"); every other value is a problem naming its cell."""
    matrix = np.zeros((len(ds), len(names)), dtype=np.float32)
    unread = np.zeros(len(ds), dtype=bool)
    position = {n: i for i, n in enumerate(names)}
    for column in columns:
        bad: list[tuple[int, Any]] = []
        for i, value in enumerate(_column(ds, LABEL_PART + column).to_pylist()):
            flag = _indicator(value)
            if flag is None:
                bad.append((rows[i], value))
                unread[i] = True
            elif column in position:
                matrix[i, position[column]] = flag
        problems += checks.bad_indicators(bad, column, split)
    return matrix, unread


def _indicator(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return float(value.strip())
    return None


# --------------------------------------------------------------------------------------------- regression


def encode_regression(raw: DatasetDict, spec: DataSpec) -> tuple[DatasetDict, list[str]]:
    """Every split's `label` becomes a float32 target, or one DataError lists every missing, non-numeric, NaN or
    infinite target of every split. The one output is named after the target column."""
    import datasets

    problems: list[str] = []
    numbers = {}
    for split, ds in raw.items():
        feature = ds.features["label"]
        if not isinstance(feature, datasets.Value) or feature.dtype == "bool":
            problems.append(
                f"split {split!r}: column {spec.label_column!r} holds {feature}; regression needs one number per "
                "row. Point data.label_column at the numeric target, or set data.label_format to single or "
                "multi_label for class labels"
            )
            continue
        values = _column(ds, "label").to_pylist()
        parsed = [_target(v) for v in values]
        numbers[split] = np.array([number for number, _ in parsed], dtype=np.float64)
        problems += checks.bad_targets(values, [kind for _, kind in parsed], _user_rows(ds), split)
    if TRAIN in numbers and not problems:
        problems += checks.constant_targets(numbers[TRAIN])
    if problems:
        raise _labels_error(problems, spec)
    out = {}
    for split, ds in raw.items():
        ds = ds.remove_columns([c for c in ("label", ROW) if c in ds.column_names])
        out[split] = ds.add_column("label", numbers[split].astype(np.float32), feature=datasets.Value("float32"))
    return datasets.DatasetDict(out), [spec.label_column]


def _target(value: Any) -> tuple[float, str]:
    """(the number, "ok") or (nan, what is wrong: missing, non-numeric, nan, inf)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan, "missing"
    if isinstance(value, bool):
        return math.nan, "non-numeric"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return math.nan, "non-numeric"
    if not isinstance(value, (int, float)):
        return math.nan, "non-numeric"
    number = float(value)
    if math.isnan(number):
        return math.nan, "nan"
    if math.isinf(number):
        return math.nan, "inf"
    return number, "ok"


def fit_scaler(targets: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean and (population) standard deviation of the targets, as scikit-learn's StandardScaler fits them."""
    values = np.asarray(targets, dtype=np.float64)
    std = float(values.std())
    if not values.size or not np.isfinite(std) or std == 0:
        raise DataError(
            f"the {values.size} train targets have no spread (standard deviation {std}); they cannot be "
            "standardised. Set data.standardize_targets: false, or check the data"
        )
    return {"mean": float(values.mean()), "std": std}


def standardize(values: Sequence[float] | np.ndarray | float, scaler: Mapping[str, float]) -> np.ndarray:
    """Targets in the user's units → the scaled units the model is trained on."""
    return (np.asarray(values, dtype=np.float64) - scaler["mean"]) / scaler["std"]


def unstandardize(values: Sequence[float] | np.ndarray | float, scaler: Mapping[str, float]) -> np.ndarray:
    """The model's outputs (scaled units) → the user's units; undoes `standardize`."""
    return np.asarray(values, dtype=np.float64) * scaler["std"] + scaler["mean"]


def standardize_splits(
    raw: DatasetDict, scaler: Mapping[str, float] | None = None
) -> tuple[DatasetDict, dict[str, float]]:
    """Scale every split's targets with `scaler` (a trained model's) or one fitted on the train split alone, so
    nothing of validation or test leaks into it."""
    import datasets

    fitted = scaler is None
    if scaler is None:
        if TRAIN not in raw:
            raise DataError(
                "data.standardize_targets: there is no train split to fit the target scaler on; pass the trained "
                "model's scaler, or set data.standardize_targets: false"
            )
        scaler = fit_scaler(targets(raw[TRAIN]))
    scaler = {"mean": float(scaler["mean"]), "std": float(scaler["std"])}
    out = {}
    for split, ds in raw.items():
        scaled = standardize(targets(ds), scaler).astype(np.float32)
        out[split] = ds.remove_columns("label").add_column("label", scaled, feature=datasets.Value("float32"))
    logger.info(
        "data: regression targets standardised with %s mean %.6g and standard deviation %.6g",
        "train's" if fitted else "the given",
        scaler["mean"],
        scaler["std"],
    )
    return datasets.DatasetDict(out), scaler


def targets(ds: Dataset) -> np.ndarray:
    """An encoded regression split's targets (float64)."""
    return _column(ds, "label").to_numpy().astype(np.float64)


def multi_hot(ds: Dataset) -> np.ndarray:
    """An encoded multi-label split's labels, rows × labels (float32)."""
    chunks = _column(ds, "label").combine_chunks()
    width = chunks.type.list_size
    return chunks.flatten().to_numpy(zero_copy_only=False).reshape(len(ds), width).astype(np.float32)


# --------------------------------------------------------------------------------------------- validation splits


def carve_validation(
    train: Dataset, n_val: int, spec: DataSpec, label_names: Sequence[str], role: str = "validation"
) -> tuple[Dataset, Dataset, str]:
    """(train, the held-out `role` split, how it was split, for the log) for an encoded multi-label or regression
    train split."""
    if spec.label_format == "multi_label":
        labels = multi_hot(train)
        kept, held = iterative_stratification(labels, n_val, spec.seed)
        gap = np.abs(labels[kept].mean(0) - labels[held].mean(0))
        worst = int(np.argmax(gap))
        how = (
            "by iterative stratification of the labels; largest difference in a label's share of rows, train vs "
            f"{role}: {gap[worst]:.3f} ({label_names[worst]!r}: {labels[kept, worst].mean():.3f} vs "
            f"{labels[held, worst].mean():.3f})"
        )
        return train.select(kept), train.select(held), how
    values = targets(train)
    n_bins = min(MAX_BINS, len(values) // 2, n_val, len(values) - n_val)
    try:
        if n_bins < 2:
            raise ValueError(f"too few rows for two bins with a train and a {role} row each")
        kept, held = binned_split(values, n_val, n_bins, spec.seed)
        how = f"stratified on {n_bins} quantile bins of the target"
    except ValueError as err:
        logger.warning("data: binned split impossible (%s); using a random split", err)
        held = np.sort(np.random.default_rng(spec.seed).permutation(len(values))[:n_val])
        kept = np.setdiff1d(np.arange(len(values)), held)
        how = "random"
    means = f"target mean {values[kept].mean():.4g} train / {values[held].mean():.4g} {role}"
    return train.select(kept), train.select(held), f"{how}; {means}"


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Each value's bin, 0..n_bins-1, by rank: equal-sized bins even when many values are tied."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return ranks * n_bins // len(values)


def binned_split(values: np.ndarray, n_val: int, n_bins: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), sorted: a stratified shuffle split (scikit-learn's) on the quantile bins of
    the target, so that both parts span the target's range in proportion."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(values))
    kept, held = train_test_split(rows, test_size=n_val, random_state=seed, stratify=quantile_bins(values, n_bins))
    return np.sort(kept), np.sort(held)


def iterative_stratification(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), sorted, with exactly `n_val` validation rows and each label's share of positive
    rows as equal in both as the data allows.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of multi-label data", ECML
    PKDD 2011) for two parts: the label with the fewest rows still to place goes first, each of its rows to the part
    that still wants the most of that label (ties: the part that wants the most rows, then the seed). Rare labels are
    so placed while both parts still have room for them. Rows with no label fill the remaining places.
    """
    positive = np.asarray(labels) > 0.5
    n = len(positive)
    if not 1 <= n_val < n:
        raise ValueError(f"n_val must be between 1 and {n - 1}, got {n_val}")
    rng = np.random.default_rng(seed)
    # a seeded order first, so that which row goes where among equals is the seed's choice, not the file's order
    order = rng.permutation(n)
    positive = positive[order]
    want_rows = np.array([n - n_val, n_val], dtype=np.float64)
    want_labels = want_rows[:, None] / n * positive.sum(0)[None, :]
    part = np.full(n, -1)
    left = positive.sum(0)
    while left.any():
        fewest = np.flatnonzero(left == left[left > 0].min())
        label = int(fewest[0] if len(fewest) == 1 else rng.choice(fewest))
        for row in np.flatnonzero(positive[:, label] & (part < 0)):
            wanted = want_labels[:, label]
            best = np.flatnonzero(wanted == wanted.max())
            if len(best) > 1:
                best = best[want_rows[best] == want_rows[best].max()]
            chosen = int(best[0] if len(best) == 1 else rng.choice(best))
            part[row] = chosen
            want_labels[chosen] -= positive[row]
            want_rows[chosen] -= 1
            left -= positive[row]
    unlabelled = np.flatnonzero(part < 0)
    to_val = int(np.clip(round(want_rows[1]), 0, len(unlabelled)))
    part[unlabelled[:to_val]] = 1
    part[unlabelled[to_val:]] = 0
    _resize(part, positive, n_val)
    return np.sort(order[part == 0]), np.sort(order[part == 1])


def _resize(part: np.ndarray, positive: np.ndarray, n_val: int) -> None:
    """Move rows until validation has exactly n_val (the greedy pass can end a few rows off): each time the row whose
    move brings the validation counts of its labels closest to their due share (n_val / n of each label's rows)."""
    due = positive.sum(0) * n_val / len(positive)
    while (size := int((part == 1).sum())) != n_val:
        into = size < n_val
        candidates = np.flatnonzero(part == (0 if into else 1))
        excess = positive[part == 1].sum(0) - due
        # change of sum((count - due)^2) if the row moves: +y(2·excess + 1) into validation, y(1 - 2·excess) out
        cost = positive[candidates] @ (2 * excess + 1 if into else 1 - 2 * excess)
        row = candidates[int(np.argmin(cost))]
        part[row] = 1 if into else 0


def share_gap(train: np.ndarray, validation: np.ndarray) -> float:
    """The largest difference, over the labels, between the share of train rows and of validation rows having it."""
    return float(np.abs(np.asarray(train).mean(0) - np.asarray(validation).mean(0)).max())


# --------------------------------------------------------------------------------------------- shared


def _column(ds: Dataset, name: str) -> Any:
    # through Arrow: datasets 5 reads a column row by row otherwise (seconds on tens of thousands of rows)
    return ds.with_format("arrow")[name]


def _user_rows(ds: Dataset) -> list[int]:
    """Each row's number as the user counts it: data rows from 1, in the split's own order."""
    if ROW in ds.column_names:
        return [r + 1 for r in _column(ds, ROW).to_pylist()]
    return list(range(1, len(ds) + 1))


def _labels_error(problems: list[str], spec: DataSpec) -> DataError:
    head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''} with the labels in {label_source(spec)}"
    return DataError(
        "\n".join([f"{head} (data.label_format: {spec.label_format}):", *(f"  - {p}" for p in problems)])
        + "\nRows count data rows from 1 in each split's own order (in a CSV, the first row below the header is 1)."
    )
