"""data.group_column through the CLI (issue 15 item 4): the carved validation split keeps each patient whole, the
patients a given test split shares with train are reported, and `eval` carves the same validation split again."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NEGATIVE, POSITIVE, make_text_recipe


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _write(path: Path, patients: range, per_patient: int, rng: random.Random) -> dict[str, str]:
    """Rows whose text names their patient ("patient 7 visit 2 …"), so any output row can be traced to its group."""
    owner = {}
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment", "patient"])
        for p in patients:
            label = "positive" if p % 2 else "negative"
            for visit in range(per_patient):
                words = rng.choices(POSITIVE if p % 2 else NEGATIVE, k=4)
                text = f"patient {p} visit {visit} {' '.join(words)}"
                writer.writerow([text, label, f"p{p:03d}"])
                owner[text] = f"p{p:03d}"
    return owner


@pytest.fixture(scope="module")
def run(tiny_bert_dir: Path, tmp_path_factory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("groups")
    rng = random.Random(0)
    owner = _write(work / "train.csv", range(40), 5, rng)  # train.csv's rows only: the carving is of them
    _write(work / "test.csv", range(37, 47), 3, rng)  # patients 37, 38, 39 are in train too
    recipe = make_text_recipe(
        work,
        tiny_bert_dir,
        work / "out",
        data={"group_column": "patient", "validation_size": 0.2},
        training={"num_train_epochs": 1},
    )
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "out", owner, proc


def _texts(out: Path, split: str) -> list[str]:
    rows = (out / f"predictions_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(r)["text"] for r in rows]


def test_the_carved_validation_split_keeps_every_patient_whole(run):
    out, owner, _ = run
    validation = set(_texts(out, "validation"))
    held = {owner[t] for t in validation}
    assert len(validation) == 40 and len(held) == 8  # 20% of 200 rows: 8 whole patients of 5 visits
    # every train.csv row of a held patient is in validation: none of that patient is left to train on
    assert {t for t, p in owner.items() if p in held} == validation
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["run"]["splits"]["train"]["rows"] == 160 and metrics["run"]["splits"]["validation"]["rows"] == 40
    # stratified as well as whole patients allow: half of the held patients have each label
    assert sum(int(p[1:]) % 2 for p in held) == 4


def test_patients_shared_by_train_and_test_are_reported(run):
    out, _, proc = run
    shared_with_train = {"p037", "p038", "p039"}
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    overlap = metrics["run"]["groups_across_splits"]
    found = {g for entry in overlap["shared"] for g in entry["groups"] if "test" in entry["splits"]}
    # a shared patient carved into validation is shared by validation and test instead
    assert found == shared_with_train
    assert overlap["rows"]["test"] == 9 and "of 'patient' are in both" in proc.stderr
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "groups: `patient`; carved validation and test splits keep each group whole" in card


def test_eval_carves_the_same_validation_split(run):
    out, _, _ = run
    proc = _cli("eval", str(out), "--split", "validation", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert result["num_samples"] == 40
    assert result["accuracy"] == metrics["eval"]["accuracy"]


@pytest.fixture(scope="module")
def carved_test(tiny_bert_dir: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One file of 40 patients × 5 rows, no test split: data.test_size carves one, of whole patients."""
    work = tmp_path_factory.mktemp("groups carved tëst")
    owner = _write(work / "train.csv", range(40), 5, random.Random(1))
    recipe = make_text_recipe(
        work,
        tiny_bert_dir,
        work / "out",
        data={"files": {"train": str(work / "train.csv")}, "group_column": "patient", "test_size": 0.2},
        training={"num_train_epochs": 1},
    )
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "out", owner


def test_a_carved_test_split_keeps_every_patient_whole_and_apart_from_validation(carved_test):
    out, owner = carved_test
    test, validation = set(_texts(out, "test")), set(_texts(out, "validation"))
    in_test, in_validation = {owner[t] for t in test}, {owner[t] for t in validation}
    # both fractions are of the 200 rows as given: 40 test rows (8 patients), then 20 validation rows (4 patients)
    assert (len(test), len(in_test), len(validation), len(in_validation)) == (40, 8, 20, 4)
    assert {t for t, p in owner.items() if p in in_test} == test  # every visit of a test patient is in test
    assert {t for t, p in owner.items() if p in in_validation} == validation
    assert not in_test & in_validation
    assert sum(int(p[1:]) % 2 for p in in_test) == 4  # half the test patients of each label
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert {s: v["rows"] for s, v in metrics["run"]["splits"].items()} == {"train": 140, "validation": 20, "test": 40}
    assert "groups_across_splits" not in metrics["run"]  # carved splits share no patient with train
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "test: 0.2 of train held out before training (whole groups, seed 42)" in card


def test_eval_carves_the_same_test_split(carved_test):
    out, _ = carved_test
    proc = _cli("eval", str(out), "--split", "test", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert result["num_samples"] == 40 and result["accuracy"] == metrics["test"]["accuracy"]
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-6)
