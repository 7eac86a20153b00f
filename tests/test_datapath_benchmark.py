"""benchmarks/datapath.py in its smallest setting: it writes its PNG folders, runs every side and writes its results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about a minute: eight child processes, each importing torch and transformers
def test_datapath_benchmark_smallest_setting(tmp_path: Path) -> None:
    cache, stem = tmp_path / "cache", tmp_path / "results" / "datapath"
    command = [sys.executable, "benchmarks/datapath.py", "--sizes", "200", "400", "--repeats", "1"]
    command += ["--eval-size", "30", "--cache-dir", str(cache), "--output", str(stem)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    # the folders it wrote itself: train images of the compared size, and the 10x evaluation set
    assert len(list((cache / "fashion-png-400-500" / "train").glob("*/*.png"))) == 400
    assert len(list((cache / "fashion-png-0-300" / "test").glob("*/*.png"))) == 300

    results = json.loads(stem.with_suffix(".json").read_text())
    assert [r["side"] for r in results["compare"]] == ["toolkit", "folder", "memory"]
    assert all(r["n_train"] == 400 and r["step_s"] < r["loop_s"] for r in results["compare"])
    assert [r["n_train"] for r in results["scaling"]] == [200, 400]
    assert [r["n_test"] for r in results["eval"]] == [30, 300]
    assert all(r["peak_memory_mb"]["eval"] > 100 for r in results["eval"])
    # each peak split into the heap and file-backed pages (Linux smaps_rollup), the parts summing to the whole
    for r in results["scaling"]:
        split = r["peak_memory_split_mb"]["train"]
        assert split["anon"] > 100 and split["file"] > 0 and split["main"] <= split["pss"]
        assert abs(split["anon"] + split["file"] - split["pss"]) < 2
        assert split["pss"] == pytest.approx(r["peak_memory_mb"]["train"], abs=0.1)
    # every side started from the same weights and saw the same images: the hand-written sides' losses are finite
    # and the toolkit's model, trained on 200 images, beats chance (10 classes) on the test folder
    assert all(math.isfinite(r["train_loss"]) for r in results["compare"])
    assert results["scaling"][0]["test_accuracy"] > 0.2
    assert set(results["ratios"]) == {"toolkit / folder (target >= 1.0)", "memory / toolkit (target <= 1.3)"}
    page = stem.with_suffix(".md").read_text()
    assert "memory / toolkit" in page and "peak evaluation memory, 300 / 30 images" in page
