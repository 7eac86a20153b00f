"""Multi-label classification and regression trained end to end through the CLI (issue 13): what a user gets in the
output folder (config thresholds, metrics.json keys, plots), `hf-finetune eval` reproducing metrics.json, predict in
the target's own units, and the recipe refusals that keep a value from being ignored."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import _digit_images, make_texts

TAGS = {"even": lambda d: d % 2 == 0, "ge5": lambda d: d >= 5, "loop": lambda d: d in (0, 6, 8, 9)}


def _cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
        cwd=cwd,
    )


def _tags(digit: int) -> str:
    return "|".join(name for name, has in TAGS.items() if has(digit))


@pytest.fixture(scope="module")
def digit_table(tmp_path_factory) -> Path:
    """train.csv / test.csv with an image path, the digit's tags ("even|loop") and its value plus 100, over PNGs of
    scikit-learn's digits (a space and a non-ASCII letter in the folder name, as users' folders have)."""
    root = tmp_path_factory.mktemp("tables") / "chiffres écrits"
    (root / "img").mkdir(parents=True)
    for split, per_class, offset in (("train", 14, 0), ("test", 6, 40)):
        rows = ["image,tags,value"]
        for n, (digit, img) in enumerate(_digit_images(tuple(range(10)), per_class, 16, offset)):
            name = f"img/{split}_{n}.png"
            img.save(root / name)
            rows.append(f"{name},{_tags(digit)},{100 + digit}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _image_recipe(root: Path, out: Path, **data) -> dict:
    return {
        "name": "digits-tags",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [16, 32], "dense_units": [32]}},
        "data": {"files": {"train": str(root / "train.csv"), "test": str(root / "test.csv")}, **data},
        "training": {
            "output_dir": str(out),
            "num_train_epochs": 6,
            "per_device_train_batch_size": 16,
            "learning_rate": 3e-3,
            "disable_tqdm": True,
        },
    }


@pytest.fixture(scope="module")
def multi_label_run(digit_table: Path, tmp_path_factory) -> Path:
    """simple_cnn trained on the tags with the toolkit's defaults (dataloader workers on, thresholds tuned)."""
    work = tmp_path_factory.mktemp("ml run")
    out = work / "out"
    recipe = _image_recipe(digit_table, out, label_format="multi_label", label_column="tags", allow_empty_labels=True)
    recipe["loss"] = {"pos_weight": "balanced"}
    (work / "r.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "micro-F1" in proc.stdout and "prevalence baseline" in proc.stdout
    return out


def test_multi_label_run_saves_tuned_thresholds_in_config_and_metrics(multi_label_run: Path):
    config = json.loads((multi_label_run / "config.json").read_text())
    metrics = json.loads((multi_label_run / "metrics.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["label_thresholds"]) == sorted(TAGS)
    run = metrics["run"]
    assert run["label_format"] == "multi_label"
    assert run["thresholds"]["mode"] == "tune"
    # what predict and pipeline() users read is what the run chose
    assert run["thresholds"]["values"] == config["label_thresholds"]
    test = metrics["test"]
    for key in ("f1_micro", "f1_macro", "f1_weighted", "f1_samples", "map", "subset_accuracy", "hamming_loss"):
        assert isinstance(test[key], float), key
    assert [row["threshold"] for row in test["per_class"]] == [config["label_thresholds"][n] for n in sorted(TAGS)]
    assert {row["label"]: row["support"] for row in test["per_class"]} == {
        name: sum(has(d) for d in range(10)) * 6 for name, has in TAGS.items()
    }
    assert test["baseline"]["kind"] == "prevalence"
    # positives per label in train, as the data has them (14 per digit)
    assert run["splits"]["train"]["class_counts"]["even"] + run["splits"]["validation"]["class_counts"]["even"] == 70
    # the tags are learnable from the pixels: the model beats always answering the prevalent labels
    assert test["map"] > 0.75 and test["f1_micro"] > test["baseline"]["f1_micro"] + 0.1


def test_eval_cli_reproduces_the_multi_label_test_metrics(multi_label_run: Path):
    saved = json.loads((multi_label_run / "metrics.json").read_text())["test"]
    proc = _cli("eval", str(multi_label_run), "--split", "test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in ("f1_micro", "f1_macro", "map", "subset_accuracy", "hamming_loss", "loss"):
        assert result[key] == pytest.approx(saved[key], abs=1e-6), key
    assert "micro-F1" in proc.stderr and "threshold" in proc.stderr


def test_predict_returns_the_labels_above_each_threshold(multi_label_run: Path, digit_table: Path):
    config = json.loads((multi_label_run / "config.json").read_text())
    images = sorted((digit_table / "img").glob("test_*.png"))[:12]
    proc = _cli("predict", str(multi_label_run), *map(str, images), "--top-k", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(images)
    for row in rows:
        scores = {p["label"]: p["score"] for p in row["predictions"]}
        assert len(scores) == 3
        chosen = [p["label"] for p in row["labels"]]
        assert chosen == [
            n for n, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s >= config["label_thresholds"][n]
        ]


@pytest.fixture(scope="module")
def regression_run(digit_table: Path, tmp_path_factory) -> Path:
    """simple_cnn regressing the digit's value + 100 on standardised targets (the head is folded back)."""
    work = tmp_path_factory.mktemp("reg run")
    out = work / "out"
    recipe = _image_recipe(digit_table, out, label_format="regression", label_column="value", standardize_targets=True)
    recipe["loss"] = {"regression": "huber", "huber_delta": 1.0}
    (work / "r.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    proc = _cli("train", str(work / "r.yaml"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSE" in proc.stdout and "mean baseline" in proc.stdout
    return out


def test_regression_run_writes_metrics_plots_and_the_scaler(regression_run: Path):
    config = json.loads((regression_run / "config.json").read_text())
    metrics = json.loads((regression_run / "metrics.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "value"}
    scaler = config["target_scaler"]
    assert metrics["run"]["target_scaler"] == scaler
    assert 103 < scaler["mean"] < 106 and 2.5 < scaler["std"] < 3.2
    test = metrics["test"]
    for key in ("mae", "rmse", "r2", "pearson", "spearman"):
        assert key in test
    assert test["baseline"]["kind"] == "mean"
    # in the original units: the mean baseline's error is that of the digits' spread (about 2.5), not of 1 std
    assert 2.0 < test["baseline"]["mae"] < 3.0
    assert test["rmse"] < 0.95 * test["baseline"]["rmse"] and test["r2"] > 0.1
    for name in test["plots"].values():
        assert (regression_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["run"]["splits"]["test"]["target"]["min"] == pytest.approx(100.0)


def test_regression_predict_and_eval_are_in_the_original_units(regression_run: Path, digit_table: Path):
    saved = json.loads((regression_run / "metrics.json").read_text())["test"]
    proc = _cli("eval", str(regression_run), "--split", "test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in ("mae", "rmse", "r2", "loss"):
        assert result[key] == pytest.approx(saved[key], rel=1e-5, abs=1e-6), key
    images = sorted((digit_table / "img").glob("test_*.png"))
    proc = _cli("predict", str(regression_run), *map(str, images))
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = np.array([json.loads(line)["value"] for line in proc.stdout.splitlines()])
    # the head absorbed the scaler: outputs are digits + 100, not standardised numbers around 0
    assert 100 < values.mean() < 110
    truth = np.array([100 + int(n) // 6 for n in range(len(images))])  # test rows: 6 per digit, in order
    order = np.argsort([int(p.stem.split("_")[1]) for p in images])
    assert np.abs(values[order] - truth).mean() == pytest.approx(saved["mae"], rel=1e-4)


def test_text_multi_label_and_regression_train_on_a_bert_model(tiny_bert_dir: Path, tmp_path: Path):
    import csv

    rows = make_texts(150, 3)
    with (tmp_path / "t.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "tags", "score"])
        for text, label in rows:
            tags = [label] if label != "neutral" else []
            if len(text.split()) > 20:
                tags.append("long")
            w.writerow([text, ",".join(tags), {"positive": 1.0, "negative": -1.0, "neutral": 0.0}[label]])
    base = {
        "task": "text-classification",
        "model": {"name": str(tiny_bert_dir)},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "disable_tqdm": True},
    }
    ml = {
        **base,
        "data": {"source": str(tmp_path / "t.csv"), "label_format": "multi_label", "label_column": "tags",
                 "label_delimiter": ",", "allow_empty_labels": True},
        "metrics": {"thresholds": 0.5},
    }  # fmt: skip
    reg = {**base, "data": {"source": str(tmp_path / "t.csv"), "label_format": "regression", "label_column": "score"}}
    for name, recipe in (("ml", ml), ("reg", reg)):
        recipe["training"] = {**recipe["training"], "output_dir": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        proc = _cli("train", str(tmp_path / f"{name}.yaml"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "ml" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["label_thresholds"] == {"long": 0.5, "negative": 0.5, "positive": 0.5}  # fixed: honoured as written
    ml_run = json.loads((tmp_path / "ml" / "metrics.json").read_text())["run"]
    assert ml_run["thresholds"]["mode"] == "fixed"
    reg_metrics = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert reg_metrics["run"]["target_scaler"] is None
    assert {"mae", "rmse", "r2", "pearson", "spearman"} <= set(reg_metrics["eval"])
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["problem_type"] == "regression"


@pytest.mark.parametrize(
    ("data", "sections", "message"),
    [
        ({"label_format": "multi_label", "label_column": "tags"}, {"loss": {"class_weights": "balanced"}},
         "loss.class_weights: weights classes of single-label data, not multi_label; use loss.pos_weight"),
        ({"label_format": "regression", "label_column": "value"}, {"augmentation": {"mixup_alpha": 0.2}},
         "augmentation.mixup_alpha/cutmix_alpha: mixing makes soft class targets"),
        ({"label_format": "regression", "label_column": "value"},
         {"training": {"label_smoothing_factor": 0.1, "output_dir": "x"}}, "training.label_smoothing_factor"),
        ({}, {"metrics": {"thresholds": 0.4}}, "metrics.thresholds: applies to data.label_format multi_label only"),
        ({"label_format": "multi_label", "label_column": "tags"}, {"metrics": {"thresholds": 1.5}},
         "metrics.thresholds: a fixed threshold must be between 0 and 1"),
        ({"label_format": "multi_label", "label_column": "tags"}, {"loss": {"regression": "huber"}},
         "loss.regression: applies to data.label_format regression only"),
    ],
)  # fmt: skip
def test_settings_the_format_cannot_use_are_refused_before_anything_is_written(
    digit_table: Path, tmp_path: Path, data: dict, sections: dict, message: str
):
    before = {p: p.read_bytes() for p in digit_table.rglob("*") if p.is_file()}
    recipe = _image_recipe(digit_table, tmp_path / "out", **data)
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    proc = _cli("train", str(tmp_path / "r.yaml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()
    assert {p: p.read_bytes() for p in digit_table.rglob("*") if p.is_file()} == before


def _launch_eval(out: Path) -> dict:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_finetune", "eval", str(out), "--split", "validation", "--batch-size", "4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_ranks_score_multi_label_and_regression_exactly_as_one(multi_label_run: Path, regression_run: Path):
    # 14 validation rows in batches of 4 on 2 ranks: the last step is padded with repeated rows, which Trainer's
    # gather drops before the streaming metrics see them; every counter is an integer, so the scores are identical
    from hf_finetune import evaluate

    for out, keys in (
        (multi_label_run, ("f1_micro", "f1_macro", "f1_samples", "map", "subset_accuracy", "hamming_loss")),
        (regression_run, ("mae", "rmse", "r2", "pearson", "spearman")),
    ):
        single = evaluate(out, split="validation", batch_size=4)
        assert single["num_samples"] == 14
        distributed = _launch_eval(out)
        assert distributed["num_samples"] == 14
        for key in keys:
            assert distributed[key] == pytest.approx(single[key], rel=1e-12, abs=1e-12), (out.name, key)
        if "per_class" in single:
            assert distributed["per_class"] == single["per_class"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "head_only", "partial", "linear_probe", "lp_ft"])
def test_every_transfer_strategy_trains_both_formats_on_a_transformers_model(
    strategy: str, digit_table: Path, tiny_vit_dir: Path, tmp_path: Path
):
    from hf_finetune import finetune

    for fmt, column in (("multi_label", "tags"), ("regression", "value")):
        out = tmp_path / fmt
        recipe = _image_recipe(digit_table, out, label_format=fmt, label_column=column)
        if fmt == "multi_label":
            recipe["data"]["allow_empty_labels"] = True
        recipe["model"] = {"name": str(tiny_vit_dir)}
        recipe["transfer"] = {"strategy": strategy, **({"unfreeze_last": 1} if strategy == "partial" else {})}
        recipe["training"] = {"output_dir": str(out), "disable_tqdm": True}
        if strategy != "linear_probe":
            recipe["training"] |= {"num_train_epochs": 1, "per_device_train_batch_size": 16}
        recipe["metrics"] = {"baseline": "linear"}
        result = finetune(recipe)
        test = result.metrics["test"]
        key = "map" if fmt == "multi_label" else "rmse"
        assert np.isfinite(test[key]) and np.isfinite(test["baseline_linear"][key]), (fmt, test)
        config = json.loads((out / "config.json").read_text())
        assert config["problem_type"] == {"multi_label": "multi_label_classification", "regression": "regression"}[fmt]
        if strategy == "linear_probe":  # the run is the fitted regression: its scores are the baseline's
            assert test["baseline_linear"]["same_as"]
            probe = json.loads((out / "metrics.json").read_text())["run"]["probe"]
            assert ("C" in probe) if fmt == "multi_label" else ("alpha" in probe)


def _card_snippet(out: Path, image: Path) -> str:
    """The card's "How to use" code, pointed at one image: what a reader of the card would run."""
    card = (out / "README.md").read_text(encoding="utf-8")
    usage = card.split("## How to use", 1)[1]
    code = usage.split("```python", 1)[1].split("```", 1)[0]
    return code.replace('"photo.jpg"', repr(str(image)))


def _run_without_hf_finetune(code: str, tmp_path: Path) -> str:
    from tests.test_portable import NO_HF_FINETUNE, _plain_env

    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", NO_HF_FINETUNE + code],
        cwd=cwd,
        env=_plain_env(tmp_path / "home"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def test_multi_label_card_shows_thresholds_and_its_snippet_gives_predicts_labels(
    multi_label_run: Path, digit_table: Path, tmp_path: Path
):
    from huggingface_hub import ModelCard

    card = (multi_label_run / "README.md").read_text(encoding="utf-8")
    thresholds = json.loads((multi_label_run / "config.json").read_text())["label_thresholds"]
    assert "An image tagger" in card and "### Decision thresholds" in card and "### Per label (test split)" in card
    for name, value in thresholds.items():
        assert f"| {name} |" in card and f"| {value:.3f} |" in card
    assert "Confusion matrix" not in card and "nan" not in card.lower()
    results = ModelCard.load(multi_label_run / "README.md").data.eval_results
    saved = json.loads((multi_label_run / "metrics.json").read_text())["test"]
    micro = next(r for r in results if r.dataset_split == "test" and r.metric_config == "micro")
    assert micro.metric_value == pytest.approx(saved["f1_micro"], abs=1e-4)
    image = sorted((digit_table / "img").glob("test_*.png"))[7]
    code = _card_snippet(multi_label_run, image) + "\nprint('LABELS', json.dumps(labels))\n"
    printed = _run_without_hf_finetune("import json\n" + code, tmp_path)
    from_card = json.loads(printed.rsplit("LABELS ", 1)[1])
    proc = _cli("predict", str(multi_label_run), str(image))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert from_card == [p["label"] for p in json.loads(proc.stdout)["labels"]]


def test_regression_card_embeds_the_plots_and_its_snippet_gives_predicts_value(
    regression_run: Path, digit_table: Path, tmp_path: Path
):
    card = (regression_run / "README.md").read_text(encoding="utf-8")
    assert "An image regressor: it predicts value" in card
    assert "![Predicted vs true, test split](regression_scatter_test.png)" in card
    assert "folded in, so it outputs the original units" in card and "## Labels" not in card
    image = sorted((digit_table / "img").glob("test_*.png"))[3]
    printed = _run_without_hf_finetune(_card_snippet(regression_run, image) + "\nprint('VALUE', value)\n", tmp_path)
    proc = _cli("predict", str(regression_run), str(image))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(printed.rsplit("VALUE ", 1)[1]) == pytest.approx(json.loads(proc.stdout)["value"], rel=1e-5)
