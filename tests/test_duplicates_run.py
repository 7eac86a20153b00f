"""data.duplicates through the CLI (issue 15 item 3): warn, error and drop on an image folder with planted copies —
a test image copied into train, and one image under two labels — and nothing else alike (smooth random fields)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

CLASSES = ("red", "green", "blue")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _field(seed: int) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((16, 16), Image.Resampling.BICUBIC)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dupdata") / "photos à trier"
    seed = 0
    for split, per_class in (("train", 8), ("test", 4)):
        for label in CLASSES:
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                _field(seed).save(root / split / label / f"{i}.png")
                seed += 1
    shutil.copy(root / "test" / "red" / "0.png", root / "train" / "red" / "leak.png")  # test image seen in training
    shutil.copy(root / "train" / "green" / "0.png", root / "train" / "blue" / "twin.png")  # one image, two labels
    return root


def _leak_line(log: str) -> str:
    """The report line of the test image copied into train (which copy the carved validation split took varies)."""
    (line,) = [x for x in log.splitlines() if "red/leak.png" in x and "exact duplicate" in x]
    assert "red/leak.png == red/0.png" in line and "and test" in line
    return line[line.index("exact duplicate") :]


def _recipe(work: Path, data: Path, policy: str | None) -> Path:
    recipe = {
        "name": "dups",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(data), **({"duplicates": policy} if policy else {})},
        "training": {"output_dir": str(work / "out"), "num_train_epochs": 1, "disable_tqdm": True},
    }
    path = work / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_error_stops_before_anything_is_written_naming_the_files(data: Path, tmp_path: Path):
    before = _hashes(data)
    proc = _cli("train", str(_recipe(tmp_path, data, "error")), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert _leak_line(proc.stderr).startswith("exact duplicate across ")
    assert "conflicting labels" in proc.stderr and "data.duplicates: drop" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert _hashes(data) == before


def test_warn_is_the_default_and_records_what_it_found(data: Path, tmp_path: Path):
    proc = _cli("train", str(_recipe(tmp_path, data, None)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _leak_line(proc.stderr).startswith("exact duplicate across ")
    out = tmp_path / "out"
    run = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["run"]
    assert run["duplicates"]["policy"] == "warn" and "dropped" not in run["duplicates"]
    # the carved validation split may hold either copy: count the groups, wherever they landed
    counts = run["duplicates"]["counts"]
    assert counts["exact_within"] + counts["exact_cross"] == 2 and counts["conflicting"] == 1
    assert counts["near_within"] == counts["near_cross"] == 0
    assert (
        run["splits"]["test"]["rows"] == 12
        and run["splits"]["train"]["rows"] + run["splits"]["validation"]["rows"] == 26
    )
    listed = json.loads((out / "duplicates.json").read_text(encoding="utf-8"))
    ids = sorted(sorted(m["id"] for m in g["members"]) for g in listed["groups"])
    assert ids == [["blue/twin.png", "green/0.png"], ["red/0.png", "red/leak.png"]]
    assert str(data) not in (out / "duplicates.json").read_text(encoding="utf-8")  # no absolute local paths
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "duplicates (`data.duplicates: warn`)" in card and "1 with conflicting labels" in card


def test_drop_keeps_test_intact_and_one_copy_of_each(data: Path, tmp_path: Path):
    proc = _cli("train", str(_recipe(tmp_path, data, "drop")), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    run = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["run"]
    dropped = run["duplicates"]["dropped"]
    assert "test" not in dropped and sum(dropped.values()) == 2
    assert run["splits"]["test"]["rows"] == 12
    assert run["splits"]["train"]["rows"] + run["splits"]["validation"]["rows"] == 26 - 2
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "dropped before training: " in card
    # what was dropped is listed by file: the train copy of the test image, one of the two labelled copies
    listed = json.loads((out / "duplicates.json").read_text(encoding="utf-8"))["dropped"]
    names = sorted(name for rows in listed.values() for name in rows)
    assert "test" not in listed and len(names) == 2 and "red/leak.png" in names
    assert len({"green/0.png", "blue/twin.png"} & set(names)) == 1
    # what stayed: the test copy of the leaked image, one of the two labelled copies
    predictions = [json.loads(x) for x in (out / "predictions_test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(p["path"].endswith("test/red/0.png") for p in predictions)


def test_check_reports_everything_at_once_without_training(data: Path, tmp_path: Path):
    """`hf-finetune check`: one report; warnings only → exit 0; an error → exit 2; never an output folder."""
    recipe = _recipe(tmp_path, data, None)
    proc = _cli("check", str(recipe), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images: every image decodes" in proc.stdout
    assert proc.stdout.count("exact duplicate") == 2 and "conflicting labels" in proc.stdout
    assert not (tmp_path / "out").exists()

    refused = _cli("check", str(recipe), "data.duplicates=error", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "problem(s) found" in refused.stderr and "red/leak.png" in refused.stderr

    # a broken image and the duplicates, in one report
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "train" / "green" / "3.png").write_bytes(b"\x89PNG truncated")
    both = _cli("check", str(_recipe(tmp_path, broken, None)), cwd=tmp_path)
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert "green/3.png" in both.stderr and "cannot be decoded" in both.stderr
    assert both.stdout.count("exact duplicate") == 2
    assert not (tmp_path / "out").exists()
