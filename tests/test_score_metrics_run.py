"""Score metrics (ROC-AUC, PR-AUC, log loss, Brier, ECE) wired into single-label evaluation (issue 14 item 1): a tiny
CLI run's metrics.json holds them for every evaluated split, equal to scikit-learn on the saved model's own test
logits; a reliability diagram is written beside each confusion matrix; `hf-finetune eval` reproduces them; and
`training.batch_eval_metrics: false` (every logit handed over at once) gives the same numbers as streaming."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.special import log_softmax, softmax
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from transformers import EvalPrediction

from hf_finetune.metrics import SCALAR_KEYS as CLASSIFICATION_KEYS
from hf_finetune.metrics import ClassificationMetrics, make_single_label_metrics
from hf_finetune.names import confusion_matrix_files, reliability_diagram_file
from hf_finetune.score_metrics import BINARY_KEYS, DEFAULT_BINS, DEFAULT_CALIBRATION_BINS
from hf_finetune.score_metrics import SCALAR_KEYS as SCORE_KEYS

SCORE_NAMES = ("roc_auc_macro", "roc_auc_weighted", "pr_auc_macro", "pr_auc_weighted", "log_loss", "brier", "ece")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
        cwd=cwd,
    )


def _recipe(source: Path, out: Path, **training) -> dict:
    return {
        "name": "digits-scores",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(source)},
        "training": {
            "output_dir": str(out),
            "num_train_epochs": 2,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 7,  # several evaluation batches, the last one partial
            "learning_rate": 3e-3,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
            **training,
        },
    }


def _train(work: Path, source: Path, **training) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    (work / "r.yaml").write_text(yaml.safe_dump(_recipe(source, out, **training)), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def streamed_run(digits_folder: Path, tmp_path_factory) -> Path:
    """simple_cnn on three digit classes with the defaults (metrics streamed batch by batch)."""
    return _train(tmp_path_factory.mktemp("streamed"), digits_folder)


def _saved_test_logits(out: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The saved model's logits on every test image, through its own processor (what pipeline() runs)."""
    import torch

    from hf_finetune.tasks.image_classification import load_trained

    built = load_trained(out)
    names = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    files = sorted((folder / "test").glob("*/*.png"))
    images = [Image.open(f).convert("RGB") for f in files]
    inputs = built.processor(images=images, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        logits = built.model(pixel_values=inputs["pixel_values"]).logits.double().numpy()
    labels = np.array([names.index(f.parent.name) for f in files])
    return logits, labels


def _bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin among `DEFAULT_BINS` equal-width bins of [0, 1] (1.0 in the last), as ScoreMetrics bins."""
    return np.minimum(np.floor(scores * DEFAULT_BINS).astype(int), DEFAULT_BINS - 1)


def _binned_auc_bound(scores: np.ndarray, positive: np.ndarray) -> float:
    """ScoreMetrics' stated ROC-AUC error bound: pairs sharing one of the `DEFAULT_BINS` bins count half."""
    bins = _bins(scores)
    pos = np.bincount(bins[positive], minlength=DEFAULT_BINS)
    neg = np.bincount(bins[~positive], minlength=DEFAULT_BINS)
    return float((pos * neg).sum() / (2 * pos.sum() * neg.sum()))


def _ece(probs: np.ndarray, labels: np.ndarray) -> float:
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, DEFAULT_CALIBRATION_BINS + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_metrics_json_scores_equal_scikit_learn_on_the_saved_models_test_logits(
    streamed_run: Path, digits_folder: Path
):
    metrics = json.loads((streamed_run / "metrics.json").read_text())
    logits, labels = _saved_test_logits(streamed_run, digits_folder)
    probs = softmax(logits, axis=1)
    test = metrics["test"]
    assert test["num_samples"] == len(labels) == 30

    # the single-label keys a run had before are all still there, the score keys beside them, in both splits
    for prefix in ("eval", "test"):
        assert {*CLASSIFICATION_KEYS, *SCORE_KEYS, "loss", "per_class", "confusion_matrix"} <= set(metrics[prefix])
        assert not set(BINARY_KEYS) & set(metrics[prefix])  # three classes: no class-1 AUC

    assert test["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels), abs=1e-12)
    assert test["log_loss"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-5)
    # the cross-entropy Trainer reports is the same quantity, computed by the loss function in float32
    assert test["log_loss"] == pytest.approx(test["loss"], rel=1e-5)
    onehot = np.eye(3)[labels]
    assert test["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean(), rel=1e-5)
    assert test["ece"] == pytest.approx(_ece(probs, labels), abs=1e-5)

    # the AUCs are those of the scores binned into DEFAULT_BINS bins (exact in integers), and that far from the raw
    # scores' at most (the bound the module states)
    binned = [_bins(probs[:, c]) for c in range(3)]
    assert test["roc_auc_macro"] == pytest.approx(
        np.mean([roc_auc_score(labels == c, binned[c]) for c in range(3)]), abs=1e-12
    )
    assert test["pr_auc_macro"] == pytest.approx(
        np.mean([average_precision_score(labels == c, binned[c]) for c in range(3)]), abs=1e-12
    )
    bound = np.mean([_binned_auc_bound(probs[:, c], labels == c) for c in range(3)])
    roc = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert abs(test["roc_auc_macro"] - roc) <= bound + 1e-12, (test["roc_auc_macro"], roc, bound)
    # the model learned something: the scores are not those of a constant
    assert test["roc_auc_macro"] > 0.7 and test["log_loss"] < np.log(3)


def test_a_reliability_diagram_is_written_beside_each_confusion_matrix(streamed_run: Path):
    metrics = json.loads((streamed_run / "metrics.json").read_text())
    manifest = json.loads((streamed_run / ".hf_finetune_run.json").read_text())
    listed = json.dumps(manifest)
    for prefix in ("eval", "test"):
        png = streamed_run / reliability_diagram_file(prefix)
        assert (streamed_run / confusion_matrix_files(prefix)[1]).is_file()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 300
        assert metrics[prefix]["plots"] == {"reliability": png.name}
        assert png.name in listed  # recorded as the run's own file: --overwrite removes it


def test_eval_cli_reproduces_the_score_metrics(streamed_run: Path):
    saved = json.loads((streamed_run / "metrics.json").read_text())["test"]
    proc = _cli("eval", str(streamed_run), "--split", "test", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in (*SCORE_NAMES, "accuracy", "f1_macro"):
        assert result[key] == pytest.approx(saved[key], rel=1e-6, abs=1e-9), key


def test_batch_eval_metrics_false_is_honoured_and_scores_the_same(
    streamed_run: Path, digits_folder: Path, tmp_path: Path
):
    # same recipe and seed, every logit handed to the metrics at once: same training on CPU, same numbers
    whole = _train(tmp_path, digits_folder, batch_eval_metrics=False)
    args = __import__("torch").load(whole / "training_args.bin", weights_only=False)
    assert args.batch_eval_metrics is False
    streamed = json.loads((streamed_run / "metrics.json").read_text())
    at_once = json.loads((whole / "metrics.json").read_text())
    for prefix in ("eval", "test"):
        for key in (*SCORE_NAMES, *CLASSIFICATION_KEYS):
            assert at_once[prefix][key] == pytest.approx(streamed[prefix][key], rel=1e-6, abs=1e-9), (prefix, key)


# --- SingleLabelMetrics on arrays ------------------------------------------------------------------------------------


def _toy(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    return logits.astype(np.float32), labels


def test_streamed_batches_give_the_numbers_of_one_whole_call():
    logits, labels = _toy(257, 4, 0)
    labels[[3, 100]] = -100  # padding rows are dropped by both halves
    names = ["a", "b", "c", "d"]
    whole = make_single_label_metrics(names, top_k=(2,))
    expected = whole(EvalPrediction(predictions=logits, label_ids=labels))
    batched = make_single_label_metrics(names, top_k=(2,))
    for start in range(0, 257, 16):
        chunk = slice(start, start + 16)
        assert batched(EvalPrediction(logits[chunk], labels[chunk]), compute_result=False) == {}
    assert batched(EvalPrediction(logits[:0], labels[:0]), compute_result=True) == expected
    assert list(expected) == [*CLASSIFICATION_KEYS, "top2_accuracy", *SCORE_KEYS]
    assert batched.last_report["confusion_matrix"] == whole.last_report["confusion_matrix"]
    assert batched.score_report["reliability"] == whole.score_report["reliability"]

    keep = labels >= 0
    y, p = labels[keep], softmax(logits[keep].astype(np.float64), axis=1)
    assert expected["log_loss"] == pytest.approx(
        -log_softmax(logits[keep].astype(np.float64), 1)[np.arange(len(y)), y].mean(), rel=1e-12
    )
    assert expected["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert expected["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y), abs=1e-15)
    # the classification half is the plain ClassificationMetrics of the same logits
    plain = ClassificationMetrics(names, top_k=(2,))(EvalPrediction(logits, labels))
    assert {k: expected[k] for k in plain} == plain
    # and the next evaluation starts from nothing
    assert batched(EvalPrediction(logits[:50], labels[:50])) == whole(EvalPrediction(logits[:50], labels[:50]))


def test_binary_tasks_add_class_ones_auc_and_extras_never_shadow_a_score_key(tmp_path: Path):
    from tests.test_metrics import _write_metric_module

    module = _write_metric_module(tmp_path, "clash", "        return {'log_loss': -1.0}\n")
    logits, labels = _toy(120, 2, 1)
    metrics = make_single_label_metrics(["no", "yes"], extra=[str(module)])
    out = metrics(EvalPrediction(logits, labels))
    assert list(out)[-len(SCORE_KEYS) - len(BINARY_KEYS) :] == [*SCORE_KEYS, *BINARY_KEYS]
    assert out["clash_log_loss"] == -1.0 and out["log_loss"] > 0
    p = softmax(logits.astype(np.float64), axis=1)
    assert out["log_loss"] == pytest.approx(log_loss(labels, p), rel=1e-9)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, _bins(p[:, 1])), abs=1e-12)
    assert out["pr_auc"] == pytest.approx(average_precision_score(labels, _bins(p[:, 1])), abs=1e-12)
    bound = _binned_auc_bound(p[:, 1], labels == 1)
    assert abs(out["roc_auc"] - roc_auc_score(labels, p[:, 1])) <= bound + 1e-12


def test_top_k_indices_instead_of_logits_are_refused_by_name():
    from hf_finetune.errors import MetricError

    metrics = make_single_label_metrics(["a", "b", "c"])
    with pytest.raises(MetricError, match="float logits"):
        metrics(EvalPrediction(np.array([[0], [2]]), np.array([0, 2])))
    logits, labels = _toy(10, 3, 2)  # the failed evaluation left nothing behind
    assert metrics(EvalPrediction(logits, labels))["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


# --- metrics.calibration temperature (issue 14 item 2) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_run(digits_folder: Path, tmp_path_factory) -> Path:
    """The streamed run's recipe with metrics.calibration temperature, given as a CLI override."""
    work = tmp_path_factory.mktemp("calibrated")
    out = work / "out"
    recipe = _recipe(digits_folder, out)
    (work / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), "metrics.calibration=temperature", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibration: temperature" in proc.stderr
    return out


def _saved_logits(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The saved model's logits on one split as the run formed it (the carved validation split too)."""
    import torch

    from hf_finetune.data.sources import load_data
    from hf_finetune.recipe import load_saved_recipe
    from hf_finetune.tasks.image_classification import load_trained

    built = load_trained(out)
    names = [built.model.config.id2label[i] for i in range(built.model.config.num_labels)]
    recipe = load_saved_recipe(out, "image-classification")
    ds = load_data(recipe.data, {"image": "image_column"}, label_names=names).splits[split]
    inputs = built.processor(images=[img.convert("RGB") for img in ds["image"]], return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        logits = built.model(pixel_values=inputs["pixel_values"]).logits.double().numpy()
    return logits, np.asarray(ds["label"])


def test_calibration_folds_the_validation_fitted_temperature_into_the_saved_head(calibrated_run: Path):
    from hf_finetune.calibration import CONFIG_KEY, METHOD_BRENTQ, fit_temperature

    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    calibration = metrics["run"]["calibration"]
    t = calibration["temperature"]
    config = json.loads((calibrated_run / "config.json").read_text())
    assert config[CONFIG_KEY] == t and calibration["converged"] and t != pytest.approx(1.0, abs=1e-3)
    assert calibration["method"] == "temperature" and calibration["solver"] == METHOD_BRENTQ

    val_logits, val_labels = _saved_logits(calibrated_run, "validation")
    assert calibration["rows"] == len(val_labels) == metrics["eval"]["num_samples"]
    # the saved head outputs logits / T: times T they are the trained model's, whose NLL-optimal temperature is T
    uncalibrated = val_logits * t
    assert fit_temperature(uncalibrated, val_labels).temperature == pytest.approx(t, rel=1e-5)
    assert fit_temperature(val_logits, val_labels).temperature == pytest.approx(1.0, rel=1e-5)
    assert calibration["nll_before"] == pytest.approx(log_loss(val_labels, softmax(uncalibrated, 1)), rel=1e-5)
    assert calibration["nll_after"] == pytest.approx(log_loss(val_labels, softmax(val_logits, 1)), rel=1e-5)
    assert calibration["nll_after"] <= calibration["nll_before"]

    # before/after: the trained model's and the saved (calibrated) model's test scores; the split metrics are the
    # saved model's, so `hf-finetune eval` reproduces them
    test_logits, test_labels = _saved_logits(calibrated_run, "test")
    for logits, when in ((test_logits * t, "before"), (test_logits, "after")):
        probs = softmax(logits, 1)
        scores = calibration[when]["test"]
        assert scores["log_loss"] == pytest.approx(log_loss(test_labels, probs, labels=[0, 1, 2]), rel=1e-5), when
        assert scores["ece"] == pytest.approx(_ece(probs, test_labels), abs=1e-5), when
    assert metrics["test"]["log_loss"] == calibration["after"]["test"]["log_loss"]
    assert metrics["test"]["accuracy"] == pytest.approx(np.mean(test_logits.argmax(1) == test_labels), abs=1e-12)
    # the error analysis is the saved (calibrated) model's too: its per-row probabilities are softmax(logits / T)
    rows = [json.loads(line) for line in (calibrated_run / "predictions_test.jsonl").read_text().splitlines()]
    written = np.array([[row["probabilities"][name] for name in metrics["label_names"]] for row in rows])
    np.testing.assert_allclose(written, softmax(test_logits, 1), rtol=1e-5, atol=1e-7)

    from hf_finetune import evaluate

    again = evaluate(calibrated_run, split="test")
    for key in (*SCORE_NAMES, "accuracy"):
        assert again[key] == pytest.approx(metrics["test"][key], rel=1e-6, abs=1e-9), key


def test_calibration_is_refused_where_it_would_be_ignored_or_cannot_fold():
    from torch import nn

    from hf_finetune.api import _calibrated_linear
    from hf_finetune.errors import ModelError, RecipeError
    from hf_finetune.recipe import load_recipe

    base = {"model": {"name": "simple_cnn"}, "data": {"source": "builtin:digits"}}
    assert load_recipe({**base, "metrics": {"calibration": "temperature"}}).metrics.calibration == "temperature"
    with pytest.raises(RecipeError, match=r"metrics.calibration: applies to data.label_format single only"):
        load_recipe(
            {**base, "data": {**base["data"], "label_format": "regression"}, "metrics": {"calibration": "temperature"}}
        )
    with pytest.raises(RecipeError, match=r"metrics.calibration.*'temperature' or 'none'"):
        load_recipe({**base, "metrics": {"calibration": "platt"}})

    class TwoOutputLayers(nn.Module):  # two Linears producing num_labels outputs: which one the logits are is unclear
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"num_labels": 3})()
            self.classifier = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))

    with pytest.raises(ModelError, match=r"metrics.calibration temperature: .*set metrics.calibration none"):
        _calibrated_linear(TwoOutputLayers())


@pytest.mark.slow
def test_two_ranks_score_single_label_exactly_as_one(streamed_run: Path):
    # 30 test rows in batches of 4 on 2 ranks: the last step is padded with 2 repeated rows, which Trainer's gather
    # drops before the streaming metrics see them (counted twice they would move log loss by ~1e-2). The ranks' batches
    # hold other rows than one process's, so the float32 forward pass rounds logits differently (~1e-8 relative in
    # log loss): the class counts are identical, the scores agree to that rounding.
    from hf_finetune import evaluate

    single = evaluate(streamed_run, split="test", batch_size=4)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_finetune", "eval", str(streamed_run), "--split", "test", "--batch-size", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    distributed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert distributed["num_samples"] == single["num_samples"] == 30
    for key in CLASSIFICATION_KEYS:
        assert distributed[key] == single[key], key
    for key in SCORE_NAMES:
        assert distributed[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert distributed["confusion_matrix"] == single["confusion_matrix"]


def _card_score_rows(card: str) -> dict[str, list[str]]:
    section = card.split("### Scores and calibration", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split("|") for line in section.splitlines()[2:]]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_card_shows_each_splits_scores_and_reliability_diagram(streamed_run: Path):
    card = (streamed_run / "README.md").read_text()
    metrics = json.loads((streamed_run / "metrics.json").read_text())
    rows = _card_score_rows(card)
    for prefix, split in (("eval", "validation"), ("test", "test")):
        m = metrics[prefix]
        expected = [f"{m[k]:.4f}" for k in ("roc_auc_macro", "pr_auc_macro", "log_loss", "brier", "ece")]
        assert rows[split] == expected
        assert f"![Reliability diagram, {split} split](reliability_diagram_{prefix}.png)" in card
    assert "calibrated by temperature scaling" not in card


def test_card_of_a_calibrated_run_states_the_temperature_and_its_effect(calibrated_run: Path):
    card = (calibrated_run / "README.md").read_text()
    cal = json.loads((calibrated_run / "metrics.json").read_text())["run"]["calibration"]
    before, after = cal["before"]["test"], cal["after"]["test"]
    assert f"T = {cal['temperature']:.4g}, fitted on {cal['rows']} validation rows" in card
    assert (
        f"On the test split: log loss {before['log_loss']:.4f} → {after['log_loss']:.4f}, "
        f"ECE {before['ece']:.4f} → {after['ece']:.4f}."
    ) in card
    # the table shows the saved (calibrated) model's scores
    assert _card_score_rows(card)["test"][2] == f"{after['log_loss']:.4f}"
