"""Error analysis wired into a run and into `hf-finetune eval --output` (issue 14 item 3), end to end.

A small CNN is trained through the CLI on an image folder whose path has a space and non-ASCII letters, with the
defaults users get (dataloader workers, random augmentation). The per-row files are then checked against what does
not share their code: the image folder's own layout (each path's class is its folder), the saved model run on each
path through its own processor, and the streamed metrics in metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.special import softmax

from hf_finetune.error_analysis import GRID_CELL_INCHES, GRID_DPI, analyse_split, grid_shape


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data_folder(digits_folder: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ea") / "données d'essai"
    shutil.copytree(digits_folder, folder)
    return folder


@pytest.fixture(scope="module")
def run(data_folder: Path) -> Path:
    work = data_folder.parent / "work"
    work.mkdir()
    out = work / "out"
    recipe = {
        "name": "digits-errors",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(data_folder)},
        "training": {"output_dir": str(out), "num_train_epochs": 2, "learning_rate": 3e-3, "disable_tqdm": True},
    }
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _model_probabilities(out: Path, paths: list[str]) -> np.ndarray:
    """The saved model's probabilities for image files, through its own processor (what pipeline() runs)."""
    import torch

    from hf_finetune.tasks.image_classification import load_trained

    built = load_trained(out)
    inputs = built.processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        return softmax(built.model(pixel_values=inputs["pixel_values"]).logits.double().numpy(), axis=1)


def _confusion(rows: list[dict], names: list[str]) -> list[list[int]]:
    matrix = np.zeros((len(names), len(names)), dtype=int)
    for row in rows:
        matrix[names.index(row["label"]), names.index(row["predicted"])] += 1
    return matrix.tolist()


def test_each_evaluated_split_gets_rows_that_agree_with_the_data_the_model_and_the_metrics(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    id2label = json.loads((run / "config.json").read_text())["id2label"]
    names = [id2label[str(i)] for i in range(len(id2label))]
    for split, prefix in (("validation", "eval"), ("test", "test")):
        rows = _rows(run / f"predictions_{split}.jsonl")
        m = metrics[prefix]
        assert len(rows) == m["num_samples"] and [r["id"] for r in rows] == list(range(len(rows)))
        # the class of each path is its folder: the rows are the split's, in order, with their own labels
        assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
        assert all(Path(r["path"]).is_file() for r in rows)
        probs = _model_probabilities(run, [r["path"] for r in rows])
        written = np.array([[r["probabilities"][n] for n in names] for r in rows])
        np.testing.assert_allclose(written, probs, rtol=1e-5, atol=1e-7)
        assert [r["predicted"] for r in rows] == [names[i] for i in probs.argmax(1)]
        assert [r["correct"] for r in rows] == [r["label"] == r["predicted"] for r in rows]
        losses = [-np.log(probs[i, names.index(r["label"])]) for i, r in enumerate(rows)]
        np.testing.assert_allclose([r["loss"] for r in rows], losses, rtol=1e-5)
        # ...and with the streamed metrics, computed without them
        assert np.mean([r["correct"] for r in rows]) == pytest.approx(m["accuracy"], abs=1e-12)
        assert _confusion(rows, names) == m["confusion_matrix"]
        assert np.mean(losses) == pytest.approx(m["loss"], rel=1e-5)
        top = rows[0]["top_k"]
        assert [t["label"] for t in top] == sorted(names, key=lambda n: -rows[0]["probabilities"][n])
        assert m["error_analysis"]["rows"] == len(rows)
        assert m["error_analysis"]["errors"] == sum(not r["correct"] for r in rows)


def test_errors_markdown_and_grid_show_the_worst_rows(run: Path):
    rows = _rows(run / "predictions_test.jsonl")
    text = (run / "errors_test.md").read_text(encoding="utf-8")
    worst = sorted(range(len(rows)), key=lambda i: (-rows[i]["loss"], i))
    section = text.split("## Highest-loss examples", 1)[1].split("##", 1)[0]
    table = [line.split("|")[1:-1] for line in section.strip().splitlines() if line.startswith("| ")][1:]
    assert [int(cells[0]) for cells in table] == worst[:16]
    assert [cells[2].strip() for cells in table] == [rows[i]["path"] for i in worst[:16]]
    columns, grid_rows = grid_shape(min(16, len(rows)))
    with Image.open(run / "errors_test.png") as grid:
        assert grid.size == (columns * GRID_CELL_INCHES[0] * GRID_DPI, grid_rows * GRID_CELL_INCHES[1] * GRID_DPI)
    errors = sum(not r["correct"] for r in rows)
    assert f"{len(rows) - errors} of {len(rows)} rows correct" in text


def test_the_card_says_where_the_model_fails_without_publishing_rows(run: Path):
    from hf_finetune.hub import stage_folder

    card = (run / "README.md").read_text(encoding="utf-8")
    section = card.split("### Where the model fails", 1)[1].split("\n#", 1)[0]
    for split in ("validation", "test"):
        rows = _rows(run / f"predictions_{split}.jsonl")
        errors = sum(not r["correct"] for r in rows)
        assert f"Accuracy on the {split} split: " in section
        assert f"({len(rows) - errors} of {len(rows)} rows correct" in section
        pairs = {}
        for r in rows:
            if not r["correct"]:
                pairs[(r["label"], r["predicted"])] = pairs.get((r["label"], r["predicted"]), 0) + 1
        if pairs:
            (t, p), n = max(pairs.items(), key=lambda kv: kv[1])
            assert f"{t} → {p} ({n})" in section
    assert "predictions_test.jsonl" in section and "](errors_" not in card  # named, not linked or embedded

    staged = stage_folder(run, run.parent / "stage", "me/model")
    assert not [n for n in staged if n.startswith(("predictions_", "errors_"))]
    assert "README.md" in staged and "model.safetensors" in staged
    opted = stage_folder(run, run.parent / "stage2", "me/model", include=["errors_*.md"])
    assert sorted(n for n in opted if n.startswith(("predictions_", "errors_"))) == [
        "errors_test.md",
        "errors_validation.md",
    ]


def test_eval_output_writes_the_same_analysis_elsewhere_and_never_touches_the_trained_folder(run: Path, tmp_path):
    before = _hashes(run)
    target = tmp_path / "eval out"
    proc = _cli("eval", str(run), "--output", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in target.iterdir()) == [
        "errors_test.md",
        "errors_test.png",
        "eval_metrics.json",
        "predictions_test.jsonl",
    ]
    # the same model on the same split: the same rows, byte for byte
    assert (target / "predictions_test.jsonl").read_bytes() == (run / "predictions_test.jsonl").read_bytes()
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = json.loads((target / "eval_metrics.json").read_text())
    trained_test = json.loads((run / "metrics.json").read_text())["test"]
    assert saved["accuracy"] == printed["accuracy"] == trained_test["accuracy"]
    assert saved["error_analysis"]["files"] == ["predictions_test.jsonl", "errors_test.md", "errors_test.png"]

    # again: refused before any pass, nothing changes, not even a file of the user's in the folder
    (target / "notes.txt").write_text("mine", encoding="utf-8")
    written = _hashes(target)
    again = _cli("eval", str(run), "--output", str(target))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already holds predictions_test.jsonl" in again.stderr and "--overwrite" in again.stderr
    assert _hashes(target) == written
    replaced = _cli("eval", str(run), "--output", str(target), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert (target / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert _hashes(target)["predictions_test.jsonl"] == written["predictions_test.jsonl"]

    inside = _cli("eval", str(run), "--output", str(run / "analysis"))
    assert inside.returncode == 2 and "inside the trained folder" in inside.stderr and "Traceback" not in inside.stderr
    assert not (run / "analysis").exists()
    assert _hashes(run) == before


def test_eval_output_on_new_data_matches_predict_row_by_row(run: Path, data_folder: Path, tmp_path):
    from hf_finetune import predict

    new = tmp_path / "nouvelles images"
    shutil.copytree(data_folder / "test", new)
    target = tmp_path / "analysis"
    proc = _cli("eval", str(run), "--data", str(new), "--output", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(target / "predictions_data.jsonl")
    assert (target / "errors_data.md").is_file() and (target / "errors_data.png").is_file()
    files = sorted(str(p) for p in new.rglob("*.png"))
    assert sorted(r["path"] for r in rows) == files
    predicted = {row["image"]: row["predictions"][0]["label"] for row in predict(run, [r["path"] for r in rows])}
    assert [r["predicted"] for r in rows] == [predicted[r["path"]] for r in rows]
    assert json.loads((target / "eval_metrics.json").read_text())["split"] == new.name


def test_eval_output_is_refused_for_a_model_that_is_not_single_label(run: Path, tmp_path):
    fake = tmp_path / "multi"
    shutil.copytree(run, fake, ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = yaml.safe_load((fake / "recipe.yaml").read_text(encoding="utf-8"))
    recipe["data"]["label_format"] = "multi_label"
    (fake / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("eval", str(fake), "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "single-label" in proc.stderr and "predict" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_text_rows_carry_their_own_ids_texts_and_pairs(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"idx": [7, 3, 9], "text": ["a | b", "c", "d\ne"], "text_pair": ["x", "y", "z"], "label": [0, 1, 1]}
    )
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    result = analyse_split(tmp_path, "test", ds, logits, np.array(ds["label"]), ["neg", "pos"])
    rows = _rows(result.predictions_path)
    assert [(r["id"], r["text"], r["text_pair"]) for r in rows] == [(7, "a | b", "x"), (3, "c", "y"), (9, "d\ne", "z")]
    assert [r["correct"] for r in rows] == [True, True, False] and result.image_path is None
    assert "| 2 | 9 | d<br>e | pos | neg |" in result.markdown_path.read_text(encoding="utf-8")
    assert sorted(os.listdir(tmp_path)) == ["errors_test.md", "predictions_test.jsonl"]
