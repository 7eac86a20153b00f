"""Group-aware splits (`data.group_column`, issue 15 item 4): a carved validation (or test) split that keeps each
group (a patient, a speaker, a document's source) whole, so that no group is scored on rows of it the model trained
on, and a check that reports groups present in more than one of the splits the user gave.

Rows of one group are usually more alike than rows of different groups; a row-level split puts near-copies on both
sides and the held-out score then measures memory of the group, not generalisation to new ones. Groups are the unit
of the split here, so the held side's row count can only approach the one asked for (`n_holdout`) as closely as the
groups' sizes allow.

Stratification, as well as the groups allow:

- single-label: scikit-learn's `StratifiedGroupKFold` on the class ids;
- multi-label: `StratifiedGroupKFold` on each row's rarest positive label (rows with none form one more stratum), the
  usual reduction of a multi-hot row to one stratum: the rare labels are the ones a careless split loses, and a
  group's rows are placed together anyway, so a per-row stratum is enough to spread groups rich in a rare label;
- regression: `StratifiedGroupKFold` on quantile bins of the target (as `labels.binned_split` does without groups).

The fold whose size is closest to `n_holdout` is held out. Single groups then move between the sides while that
brings the size closer (each time the group whose move keeps the shares of the classes, labels or bins closest
between the sides), and last a held group is swapped for a kept one while that brings the size closer still or, at
the same size, evens the shares: StratifiedGroupKFold balances k folds at once, not the one fold against the rest. When
stratification is impossible (no strata, fewer rows in every stratum than folds, too few rows for two bins) groups
are picked at random in a seeded order, and a warning says so; the swaps still even the shares where there are any.
Finding the subset of groups whose size is exactly `n_holdout` is a subset-sum problem and is not attempted: the
result is within one group's size of it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, listed
from ..names import SPLITS

logger = logging.getLogger(__name__)

# as labels.MAX_BINS: more bins than this buys little balance and leaves each bin too few groups
MAX_BINS = 10
LABEL_FORMATS = ("single", "multi_label", "regression")


@dataclass(frozen=True, eq=False)  # arrays have no single truth value, so no generated __eq__
class GroupSplit:
    """Row indices (sorted) of the part kept (train) and the part held out (validation or test); every group lies
    entirely in one of them. `how` is a sentence for the log."""

    kept: np.ndarray
    held: np.ndarray
    how: str


def group_split(
    groups: Sequence[Hashable] | np.ndarray,
    strata: Sequence[Hashable] | np.ndarray | None,
    n_holdout: int,
    seed: int,
    *,
    label_format: str = "single",
    column: str = "group",
    split: str = "train",
    holdout: str = "validation",
    rows: Sequence[int] | None = None,
    label_names: Sequence[str] | None = None,
) -> GroupSplit:
    """Split rows into kept and held parts with whole groups, the held part as near `n_holdout` rows as groups allow
    and stratified on `strata` as well as they allow.

    `groups`: each row's group. `strata`: class ids (single), a rows × labels multi-hot array (multi_label), the
    targets (regression), or None for no stratification. `column`, `split`, `holdout` and `rows` (each row's number
    as the user counts it; 1, 2, … by default) only word the messages; `label_names` names classes / labels in `how`.
    Deterministic for a given seed. Raises DataError for a missing group value or when all rows are in one group.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
    codes = _group_codes(groups, column, split, rows)
    n = len(codes)
    sizes = np.bincount(codes)
    if len(sizes) == 1:
        raise DataError(
            f"data.group_column {column!r}: all {n} rows are in one group, so no {holdout} split can keep groups "
            f"whole; add groups or give a {holdout} split"
        )
    if not 1 <= n_holdout < n:
        raise ValueError(f"n_holdout must be between 1 and {n - 1}, got {n_holdout}")

    stratum, profile, describe, why_not = _strata(strata, label_format, n, n_holdout, label_names)
    held_groups = None
    if stratum is not None:
        try:
            held_groups = _stratified_groups(codes, stratum, profile, n_holdout, seed)
        except ValueError as err:
            why_not = str(err)
    if held_groups is None:
        if strata is not None:
            logger.warning(
                "data: a stratified group split of %r is impossible (%s); picking random groups of %r",
                split,
                why_not,
                column,
            )
        held_groups = _random_groups(sizes, n_holdout, seed)
    group_profile = None if profile is None else _per_group(codes, profile, len(sizes))
    held_groups = _refine(held_groups, sizes, group_profile, n_holdout, seed)

    in_held = held_groups[codes]
    kept, held = np.flatnonzero(~in_held), np.flatnonzero(in_held)
    size = "" if len(held) == n_holdout else f", {len(held)} rows for the {n_holdout} asked"
    head = f"group-aware ({len(sizes)} groups of {column!r} kept whole, {int(held_groups.sum())} in {holdout}{size})"
    if why_not is None:
        method = "stratified"
    else:
        method = f"random groups ({why_not})" if strata is not None else "random groups (no strata given)"
    detail = describe(kept, held, split, holdout) if describe is not None else ""
    return GroupSplit(kept=kept, held=held, how=f"{head}, {method}{': ' + detail if detail else ''}")


# --------------------------------------------------------------------------------------------- group values


def is_missing(value: object) -> bool:
    """A group value that names no group: None, NaN (float, NumPy, pandas' NA/NaT) or a blank string."""
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return not value.strip()
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return type(value).__name__ in ("NAType", "NaTType")


def _group_codes(groups: Sequence[Hashable] | np.ndarray, column: str, split: str, rows: Sequence[int] | None) -> Any:
    """Each row's group as 0..G-1, numbered in order of first appearance (so the codes, and with them the seeded
    split, do not depend on whether the values sort); DataError naming the rows with no group."""
    values = groups.tolist() if isinstance(groups, np.ndarray) else list(groups)
    bad = [i for i, v in enumerate(values) if is_missing(v)]
    if bad:
        numbers = [rows[i] for i in bad] if rows is not None else [i + 1 for i in bad]
        raise DataError(
            f"data.group_column {column!r}: split {split!r}: {len(bad)} of {len(values)} rows have no group (empty "
            f"or missing {column!r}; row{'s' if len(bad) > 1 else ''} {listed(numbers)}, counting data rows from 1 "
            f"in the split's own order). Fill in their {column!r} or remove those rows: a row without a group "
            "cannot be kept with its group"
        )
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def _per_group(codes: np.ndarray, profile: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((n_groups, profile.shape[1]))
    np.add.at(out, codes, profile)
    return out


# --------------------------------------------------------------------------------------------- strata


def _strata(
    strata: Any, label_format: str, n: int, n_holdout: int, label_names: Sequence[str] | None
) -> tuple[np.ndarray | None, np.ndarray | None, Any, str | None]:
    """(one stratum per row for StratifiedGroupKFold, rows × columns profile whose shares the split balances, a
    function describing the balance for `how`, why stratification is impossible or None)."""
    if strata is None:
        return None, None, None, "no strata given"
    if label_format == "single":
        values = strata.tolist() if isinstance(strata, np.ndarray) else list(strata)
        index: dict[Hashable, int] = {}
        stratum = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
        if len(stratum) != n:
            raise ValueError(f"{len(stratum)} strata for {n} rows")
        classes = list(index)
        names = [_name(c, label_names) for c in classes]
        profile = np.eye(len(classes))[stratum]
        return stratum, profile, _share_gap(profile, names, "class-share"), None
    if label_format == "multi_label":
        positive = np.asarray(strata) > 0.5
        if positive.ndim != 2 or len(positive) != n:
            raise ValueError(f"multi-label strata must be rows × labels with {n} rows, got shape {positive.shape}")
        counts = positive.sum(0)
        # rarest positive label per row; labels no row has never win, rows with no label get one stratum of their own
        rarity = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
        stratum = np.where(positive.any(1), rarity.argmin(1), positive.shape[1])
        profile = np.column_stack([positive, ~positive.any(1)]).astype(np.float64)
        names = [label_names[i] if label_names else str(i) for i in range(positive.shape[1])]
        return stratum, profile, _share_gap(profile[:, :-1], names, "label-share"), None
    values = np.asarray(strata, dtype=np.float64)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"regression strata must be one target per row ({n}), got shape {values.shape}")
    n_bins = min(MAX_BINS, n // 2, n_holdout, n - n_holdout)

    def means(kept: np.ndarray, held: np.ndarray, split: str, holdout: str) -> str:
        head = f"{n_bins} quantile bins of the target; " if n_bins >= 2 else ""
        return f"{head}target mean {values[kept].mean():.4g} {split} / {values[held].mean():.4g} {holdout}"

    if n_bins < 2:
        return None, None, means, f"too few rows for two bins with a {n_holdout}-row holdout"
    from .labels import quantile_bins

    stratum = quantile_bins(values, n_bins)
    return stratum, np.eye(n_bins)[stratum], means, None


def _name(value: Hashable, label_names: Sequence[str] | None) -> str:
    if label_names is not None and isinstance(value, (int, np.integer)) and 0 <= value < len(label_names):
        return str(label_names[value])
    return str(value)


def _share_gap(profile: np.ndarray, names: Sequence[str], what: str) -> Any:
    def describe(kept: np.ndarray, held: np.ndarray, split: str, holdout: str) -> str:
        a, b = profile[kept].mean(0), profile[held].mean(0)
        worst = int(np.argmax(np.abs(a - b)))
        return (
            f"largest {what} difference {split} vs {holdout} {abs(a[worst] - b[worst]):.3f} ({names[worst]!r}: "
            f"{a[worst]:.3f} vs {b[worst]:.3f})"
        )

    return describe


# --------------------------------------------------------------------------------------------- choosing groups


def _stratified_groups(
    codes: np.ndarray, stratum: np.ndarray, profile: np.ndarray | None, n_holdout: int, seed: int
) -> np.ndarray:
    """Held groups (a mask over groups): the StratifiedGroupKFold fold closest in rows to `n_holdout`, the one with
    the more even shares on a tie. k folds of about n / k rows each, k = n / n_holdout rounded, so that one fold is
    about the size asked; the refinement then fixes what rounding and group sizes leave."""
    from sklearn.model_selection import StratifiedGroupKFold

    n, n_groups = len(codes), int(codes.max()) + 1
    k = int(min(max(round(n / n_holdout), 2), n_groups))
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "the least populated class has only m members": expected for rare classes; they go where they can
        warnings.simplefilter("ignore", UserWarning)
        tests = [test for _, test in folds.split(np.zeros(n), stratum, codes)]
    best = None
    for test in tests:
        if not 0 < len(test) < n:
            continue
        mask = np.zeros(n, dtype=bool)
        mask[test] = True
        gap = 0.0 if profile is None else float(np.abs(profile[mask].mean(0) - profile[~mask].mean(0)).max())
        key = (abs(len(test) - n_holdout), gap)
        if best is None or key < best[0]:
            best = (key, test)
    if best is None:
        raise ValueError(f"no fold of {k} has between 1 and {n - 1} rows")
    held_groups = np.zeros(n_groups, dtype=bool)
    held_groups[codes[best[1]]] = True
    return held_groups


def _random_groups(sizes: np.ndarray, n_holdout: int, seed: int) -> np.ndarray:
    """Groups in a seeded order, each taken when it brings the held rows closer to `n_holdout` (as
    GroupShuffleSplit would, but aiming at a row count rather than a number of groups)."""
    held_groups = np.zeros(len(sizes), dtype=bool)
    total = 0
    for g in np.random.default_rng(seed).permutation(len(sizes)):
        if abs(total + sizes[g] - n_holdout) < abs(total - n_holdout) and total + sizes[g] < sizes.sum():
            held_groups[g] = True
            total += sizes[g]
    if not held_groups.any():
        held_groups[int(np.argmin(sizes))] = True
    return held_groups


def _refine(
    held_groups: np.ndarray, sizes: np.ndarray, profile: np.ndarray | None, n_holdout: int, seed: int
) -> np.ndarray:
    """Bring the held rows as close to `n_holdout` as single group moves can, then swap groups to get closer still
    or to even the shares."""
    rng = np.random.default_rng(seed)
    held_groups = _resize(held_groups, sizes, profile, n_holdout, rng.random(len(sizes)))
    return _swap(held_groups, sizes, profile, n_holdout, rng)


def _imbalance(held_counts: np.ndarray, held_size: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """Sum over the profile's columns of (held share - kept share)², the last axis being the columns."""
    h = held_size[..., None].astype(np.float64)
    return (((held_counts / h) - (total - held_counts) / (n - h)) ** 2).sum(-1)


def _resize(
    held_groups: np.ndarray, sizes: np.ndarray, profile: np.ndarray | None, n_holdout: int, tie: np.ndarray
) -> np.ndarray:
    """Move single groups across while that brings the held rows strictly closer to `n_holdout`: each time the move
    that gets closest, then the one that leaves the shares most alike on both sides, then a seeded choice. Neither
    side is ever emptied. Ends within one group's size of `n_holdout` (a held side over by more than its smallest
    group gets closer by giving that group back; likewise for one short of it)."""
    held_groups = held_groups.copy()
    n = int(sizes.sum())
    while (size := int(sizes[held_groups].sum())) != n_holdout:
        sign = np.where(held_groups, -1, 1)
        new_size = size + sign * sizes
        closer = (np.abs(new_size - n_holdout) < abs(size - n_holdout)) & (new_size > 0) & (new_size < n)
        if not closer.any():
            break
        candidates = np.flatnonzero(closer)
        if profile is None:
            cost = np.zeros(len(candidates))
        else:
            held_counts = profile[held_groups].sum(0) + sign[candidates, None] * profile[candidates]
            cost = _imbalance(held_counts, new_size[candidates], profile.sum(0), n)
        g = candidates[np.lexsort((tie[candidates], cost, np.abs(new_size[candidates] - n_holdout)))[0]]
        held_groups[g] = not held_groups[g]
    return held_groups


# pairs looked at per swap: a seeded sample of this many groups from each side, so a swap costs O(SWAP_POOL² × columns)
SWAP_POOL = 200
MAX_SWAPS = 200


def _swap(
    held_groups: np.ndarray, sizes: np.ndarray, profile: np.ndarray | None, n_holdout: int, rng: np.random.Generator
) -> np.ndarray:
    """Swap a held group for a kept one while that brings the held rows closer to `n_holdout` (a move alone may not:
    groups of 3 and 7 rows, 8 asked, start from the 3) or, at the same distance, evens the shares (StratifiedGroupKFold
    balances k folds at once, not this one fold against the rest, and the moves above may have unbalanced it); each
    time the best such swap, by distance and then by balance."""
    held_groups = held_groups.copy()
    n = int(sizes.sum())
    total = profile.sum(0) if profile is not None else None
    for _ in range(MAX_SWAPS):
        size = int(sizes[held_groups].sum())
        dev = abs(size - n_holdout)
        inside, outside = np.flatnonzero(held_groups), np.flatnonzero(~held_groups)
        if len(inside) > SWAP_POOL:
            inside = np.sort(rng.choice(inside, SWAP_POOL, replace=False))
        if len(outside) > SWAP_POOL:
            outside = np.sort(rng.choice(outside, SWAP_POOL, replace=False))
        new_size = size - sizes[inside][:, None] + sizes[outside][None, :]
        new_dev = np.abs(new_size - n_holdout)
        if profile is None:
            now, cost = 0.0, np.zeros(new_size.shape)
        else:
            held_counts = profile[held_groups].sum(0)
            now = float(_imbalance(held_counts, np.array(size), total, n))
            counts = held_counts - profile[inside][:, None, :] + profile[outside][None, :, :]
            cost = _imbalance(counts, new_size, total, n)
        # a relative margin so that rounding noise never swaps back and forth
        better = (new_dev < dev) | ((new_dev == dev) & (cost < now - 1e-12 * max(now, 1.0)))
        better &= (new_size > 0) & (new_size < n)
        if not better.any():
            break
        i, j = np.nonzero(better)
        best = np.lexsort((cost[i, j], new_dev[i, j]))[0]
        held_groups[inside[i[best]]], held_groups[outside[j[best]]] = False, True
    return held_groups


# --------------------------------------------------------------------------------------------- groups across splits


# what a group in both splits of a pair costs, for the report (pairs not listed get a generic sentence)
CONSEQUENCE = {
    frozenset(("train", "test")): "the test score is optimistic for groups seen in training",
    frozenset(("train", "validation")): (
        "validation scores (and the early stopping and best checkpoint they choose) are optimistic for groups seen "
        "in training"
    ),
    frozenset(("validation", "test")): "the test split is not independent of the validation split that chose the model",
}


@dataclass
class GroupOverlap:
    """Groups found in more than one split. `shared`: (split, split) → the groups in both, sorted; `pair_rows`:
    (split, split) → each split's rows in those groups; `rows`: each split's rows in a group shared with any other
    split. True when anything is shared."""

    column: str = "group"
    shared: dict[tuple[str, str], list[Hashable]] = field(default_factory=dict)
    pair_rows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shared)

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "rows": dict(self.rows),
            "shared": [
                {"splits": list(pair), "groups": [_jsonable(g) for g in found], "rows": dict(self.pair_rows[pair])}
                for pair, found in self.shared.items()
            ],
        }

    def lines(self, limit: int = 10) -> list[str]:
        """One line per pair of splits sharing groups, naming up to `limit` of them."""
        out = []
        for (a, b), found in self.shared.items():
            n = len(found)
            shown = listed(found, limit)
            why = CONSEQUENCE.get(frozenset((a, b)), f"{a} and {b} are not independent")
            counts = self.pair_rows[(a, b)]
            out.append(
                f"{n} group{'s' if n != 1 else ''} of {self.column!r} {'are' if n != 1 else 'is'} in both {a} and {b} "
                f"({'e.g. ' if n > limit else ''}{shown}): {counts[a]} {a} rows, {counts[b]} {b} rows; {why}"
            )
        return out


def groups_across_splits(
    groups_by_split: Mapping[str, Sequence[Hashable] | np.ndarray], *, column: str = "group"
) -> GroupOverlap:
    """The groups that appear in more than one of the given splits, pair by pair, and how many rows they hold.

    Pairs follow train, validation, test, then other splits in the mapping's order. Missing group values (None,
    NaN, blank) belong to no group and are never reported as shared: `group_split` refuses them where it matters.
    """
    order = sorted(groups_by_split, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))
    counts: dict[str, dict[Hashable, int]] = {}
    for split in order:
        values = groups_by_split[split]
        tally: dict[Hashable, int] = {}
        for v in values.tolist() if isinstance(values, np.ndarray) else values:
            if not is_missing(v):
                tally[v] = tally.get(v, 0) + 1
        counts[split] = tally
    overlap = GroupOverlap(column=column, rows=dict.fromkeys(order, 0))
    in_shared: dict[str, set[Hashable]] = {s: set() for s in order}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            both = counts[a].keys() & counts[b].keys()
            if not both:
                continue
            overlap.shared[(a, b)] = _sorted(both)
            overlap.pair_rows[(a, b)] = {s: sum(counts[s][g] for g in both) for s in (a, b)}
            in_shared[a] |= both
            in_shared[b] |= both
    for split in order:
        overlap.rows[split] = sum(counts[split][g] for g in in_shared[split])
    return overlap


def _sorted(values: set[Hashable]) -> list[Hashable]:
    try:
        return sorted(values)  # type: ignore[type-var]
    except TypeError:  # mixed types (1 and "a") do not compare: sort by type, then text
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _jsonable(value: Hashable) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)
