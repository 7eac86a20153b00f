"""Duplicates, near-duplicates and conflicting labels (issue 15 items 1, 2 and the search's cost), on data built so
that the answer is known: copies saved in other formats, resized and re-encoded copies, whitespace- and case-changed
texts, a copy under another label, and unrelated rows that must not be found."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_finetune.data.duplicates import dhash, find_duplicates, minhash, normalise_text, shingles
from hf_finetune.errors import DataError


def _noise(seed: int, size: int = 32) -> np.ndarray:
    """A random image with structure at a coarse scale (a smooth field), so resizing keeps its dHash."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def _images(folder: Path, split: str, items: list[tuple[str, Image.Image, str]]) -> tuple[datasets.Dataset, list]:
    paths = []
    for name, img, _ in items:
        path = folder / split / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths.append(str(path))
    ds = datasets.Dataset.from_dict({"image": paths, "label": [label for *_, label in items]})
    return ds.cast_column("image", datasets.Image()), [Path(p).name for p in paths]


@pytest.fixture(scope="module")
def image_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dups")
    a, b, c, d, e, f = (Image.fromarray(_noise(s)) for s in range(6))
    resized = f.resize((64, 64), Image.Resampling.BILINEAR).resize((32, 32), Image.Resampling.BILINEAR)
    train, train_ids = _images(
        folder,
        "train",
        [
            ("a.png", a, "cat"),
            ("a_copy.bmp", a, "cat"),  # the same pixels in another format: exact, within train
            ("b.png", b, "dog"),  # its copy is in test: exact, across splits
            ("c.png", c, "cat"),
            ("c_again.png", c, "dog"),  # the same image under another label: conflicting
            ("d1.png", d, "cat"),
            ("d2.png", d, "cat"),
            ("f.png", f, "dog"),  # its resized copy is in test: near, across splits
            ("unique.png", Image.fromarray(_noise(100)), "cat"),
        ],
    )
    test, test_ids = _images(
        folder,
        "test",
        [
            ("b_test.png", b, "dog"),
            ("d3.png", d, "cat"),  # a third copy of d: one group of three
            ("f_small.jpg", resized.convert("RGB"), "dog"),
            ("e.png", e, "cat"),
        ],
    )
    ids = {"train": train_ids, "test": test_ids}
    return find_duplicates({"train": train, "test": test}, "image", row_ids=ids)


def _group(report, *ids: str):
    found = [g for g in report.groups if sorted(m.id for m in g.members) == sorted(ids)]
    assert len(found) == 1, [g.line() for g in report.groups]
    return found[0]


def test_every_planted_group_is_found_and_nothing_else(image_report):
    groups = sorted(sorted(m.id for m in g.members) for g in image_report.groups)
    assert groups == [
        ["a.png", "a_copy.bmp"],
        ["b.png", "b_test.png"],
        ["c.png", "c_again.png"],
        ["d1.png", "d2.png", "d3.png"],
        ["f.png", "f_small.jpg"],
    ]
    assert image_report.counts == {
        "exact_within": 2,  # a, c
        "exact_cross": 2,  # b, d
        "near_within": 0,
        "near_cross": 1,  # f
        "conflicting": 1,  # c
        "rows_in_groups": 11,
    }


def test_each_group_says_what_it_is(image_report):
    a = _group(image_report, "a.png", "a_copy.bmp")
    assert a.exact and not a.cross_split and not a.conflicting
    b = _group(image_report, "b.png", "b_test.png")
    assert b.exact and b.cross_split and b.splits == ["train", "test"]
    c = _group(image_report, "c.png", "c_again.png")
    assert c.conflicting and [m.label for m in c.members] == ["cat", "dog"]
    f = _group(image_report, "f.png", "f_small.jpg")
    assert not f.exact and f.cross_split
    d = _group(image_report, "d1.png", "d2.png", "d3.png")
    assert [(m.split, m.row) for m in d.members] == [("train", 5), ("train", 6), ("test", 1)]


def test_lines_name_the_files_worst_first(image_report):
    lines = image_report.lines(limit=2)
    assert lines[0] == (
        "duplicates: 2 exact and 1 near across splits, 2 exact and 0 near within a split, 1 with conflicting labels "
        "(11 of 13 rows)"
    )
    assert lines[1] == "exact duplicate within train: c.png == c_again.png (conflicting labels cat, dog)"
    assert lines[2].startswith("exact duplicate across train and test: ")
    assert lines[-1] == "… and 3 more groups"


def test_drop_plan_keeps_test_intact_and_one_copy_of_each(image_report):
    plan = image_report.drop_plan()
    assert "test" not in plan  # every test row kept, the train copies go
    # a_copy (1), b (2), c_again (4), d1 and d2 (5, 6: d3 stays in test), f (7)
    assert plan == {"train": [1, 2, 4, 5, 6, 7]}


def test_dhash_survives_resizing_and_separates_unrelated_images():
    img = Image.fromarray(_noise(7, 64))
    bigger = img.resize((128, 128), Image.Resampling.BICUBIC)
    other = Image.fromarray(_noise(8, 64))
    assert bin(dhash(img) ^ dhash(bigger)).count("1") <= 4
    assert bin(dhash(img) ^ dhash(other)).count("1") > 12


def test_texts_normalised_near_and_distinct():
    sentence = "the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence today"
    changed = sentence.replace("farmer", "farmhand")
    train = datasets.Dataset.from_dict(
        {
            "text": ["Hello   World", "ﬁne print here", sentence, "completely unrelated words about shipping"],
            "label": [0, 1, 0, 1],
        }
    )
    test = datasets.Dataset.from_dict(
        {"text": ["hello world", "fine print HERE", changed, "another sentence on gardening"], "label": [0, 0, 0, 1]}
    )
    report = find_duplicates({"train": train, "test": test}, "text")
    found = {tuple((m.split, m.row) for m in g.members): g for g in report.groups}
    assert set(found) == {(("train", 0), ("test", 0)), (("train", 1), ("test", 1)), (("train", 2), ("test", 2))}
    assert found[(("train", 0), ("test", 0))].exact and not found[(("train", 0), ("test", 0))].conflicting
    assert found[(("train", 1), ("test", 1))].exact and found[(("train", 1), ("test", 1))].conflicting
    assert not found[(("train", 2), ("test", 2))].exact
    assert normalise_text("  ﬁne\tPrint\n") == "fine print"
    # one word changed of 20 (the default threshold is 0.7): 14 shared of the 20 distinct word 3-grams
    a, b = shingles(sentence), shingles(changed)
    assert len(a & b) / len(a | b) == pytest.approx(14 / 20)


def test_near_text_threshold_is_honoured():
    sentence = "the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence today"
    changed = sentence.replace("farmer", "farmhand")
    ds = datasets.Dataset.from_dict({"text": [sentence, changed], "label": [0, 0]})
    assert len(find_duplicates({"train": ds}, "text", jaccard=0.7).groups) == 1
    assert len(find_duplicates({"train": ds}, "text", jaccard=0.75).groups) == 0
    assert minhash(shingles(sentence)) == minhash(shingles(sentence))  # no salted hash inside


def test_the_search_is_not_quadratic():
    rng = np.random.default_rng(0)
    n = 3000
    texts = [" ".join(rng.choice([f"w{i}" for i in range(5000)], size=12)) for _ in range(n)]
    texts[10] = texts[20].upper()  # one planted exact pair
    report = find_duplicates({"train": datasets.Dataset.from_dict({"text": texts, "label": [0] * n})}, "text")
    assert [[m.row for m in g.members] for g in report.groups] == [[10, 20]]
    assert report.comparisons < n * (n - 1) / 2 / 100


def test_image_search_compares_within_buckets_only():
    from hf_finetune.data.duplicates import _near_image_pairs

    rng = np.random.default_rng(1)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=20000, dtype=np.int64)
    hashes[5] = hashes[9] ^ np.int64(0b1011)  # 3 bits apart
    pairs, comparisons = _near_image_pairs(hashes, 4)
    assert pairs == [(5, 9)]
    assert comparisons < 20000 * 19999 / 2 / 100


@pytest.mark.slow
def test_two_processes_give_the_same_report(tmp_path):
    items = [(f"{i}.png", Image.fromarray(_noise(i % 7)), str(i % 2)) for i in range(40)]
    ds, ids = _images(tmp_path, "train", items)
    one = find_duplicates({"train": ds}, "image", row_ids={"train": ids})
    two = find_duplicates({"train": ds}, "image", row_ids={"train": ids}, num_proc=2)
    assert one.to_json() == two.to_json() and len(one.groups) == 7


def test_unreadable_images_are_named_all_at_once(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_noise(1)).save(good)
    for name in ("bad1.png", "bad2.png"):
        (tmp_path / name).write_bytes(b"not an image at all")
    ds = datasets.Dataset.from_dict({"image": [str(good), str(tmp_path / "bad1.png"), str(tmp_path / "bad2.png")]})
    ds = ds.cast_column("image", datasets.Image(decode=False))
    with pytest.raises(DataError) as err:
        find_duplicates({"train": ds}, "image", label_column=None)
    message = str(err.value)
    assert "2 image(s) cannot be decoded" in message and "train row 1" in message and "train row 2" in message


def test_an_equal_dhash_is_not_enough_the_pixels_must_agree(tmp_path):
    """dHash keeps only which of two neighbours is brighter: a copy at a quarter of the contrast has the same hash,
    but its pixels differ by tens of grey levels, so it is not reported (small images on plain backgrounds share
    hashes this way by the thousand)."""
    base = _noise(3).astype(np.float64)
    faded = (base - 128) / 4 + 128
    a, b = Image.fromarray(base.astype(np.uint8)), Image.fromarray(faded.round().astype(np.uint8))
    assert bin(dhash(a) ^ dhash(b)).count("1") <= 2
    ds, ids = _images(tmp_path, "train", [("a.png", a, "x"), ("faded.png", b, "x")])
    assert find_duplicates({"train": ds}, "image", row_ids={"train": ids}).groups == []


def test_keys_are_cached_by_fingerprint_and_a_replaced_file_is_hashed_again(tmp_path, monkeypatch):
    """A re-run (and every process after the first) reads the keys instead of decoding the images again; an image
    replaced under the same name is not served from the cache."""
    import hf_finetune.data.duplicates as duplicates

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    a, b = Image.fromarray(_noise(1)), Image.fromarray(_noise(2))
    ds, ids = _images(tmp_path, "train", [("a.png", a, "x"), ("copy.png", a, "x"), ("b.png", b, "y")])
    first = find_duplicates({"train": ds}, "image", row_ids={"train": ids})
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached keys were not used")

    monkeypatch.setattr(duplicates, "image_keys", no_decoding)
    again = find_duplicates({"train": ds}, "image", row_ids={"train": ids})
    assert again.to_json() == first.to_json() and len(again.groups) == 1

    b.save(tmp_path / "train" / "copy.png")  # the copy replaced by another image, under the same name
    with pytest.raises(AssertionError, match="cached keys were not used"):
        find_duplicates({"train": ds}, "image", row_ids={"train": ids})
    monkeypatch.undo()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    changed = find_duplicates({"train": ds}, "image", row_ids={"train": ids})
    assert sorted(sorted(m.id for m in g.members) for g in changed.groups) == [["b.png", "copy.png"]]


def test_sentence_pairs_are_duplicates_only_as_a_whole():
    """NLI data repeats a premise under many hypotheses: those rows are not copies; the same pair twice is."""
    from hf_finetune.data.duplicates import apply_policy

    premise = "a man is playing a guitar on a small stage in front of a quiet crowd tonight"
    train = datasets.Dataset.from_dict(
        {
            "text": [premise, premise, premise],
            "text_pair": ["he plays music", "nobody is on the stage", "he plays music"],
            "label": [0, 1, 0],
        }
    )
    splits, report, info = apply_policy({"train": train}, "warn", "text")
    assert [[m.row for m in g.members] for g in report.groups] == [[0, 2]]
    assert info["counts"]["exact_within"] == 1 and len(splits["train"]) == 3
