"""The fixed cost around training (issue 17, item 6): one decoding pass serves the image check and the duplicate
check, and an image folder of split sub-folders loads without datasets' whole-tree split inference."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_finetune.data import duplicates, sources
from hf_finetune.data.checks import check_images
from hf_finetune.data.duplicates import find_duplicates
from hf_finetune.errors import DataError
from hf_finetune.recipe import DataSpec


def _tree(root: Path, splits: dict[str, int]) -> Path:
    value = 0
    for split, per_class in splits.items():
        for label in ("cat", "dog"):
            for i in range(per_class):
                path = root / split / label / f"{split}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise = np.random.default_rng(value).integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(noise).save(path)  # noise: no two are near duplicates
                value += 1
    return root


def _load(spec: DataSpec):
    return sources.load_data(spec, {"image": "image_column"}, carve_validation=False)


def test_split_folders_load_by_name_and_give_what_split_inference_gives(tmp_path: Path, monkeypatch):
    root = _tree(tmp_path / "imgs", {"train": 3, "valid": 1, "test": 2})
    assert sources._image_folder_files(root) == {
        "data_files": {split: str(root / folder / "**") for split, folder in _named(root).items()}
    }
    fast = _load(DataSpec(source=str(root)))
    monkeypatch.setattr(sources, "_image_folder_files", lambda path: {"data_dir": str(path)})
    inferred = _load(DataSpec(source=str(root)))
    assert {s: len(ds) for s, ds in fast.splits.items()} == {"train": 6, "validation": 2, "test": 4}
    for split, ds in fast.splits.items():
        assert sorted(Path(p).name for p in _paths(ds)) == sorted(Path(p).name for p in _paths(inferred.splits[split]))
        assert ds["label"] == inferred.splits[split]["label"]
    assert fast.label_names == inferred.label_names == ["cat", "dog"]


def _named(root: Path) -> dict[str, str]:
    return {sources._SPLIT_FOLDERS[p.name]: p.name for p in root.iterdir()}


def _paths(ds) -> list[str]:
    return [v["path"] for v in ds.cast_column("image", datasets.Image(decode=False))["image"]]


@pytest.mark.parametrize("extra", ["metadata.csv", "other/x.png", "train2/x.png"])
def test_other_layouts_are_left_to_datasets_split_inference(tmp_path: Path, extra: str):
    root = _tree(tmp_path / "imgs", {"train": 1, "test": 1})
    (root / extra).parent.mkdir(parents=True, exist_ok=True)
    (root / extra).write_bytes(b"")
    assert sources._image_folder_files(root) == {"data_dir": str(root)}
    two_names_one_split = _tree(tmp_path / "twice", {"val": 1, "validation": 1, "train": 1})
    assert sources._image_folder_files(two_names_one_split) == {"data_dir": str(two_names_one_split)}


def test_the_image_check_and_the_duplicate_check_decode_each_image_once(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "imgs", {"train": 3, "test": 2})
    Image.open(root / "train" / "cat" / "train0.png").save(root / "test" / "dog" / "copy.png")
    splits = _load(DataSpec(source=str(root))).splits
    decoded = []
    real = duplicates.image_keys

    def counting(batch, column):
        decoded.extend(batch[column])
        return real(batch, column)

    monkeypatch.setattr(duplicates, "image_keys", counting)
    check_images(splits)
    report = find_duplicates(splits, "image")
    assert len(decoded) == sum(len(ds) for ds in splits.values()) == 11
    [group] = report.groups  # the copy was found from the same decoded keys
    assert group.exact and group.splits == ["train", "test"]

    check_images(splits)  # a re-run reads the cached keys
    assert len(decoded) == 11


def test_a_broken_file_found_by_the_shared_pass_is_named_by_the_image_check(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = _tree(tmp_path / "imgs", {"train": 2, "test": 1})
    (root / "test" / "cat" / "broken.png").write_bytes(b"not a png")
    splits = _load(DataSpec(source=str(root))).splits
    with pytest.raises(DataError, match=r"^1 of 7 images cannot be decoded:\n  .*broken\.png \(test split, row \d\): "):
        check_images(splits)
    with pytest.raises(DataError, match=r"broken\.png \(test split"):  # the cached verdict says the same
        check_images(splits)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's per-process memory split")
def test_the_heap_data_loading_freed_goes_back_to_the_system(tmp_path: Path) -> None:
    # datasets resolving a large folder frees what it allocated, but glibc keeps the pages (scattered survivors pin
    # the heap): after the data is loaded, api._return_freed_heap hands them back, or every worker shares them too
    import subprocess
    import sys

    script = """
import sys
from hf_finetune import api

def anon_mb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) / 1024

keep, freed = [], []
for i in range(200_000):
    (keep if i % 50 == 0 else freed).append(bytes(1000))  # ~200 MB, one object in 50 kept
del freed
before = anon_mb()
api._return_freed_heap()
print(before, anon_mb())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    before, after = map(float, done.stdout.split())
    assert before > 150 and before - after > 100, (before, after)
