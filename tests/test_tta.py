"""Test-time augmentation (issue 14 item 4): the views, how they are averaged, and TTA end to end through the CLI.

The averaging is checked against numpy/scipy on logits built so that averaging probabilities and averaging logits
disagree; the views against plain tensor slicing; the CLI's scores against the saved model run by hand on each test
image and its mirror (through its own processor, as pipeline() runs it), with scikit-learn's metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_text_recipe
from PIL import Image
from scipy.special import expit, logit, softmax
from sklearn.metrics import accuracy_score, log_loss

from hf_finetune.tta import VIEW_COUNTS, TTAModel, combine, views, wrap

# averaging the probabilities picks class 2, averaging the logits class 1
DISAGREE = np.array([[[5.2, 3.8, -2.8]], [[-5.1, -2.5, 0.2]]])


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


# --------------------------------------------------------------------------------------------- averaging


def test_single_label_views_average_their_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50, 6)) * 3
    combined = combine(torch.from_numpy(logits), "single_label_classification").numpy()
    np.testing.assert_allclose(softmax(combined, axis=1), softmax(logits, axis=2).mean(0), rtol=0, atol=1e-12)
    # None (a config without problem_type) is single-label, as transformers reads it
    np.testing.assert_allclose(combine(torch.from_numpy(logits), None).numpy(), combined, rtol=0, atol=0)


def test_probabilities_not_logits_are_averaged():
    assert softmax(DISAGREE, axis=2).mean(0).argmax() == 2 and DISAGREE.mean(0).argmax() == 1
    combined = combine(torch.from_numpy(DISAGREE), "single_label_classification").numpy()
    assert combined.argmax() == 2
    np.testing.assert_allclose(softmax(combined, axis=1)[0], [0.40331178, 0.13022154, 0.46646668], atol=1e-8)


def test_multi_label_views_average_each_sigmoid_and_stay_finite():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 40, 5)) * 4
    combined = combine(torch.from_numpy(logits), "multi_label_classification").numpy()
    np.testing.assert_allclose(combined, logit(expit(logits).mean(0)), rtol=0, atol=1e-9)
    # where mean sigmoid rounds to exactly 0 or 1, its logit would be ∓inf; the log-space form stays finite
    extreme = torch.tensor([[[1000.0, -1000.0, 1000.0]], [[1000.0, -1000.0, -1000.0]]], dtype=torch.float64)
    out = combine(extreme, "multi_label_classification")
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy()[0], [1000.0 - np.log(1.0), -1000.0, 0.0], atol=1e-9)


def test_regression_views_are_averaged():
    values = torch.tensor([[[1.0], [4.0]], [[3.0], [-2.0]]], dtype=torch.float64)
    np.testing.assert_allclose(combine(values, "regression").numpy(), [[2.0], [1.0]], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- views


def test_flip_is_the_image_and_its_mirror():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    plain, mirror = views(x, "flip")
    assert torch.equal(plain, x)
    assert torch.equal(mirror, torch.from_numpy(x.numpy()[..., ::-1].copy()))  # columns reversed, rows kept


def test_crops_are_the_whole_image_and_five_resized_crops():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    got = views(x, "crops")
    assert len(got) == VIEW_COUNTS["crops"] == 6 and all(v.shape == x.shape for v in got)
    assert torch.equal(got[0], x)

    def back(crop: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False)

    # 7/8 of 8 pixels is 7: the four corners by slicing, in torchvision's five_crop order
    corners = [x[..., :7, :7], x[..., :7, 1:], x[..., 1:, :7], x[..., 1:, 1:]]
    for view, corner in zip(got[1:5], corners, strict=True):
        torch.testing.assert_close(view, back(corner), rtol=0, atol=0)
    # the centre crop of 7 out of 8 starts at row/column 0 or 1 (torchvision rounds half to even): one of them
    centre = got[5]
    assert any(torch.equal(centre, back(x[..., i : i + 7, j : j + 7])) for i in (0, 1) for j in (0, 1))


def test_tta_model_runs_every_view_and_computes_the_loss_on_the_average():
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"problem_type": "single_label_classification"})()
            self.layer = torch.nn.Linear(3 * 4 * 4, 5)
            self.calls = 0

        def forward(self, pixel_values):
            self.calls += 1
            return type("Out", (), {"logits": self.layer(pixel_values.flatten(1))})()

    inner = Tiny()
    x, y = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    model = wrap(inner, "flip")
    assert isinstance(model, TTAModel) and wrap(inner, "none") is inner
    out = model(pixel_values=x, labels=y)
    assert inner.calls == 2
    by_hand = combine(torch.stack([inner.layer(x.flatten(1)), inner.layer(x.flip(-1).flatten(1))]), None)
    torch.testing.assert_close(out.logits, by_hand)
    expected = -np.log(softmax(by_hand.detach().numpy(), axis=1)[np.arange(6), y.numpy()]).mean()
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # a submodule: .to(device) and .eval() reach the model
    assert [id(p) for p in model.parameters()] == [id(p) for p in inner.parameters()]


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(digits_folder: Path, tmp_path_factory) -> Path:
    """A small CNN trained through the CLI with the defaults users get, and metrics.tta flip for its final scores."""
    work = tmp_path_factory.mktemp("tta") / "mes essais"
    work.mkdir()
    out = work / "out"
    recipe = {
        "name": "digits-tta",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(digits_folder)},
        "metrics": {"tta": "flip"},
        "training": {"output_dir": str(out), "num_train_epochs": 2, "learning_rate": 3e-3, "disable_tqdm": True},
    }
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _test_images(digits_folder: Path) -> tuple[list[Path], list[str]]:
    paths = sorted((digits_folder / "test").rglob("*.png"))
    return paths, [p.parent.name for p in paths]


def _by_hand(out: Path, paths: list[Path], flip: bool) -> tuple[np.ndarray, list[str]]:
    """The saved model's probabilities through its own processor; with `flip`, the mean over each image and its
    mirror (the image mirrored after preprocessing: the processor's resize and normalisation commute with it)."""
    from hf_finetune.tasks.image_classification import load_trained

    built = load_trained(out)
    pixels = built.processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    built.model.eval()
    with torch.no_grad():
        probabilities = softmax(built.model(pixel_values=pixels).logits.double().numpy(), axis=1)
        if flip:
            mirrored = built.model(pixel_values=torch.flip(pixels, dims=[-1])).logits.double().numpy()
            probabilities = (probabilities + softmax(mirrored, axis=1)) / 2
    names = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    return probabilities, names


def test_recipe_tta_scores_the_final_evaluation_on_the_views(run: Path, digits_folder: Path):
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    tta = metrics["run"]["tta"]
    assert tta["views"] == "flip" and tta["count"] == 2
    paths, truth = _test_images(digits_folder)
    for flip, scores in ((True, metrics["test"]), (False, tta["without"]["test"])):
        probabilities, names = _by_hand(run, paths, flip)
        y = [names.index(t) for t in truth]
        assert scores["accuracy"] == pytest.approx(accuracy_score(y, probabilities.argmax(1)), abs=1e-12)
        assert scores["log_loss"] == pytest.approx(log_loss(y, probabilities, labels=range(len(names))), abs=1e-6)
    assert metrics["test"]["log_loss"] != tta["without"]["test"]["log_loss"]
    card = (run / "README.md").read_text(encoding="utf-8")
    one_view = tta["without"]["test"]["accuracy"]
    assert "test-time augmentation (flip: 2 views" in card
    assert f"with one view the test accuracy is {one_view:.4f}" in card
    # the error analysis is of the scores reported: its rows' probabilities are the averaged ones
    rows = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text(encoding="utf-8").splitlines()]
    probabilities, names = _by_hand(run, paths, True)
    by_path = {str(p): row for p, row in zip(paths, probabilities, strict=True)}
    assert sorted(row["path"] for row in rows) == sorted(by_path)
    for row in rows:
        expected = dict(zip(names, by_path[row["path"]].tolist(), strict=True))
        assert row["probabilities"] == pytest.approx(expected, abs=1e-5)


def test_eval_uses_the_recipe_tta_unless_told(run: Path, tmp_path: Path):
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    default = _cli("eval", str(run))
    assert default.returncode == 0, default.stderr[-2000:]
    flipped = json.loads(default.stdout)
    assert flipped["tta"] == "flip" and "(tta flip)" in default.stderr
    assert flipped["accuracy"] == metrics["test"]["accuracy"]
    assert flipped["log_loss"] == pytest.approx(metrics["test"]["log_loss"], abs=1e-9)
    plain = json.loads(_cli("eval", str(run), "--tta", "none").stdout)
    assert plain["tta"] == "none"
    assert plain["log_loss"] == pytest.approx(metrics["run"]["tta"]["without"]["test"]["log_loss"], abs=1e-9)
    # crops, with the error analysis written for it: its rows agree with the metrics of the same pass
    proc = _cli("eval", str(run), "--tta", "crops", "--output", str(tmp_path / "crops"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    crops = json.loads(proc.stdout)
    saved = json.loads((tmp_path / "crops" / "eval_metrics.json").read_text(encoding="utf-8"))
    assert crops["tta"] == saved["tta"] == "crops"
    rows = [json.loads(x) for x in (tmp_path / "crops" / "predictions_test.jsonl").read_text("utf-8").splitlines()]
    assert crops["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rows]), abs=1e-12)
    names = ["zero", "one", "two"]
    p = np.array([[r["probabilities"][n] for n in names] for r in rows])
    assert crops["log_loss"] == pytest.approx(log_loss([names.index(r["label"]) for r in rows], p), abs=1e-6)
    assert len({crops["log_loss"], flipped["log_loss"], plain["log_loss"]}) == 3


def test_predict_tta_averages_each_image_with_its_mirror(run: Path, digits_folder: Path):
    paths, _ = _test_images(digits_folder)
    paths = paths[::5]
    proc = _cli("predict", str(run), "--tta", "flip", *map(str, paths), "--top-k", "3")  # images after options
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    probabilities, names = _by_hand(run, paths, True)
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    for row, expected in zip(rows, probabilities, strict=True):
        assert {p["label"]: p["score"] for p in row["predictions"]} == pytest.approx(
            {names[i]: float(expected[i]) for i in range(3)}, abs=1e-6
        )
    plain = [json.loads(line) for line in _cli("predict", str(run), *map(str, paths)).stdout.splitlines()]
    one_view, _ = _by_hand(run, paths, False)
    assert plain[0]["predictions"][0]["score"] == pytest.approx(one_view[0].max(), abs=1e-6)


def test_bad_tta_values_are_refused_before_anything_loads(run: Path):
    proc = _cli("eval", str(run), "--tta", "rotate")
    assert proc.returncode == 2 and "invalid choice: 'rotate'" in proc.stderr


@pytest.fixture(scope="module")
def text_run(text_csv: Path, tiny_bert_dir: Path, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tta-text")
    recipe = make_text_recipe(text_csv, tiny_bert_dir, work / "out", training={"num_train_epochs": 1})
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_text_models_refuse_tta_with_one_clear_error(text_run: Path):
    out = text_run / "out"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (("eval", str(out), "--tta", "flip"), ("predict", str(out), "--text", "great", "--tta", "crops")):
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "test-time augmentation" in proc.stderr and "text-classification model" in proc.stderr
        assert proc.stdout == ""
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    proc = _cli("validate", str(text_run / "r.yaml"), "metrics.tta=flip")
    assert proc.returncode == 2 and "metrics.tta: 'flip'" in proc.stderr and "Traceback" not in proc.stderr
