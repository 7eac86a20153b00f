"""Data stage: every source kind, label encoding, the carved validation split, and one clear DataError per mistake."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hf_finetune.data.checks import check_images
from hf_finetune.data.sources import load_data
from hf_finetune.errors import DataError
from hf_finetune.recipe import DataSpec

SOURCES_LOGGER = "hf_finetune.data.sources"


def load_image(spec: DataSpec, **kwargs):
    return load_data(spec, {"image": "image_column"}, **kwargs)


def _save_image(path: Path, value: int = 0, mode: str = "RGB", size: tuple[int, int] = (4, 4)) -> Path:
    """A tiny image whose first pixel encodes `value`, so a test can tell which file a row came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (value % 256, 7, 9))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def _class_folder(root: Path, counts: dict[str, int]) -> Path:
    value = 0
    for label, n in counts.items():
        for i in range(n):
            _save_image(root / label / f"{i}.png", value)
            value += 1
    return root


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header), *(",".join(str(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _labelled_csv(folder: Path, labels: list, name: str = "train.csv") -> Path:
    """One small PNG per label under folder/imgs, listed by relative path in a CSV (columns image, label)."""
    rows = []
    for i, label in enumerate(labels):
        _save_image(folder / "imgs" / f"{name}-{i}.png", i)
        rows.append((f"imgs/{name}-{i}.png", label))
    return _write_csv(folder / name, ("image", "label"), rows)


def _paths(ds: datasets.Dataset) -> list[str]:
    return [item["path"] for item in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def _names(ds: datasets.Dataset) -> list[str]:
    """Each row's label as a class name, so assertions do not depend on ids."""
    return [ds.features["label"].int2str(i) for i in ds["label"]]


# --------------------------------------------------------------------------------------------- sources


def test_imagefolder_uses_class_folders_and_ignores_hidden_entries(tmp_path: Path):
    root = _class_folder(tmp_path / "pets", {"cat": 3, "dog": 4})
    _save_image(root / ".ipynb_checkpoints" / "0-checkpoint.png")
    _save_image(root / "cat" / ".ipynb_checkpoints" / "1-checkpoint.png")
    _save_image(root / "dog" / ".hidden.png")
    (root / ".DS_Store").write_bytes(b"\x00\x01junk")

    data = load_image(DataSpec(source=str(root)), carve_validation=False)

    assert data.label_names == ["cat", "dog"]
    assert list(data.splits) == ["train"]
    train = data.splits["train"]
    assert train.column_names == ["image", "label"]
    assert train.features["label"].names == ["cat", "dog"]
    assert Counter(_names(train)) == {"cat": 3, "dog": 4}
    assert not any("checkpoint" in p or "/." in p for p in _paths(train))


def test_imagefolder_with_train_and_test_folders_gives_a_test_split(tmp_path: Path):
    _class_folder(tmp_path / "data" / "train", {"a": 6, "b": 6})
    _class_folder(tmp_path / "data" / "test", {"a": 2, "b": 3})

    data = load_image(DataSpec(source=str(tmp_path / "data")))

    assert set(data.splits) == {"train", "validation", "test"}
    assert data.has_test
    assert Counter(_names(data.splits["test"])) == {"a": 2, "b": 3}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 12
    assert all("/test/" in p for p in _paths(data.splits["test"]))


def test_csv_relative_paths_resolve_against_the_csv_folder_with_custom_columns(tmp_path: Path, monkeypatch):
    folder = tmp_path / "dataset"
    rows = []
    for i, species in enumerate(["setosa", "virginica", "setosa", "versicolor"]):
        _save_image(folder / "imgs" / f"{i}.png", value=40 * i)
        rows.append((f"imgs/{i}.png", species, f"note {i}"))
    csv = _write_csv(folder / "flowers.csv", ("path", "species", "notes"), rows)
    # Another working directory: a path resolved against the cwd would point nowhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    spec = DataSpec(source=str(csv), image_column="path", label_column="species")
    data = load_image(spec, carve_validation=False)

    train = data.splits["train"]
    assert data.label_names == ["setosa", "versicolor", "virginica"]
    assert train.column_names == ["image", "label"]  # the extra `notes` column is dropped
    assert _names(train) == ["setosa", "virginica", "setosa", "versicolor"]
    for i, row in enumerate(train):
        assert row["image"].getpixel((0, 0))[0] == 40 * i  # the file this row names, read from the CSV's folder


def _write_listing(path: Path, kind: str, rows: list[dict]) -> Path:
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_jsonl_json_and_parquet_listings(tmp_path: Path, kind: str):
    rows = []
    for i, label in enumerate(["b", "a", "b", "a", "b"]):
        _save_image(tmp_path / "imgs" / f"{i}.png", value=10 * i)
        rows.append({"file": f"imgs/{i}.png", "label": label})
    listing = _write_listing(tmp_path / f"train.{kind}", kind, rows)

    data = load_image(DataSpec(source=str(listing), image_column="file"), carve_validation=False)

    train = data.splits["train"]
    assert data.label_names == ["a", "b"]
    assert _names(train) == ["b", "a", "b", "a", "b"]
    assert [row["image"].getpixel((0, 0))[0] for row in train] == [0, 10, 20, 30, 40]


def test_files_by_split_give_validation_and_test_with_relative_paths(tmp_path: Path):
    train = _labelled_csv(tmp_path / "train_dir", ["x", "y"] * 4, "train.csv")
    val = _labelled_csv(tmp_path / "val_dir", ["y", "x"], "val.csv")
    test = _labelled_csv(tmp_path / "test_dir", ["x", "y", "x"], "test.csv")

    spec = DataSpec(files={"train": str(train), "val": str(val), "test": str(test)})
    data = load_image(spec)

    assert {k: len(v) for k, v in data.splits.items()} == {"train": 8, "validation": 2, "test": 3}
    assert _names(data.splits["validation"]) == ["y", "x"]
    assert _names(data.splits["test"]) == ["x", "y", "x"]
    # each split's relative paths resolve against its own file's folder (the "val" split is renamed to validation)
    for split, folder in (("train", "train_dir"), ("validation", "val_dir"), ("test", "test_dir")):
        assert all(Path(p).is_file() and f"/{folder}/imgs/" in p for p in _paths(data.splits[split]))
        data.splits[split][0]["image"].load()


def test_local_dataset_repo_with_configs_and_split_names(tmp_path: Path):
    """A local copy of a Hub dataset repo: README configs pick files, splits have their own names."""
    repo = tmp_path / "repo"
    image = _save_image(tmp_path / "one.png", 5)
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.Value("string")})
    for config, labels in (("small", ["p", "q"] * 3), ("other", ["r", "s"] * 3)):
        for split in ("training", "holdout"):
            ds = datasets.Dataset.from_dict({"img": [str(image)] * 6, "kind": labels}, features=features)
            (repo / config).mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(repo / config / f"{split}.parquet"))
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: small\n  data_files:\n  - split: training\n    path: small/training.parquet\n"
        "  - split: holdout\n    path: small/holdout.parquet\n"
        "- config_name: other\n  data_files:\n  - split: training\n    path: other/training.parquet\n"
        "  - split: holdout\n    path: other/holdout.parquet\n"
        "---\n"
    )

    spec = DataSpec(
        source=str(repo),
        config="other",
        train_split="training",
        test_split="holdout",
        image_column="img",
        label_column="kind",
    )
    data = load_image(spec, carve_validation=False)

    assert data.label_names == ["r", "s"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "test": 6}
    assert data.splits["test"][0]["image"].getpixel((0, 0))[0] == 5

    with pytest.raises(DataError, match=r"data\.test_split 'missing' not found.*\['training', 'holdout'\]"):
        load_image(dataclasses.replace(spec, test_split="missing"))


def test_two_local_dataset_repos_with_the_same_name_each_give_their_own_rows(tmp_path: Path):
    """datasets caches a README-configured folder by name and config only; each folder must still be read afresh."""
    image = _save_image(tmp_path / "one.png")
    labels_by_copy = {"first": ["a", "b"], "second": ["x", "y", "z"]}
    for copy, labels in labels_by_copy.items():
        repo = tmp_path / copy / "repo"
        repo.mkdir(parents=True)
        datasets.Dataset.from_dict({"image": [str(image)] * len(labels), "label": labels}).to_parquet(
            str(repo / "rows.parquet")
        )
        (repo / "README.md").write_text(
            "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: rows.parquet\n---\n"
        )

    for copy, labels in labels_by_copy.items():
        spec = DataSpec(source=str(tmp_path / copy / "repo"), config="main")
        assert load_image(spec, carve_validation=False).label_names == labels


@pytest.mark.parametrize("layout", ["loose images", "one class folder"])
def test_an_image_folder_without_class_folders_says_how_to_lay_it_out(tmp_path: Path, layout: str):
    for i in range(3):
        _save_image(tmp_path / "imgs" / ("" if layout == "loose images" else "cat") / f"{i}.png")

    with pytest.raises(DataError, match=r"no class labels.*one sub-folder per class"):
        load_image(DataSpec(source=str(tmp_path / "imgs")))


# --------------------------------------------------------------------------------------------- labels


def test_integer_labels_are_named_in_numeric_order(tmp_path: Path):
    data = load_image(DataSpec(source=str(_labelled_csv(tmp_path, [10, 2, 3, 10]))), carve_validation=False)

    assert data.label_names == ["2", "3", "10"]  # string order would put "10" first
    assert data.splits["train"]["label"] == [2, 0, 1, 2]
    assert data.splits["train"].features["label"].names == ["2", "3", "10"]


def test_string_labels_are_sorted(tmp_path: Path):
    data = load_image(DataSpec(source=str(_labelled_csv(tmp_path, ["pear", "apple", "fig"]))), carve_validation=False)

    assert data.label_names == ["apple", "fig", "pear"]
    assert data.splits["train"]["label"] == [2, 0, 1]


def test_classlabel_names_are_kept_and_a_differently_ordered_validation_is_remapped_by_name(tmp_path: Path):
    image = _save_image(tmp_path / "one.png")

    def parquet(name: str, class_names: list[str], labels: list[str]) -> str:
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
        ds = datasets.Dataset.from_dict({"image": [str(image)] * len(labels), "label": labels}, features=features)
        ds.to_parquet(str(tmp_path / name))
        return str(tmp_path / name)

    train = parquet("train.parquet", ["zebra", "ant", "moth"], ["zebra", "ant", "moth", "ant"])
    val = parquet("validation.parquet", ["ant", "moth", "zebra"], ["ant", "zebra", "moth"])

    data = load_image(DataSpec(files={"train": train, "validation": val}))

    assert data.label_names == ["zebra", "ant", "moth"]  # the dataset's own order, not sorted
    assert data.splits["train"]["label"] == [0, 1, 2, 1]
    assert data.splits["validation"]["label"] == [1, 0, 2]  # ant, zebra, moth by name, not by the file's ids
    assert data.splits["validation"].features["label"].names == ["zebra", "ant", "moth"]


def test_model_label_names_map_a_subset_in_another_order(tmp_path: Path):
    csv = _labelled_csv(tmp_path, ["cat", "dog", "cat"])
    model_labels = ["dog", "bird", "cat"]  # the model's ids, not sorted; the data has no "bird"

    data = load_image(DataSpec(source=str(csv)), label_names=model_labels, carve_validation=False)

    assert data.label_names == model_labels
    assert data.splits["train"]["label"] == [2, 0, 2]
    assert data.splits["train"].features["label"].names == model_labels


def test_model_label_names_reject_a_label_the_model_does_not_know(tmp_path: Path):
    csv = _labelled_csv(tmp_path, ["dog", "fish", "cat"])

    with pytest.raises(DataError) as err:
        load_image(DataSpec(source=str(csv)), label_names=["cat", "dog"], carve_validation=False)

    message = str(err.value)
    assert "'fish'" in message and "the model" in message and "'train'" in message
    assert "'cat'" in message and "'dog'" in message  # the labels it does know


# --------------------------------------------------------------------------------------------- validation split


def _counts_csv(folder: Path, counts: dict[str, int]) -> Path:
    return _labelled_csv(folder, [label for label, n in counts.items() for _ in range(n)])


def test_carved_validation_is_stratified_seeded_and_logged(tmp_path: Path, caplog):
    csv = _counts_csv(tmp_path, {"a": 20, "b": 40, "c": 60})
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)

    first = load_image(DataSpec(source=str(csv), validation_size=0.25, seed=1))
    again = load_image(DataSpec(source=str(csv), validation_size=0.25, seed=1))
    other = load_image(DataSpec(source=str(csv), validation_size=0.25, seed=2))

    val = first.splits["validation"]
    assert len(val) == 30 and len(first.splits["train"]) == 90
    assert Counter(_names(val)) == {"a": 5, "b": 10, "c": 15}  # the classes' 1:2:3 proportions
    assert set(_paths(val)).isdisjoint(_paths(first.splits["train"]))
    assert _paths(again.splits["validation"]) == _paths(val)
    assert _paths(again.splits["train"]) == _paths(first.splits["train"])
    assert set(_paths(other.splits["validation"])) != set(_paths(val))
    assert "stratified" in caplog.text and "90 train / 30 validation" in caplog.text


@pytest.mark.parametrize(("n", "fraction", "expected"), [(32, 0.1, 3), (10, 0.7, 7), (50, 0.2, 10)])
def test_carved_validation_size_is_the_rounded_fraction(tmp_path: Path, n: int, fraction: float, expected: int):
    csv = _labelled_csv(tmp_path, ["a", "b"] * (n // 2))

    data = load_image(DataSpec(source=str(csv), validation_size=fraction))

    assert len(data.splits["validation"]) == expected == round(fraction * n)
    assert len(data.splits["train"]) == n - expected


def test_a_carved_test_split_is_stratified_and_both_sizes_are_fractions_of_train(tmp_path: Path, caplog):
    csv = _counts_csv(tmp_path, {"a": 20, "b": 40, "c": 60})
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)

    data = load_image(DataSpec(source=str(csv), validation_size=0.25, test_size=0.2, seed=1))
    again = load_image(DataSpec(source=str(csv), validation_size=0.25, test_size=0.2, seed=1))

    train, validation, test = (data.splits[s] for s in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (66, 30, 24)  # 0.25 and 0.2 of the 120 rows given
    assert Counter(_names(test)) == {"a": 4, "b": 8, "c": 12} and Counter(_names(validation)) == {
        "a": 5,
        "b": 10,
        "c": 15,
    }
    paths = [set(_paths(ds)) for ds in (train, validation, test)]
    assert sum(map(len, paths)) == len(set().union(*paths)) == 120  # disjoint, and every row is somewhere
    assert _paths(again.splits["test"]) == _paths(test)
    assert "no test split; carved 96 train / 24 test rows from train with seed 1, stratified" in caplog.text
    # without test_size, the same data carves the same way it always did: no test split
    assert "test" not in load_image(DataSpec(source=str(csv), validation_size=0.25, seed=1)).splits


def test_test_size_with_the_datas_own_test_split_is_refused_unless_it_is_set_aside(tmp_path: Path):
    train = _counts_csv(tmp_path / "train", {"a": 10, "b": 10})
    given = _counts_csv(tmp_path / "test", {"a": 3, "b": 3})
    files = {"train": str(train), "test": str(given)}
    with pytest.raises(DataError, match=r"data.test_size \(0.2\) carves a test split.*own test split 'test'"):
        load_image(DataSpec(files=files, test_size=0.2))
    data = load_image(DataSpec(files=files, test_size=0.2, test_split="none"))
    assert len(data.splits["test"]) == 4  # 0.2 of train.csv's 20 rows, none of test.csv's
    assert all("/train/imgs/" in p for p in _paths(data.splits["test"]))


def test_test_and_validation_sizes_must_leave_train_rows():
    from hf_finetune.errors import RecipeError
    from hf_finetune.recipe import load_recipe

    base = {"task": "image-classification", "model": {"name": "simple_cnn"}}
    with pytest.raises(
        RecipeError, match=r"data.test_size \(0.6\) \+ data.validation_size \(0.4\) leave no train rows"
    ):
        load_recipe(base | {"data": {"source": "builtin:digits", "test_size": 0.6, "validation_size": 0.4}})
    with pytest.raises(RecipeError, match=r"data.test_size: must be between 0 and 1"):
        load_recipe(base | {"data": {"source": "builtin:digits", "test_size": 1.5}})


def test_a_class_with_one_sample_falls_back_to_a_random_split_with_a_warning(tmp_path: Path, caplog):
    csv = _counts_csv(tmp_path, {"common": 19, "rare": 1})
    caplog.set_level(logging.INFO, logger=SOURCES_LOGGER)

    data = load_image(DataSpec(source=str(csv), validation_size=0.2))

    assert len(data.splits["train"]) == 16 and len(data.splits["validation"]) == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "random split" in warnings[0].getMessage()
    assert "carved 16 train / 4 validation rows from train with seed 42, random" in caplog.text
    assert data.label_names == ["common", "rare"]


def test_train_with_a_single_class_is_refused(tmp_path: Path):
    # (one row is also one class: this is what a single-row train split reports)
    with pytest.raises(DataError, match=r"split 'train' has only 1 class in column 'label'.*at least two"):
        load_image(DataSpec(source=str(_labelled_csv(tmp_path, ["a"]))))
    with pytest.raises(DataError, match=r"only 1 class"):
        load_image(DataSpec(source=str(_labelled_csv(tmp_path, ["a", "a", "a"]))))


def test_max_train_and_eval_samples_cap_the_splits(tmp_path: Path):
    train = _counts_csv(tmp_path / "train", {"a": 10, "b": 10})
    test = _counts_csv(tmp_path / "test", {"a": 5, "b": 5})

    spec = DataSpec(files={"train": str(train), "test": str(test)}, max_train_samples=7, max_eval_samples=3)
    data = load_image(spec)

    assert {k: len(v) for k, v in data.splits.items()} == {"train": 7, "validation": 2, "test": 3}
    uncapped = load_image(DataSpec(files={"train": str(train), "test": str(test)}))
    assert set(_paths(data.splits["train"])) <= set(_paths(uncapped.splits["train"]))  # carved first, then capped


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("override", "missing", "key"),
    [
        ({"image_column": "picture"}, "picture", "data.image_column"),
        ({"label_column": "class"}, "class", "data.label_column"),
    ],
)
def test_missing_column_is_named_with_the_existing_columns(tmp_path: Path, override, missing, key):
    csv = _write_csv(tmp_path / "t.csv", ("path", "species", "weight"), [("a.png", "x", 1)])
    spec = DataSpec(source=str(csv), image_column="path", label_column="species")

    with pytest.raises(DataError) as err:
        load_image(dataclasses.replace(spec, **override))

    message = str(err.value)
    assert f"'{missing}'" in message and key in message
    assert "['path', 'species', 'weight']" in message


def test_labels_in_test_unknown_to_train_are_named(tmp_path: Path):
    train = _labelled_csv(tmp_path / "tr", ["a", "b", "a", "b"])
    test = _labelled_csv(tmp_path / "te", ["a", "c", "d"], "test.csv")

    with pytest.raises(DataError) as err:
        load_image(DataSpec(files={"train": str(train), "test": str(test)}))

    message = str(err.value)
    assert "split 'test'" in message and "['c', 'd']" in message and "'train'" in message


def test_labels_in_validation_unknown_to_train_are_named(tmp_path: Path):
    train = _labelled_csv(tmp_path / "tr", ["a", "b"])
    val = _labelled_csv(tmp_path / "va", ["b", "zz"], "validation.csv")

    with pytest.raises(DataError, match=r"split 'validation' has labels \['zz'\]"):
        load_image(DataSpec(files={"train": str(train), "validation": str(val)}))


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_an_empty_split_is_named(tmp_path: Path, kind: str):
    rows = [{"image": str(_save_image(tmp_path / f"{i}.png")), "label": "a"} for i in range(3)]
    if kind == "csv":
        train = _write_csv(tmp_path / "train.csv", ("image", "label"), [tuple(r.values()) for r in rows])
        test = _write_csv(tmp_path / "test.csv", ("image", "label"), [])
    else:
        train = _write_listing(tmp_path / f"train.{kind}", kind, rows)
        test = tmp_path / f"test.{kind}"
        if kind == "jsonl":
            test.write_text("\n")
        else:
            pq.write_table(pa.Table.from_pylist(rows).slice(0, 0), test)

    with pytest.raises(DataError) as err:
        load_image(DataSpec(files={"train": str(train), "test": str(test)}))

    message = str(err.value)
    assert "split 'test' is empty" in message and "has no rows" in message and str(test) in message


def test_missing_source_and_unknown_builtin_are_data_errors(tmp_path: Path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_image(DataSpec(source=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=r"data\.files\.test: no such file"):
        load_image(DataSpec(files={"train": str(_labelled_csv(tmp_path, ["a"])), "test": "gone.csv"}))
    with pytest.raises(DataError, match=r"builtin:cifar.*builtin:digits"):
        load_image(DataSpec(source="builtin:cifar"))


def test_an_unreachable_hub_dataset_is_a_data_error_naming_it():
    with pytest.raises(DataError, match=r"'nobody-here/no-such-dataset'.*Hub dataset"):
        load_image(DataSpec(source="nobody-here/no-such-dataset"))


def test_check_images_names_every_undecodable_file_in_one_error(tmp_path: Path):
    root = _class_folder(tmp_path / "imgs", {"cat": 3, "dog": 3})
    noisy = Image.effect_noise((64, 64), 60).convert("RGB")
    noisy.save(root / "cat" / "truncated.jpg", quality=95)
    whole = (root / "cat" / "truncated.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "notes.png").write_text("this is a text file, not an image")

    data = load_image(DataSpec(source=str(root)))  # loading is lazy: the bad files pass here
    with pytest.raises(DataError) as err:
        check_images(data.splits)

    message = str(err.value)
    assert "truncated.jpg" in message and "notes.png" in message
    assert message.startswith("2 of 8 images cannot be decoded")
    assert "0.png" not in message


def test_check_images_names_a_bad_image_stored_as_bytes_by_split_and_row():
    good = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (3, 3))]}, features=datasets.Features({"image": datasets.Image()})
    )
    bad = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"garbage", "path": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    splits = datasets.DatasetDict({"train": datasets.concatenate_datasets([good, bad])})

    with pytest.raises(DataError, match=r"train split, row 1"):
        check_images(splits)
    check_images(datasets.DatasetDict({"train": good}))


def test_grayscale_palette_and_rgba_images_load_and_pass_the_check(tmp_path: Path, caplog):
    for i, mode in enumerate(["L", "P", "RGBA", "LA"]):
        _save_image(tmp_path / "imgs" / "a" / f"{mode}.png", 50 * i, mode=mode, size=(5, 3))
        _save_image(tmp_path / "imgs" / "b" / f"{mode}.png", 50 * i + 1, mode=mode, size=(5, 3))
    _save_image(tmp_path / "imgs" / "b" / "gray.jpg", 3, mode="L")
    caplog.set_level(logging.INFO, logger="hf_finetune.data.checks")

    data = load_image(DataSpec(source=str(tmp_path / "imgs")), carve_validation=False)
    check_images(data.splits)

    modes = Counter(row["image"].mode for row in data.splits["train"])
    assert modes == {"L": 3, "P": 2, "RGBA": 2, "LA": 2}
    assert "all 9 images decode" in caplog.text


# --------------------------------------------------------------------------------------------- built-in


def test_builtin_digits_is_offline_with_ten_classes_of_8x8_grayscale():
    data = load_image(DataSpec(source="builtin:digits"), carve_validation=False)

    assert set(data.splits) == {"train", "test"}
    assert data.label_names == [str(d) for d in range(10)]
    assert sum(len(s) for s in data.splits.values()) == 1797
    assert set(data.splits["test"]["label"]) == set(range(10))
    image = data.splits["train"][0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    assert max(image.getdata()) > 128  # pixels stretched from 0..16 to 0..255

    carved = load_image(DataSpec(source="builtin:digits"))
    assert set(carved.splits) == {"train", "validation", "test"}
    assert sum(len(s) for s in carved.splits.values()) == 1797


def _write_idx(folder: Path, kind: str, images: list[list[int]], labels: list[int]) -> None:
    """Gzipped idx files as Fashion-MNIST ships them: big-endian headers, then the raw uint8 pixels / labels."""
    import gzip
    import struct

    with gzip.open(folder / f"{kind}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + bytes(labels))
    with gzip.open(folder / f"{kind}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + b"".join(bytes(im) for im in images))


def test_builtin_fashion_mnist_reads_the_idx_files_with_the_official_test_split(tmp_path: Path, monkeypatch):
    from hf_finetune.data import builtin

    # image i is filled with 10*i + label, so each row shows which file position and label it came from
    train_labels = [0, 1, 2, 9, 0, 1]
    _write_idx(tmp_path, "train", [[10 * i + y] * 784 for i, y in enumerate(train_labels)], train_labels)
    _write_idx(tmp_path, "t10k", [[200 + 9] * 784, [210 + 1] * 784], [9, 1])
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path)

    data = load_image(DataSpec(source="builtin:fashion_mnist"), carve_validation=False)

    assert data.label_names[0] == "T-shirt/top" and data.label_names[9] == "Ankle boot"
    assert len(data.label_names) == 10  # the class list is fixed, not learnt from the rows present
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "test": 2}
    test = data.splits["test"]
    assert [row["label"] for row in test] == [9, 1]
    image = test[0]["image"]
    assert image.mode == "L" and image.size == (28, 28) and set(image.getdata()) == {209}
    assert sorted(row["image"].getpixel((0, 0)) for row in data.splits["train"]) == [0, 11, 22, 39, 40, 51]


def test_builtin_fashion_mnist_without_the_debian_package_says_how_to_install_it(tmp_path: Path, monkeypatch):
    from hf_finetune.data import builtin

    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "missing")
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        load_image(DataSpec(source="builtin:fashion_mnist"))
