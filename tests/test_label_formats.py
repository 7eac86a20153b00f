"""data.label_format multi_label and regression, through load_data: every input form, the all-at-once label checks,
the train-only target scaler, and the validation splits that keep label shares and the target's distribution."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.preprocessing import MultiLabelBinarizer

from hf_finetune import load_recipe
from hf_finetune.data.labels import (
    binned_split,
    fit_scaler,
    iterative_stratification,
    quantile_bins,
    share_gap,
    standardize,
    unstandardize,
)
from hf_finetune.data.sources import load_data
from hf_finetune.errors import DataError, RecipeError
from hf_finetune.recipe import DataSpec

SOURCES_LOGGER = "hf_finetune.data.sources"
TEXT = {"text": "text_column"}

# the rows every multi-label form below writes: (text, labels)
TAGGED = [
    ("r0", ["cat", "outdoor"]),
    ("r1", ["dog"]),
    ("r2", ["cat"]),
    ("r3", ["dog", "cat"]),
    ("r4", ["outdoor"]),
    ("r5", ["bird", "dog"]),
]
NAMES = ["bird", "cat", "dog", "outdoor"]


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    lines = [",".join(header), *(",".join(str(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _multi_label(**kwargs) -> DataSpec:
    return DataSpec(label_format="multi_label", **kwargs)


def _regression(**kwargs) -> DataSpec:
    return DataSpec(label_format="regression", **kwargs)


def _by_text(split: datasets.Dataset) -> dict[str, list[float]]:
    return dict(zip(split["text"], [list(v) for v in split["label"]], strict=True))


def _expected(rows: list[tuple[str, list[str]]]) -> dict[str, list[float]]:
    """The reference multi-hot rows: scikit-learn's MultiLabelBinarizer (classes sorted)."""
    binarizer = MultiLabelBinarizer()
    matrix = binarizer.fit_transform([tags for _, tags in rows])
    assert list(binarizer.classes_) == NAMES
    return {text: [float(x) for x in row] for (text, _), row in zip(rows, matrix, strict=True)}


def _all_rows(data) -> dict[str, list[float]]:
    return {**_by_text(data.splits["train"]), **_by_text(data.splits["validation"])}


# --------------------------------------------------------------------------------------------- multi-label forms


def test_every_multi_label_form_gives_the_same_multi_hot_matrix(tmp_path: Path):
    expected = _expected(TAGGED)
    delimited = _csv(tmp_path / "d.csv", ["text", "tags"], [[t, "|".join(g)] for t, g in TAGGED])
    columns = _csv(
        tmp_path / "c.csv",
        ["text", *NAMES],
        # 0/1, true/false and "0"/"1" cells mixed: a CSV column of 0/1 reads as integers, of True/False as bools
        [[t, *(int(n in g) for n in NAMES[:2]), *(str(n in g) for n in NAMES[2:])] for t, g in TAGGED],
    )
    listed = tmp_path / "l.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in TAGGED], "tags": [g for _, g in TAGGED]}), listed)
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "tags": g}) for t, g in TAGGED))
    specs = {
        "delimited CSV": _multi_label(source=str(delimited), label_column="tags"),
        "0/1 columns": _multi_label(source=str(columns), label_columns=list(reversed(NAMES))),
        "list column (parquet)": _multi_label(source=str(listed), label_column="tags"),
        "list column (JSON lines)": _multi_label(source=str(jsonl), label_column="tags"),
    }
    for form, spec in specs.items():
        data = load_data(dataclasses.replace(spec, validation_size=0.34), TEXT)
        assert data.label_names == NAMES, form
        assert data.label_format == "multi_label"
        assert data.splits["train"].features["label"] == datasets.List(datasets.Value("float32"), length=4), form
        assert _all_rows(data) == expected, form


def test_a_list_of_class_labels_keeps_the_datas_own_ids(tmp_path: Path):
    """A Hub-style List(ClassLabel) column (go_emotions' form): the ClassLabel's names and order are the ids."""
    order = ["outdoor", "dog", "cat", "bird"]
    features = datasets.Features(
        {"text": datasets.Value("string"), "tags": datasets.List(datasets.ClassLabel(names=order))}
    )
    ds = datasets.Dataset.from_dict(
        {"text": [t for t, _ in TAGGED], "tags": [[order.index(x) for x in g] for _, g in TAGGED]}, features=features
    )
    path = tmp_path / "hub.parquet"
    ds.to_parquet(str(path))

    data = load_data(_multi_label(source=str(path), label_column="tags", validation_size=0.34), TEXT)

    assert data.label_names == order
    expected = _expected(TAGGED)
    reorder = [NAMES.index(n) for n in order]
    assert _all_rows(data) == {t: [row[i] for i in reorder] for t, row in expected.items()}


def test_an_image_folder_with_label_columns_in_its_metadata(tmp_path: Path):
    root = tmp_path / "photos"
    root.mkdir()
    lines = []
    for i, (cat, outdoor) in enumerate([(1, 0), (0, 1), (1, 1), (1, 0), (0, 1), (1, 1)]):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(root / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "cat": cat, "outdoor": outdoor}))
    # metadata.jsonl: datasets 4.3 (the lowest supported) refuses a metadata.csv whose file_name pandas 3 reads as
    # large_string, for any imagefolder metadata
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")

    data = load_data(_multi_label(source=str(root), label_columns=["outdoor", "cat"]), {"image": "image_column"})

    assert data.label_names == ["cat", "outdoor"]
    rows = [*data.splits["train"]["label"], *data.splits["validation"]["label"]]
    assert sorted(map(list, rows)) == sorted([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [1, 1]])


def test_the_delimiter_option_strips_spaces_and_ignores_empty_parts(tmp_path: Path):
    rows = [[t, " ; ".join(g) + ";"] for t, g in TAGGED]  # "cat ; outdoor;"
    rows[0][1] = ";;cat;;outdoor"
    path = _csv(tmp_path / "t.csv", ["text", "tags"], rows)

    data = load_data(
        _multi_label(source=str(path), label_column="tags", label_delimiter=";", validation_size=0.34), TEXT
    )

    assert data.label_names == NAMES
    assert _all_rows(data) == _expected(TAGGED)
    # read with the default "|", each whole string is one label
    whole = load_data(_multi_label(source=str(path), label_column="tags", validation_size=0.34), TEXT)
    assert "cat ; outdoor;" not in whole.label_names and ";;cat;;outdoor" in whole.label_names


def test_an_unknown_label_in_test_is_refused_naming_split_row_and_label(tmp_path: Path):
    train = _csv(tmp_path / "train.csv", ["text", "tags"], [[t, "|".join(g)] for t, g in TAGGED])
    test = _csv(tmp_path / "test.csv", ["text", "tags"], [["a", "cat"], ["b", "dog|fish"], ["c", "cat"], ["d", "fish"]])

    with pytest.raises(DataError) as err:
        load_data(_multi_label(files={"train": str(train), "test": str(test)}, label_column="tags"), TEXT)

    message = str(err.value)
    assert "1 problem with the labels in column 'tags'" in message
    assert "split 'test': label 'fish' (rows 2, 4) is not one of train's labels" in message


def test_every_label_problem_of_every_split_comes_in_one_error(tmp_path: Path):
    train = _csv(
        tmp_path / "train.csv",
        ["text", "cat", "dog", "fish"],
        [["a", 1, 0, 0], ["b", 0, 1, 0], ["c", 0, 0, 0], ["d", "yes", 1, 0], ["e", 1, 0, 0]],
    )
    test = _csv(tmp_path / "test.csv", ["text", "cat", "dog", "fish"], [["f", 1, 0, 0], ["g", 0, 0, 0]])
    spec = _multi_label(files={"train": str(train), "test": str(test)}, label_columns=["cat", "dog", "fish"])

    with pytest.raises(DataError) as err:
        load_data(spec, TEXT)

    message = str(err.value)
    assert message.startswith("4 problems with the labels in data.label_columns ['cat', 'dog', 'fish']")
    assert "split 'train', column 'cat': 1 value not 0 or 1 (row 4: 'yes')" in message
    assert "split 'train': columns ['fish'] are positive in none of its 5 rows" in message
    assert "split 'train': 1 of 5 rows have no label at all (row 3)" in message
    assert "split 'test': 1 of 2 rows have no label at all (row 2)" in message


def test_rows_are_named_as_in_the_file_after_empty_texts_are_skipped(tmp_path: Path):
    rows = [["a", "cat"], ["", "dog"], ["c", "cat|dog"], ["d", ""], ["e", "dog"]]
    path = _csv(tmp_path / "t.csv", ["text", "tags"], rows)

    with pytest.raises(DataError, match=r"1 of 4 rows have no label at all \(row 4\)"):
        load_data(_multi_label(source=str(path), label_column="tags", empty_text="skip"), TEXT)


def test_allow_empty_labels_keeps_rows_with_no_label_as_all_zero(tmp_path: Path):
    rows = [*([t, "|".join(g)] for t, g in TAGGED), ["none1", ""], ["none2", ""]]
    path = _csv(tmp_path / "t.csv", ["text", "tags"], rows)
    spec = _multi_label(source=str(path), label_column="tags", validation_size=0.25)

    with pytest.raises(DataError, match=r"2 of 8 rows have no label at all \(rows 7, 8\).*allow_empty_labels: true"):
        load_data(spec, TEXT)
    data = load_data(dataclasses.replace(spec, allow_empty_labels=True), TEXT)

    rows_by_text = _all_rows(data)
    assert rows_by_text["none1"] == rows_by_text["none2"] == [0.0] * 4
    assert {k: v for k, v in rows_by_text.items() if not k.startswith("none")} == _expected(TAGGED)


def test_a_trained_models_label_names_fix_the_positions_and_refuse_other_labels(tmp_path: Path):
    """Evaluation: a test file alone, read with the model's label names (in the model's order)."""
    test = _csv(tmp_path / "test.csv", ["text", "tags"], [["a", "dog|cat"], ["b", "outdoor"]])
    spec = _multi_label(files={"test": str(test)}, label_column="tags")

    data = load_data(spec, TEXT, label_names=["outdoor", "dog", "cat"], carve_validation=False)

    assert data.label_names == ["outdoor", "dog", "cat"] and list(data.splits) == ["test"]
    assert [list(v) for v in data.splits["test"]["label"]] == [[0, 1, 1], [1, 0, 0]]
    with pytest.raises(DataError, match=r"label 'outdoor' \(row 2\) is not one of the model's labels \['dog', 'cat'\]"):
        load_data(spec, TEXT, label_names=["dog", "cat"], carve_validation=False)


def test_a_split_with_every_label_empty_is_left_out_as_unlabelled(tmp_path: Path):
    train = _csv(tmp_path / "train.csv", ["text", "y"], [[f"r{i}", i] for i in range(10)])
    hidden = _csv(tmp_path / "hidden.csv", ["text", "y"], [["a", ""], ["b", ""]])
    minus_one = _csv(tmp_path / "m.csv", ["text", "y"], [["a", -1], ["b", -1]])

    data = load_data(_regression(files={"train": str(train), "test": str(hidden)}, label_column="y"), TEXT)
    assert data.unlabelled == ("test",) and "test" not in data.splits
    # -1 is datasets' hidden class label, but a real regression target
    data = load_data(_regression(files={"train": str(train), "test": str(minus_one)}, label_column="y"), TEXT)
    assert data.unlabelled == () and data.splits["test"]["label"] == [-1.0, -1.0]
    with pytest.raises(DataError, match=r"split train: none of its 2 rows has a label in column 'y' \(all empty\)"):
        load_data(_regression(files={"train": str(hidden)}, label_column="y"), TEXT)


def test_max_train_and_eval_samples_still_cap_multi_label_splits(tmp_path: Path):
    labels, _ = _skewed_labels(100, seed=3)
    path = _tag_csv(tmp_path / "t.csv", labels)

    data = load_data(
        _multi_label(source=str(path), label_column="tags", max_train_samples=30, max_eval_samples=5), TEXT
    )

    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "validation": 5}
    assert len(data.splits["train"][0]["label"]) == len(data.label_names)


# --------------------------------------------------------------------------------------------- regression


def test_regression_targets_become_float32_and_minus_one_is_a_target(tmp_path: Path):
    rows = [["a", 3], ["b", -1], ["c", 10], ["d", 7], ["e", 0]]
    train = _csv(tmp_path / "train.csv", ["text", "price"], rows)
    test = _csv(tmp_path / "test.csv", ["text", "price"], [["f", "2.5"], ["g", "-0.25"]])

    data = load_data(_regression(files={"train": str(train), "test": str(test)}, label_column="price"), TEXT)

    assert data.label_names == ["price"] and data.label_format == "regression" and data.target_scaler is None
    for split in data.splits.values():
        assert split.features["label"] == datasets.Value("float32")
    carved = [*zip(data.splits["train"]["text"], data.splits["train"]["label"], strict=True)]
    carved += zip(data.splits["validation"]["text"], data.splits["validation"]["label"], strict=True)
    assert dict(carved) == {"a": 3.0, "b": -1.0, "c": 10.0, "d": 7.0, "e": 0.0}
    assert data.splits["test"]["label"] == [2.5, -0.25]


def test_every_bad_regression_target_of_every_split_comes_in_one_error(tmp_path: Path):
    train = _csv(tmp_path / "train.csv", ["text", "y"], [["a", 1], ["b", 2], ["c", "abc"], ["d", "inf"], ["e", 3]])
    test = _csv(tmp_path / "test.csv", ["text", "y"], [["f", 1], ["g", ""], ["h", "NaN"], ["i", "n/a"]])

    with pytest.raises(DataError) as err:
        load_data(_regression(files={"train": str(train), "test": str(test)}, label_column="y"), TEXT)

    message = str(err.value)
    assert message.startswith("5 problems with the labels in column 'y' (data.label_format: regression)")
    assert "split 'train': 1 of 5 rows have a target that is not a number (row 3: 'abc')" in message
    assert "split 'train': 1 of 5 rows have an infinite target (row 4)" in message
    assert "split 'test': 1 of 4 rows have a missing target (row 2)" in message
    assert "split 'test': 1 of 4 rows have a NaN target (row 3)" in message
    assert "split 'test': 1 of 4 rows have a target that is not a number (row 4: 'n/a')" in message


def test_class_labels_are_not_regression_targets(tmp_path: Path):
    path = _csv(tmp_path / "t.csv", ["text", "y"], [["a", "cat"], ["b", "dog"]])
    with pytest.raises(DataError, match=r"not a number \(row 1: 'cat', row 2: 'dog'\)"):
        load_data(_regression(source=str(path), label_column="y"), TEXT)
    constant = _csv(tmp_path / "c.csv", ["text", "y"], [["a", 4], ["b", 4], ["c", 4]])
    with pytest.raises(DataError, match=r"all 3 targets are equal \(4\); regression needs targets that vary"):
        load_data(_regression(source=str(constant), label_column="y"), TEXT)


def test_standardisation_is_fitted_on_train_only_and_undone_exactly(tmp_path: Path):
    rng = np.random.default_rng(0)
    values = {split: rng.lognormal(3, 1, size=n).round(3) for split, n in (("train", 40), ("validation", 9))}
    values["test"] = values["validation"] * 10  # far from train: a scaler that saw it would differ a lot
    files = {
        split: str(_csv(tmp_path / f"{split}.csv", ["text", "y"], [[f"{split}{i}", v] for i, v in enumerate(ys)]))
        for split, ys in values.items()
    }

    data = load_data(_regression(files=files, label_column="y", standardize_targets=True), TEXT)

    train = values["train"]
    assert data.target_scaler == pytest.approx(
        {"mean": np.mean(train), "std": np.std(train)}, rel=1e-6
    )  # fitted on the float32 targets
    for split, raw in values.items():
        scaled = np.asarray(data.splits[split]["label"])
        np.testing.assert_allclose(scaled, (raw - np.mean(train)) / np.std(train), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unstandardize(scaled, data.target_scaler), raw, rtol=1e-5)
    np.testing.assert_allclose(
        standardize(unstandardize([-1.5, 0.0, 2.0], {"mean": 3, "std": 2}), {"mean": 3, "std": 2}), [-1.5, 0, 2]
    )
    assert np.asarray(data.splits["train"]["label"]).mean() == pytest.approx(0, abs=1e-6)


def test_the_scaler_never_sees_the_validation_rows_carved_from_train(tmp_path: Path):
    rng = np.random.default_rng(1)
    raw = rng.normal(50, 20, size=120).round(2)
    path = _csv(tmp_path / "t.csv", ["text", "y"], [[f"r{i}", v] for i, v in enumerate(raw)])
    by_text = {f"r{i}": v for i, v in enumerate(raw)}

    data = load_data(
        _regression(source=str(path), label_column="y", standardize_targets=True, max_train_samples=60), TEXT
    )

    trained_on = np.array([by_text[t] for t in data.splits["train"]["text"]])
    assert len(trained_on) == 60
    assert data.target_scaler == pytest.approx(
        {"mean": trained_on.mean(), "std": trained_on.std()}, rel=1e-6
    )  # fitted on the float32 targets
    assert fit_scaler(raw) != pytest.approx(data.target_scaler)


def test_a_trained_models_scaler_is_applied_instead_of_one_fitted(tmp_path: Path):
    test = _csv(tmp_path / "test.csv", ["text", "y"], [["a", 12], ["b", 7]])
    spec = _regression(files={"test": str(test)}, label_column="y", standardize_targets=True)

    data = load_data(spec, TEXT, label_names=["y"], carve_validation=False, target_scaler={"mean": 10, "std": 2})

    assert data.splits["test"]["label"] == [1.0, -1.5] and data.target_scaler == {"mean": 10.0, "std": 2.0}
    with pytest.raises(DataError, match=r"no train split to fit the target scaler on"):
        load_data(spec, TEXT, label_names=["y"], carve_validation=False)


# --------------------------------------------------------------------------------------------- splits


def _skewed_labels(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Multi-hot rows with one common and several rare, correlated labels."""
    rng = np.random.default_rng(seed)
    common = rng.random(n) < 0.5
    rare = rng.random((n, 4)) < [0.08, 0.05, 0.04, 0.03]
    rare[:, 1] |= rare[:, 0] & (rng.random(n) < 0.5)
    labels = np.column_stack([common, rare]).astype(np.float32)
    labels[labels.sum(1) == 0, 0] = 1  # every row has a label
    return labels, ["common", "rare1", "rare2", "rare3", "rare4"]


def _tag_csv(path: Path, labels: np.ndarray, names: list[str] | None = None) -> Path:
    names = names or ["common", "rare1", "rare2", "rare3", "rare4"]
    rows = [[f"r{i}", "|".join(n for n, on in zip(names, row, strict=True) if on)] for i, row in enumerate(labels)]
    return _csv(path, ["text", "tags"], rows)


def test_iterative_stratification_keeps_every_labels_share_where_a_random_split_does_not():
    labels, _ = _skewed_labels(200, seed=0)
    n_val = 40
    # with 40 validation rows a label's share moves in steps of 1/40: one row either way is the best one can do
    tolerance = 1 / n_val + 1e-6
    stratified, random = [], []
    for seed in range(5):
        kept, held = iterative_stratification(labels, n_val, seed)
        assert len(held) == n_val and sorted([*kept, *held]) == list(range(200))
        stratified.append(share_gap(labels[kept], labels[held]))
        order = np.random.default_rng(seed).permutation(200)
        random.append(share_gap(labels[order[n_val:]], labels[order[:n_val]]))
    assert max(stratified) <= tolerance
    assert min(random) > tolerance and np.mean(random) > 2 * np.mean(stratified)


def test_iterative_stratification_is_deterministic_for_a_seed():
    labels, _ = _skewed_labels(150, seed=1)
    first = iterative_stratification(labels, 30, seed=7)
    again = iterative_stratification(labels, 30, seed=7)
    other = iterative_stratification(labels, 30, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_load_data_carves_multi_label_validation_by_iterative_stratification_and_logs_it(tmp_path: Path, caplog):
    labels, names = _skewed_labels(200, seed=2)
    path = _tag_csv(tmp_path / "t.csv", labels)
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)
    spec = _multi_label(source=str(path), label_column="tags", validation_size=0.2, seed=5)

    data = load_data(spec, TEXT)

    kept, held = iterative_stratification(labels, 40, seed=5)
    assert data.splits["validation"]["text"] == [f"r{i}" for i in held]
    assert data.splits["train"]["text"] == [f"r{i}" for i in kept]
    gap = np.abs(labels[kept].mean(0) - labels[held].mean(0))
    line = next(r.getMessage() for r in caplog.records if "no validation split" in r.getMessage())
    assert "160 train / 40 validation rows from train with seed 5, by iterative stratification" in line
    assert f"vs validation: {gap.max():.3f} ({names[int(gap.argmax())]!r}" in line
    assert load_data(spec, TEXT).splits["validation"]["text"] == data.splits["validation"]["text"]


def test_regression_validation_is_stratified_on_quantile_bins_of_the_target(tmp_path: Path, caplog):
    raw = np.random.default_rng(4).gamma(2, 5, size=200).round(4)  # skewed, as prices and counts are
    path = _csv(tmp_path / "t.csv", ["text", "y"], [[f"r{i}", v] for i, v in enumerate(raw)])
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)
    spec = _regression(source=str(path), label_column="y", validation_size=0.2, seed=3)

    data = load_data(spec, TEXT)

    held = [int(t[1:]) for t in data.splits["validation"]["text"]]
    kept = [int(t[1:]) for t in data.splits["train"]["text"]]
    assert (kept, held) == tuple(list(part) for part in binned_split(raw, 40, 10, seed=3))
    # 10 bins of 20 rows: a stratified split takes exactly 4 validation rows from each
    assert np.bincount(quantile_bins(raw, 10)[held], minlength=10).tolist() == [4] * 10
    assert f"stratified on 10 quantile bins of the target; target mean {raw[kept].mean():.4g} train" in caplog.text
    assert load_data(spec, TEXT).splits["validation"]["text"] == data.splits["validation"]["text"]
    other = load_data(dataclasses.replace(spec, seed=4), TEXT)
    assert other.splits["validation"]["text"] != data.splits["validation"]["text"]


def test_binned_splits_keep_train_and_validation_means_closer_than_random_splits():
    raw = np.random.default_rng(4).gamma(2, 5, size=200)
    binned, random = [], []
    for seed in range(10):
        kept, held = binned_split(raw, 40, 10, seed)
        binned.append(abs(raw[kept].mean() - raw[held].mean()) / raw.std())
        order = np.random.default_rng(seed).permutation(200)
        random.append(abs(raw[order[40:]].mean() - raw[order[:40]].mean()) / raw.std())
    # both: gaps in units of the target's standard deviation
    assert max(binned) < 0.15 and np.mean(binned) < 0.5 * np.mean(random)


def test_binned_split_falls_back_for_tiny_data(tmp_path: Path, caplog):
    path = _csv(tmp_path / "t.csv", ["text", "y"], [["a", 1.0], ["b", 2.0], ["c", 3.0]])
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)

    data = load_data(_regression(source=str(path), label_column="y", validation_size=0.3), TEXT)

    assert (len(data.splits["train"]), len(data.splits["validation"])) == (2, 1)
    assert "with seed 42, random; target mean" in caplog.text
    kept, held = binned_split(np.arange(20.0), 4, 2, seed=0)
    assert sorted([*kept, *held]) == list(range(20)) and (np.asarray(held) < 10).sum() == 2


# --------------------------------------------------------------------------------------------- recipe keys


def test_the_recipe_takes_the_label_keys_and_refuses_impossible_combinations():
    base = {"model": {"name": "simple_cnn"}}
    recipe = load_recipe(
        {
            **base,
            "data": {
                "source": "t.csv",
                "label_format": "multi_label",
                "label_delimiter": ";",
                "allow_empty_labels": True,
            },
        }
    )
    assert (recipe.data.label_format, recipe.data.label_delimiter, recipe.data.allow_empty_labels) == (
        "multi_label",
        ";",
        True,
    )
    assert load_recipe({**base, "data": {"source": "t.csv"}}).data.label_format == "single"
    columns = load_recipe(
        {**base, "data": {"source": "t.csv", "label_format": "multi_label", "label_columns": ["a", "b"]}}
    )
    assert columns.data.label_columns == ["a", "b"]
    assert load_recipe(
        {**base, "data": {"source": "t.csv", "label_format": "regression", "standardize_targets": True}}
    ).data.standardize_targets

    with pytest.raises(RecipeError) as err:
        load_recipe(
            {**base, "data": {"source": "t.csv", "label_columns": ["a"], "standardize_targets": True}},
        )
    message = str(err.value)
    assert "data.label_columns: applies to label_format multi_label only, not single" in message
    assert "data.standardize_targets: applies to label_format regression only, not single" in message

    with pytest.raises(RecipeError) as err:
        load_recipe({**base, "data": {"source": "t.csv", "label_format": "multi_label", "label_delimiter": ""}})
    assert 'data.label_delimiter: must not be empty; e.g. "|"' in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe({**base, "data": {"source": "t.csv", "label_format": "multi", "label_columns": []}})
    assert re.search(r"data.label_format: 'single', 'multi_label' or 'regression', got 'multi'", str(err.value))
    problems = DataSpec(label_format="multi_label", label_columns=["a", "a"], label_column="tags").problems()
    assert any("['a'] listed more than once" in p for p in problems)
    assert any("data.label_column ('tags') is not read when data.label_columns is set" in p for p in problems)
