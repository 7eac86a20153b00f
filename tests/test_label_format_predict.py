"""Predicting with multi-label and regression models (issue 13): `predict` rows per format (the multi-label decision
is `multilabel_metrics`' float64 sigmoid and `p >= t` against `config.label_thresholds`, 0.5 without it; regression
returns the model's output as it is), `hf-finetune predict` end to end with JSONL and CSV out, and the saved folders
in `transformers.pipeline(...)` where hf_finetune cannot be imported, giving the same scores.

The saved folders are built by hand (build_model, a head made to give spread-out outputs, save_pretrained with the
processor or tokenizer), as training a multi-label or regression model is the lead's part of the issue."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_portable import NO_HF_FINETUNE, _plain_env

from hf_finetune import predict
from hf_finetune.models.structure import head_module
from hf_finetune.names import LABEL_THRESHOLDS_KEY, PROBLEM_TYPES
from hf_finetune.recipe import ModelSpec
from hf_finetune.tasks import get_task
from hf_finetune.tasks._common import multi_label_rows, regression_rows

NAMES = ["cat", "dog", "outdoor"]
TEXTS = [
    "good lovely ride",
    "bad slow car today",
    "the trip was very calm",
    "a very nice and calm ride it felt",
    "awful broken car",
    "happy fine day and a superb trip",
    "ugly sad ride",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def test_multi_label_rows_apply_each_threshold_with_p_at_least_t():
    from transformers import PretrainedConfig

    logits = torch.tensor([[2.0, -1.0, 0.25], [-3.0, 0.5, 0.0]])
    config = PretrainedConfig(id2label=dict(enumerate(NAMES)), problem_type=PROBLEM_TYPES["multi_label"])
    # without thresholds: 0.5 for every label (a logit of exactly 0 scores 0.5, and 0.5 >= 0.5 is predicted)
    rows = multi_label_rows(["a", "b"], "text", logits, config, 2)
    assert [[p["label"] for p in r["labels"]] for r in rows] == [["cat", "outdoor"], ["dog", "outdoor"]]
    assert rows[0]["predictions"] == [
        {"label": "cat", "score": round(float(_sigmoid(np.array(2.0))), 6), "threshold": 0.5},
        {"label": "outdoor", "score": round(float(_sigmoid(np.array(0.25))), 6), "threshold": 0.5},
    ]
    # a threshold equal to the score itself (float64) is reached; one a hair above it is not
    p_outdoor = float(_sigmoid(np.array(np.float32(0.25))))
    config.label_thresholds = {"cat": 0.95, "dog": 0.6, "outdoor": p_outdoor}
    rows = multi_label_rows(["a", "b"], "text", logits, config, 3)
    assert [[p["label"] for p in r["labels"]] for r in rows] == [["outdoor"], ["dog"]]
    config.label_thresholds = {"cat": 0.95, "dog": 0.6, "outdoor": math.nextafter(p_outdoor, 1.0)}
    rows = multi_label_rows(["a", "b"], "text", logits, config, 3)
    assert [[p["label"] for p in r["labels"]] for r in rows] == [[], ["dog"]]
    assert [p["threshold"] for p in rows[1]["predictions"]] == [0.6, config.label_thresholds["outdoor"], 0.95]

    reg = PretrainedConfig(id2label={0: "price"}, problem_type=PROBLEM_TYPES["regression"])
    got = regression_rows(["a", "b"], "image", torch.tensor([[123.456], [-0.1]]), reg)
    assert got == [
        {"image": "a", "value": 123.456, "predictions": [{"label": "price", "score": 123.456}]},
        {"image": "b", "value": -0.1, "predictions": [{"label": "price", "score": -0.1}]},
    ]


# --------------------------------------------------------------------------------------------- saved folders


def _head_linear(model: torch.nn.Module) -> torch.nn.Linear:
    head = head_module(model)
    return (
        head if isinstance(head, torch.nn.Linear) else [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    )


def _outputs(folder: Path, inputs: list[str], text: bool) -> np.ndarray:
    """The saved model's raw outputs for `inputs`, computed here with plain transformers classes."""
    from PIL import Image
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    import hf_finetune.models  # noqa: F401  (the toolkit's own model types)

    if text:
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows = [tokenizer(t, truncation=True, return_tensors="pt") for t in inputs]
    else:
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        rows = [processor(images=[Image.open(p).convert("RGB")], return_tensors="pt") for p in inputs]
    with torch.no_grad():  # one input at a time: no padding can change a text's output
        return np.concatenate([model(**r).logits.numpy() for r in rows])


def _build(task_name: str, spec: ModelSpec, fmt: str, folder: Path, inputs: list[str]) -> Path:
    """A saved folder whose outputs over `inputs` are spread out (a fresh head's are all near zero): each label's
    logits have mean 0.5, -0.5, 0 and std 2 (no saturated sigmoid, so orders are well defined); a regression
    output mean 250 and std 2, far from any [0, 1] score, so "the raw value" is really tested."""
    torch.manual_seed(0)
    text = task_name == "text-classification"
    built = get_task(task_name).build_model(spec, NAMES if fmt == "multi_label" else ["price"], fmt)
    with torch.no_grad():
        # random-init features barely differ between inputs (BERT's std 0.02 weights, timm's zero-init of each
        # residual block's last BN), and stretching them to std 2 below would stretch float noise with them
        for module in built.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(1.0, 3.0)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
    built.model.save_pretrained(folder)
    built.processor.save_pretrained(folder)  # timm's writes nothing: its settings live in config.json
    wanted_mean, wanted_std = (torch.tensor([0.5, -0.5, 0.0]), 2.0) if fmt == "multi_label" else (250.0, 2.0)
    linear = _head_linear(built.model)
    features = torch.from_numpy(_outputs(folder, inputs, text)) - linear.bias.detach()  # the W·f part
    scale = wanted_std / features.std(0).clamp(min=1e-6)
    with torch.no_grad():
        linear.weight.mul_(scale[:, None])
        linear.bias.copy_(wanted_mean - features.mean(0) * scale)
    built.model.save_pretrained(folder)
    if fmt == "multi_label":
        # each label's threshold halfway between two of its scores, so some inputs reach it and some do not
        scores = np.sort(_sigmoid(_outputs(folder, inputs, text)), axis=0)
        middle = len(inputs) // 2
        thresholds = {n: float((scores[middle - 1, i] + scores[middle, i]) / 2) for i, n in enumerate(NAMES)}
        config = json.loads((folder / "config.json").read_text())
        config[LABEL_THRESHOLDS_KEY] = thresholds
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def images(digits_folder: Path) -> list[str]:
    return [str(p) for p in sorted((digits_folder / "test").rglob("*.png"))[::5]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits_folder: Path, tiny_vit_dir: Path, tiny_bert_dir: Path, images) -> dict:
    root = tmp_path_factory.mktemp("label_format_predict")
    cnn = ModelSpec(name="simple_cnn", image_size=16, config={"filters": [4], "dense_units": [8]})
    image_specs = {
        "cnn": cnn,
        "timm": ModelSpec(name="timm:test_resnet", pretrained=False, image_size=32),
        "vit": ModelSpec(name=str(tiny_vit_dir)),
    }
    made: dict[str, tuple[Path, str, list[str]]] = {}
    for name, spec in image_specs.items():
        for fmt in ("multi_label", "regression"):
            if name == "vit" and fmt == "regression":
                continue
            made[f"{name}-{fmt}"] = (
                _build("image-classification", spec, fmt, root / f"{name}-{fmt}", images),
                fmt,
                images,
            )
    for pooling in ("cls", "mean"):
        spec = ModelSpec(name=str(tiny_bert_dir), pooling=pooling)
        for fmt in ("multi_label", "regression"):
            made[f"bert-{pooling}-{fmt}"] = (
                _build("text-classification", spec, fmt, root / f"bert-{pooling}-{fmt}", TEXTS),
                fmt,
                TEXTS,
            )
    return made


def _expected_rows(folder: Path, fmt: str, inputs: list[str], key: str, top_k: int) -> list[dict[str, Any]]:
    """The rows the contract asks for, computed here from the raw outputs and the saved thresholds."""
    outputs = _outputs(folder, inputs, key == "text")
    if fmt == "regression":
        return [{key: x, "value": float(v)} for x, v in zip(inputs, outputs[:, 0], strict=True)]
    thresholds = json.loads((folder / "config.json").read_text())[LABEL_THRESHOLDS_KEY]
    rows = []
    for x, p in zip(inputs, _sigmoid(outputs), strict=True):
        order = sorted(range(len(NAMES)), key=lambda i: -p[i])
        rows.append(
            {
                key: x,
                "labels": [NAMES[i] for i in order if p[i] >= thresholds[NAMES[i]]],
                "scores": dict(zip(NAMES, map(float, p), strict=True)),
                "predictions": [(NAMES[i], float(p[i]), thresholds[NAMES[i]]) for i in order[:top_k]],
            }
        )
    return rows


def _same_rows(got: list[dict], want: list[dict], fmt: str) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        key = "text" if "text" in w else "image"
        assert g[key] == w[key]
        if fmt == "regression":
            assert set(g) == {key, "value", "predictions"}
            assert g["value"] == pytest.approx(w["value"], rel=1e-6, abs=1e-5)
            assert g["predictions"] == [{"label": "price", "score": g["value"]}]
            continue
        assert set(g) == {key, "labels", "predictions"}
        assert [p["label"] for p in g["labels"]] == w["labels"]
        assert [p["score"] for p in g["labels"]] == pytest.approx([w["scores"][n] for n in w["labels"]], abs=1e-5)
        assert [(p["label"], p["threshold"]) for p in g["predictions"]] == [(n, t) for n, _, t in w["predictions"]]
        assert [p["score"] for p in g["predictions"]] == pytest.approx([s for _, s, _ in w["predictions"]], abs=1e-5)


def test_predict_rows_for_every_model_family(folders: dict):
    for name, (folder, fmt, inputs) in folders.items():
        key = "text" if name.startswith("bert") else "image"
        got = predict(folder, inputs, top_k=2, batch_size=3)
        _same_rows(got, _expected_rows(folder, fmt, inputs, key, 2), fmt)
        if fmt == "multi_label":
            chosen = [len(r["labels"]) for r in got]
            assert 0 < sum(chosen) < len(inputs) * len(NAMES), (name, chosen)  # thresholds really decide
        else:
            assert all(abs(r["value"]) > 1 for r in got), name  # the raw output, not a [0, 1] score


def test_multi_label_without_saved_thresholds_uses_one_half(folders: dict, tmp_path: Path):
    import shutil

    folder, _, inputs = folders["cnn-multi_label"]
    copy = tmp_path / "no-thresholds"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    del config[LABEL_THRESHOLDS_KEY]
    (copy / "config.json").write_text(json.dumps(config))
    got = predict(copy, inputs, top_k=3)
    for row in got:
        assert {p["threshold"] for p in row["predictions"]} == {0.5}
        assert [p["label"] for p in row["labels"]] == [p["label"] for p in row["predictions"] if p["score"] >= 0.5]


# --------------------------------------------------------------------------------------------- the command


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )


def _jsonl(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_cli_predict_multi_label_and_regression_jsonl_and_csv(folders: dict, tmp_path: Path):
    folder, _, images = folders["cnn-multi_label"]
    rows = _jsonl(_cli(folder, *images, "--top-k", 2, cwd=tmp_path))
    _same_rows(rows, _expected_rows(folder, "multi_label", images, "image", 2), "multi_label")
    out = tmp_path / "multi.csv"
    assert _cli(folder, *images, "--top-k", 2, "--output", out, cwd=tmp_path).returncode == 0
    table = list(csv.reader(out.open(newline="", encoding="utf-8")))
    ranks = ["label_1", "score_1", "threshold_1", "label_2", "score_2", "threshold_2"]
    assert table[0] == ["image", "labels", *ranks, "error"]
    for cells, row in zip(table[1:], rows, strict=True):
        assert cells[0] == row["image"]
        assert cells[1] == "|".join(p["label"] for p in row["labels"])
        p = row["predictions"]
        assert cells[2:8] == [str(v) for x in p for v in (x["label"], x["score"], x["threshold"])]
        assert cells[8] == ""

    # a text regression folder, its texts from a .txt file and one empty line of text (an error row)
    folder, _, texts = folders["bert-cls-regression"]
    given = tmp_path / "texts.txt"
    given.write_text("\n".join(texts[:3]) + "\n")
    rows = _jsonl(_cli(folder, "--input", given, cwd=tmp_path))
    _same_rows(rows, _expected_rows(folder, "regression", texts[:3], "text", 1), "regression")
    out = tmp_path / "values.csv"
    proc = _cli(folder, "--text", texts[0], "--text", " ", "--output", out, cwd=tmp_path)
    assert proc.returncode == 1 and "1 of 2 inputs could not be read" in proc.stderr
    table = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert list(table[0]) == ["text", "value", "error"]
    assert float(table[0]["value"]) == rows[0]["value"] and table[0]["error"] == ""
    assert table[1]["value"] == "" and "empty" in table[1]["error"]


def test_cli_csv_joins_labels_with_the_recipe_delimiter(folders: dict, tmp_path: Path):
    """With a recipe.yaml (here written by hand) the text column and the label delimiter are the training data's."""
    import shutil

    import yaml

    folder = tmp_path / "with-recipe"
    shutil.copytree(folders["bert-mean-multi_label"][0], folder)
    recipe = {
        "task": "text-classification",
        "model": {"name": "unused"},
        "data": {"source": "train.csv", "text_column": "review", "label_format": "multi_label", "label_delimiter": ";"},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    given = tmp_path / "texts.jsonl"
    given.write_text("".join(json.dumps({"review": t}) + "\n" for t in TEXTS))
    out = tmp_path / "tags.csv"
    proc = _cli(folder, "--input", given, "--top-k", 3, "--output", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = _expected_rows(folder, "multi_label", TEXTS, "text", 3)
    table = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert [r["text"] for r in table] == TEXTS
    assert [r["labels"] for r in table] == [";".join(w["labels"]) for w in want]
    assert any(";" in r["labels"] for r in table)  # some text has two labels or more: the delimiter is used


# --------------------------------------------------------------------------------------------- pipeline()

PIPELINE = r"""
import json
from transformers import pipeline

jobs = json.loads(sys.argv[1])
results = {}
for name, task, folder, trust, inputs in jobs:
    kwargs = {"trust_remote_code": True} if trust else {}
    classifier = pipeline(task, model=folder, **kwargs)
    results[name] = {
        "problem_type": classifier.model.config.problem_type,
        "all": classifier(inputs, top_k=None),
        "default": classifier(inputs),
        "thresholds": getattr(classifier.model.config, "label_thresholds", None),
    }
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "hf_finetune" and v is not None)
print("RESULT", json.dumps({"results": results, "hf_finetune_modules": loaded}))
"""


@pytest.mark.slow  # loads seven folders in a fresh interpreter
def test_pipeline_without_hf_finetune_gives_the_predict_scores(folders: dict, tmp_path: Path):
    jobs = []
    for name, (folder, _, inputs) in folders.items():
        task = "text-classification" if name.startswith("bert") else "image-classification"
        # simple_cnn and the mean-pooling head are the toolkit's own code, shipped in the folder
        trust = name.startswith(("cnn", "bert-mean"))
        jobs.append((name, task, str(folder), trust, inputs))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", NO_HF_FINETUNE + PIPELINE, json.dumps(jobs)],
        cwd=cwd,
        env=_plain_env(tmp_path / "home"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and "RESULT " in done.stdout, (done.stdout + done.stderr)[-3000:]
    printed = json.loads(done.stdout.rsplit("RESULT ", 1)[-1])
    assert printed["hf_finetune_modules"] == []
    for name, (folder, fmt, inputs) in folders.items():
        got = printed["results"][name]
        assert got["problem_type"] == PROBLEM_TYPES[fmt], name
        ours = predict(folder, inputs, top_k=len(NAMES))
        assert len(got["all"]) == len(ours) == len(inputs)
        if fmt == "multi_label":
            thresholds = got["thresholds"]
            assert thresholds == json.loads((folder / "config.json").read_text())[LABEL_THRESHOLDS_KEY]
            for theirs, row in zip(got["all"], ours, strict=True):
                # every label with its sigmoid score, highest first: the toolkit's scores to 1e-5
                assert [p["label"] for p in theirs] == [p["label"] for p in row["predictions"]], name
                assert [p["score"] for p in theirs] == pytest.approx([p["score"] for p in row["predictions"]], abs=1e-5)
                # applying config.label_thresholds to pipeline's scores gives predict's labels
                over = [p["label"] for p in theirs if p["score"] >= thresholds[p["label"]]]
                assert over == [p["label"] for p in row["labels"]], name
        else:
            # the raw output as "score": no sigmoid, by default and with top_k=None
            default = got["default"]
            for theirs, first, row in zip(got["all"], default, ours, strict=True):
                if isinstance(first, list):  # the image pipeline returns a list per input even by default
                    first = first[0]
                assert first["label"] == "price" and [p["label"] for p in theirs] == ["price"]
                assert first["score"] == pytest.approx(row["value"], rel=1e-6, abs=1e-5), name
                assert theirs[0]["score"] == pytest.approx(row["value"], rel=1e-6, abs=1e-5), name
