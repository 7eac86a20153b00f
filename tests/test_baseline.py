"""`metrics.baseline: linear`: a logistic regression on the pretrained model's frozen features, fitted before training
and scored on every evaluated split — equal to scikit-learn's on features computed here, without touching the model
that trains, shared with lp_ft's probe, refused where it cannot mean anything."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_text_recipe
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_finetune import finetune


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _train(recipe: dict, path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_finetune", "train", str(_write(recipe, path)), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _recipe(text_csv: Path, tiny_bert_dir: Path, out: Path, **sections) -> dict:
    return make_text_recipe(text_csv, tiny_bert_dir, out, **{"training": {"num_train_epochs": 1}, **sections})


@pytest.fixture(scope="module")
def runs(text_csv: Path, tiny_bert_dir: Path, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The tiny text run through the CLI, with and without the linear baseline, same seed: (folder, stdout)."""
    root = tmp_path_factory.mktemp("baseline_runs")
    out = {}
    for name, baseline in (("linear", "linear"), ("majority", "majority")):
        recipe = _recipe(text_csv, tiny_bert_dir, root / name, metrics={"baseline": baseline})
        proc = _train(recipe, root / f"{name}.yaml")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (root / name, proc.stdout)
    return out


def _pretrained_features(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """What the classification head of the pretrained BERT reads ([CLS] pooler output), computed with transformers
    alone: the model as saved, before any training."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            batch = tokenizer(
                texts[i : i + 16], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            rows.append(model(**batch).pooler_output)
    return torch.cat(rows).numpy().astype(np.float64)


def test_linear_baseline_equals_scikit_learn_on_the_pretrained_features(runs, tiny_bert_dir: Path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from hf_finetune.data import sources
    from hf_finetune.recipe import load_saved_recipe

    out, _ = runs["linear"]
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["run"]["baseline_linear"]
    assert info["chosen_by"] == "validation accuracy" and info["converged"]
    assert info["feature_seconds"] > 0 and info["fit_seconds"] > 0
    C = info["C"]
    assert metrics["eval"]["baseline_linear"]["C"] == metrics["test"]["baseline_linear"]["C"] == C

    # the run's own splits (the same carved validation part), as the saved recipe loads them
    recipe = load_saved_recipe(out, "text-classification")
    assert recipe.metrics.baseline == "linear"  # an ordinary recipe value, saved with the run
    loaded = sources.load_data(recipe.data, {"text": "text_column", "text_pair": "text_pair_column"})
    max_length = recipe.tokenization.max_length
    features = {
        s: (_pretrained_features(tiny_bert_dir, list(loaded.splits[s]["text"]), max_length), loaded.splits[s]["label"])
        for s in ("train", "validation", "test")
    }
    scaler = StandardScaler().fit(features["train"][0])
    reference = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(features["train"][0]), features["train"][1])
    for split, prefix in (("validation", "eval"), ("test", "test")):
        x, y = features[split]
        predicted = reference.predict(scaler.transform(x))
        got = metrics[prefix]["baseline_linear"]
        assert got["accuracy"] == pytest.approx(float((predicted == np.array(y)).mean()), abs=1e-6)
        assert got["f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro", labels=[0, 1, 2]), abs=1e-6)
        # the same keys as the model's own metrics on that split, beside the untouched majority baseline
        assert {"precision_macro", "recall_macro", "f1_weighted", "loss"} <= set(got)
        assert metrics[prefix]["baseline"]["majority_class"] in loaded.label_names


def test_the_baseline_leaves_the_trained_model_unchanged(runs):
    """Same seed, with and without the baseline: bit-identical final weights (no weight and no RNG draw changed)."""
    with_baseline = load_file(runs["linear"][0] / "model.safetensors")
    without = load_file(runs["majority"][0] / "model.safetensors")
    assert with_baseline.keys() == without.keys()
    assert all(torch.equal(with_baseline[k], without[k]) for k in without)
    assert "baseline_linear" not in json.loads((runs["majority"][0] / "metrics.json").read_text())["test"]


def test_card_and_summary_show_the_linear_baseline(runs):
    out, stdout = runs["linear"]
    metrics = json.loads((out / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    assert "logistic-regression accuracy | logistic-regression F1 (macro) |" in card
    for prefix, split in (("eval", "validation"), ("test", "test")):
        lr, majority = metrics[prefix]["baseline_linear"], metrics[prefix]["baseline"]
        row = next(line for line in card.splitlines() if line.startswith(f"| {split} |"))
        assert row.endswith(
            f"| {majority['accuracy']:.4f} | {majority['f1_macro']:.4f} | {lr['accuracy']:.4f} | {lr['f1_macro']:.4f} |"
        )
        assert (
            f"  logistic-regression baseline (frozen pretrained features, C={lr['C']:g}): "
            f"accuracy {lr['accuracy']:.4f}  macro-F1 {lr['f1_macro']:.4f}"
        ) in stdout
    assert "fitted on the pretrained model's frozen features before training" in card
    beaten = metrics["test"]["accuracy"] > metrics["test"]["baseline_linear"]["accuracy"] or (
        metrics["test"]["f1_macro"] > metrics["test"]["baseline_linear"]["f1_macro"]
    )
    assert ("fine-tuning did not pay off" in card) is not beaten
    assert "fine-tuning did not pay off" not in (runs["majority"][0] / "README.md").read_text()


class _StateAtTrainBegin(TrainerCallback):
    def __init__(self) -> None:
        self.hashes: dict[str, str] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        sd = model.state_dict()
        self.hashes = {
            k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in sd.items()
        }


def test_the_model_entering_training_is_bit_identical_with_or_without_the_baseline(text_recipe, tmp_path: Path):
    hashes = []
    for baseline in ("linear", "majority"):
        seen = _StateAtTrainBegin()
        recipe = text_recipe(metrics={"baseline": baseline}, training={"num_train_epochs": 1, "max_steps": 1})
        recipe["training"]["output_dir"] = str(tmp_path / baseline)
        finetune(recipe, callbacks=[seen])
        hashes.append(seen.hashes)
    assert hashes[0] and hashes[0] == hashes[1]


def test_lp_ft_shares_its_probe_as_the_baseline(text_recipe, tmp_path: Path):
    """lp_ft's fitted probe is the baseline: features of each split computed once (one log line naming each), one
    fit, and the baseline's validation scores are the probe's own at the C it chose."""
    recipe = text_recipe(transfer={"strategy": "lp_ft"}, metrics={"baseline": "linear"})
    proc = _train(recipe, tmp_path / "r.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    extractions = [line for line in proc.stderr.splitlines() if "frozen features:" in line]
    assert len(extractions) == 1 and " train + " in extractions[0], proc.stderr[-3000:]
    assert extractions[0].count("validation") == 1 and extractions[0].count("test") == 1
    assert sum("probe: chose C=" in line for line in proc.stderr.splitlines()) == 1  # one fit
    metrics = json.loads(Path(recipe["training"]["output_dir"], "metrics.json").read_text())
    probe, info = metrics["run"]["probe"], metrics["run"]["baseline_linear"]
    assert info["C"] == probe["C"] and "lp_ft" in info["shared_with"]
    chosen = next(g for g in probe["grid"] if g["C"] == probe["C"])
    assert metrics["eval"]["baseline_linear"]["accuracy"] == pytest.approx(chosen["accuracy"], abs=1e-6)
    # the grid scored StandardScaler's float32 output; the baseline the same regression in float64 (its weights
    # with the scaling folded in): the losses agree to float32's digits on standardised features
    assert metrics["eval"]["baseline_linear"]["loss"] == pytest.approx(chosen["loss"], rel=1e-3)
    assert set(metrics["test"]["baseline_linear"]) >= {"accuracy", "f1_macro", "loss", "C"}


def test_linear_probe_is_its_own_baseline(text_recipe, tmp_path: Path):
    recipe = text_recipe(transfer={"strategy": "linear_probe"}, metrics={"baseline": "linear"})
    recipe["training"] = {k: v for k, v in recipe["training"].items() if k in ("output_dir", "disable_tqdm")}
    proc = _train(recipe, tmp_path / "r.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(Path(recipe["training"]["output_dir"], "metrics.json").read_text())
    for prefix in ("eval", "test"):
        linear = metrics[prefix]["baseline_linear"]
        assert "linear_probe" in linear["same_as"]
        assert linear["accuracy"] == metrics[prefix]["accuracy"] and linear["f1_macro"] == metrics[prefix]["f1_macro"]
    extractions = [line for line in proc.stderr.splitlines() if "frozen features:" in line]
    assert len(extractions) == 1 and "test" not in extractions[0]  # nothing computed twice
    assert "logistic-regression baseline (this run itself (linear_probe))" in proc.stdout
    assert "fine-tuning did not pay off" not in Path(recipe["training"]["output_dir"], "README.md").read_text()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "simple_cnn"}, "simple_cnn always starts from random weights"),
        ({"name": "timm:test_resnet", "pretrained": False, "config": {}}, "model.pretrained is false"),
    ],
)
def test_a_model_from_random_weights_is_refused(tiny_recipe, tmp_path: Path, model: dict, expected: str):
    recipe = tiny_recipe(metrics={"baseline": "linear"}, model=model)
    proc = _train(recipe, tmp_path / "r.yaml")
    assert proc.returncode == 2
    assert "metrics.baseline" in proc.stderr and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not Path(recipe["training"]["output_dir"]).exists()


def test_an_unknown_baseline_is_refused(text_recipe, tmp_path: Path):
    proc = _train(text_recipe(), tmp_path / "r.yaml", "metrics.baseline=logistic")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "metrics.baseline" in proc.stderr and "'majority' or 'linear'" in proc.stderr


@pytest.mark.slow
def test_several_processes_are_refused_before_any_data_is_loaded(text_recipe, tmp_path: Path):
    import os
    import re

    recipe = text_recipe(metrics={"baseline": "linear"})
    recipe["data"]["files"] = {"train": str(tmp_path / "no such file.csv")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_finetune", "train", str(_write(recipe, tmp_path / "r.yaml")),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    codes = [int(c) for c in re.findall(r"exitcode\s+:\s+(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -15}, proc.stderr[-4000:]
    assert "metrics.baseline linear" in proc.stderr and "one process" in proc.stderr
    assert "no such file" not in proc.stderr and not Path(recipe["training"]["output_dir"]).exists()


def test_feature_extraction_leaves_the_global_rng_as_it_found_it(tiny_bert_dir: Path):
    """A DataLoader draws its base seed from torch's global RNG even with no workers: unguarded, the baseline's
    extra passes would shift every later draw. (Trainer reseeds when it is built, so the runs above cannot show it.)"""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_finetune.probe import extract_features, preserved_rng

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    rows = [{**tokenizer(t), "labels": i % 2} for i, t in enumerate(["good trip", "bad car ride", "it was fine"])]
    extract = lambda: extract_features(  # noqa: E731
        model, rows, DataCollatorWithPadding(tokenizer), batch_size=2, num_workers=0, device=torch.device("cpu")
    )
    torch.manual_seed(0)
    extract()
    unguarded = torch.get_rng_state()
    torch.manual_seed(0)
    np.random.seed(0)
    with preserved_rng():
        extract()
        np.random.rand()
    guarded = torch.get_rng_state()
    torch.manual_seed(0)
    assert not torch.equal(unguarded, torch.get_rng_state())  # the pass does draw from the global RNG …
    assert torch.equal(guarded, torch.get_rng_state())  # … and preserved_rng puts it back
    np.random.seed(0)
    assert np.random.get_state()[1].tolist() == np.random.get_state()[1].tolist()
