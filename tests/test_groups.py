"""Group-aware splits (issue 15 item 4) on data built so that the answer is known: patients with patient-level
classes, label sets and targets, planted missing group values, and splits sharing planted patients."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from hf_finetune.data.groups import GroupSplit, group_split, groups_across_splits
from hf_finetune.errors import DataError


def _patients(classes: list[int], rows_each: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(group of each row, class of each row): patient i has `rows_each` rows, all of class classes[i]."""
    groups = np.repeat([f"p{i:03d}" for i in range(len(classes))], rows_each)
    return groups, np.repeat(classes, rows_each)


# 40 patients × 5 rows: 16 cat, 16 dog, 8 owl patients, in a shuffled order so that file order does not help
CLASSES = np.random.default_rng(7).permutation([0] * 16 + [1] * 16 + [2] * 8).tolist()
NAMES = ["cat", "dog", "owl"]


def _whole(groups: np.ndarray, split: GroupSplit) -> None:
    """Both parts sorted, disjoint, covering every row, neither empty, and no group on both sides."""
    n = len(groups)
    assert np.all(np.diff(split.kept) > 0) and np.all(np.diff(split.held) > 0)
    assert len(split.held) > 0 and len(split.kept) > 0
    assert np.array_equal(np.sort(np.concatenate([split.kept, split.held])), np.arange(n))
    assert not set(groups[split.kept].tolist()) & set(groups[split.held].tolist())


def _share_gap(profile: np.ndarray, split: GroupSplit) -> float:
    return float(np.abs(profile[split.kept].mean(0) - profile[split.held].mean(0)).max())


def _squared_gap(held: np.ndarray, total: np.ndarray, h: int, n: int) -> float:
    return float((((held / h) - (total - held) / (n - h)) ** 2).sum())


# --------------------------------------------------------------------------------------------- single-label


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_single_label_keeps_patients_whole_and_reaches_the_best_class_balance(seed):
    groups, labels = _patients(CLASSES)
    split = group_split(groups, labels, 40, seed, column="patient_id", label_names=NAMES)
    _whole(groups, split)
    # all groups have 5 rows and 40 is a multiple of 5: exactly 8 patients
    assert len(split.held) == 40
    # Known answer: patients are single-class and equally large, so the held classes are a composition of 8 patients
    # into (cat, dog, owl); the best one by squared share difference (what the split minimises) is found by brute
    # force over all compositions. The swap pass reaches it: exchanging one patient for another is the only move
    # that keeps the size, and for this separable convex cost a composition no such exchange improves is optimal.
    total = np.array([16, 16, 8]) * 5
    best = min(
        _squared_gap(np.array(c) * 5, total, 40, 200)
        for c in itertools.product(range(9), repeat=3)
        if sum(c) == 8 and all(c[i] <= total[i] // 5 for i in range(3))
    )
    held = np.bincount(labels[split.held], minlength=3)
    assert _squared_gap(held, total, 40, 200) == pytest.approx(best)
    # that optimum is (3, 3, 2) patients: shares 0.375/0.375/0.25 vs 0.406/0.406/0.188, largest gap 0.0625
    assert sorted((held // 5).tolist()) == [2, 3, 3]
    assert _share_gap(np.eye(3)[labels], split) == pytest.approx(0.0625)
    assert split.how.startswith("group-aware (40 groups of 'patient_id' kept whole, 8 in validation), stratified:")
    assert "largest class-share difference train vs validation 0.062" in split.how


def test_same_seed_same_split_other_seeds_differ():
    groups, labels = _patients(CLASSES)
    first = group_split(groups, labels, 40, 0)
    again = group_split(groups, labels, 40, 0)
    assert np.array_equal(first.held, again.held) and first.how == again.how
    # a given other seed could in principle pick the same 8 of 40 patients; all five doing so would not happen
    others = [group_split(groups, labels, 40, seed).held for seed in range(1, 6)]
    assert any(not np.array_equal(first.held, other) for other in others)
    # the groups' order of appearance decides the codes, not their values: relabelling patients changes nothing
    renamed = np.array([f"x{g}" for g in groups])
    assert np.array_equal(group_split(renamed, labels, 40, 0).held, first.held)


@pytest.mark.parametrize(("n_holdout", "seed"), [(37, 0), (61, 1), (10, 2), (150, 3)])
def test_uneven_groups_held_size_is_within_one_group_and_no_single_move_gets_closer(n_holdout, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, 30)
    groups = np.repeat(np.arange(30), sizes)
    labels = np.repeat(rng.integers(0, 3, 30), sizes)
    split = group_split(groups, labels, n_holdout, seed)
    _whole(groups, split)
    dev = len(split.held) - n_holdout
    assert abs(dev) <= sizes.max()
    # local optimality: giving back any held group or taking any kept one (without emptying a side) is no closer
    held_groups = np.unique(groups[split.held])
    for g, s in enumerate(sizes):
        new = len(split.held) + (-s if g in held_groups else s)
        if 0 < new < len(groups):
            assert abs(new - n_holdout) >= abs(dev)
    # never farther than the fold StratifiedGroupKFold itself offers (the refinement only ever gets closer)
    k = min(max(round(len(groups) / n_holdout), 2), 30)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    best_fold = min(abs(len(test) - n_holdout) for _, test in folds.split(groups, labels, groups))
    assert abs(dev) <= best_fold


def test_tiny_case_against_all_group_subsets():
    # 7 groups of 1..7 rows (28 in all): brute force over every proper subset of groups gives the closest reachable
    # held size for each n_holdout (here always n_holdout itself); the split must reach it
    sizes = np.arange(1, 8)
    groups = np.repeat(np.arange(7), sizes)
    labels = np.repeat([0, 1, 0, 1, 0, 1, 0], sizes)
    reachable = {sum(c) for r in range(1, 7) for c in itertools.combinations(sizes.tolist(), r)}
    for n_holdout in range(1, 28):
        best = min(abs(total - n_holdout) for total in reachable)
        split = group_split(groups, labels, n_holdout, n_holdout)
        _whole(groups, split)
        assert abs(len(split.held) - n_holdout) == best, (n_holdout, len(split.held))


def test_two_groups_hold_the_one_closest_in_size():
    groups = np.array(["a"] * 3 + ["b"] * 7)
    split = group_split(groups, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1], 2, 0)
    assert split.held.tolist() == [0, 1, 2]
    split = group_split(groups, None, 8, 0)
    assert split.held.tolist() == list(range(3, 10))


def test_one_row_groups_split_like_rows():
    # every row its own group: the group split is an ordinary stratified split, exact in size and in class shares
    labels = np.array([0] * 30 + [1] * 70)
    split = group_split(np.arange(100), labels, 20, 5)
    assert len(split.held) == 20
    assert np.bincount(labels[split.held]).tolist() == [6, 14]


def test_too_few_rows_per_class_falls_back_to_random_groups_with_a_warning(caplog):
    # every row its own class: no class has k = 3 rows, so StratifiedGroupKFold refuses
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.groups"):
        split = group_split(groups, [0, 1, 2, 3, 4, 5], 2, 0, column="patient_id")
    _whole(groups, split)
    assert len(split.held) == 2
    assert "random groups (n_splits=3 cannot be greater than the number of members in each class" in split.how
    assert "stratified group split of 'train' is impossible" in caplog.text
    assert "random groups of 'patient_id'" in caplog.text


def test_no_strata_means_random_groups_without_a_warning(caplog):
    groups, _ = _patients(CLASSES)
    with caplog.at_level(logging.WARNING, logger="hf_finetune.data.groups"):
        split = group_split(groups, None, 33, 4)
    _whole(groups, split)
    assert len(split.held) in (30, 35)  # 5-row groups: 33 is 3 rows from either
    assert split.how.endswith("random groups (no strata given)")
    assert ", 3" in split.how and "rows for the 33 asked" in split.how
    assert not caplog.records


# --------------------------------------------------------------------------------------------- errors


def test_one_group_is_refused():
    with pytest.raises(DataError) as err:
        group_split(["p1"] * 12, [0, 1] * 6, 3, 0, column="patient_id")
    assert str(err.value) == (
        "data.group_column 'patient_id': all 12 rows are in one group, so no validation split can keep groups "
        "whole; add groups or give a validation split"
    )
    with pytest.raises(DataError, match="no test split can keep groups whole; add groups or give a test split"):
        group_split(["p1"] * 4, None, 1, 0, column="patient_id", holdout="test")


def test_missing_group_values_are_refused_naming_the_rows():
    groups: list[object] = [f"p{i // 3}" for i in range(30)]
    planted = {3: None, 7: float("nan"), 11: "", 12: "  ", 20: np.float64("nan"), 25: np.datetime64("NaT")}
    for i, value in planted.items():
        groups[i] = value
    with pytest.raises(DataError) as err:
        group_split(groups, [0, 1] * 15, 5, 0, column="patient_id")
    message = str(err.value)
    assert message.startswith("data.group_column 'patient_id': split 'train': 6 of 30 rows have no group")
    assert "rows 4, 8, 12, 13, 21, 26, counting data rows from 1 in the split's own order" in message
    assert "Fill in their 'patient_id' or remove those rows" in message
    # the user's own row numbers when given, and at most 10 of them
    many = [None] * 12 + ["a", "b"]
    with pytest.raises(DataError) as err:
        group_split(many, None, 1, 0, split="validation", rows=list(range(101, 115)))
    assert "split 'validation': 12 of 14 rows" in str(err.value)
    assert "rows 101, 102, 103, 104, 105, 106, 107, 108, 109, 110 …," in str(err.value)


def test_pandas_missing_values_are_missing_too():
    pd = pytest.importorskip("pandas")
    with pytest.raises(DataError, match="row 2, counting"):
        group_split(["a", pd.NA, "b"], None, 1, 0)


def test_bad_arguments_are_programming_errors():
    with pytest.raises(ValueError, match="n_holdout must be between 1 and 9"):
        group_split(list("aabbccddee"), None, 10, 0)
    with pytest.raises(ValueError, match="label_format"):
        group_split(list("aabb"), None, 1, 0, label_format="multilabel")


# --------------------------------------------------------------------------------------------- multi-label


def _label_sets(n_patients: int, rows_each: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patients with a patient-level label set over 6 labels, from common (p 0.5) to rare (p 0.08)."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.5, 0.35, 0.25, 0.15, 0.1, 0.08])
    per_patient = rng.random((n_patients, len(rates))) < rates
    return np.repeat(np.arange(n_patients), rows_each), np.repeat(per_patient, rows_each, axis=0).astype(np.float32)


def test_multi_label_keeps_groups_whole_and_evens_label_shares():
    stratified, random = [], []
    for seed in range(6):
        groups, labels = _label_sets(60, 4, seed)
        split = group_split(groups, labels, 48, seed, label_format="multi_label", label_names=list("abcdef"))
        _whole(groups, split)
        assert len(split.held) == 48  # 12 patients
        gap = _share_gap(labels, split)
        stratified.append(gap)
        # 12 of 60 patients: a label on m patients is due 0.2·m held ones; rounding that to a whole patient alone
        # costs up to 0.5/12 + 0.5/48 = 0.052 in share difference, so 0.1 is two roundings' worth, for 6 labels at
        # once; a random choice of 12 patients is typically off by 0.15-0.25 on some label
        assert gap <= 0.1, (seed, gap, split.how)
        assert "largest label-share difference train vs validation" in split.how
        random.append(_share_gap(labels, group_split(groups, None, 48, seed)))
    assert np.mean(stratified) < 0.5 * np.mean(random), (stratified, random)


def test_multi_label_rows_vary_within_a_group():
    # rows of a patient need not share labels; rows with no label at all are a stratum of their own
    rng = np.random.default_rng(3)
    sizes = rng.integers(2, 9, 50)
    groups = np.repeat(np.arange(50), sizes)
    labels = (rng.random((len(groups), 5)) < [0.4, 0.2, 0.1, 0.05, 0.03]).astype(np.float32)
    n_holdout = len(groups) // 5
    split = group_split(groups, labels, n_holdout, 0, label_format="multi_label")
    _whole(groups, split)
    assert abs(len(split.held) - n_holdout) <= sizes.max()
    # row-level labels are balanced from ~50 rows held: 0.08 is about two standard errors of the rarest share
    assert _share_gap(labels, split) <= 0.08, split.how


# --------------------------------------------------------------------------------------------- regression


def test_regression_keeps_groups_whole_and_spans_the_target():
    gaps, random_gaps = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        level = rng.normal(size=50)
        groups = np.repeat(np.arange(50), 4)
        values = np.repeat(level, 4) + rng.normal(scale=0.1, size=200)
        split = group_split(groups, values, 40, seed, label_format="regression")
        _whole(groups, split)
        assert len(split.held) == 40
        assert "stratified: 10 quantile bins of the target; target mean" in split.how
        # 10 held patients, one per decile bin's worth: a patient's 4 rows can straddle a bin edge, each row moving
        # a bin's held share by 1/40 = 0.025; three such rows' worth (0.075) is the tolerance
        bins = np.argsort(np.argsort(values, kind="stable"), kind="stable") * 10 // 200
        assert _share_gap(np.eye(10)[bins], split) <= 0.075, (seed, split.how)
        gaps.append(abs(values[split.held].mean() - values[split.kept].mean()))
        other = group_split(groups, None, 40, seed)
        random_gaps.append(abs(values[other.held].mean() - values[other.kept].mean()))
    # a random 10 of 50 patients: the mean differs by ~0.35 (s.d.); bins cut that several-fold
    assert np.mean(gaps) < 0.5 * np.mean(random_gaps), (gaps, random_gaps)
    assert max(gaps) < 0.2


def test_regression_too_few_rows_for_bins_is_random_groups():
    split = group_split(["a", "a", "b"], [0.1, 0.5, 0.9], 1, 0, label_format="regression")
    assert split.held.tolist() == [2]
    assert "random groups (too few rows for two bins" in split.how and "target mean 0.3 train / 0.9" in split.how


# --------------------------------------------------------------------------------------------- across splits


def _planted() -> dict[str, list[object]]:
    train = [f"p{i:03d}" for i in range(40) for _ in range(5)]  # p000..p039, 5 rows each
    validation = [f"p{i:03d}" for i in range(40, 50) for _ in range(3)] + ["p017"] * 3 + [None]
    test = [f"p{i:03d}" for i in range(50, 60) for _ in range(2)] + ["p003", "p003", "p017", "p045", None]
    return {"test": test, "train": train, "validation": validation}


def test_groups_across_splits_finds_the_planted_patients_and_rows():
    overlap = groups_across_splits(_planted(), column="patient_id")
    assert overlap
    assert list(overlap.shared) == [("train", "validation"), ("train", "test"), ("validation", "test")]
    assert overlap.shared[("train", "test")] == ["p003", "p017"]
    assert overlap.shared[("train", "validation")] == ["p017"]
    assert overlap.shared[("validation", "test")] == ["p017", "p045"]  # missing values (None) are no group
    assert overlap.pair_rows[("train", "test")] == {"train": 10, "test": 3}
    assert overlap.pair_rows[("validation", "test")] == {"validation": 6, "test": 2}
    # rows in a group shared with any other split: train p003, p017; validation p017, p045; test p003 ×2, p017, p045
    assert overlap.rows == {"train": 10, "validation": 6, "test": 4}
    lines = overlap.lines()
    assert lines[1] == (
        "2 groups of 'patient_id' are in both train and test (p003, p017): 10 train rows, 3 test rows; the test "
        "score is optimistic for groups seen in training"
    )
    assert lines[0].startswith("1 group of 'patient_id' is in both train and validation (p017): 5 train rows, 3 ")
    assert json.loads(json.dumps(overlap.to_json()))["shared"][1] == {
        "splits": ["train", "test"],
        "groups": ["p003", "p017"],
        "rows": {"train": 10, "test": 3},
    }


def test_groups_across_splits_shortens_long_lists_and_takes_any_hashable():
    train = np.arange(100)
    test = np.arange(88, 120)  # 12 shared, NumPy integers
    overlap = groups_across_splits({"train": train, "test": test})
    assert overlap.shared[("train", "test")] == list(range(88, 100))
    line = overlap.lines(limit=3)[0]
    assert line.startswith("12 groups of 'group' are in both train and test (e.g. 88, 89, 90 …): 12 train rows")
    assert json.loads(json.dumps(overlap.to_json()))["shared"][0]["groups"] == list(range(88, 100))
    mixed = groups_across_splits({"train": [1, "a", (2, 3)], "validation": ["a", 1, (2, 3)]})
    assert len(mixed.shared[("train", "validation")]) == 3


def test_clean_splits_and_a_group_split_share_nothing():
    planted = _planted()
    clean = {"train": planted["train"], "test": [f"q{i}" for i in range(20)]}
    overlap = groups_across_splits(clean)
    assert not overlap and overlap.shared == {} and overlap.lines() == []
    assert overlap.rows == {"train": 0, "test": 0}
    groups, labels = _patients(CLASSES)
    split = group_split(groups, labels, 40, 0)
    assert not groups_across_splits({"train": groups[split.kept], "validation": groups[split.held]})
    # and the same data split by rows (ignoring groups) does share patients
    rows = np.random.default_rng(0).permutation(200)
    assert groups_across_splits({"train": groups[rows[40:]], "validation": groups[rows[:40]]})
