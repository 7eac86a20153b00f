"""The fitted linear probe (`transfer.strategy: linear_probe`): equal to scikit-learn's logistic regression on the same
frozen features, the backbone bit-identical, an ordinary output folder, and the recipe rules around it."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_finetune import finetune, predict
from hf_finetune.cli import main
from hf_finetune.errors import ModelError

TIMM_RESNET = {"name": "timm:test_resnet", "pretrained": False, "image_size": 32, "config": {}}
HEAD = {"timm_model.fc.weight", "timm_model.fc.bias"}
NAMES = {0: "zero", 1: "one", 2: "two", 3: "three"}


@pytest.fixture(scope="module")
def four_digits(tmp_path_factory) -> Path:
    """A few hundred real digit images, 4 classes: 240 train (a validation part is carved from it), 60 test."""
    from conftest import _digit_images

    root = tmp_path_factory.mktemp("four_digits")
    for split, per_class, offset in (("train", 60, 0), ("test", 15, 100)):
        for n, (c, img) in enumerate(_digit_images(tuple(NAMES), per_class, 16, offset)):
            folder = root / split / NAMES[c]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{n}.png")
    return root


def _probe_recipe(data: Path, out: Path, **sections) -> dict:
    return {
        "name": "probe",
        "model": TIMM_RESNET,
        "data": {"source": str(data)},
        "transfer": {"strategy": "linear_probe"},
        "training": {"output_dir": str(out), "dataloader_num_workers": 0, "disable_tqdm": True},
        **sections,
    }


def _features(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's pooled features, computed here independently of hf_finetune.probe (timm's own API)."""
    timm_model = model.timm_model.eval()
    xs, ys = [], []
    with torch.no_grad():
        for i in range(0, len(dataset), 32):
            rows = [dataset[j] for j in range(i, min(i + 32, len(dataset)))]
            pixels = torch.stack([r["pixel_values"] for r in rows])
            xs.append(timm_model.forward_head(timm_model.forward_features(pixels), pre_logits=True))
            ys += [r["labels"] for r in rows]
    return torch.cat(xs).numpy().astype(np.float64), np.array(ys)


def _splits(out: Path):
    """The run's own splits (same carved validation part) with eval preprocessing, through the saved model."""
    from hf_finetune.data import sources
    from hf_finetune.recipe import AugmentationSpec, load_saved_recipe
    from hf_finetune.tasks import PrepareSettings, get_task

    task = get_task("image-classification")
    recipe = load_saved_recipe(out, task.NAME)
    built = task.load_trained(out)
    loaded = sources.load_data(recipe.data, task.INPUTS)
    settings = PrepareSettings(AugmentationSpec(), recipe.tokenization, 42)
    prepared = task.prepare(built, {f"_{k}": v for k, v in loaded.splits.items()}, settings)  # all eval transforms
    return built, loaded, {k[1:]: v for k, v in prepared.splits.items()}


@pytest.mark.slow
def test_fitted_probe_equals_scikit_learn_logistic_regression_on_the_same_features(four_digits: Path, tmp_path: Path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    out = tmp_path / "out"
    finetune(_probe_recipe(four_digits, out))
    metrics = json.loads((out / "metrics.json").read_text())
    fit = metrics["run"]["probe"]
    assert fit["converged"] and fit["chosen_by"] == "validation accuracy"
    assert [g["C"] for g in fit["grid"]] == [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    assert fit["C"] in [g["C"] for g in fit["grid"]]

    built, loaded, splits = _splits(out)
    x, y = _features(built.model, splits["train"])
    assert fit["fitted_on"] == f"fitted on {len(y)} cached features of dim {x.shape[1]}" and len(y) > 150
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=fit["C"], max_iter=5000).fit(scaler.transform(x), y)
    xt, yt = _features(built.model, splits["test"])
    expected = reference.predict(scaler.transform(xt))

    # the saved folder, loaded fresh by `predict`, gives the reference's predictions on every test image
    files = sorted(p for p in (four_digits / "test").rglob("*.png"))
    got = [row["predictions"][0]["label"] for row in predict(out, files, top_k=1)]
    names = loaded.label_names
    by_file = {f: names[int(label)] for f, label in zip(_test_files(loaded), expected, strict=True)}
    assert got == [by_file[str(f)] for f in files]
    assert metrics["test"]["accuracy"] == pytest.approx(float((expected == yt).mean()))

    # The saved head solves scikit-learn's problem: its penalised training objective (in the standardised space the
    # fit ran in) equals the reference's. Both stop at L-BFGS's default tolerance (tol=1e-4), whose stopping point
    # moves with float32 rounding of the features, so the objectives agree to ~1e-4 while the test losses of the
    # two stopping points differ by up to ~0.3%; the objective is what pins the fit down.
    weights = load_file(out / "model.safetensors")
    w = weights["timm_model.fc.weight"].double().numpy()
    b = weights["timm_model.fc.bias"].double().numpy()
    scale = np.maximum(np.sqrt(scaler.var_), 1e-2 * np.median(np.sqrt(scaler.var_)))  # the documented spread floor
    coef, intercept = w * scale, b + w @ scaler.mean_
    standardised = (x - scaler.mean_) / scale

    def objective(c: np.ndarray, i: np.ndarray) -> float:
        n = len(y)
        return (
            log_loss(y, _softmax(standardised @ c.T + i), labels=list(range(len(names)))) * n
            + 0.5 * float((c**2).sum()) / fit["C"]
        )

    floored = LogisticRegression(C=fit["C"], max_iter=5000).fit(standardised, y)
    assert objective(coef, intercept) == pytest.approx(objective(floored.coef_, floored.intercept_), rel=1e-3)
    # … and metrics.json's test loss is the Trainer's evaluation of exactly that saved head
    assert metrics["test"]["loss"] == pytest.approx(
        log_loss(yt, _softmax(xt @ w.T + b), labels=list(range(len(names)))), rel=1e-4
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _test_files(loaded) -> list[str]:
    ds = loaded.splits["test"].cast_column("image", loaded.splits["test"].features["image"].__class__(decode=False))
    return [str(Path(r["image"]["path"])) for r in ds]


def _hashes(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: hashlib.sha256(v.contiguous().cpu().numpy().tobytes()).hexdigest() for k, v in state.items()}


@pytest.mark.slow
def test_linear_probe_leaves_every_backbone_tensor_bit_identical(digits_folder: Path, tmp_path: Path):
    from safetensors.torch import save_file

    # initial weights with BatchNorm statistics a fresh model could not have: a probe in train mode would move them
    from hf_finetune.recipe import ModelSpec
    from hf_finetune.tasks.image_classification import build_model

    torch.manual_seed(3)
    model = build_model(ModelSpec(**TIMM_RESNET), ["zero", "one", "two"]).model
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    weights = tmp_path / "initial.safetensors"
    save_file({k.removeprefix("timm_model."): v for k, v in initial.items()}, str(weights))

    out = tmp_path / "out"
    finetune(_probe_recipe(digits_folder, out, model={**TIMM_RESNET, "weights": str(weights)}))
    saved = load_file(str(out / "model.safetensors"))
    backbone = set(initial) - HEAD
    assert sum(k.endswith("running_var") for k in backbone) >= 10
    assert _hashes({k: saved[k] for k in backbone}) == _hashes({k: initial[k] for k in backbone})
    assert not torch.equal(saved["timm_model.fc.weight"], initial["timm_model.fc.weight"])  # the head was fitted


@pytest.mark.slow
def test_cli_trains_the_shipped_linear_probe_recipe_into_an_ordinary_folder(digits_folder: Path, tmp_path: Path):
    from transformers import AutoModelForImageClassification, pipeline

    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_finetune", "train", "resnet18-linear-probe", "model.name=timm:test_resnet"]
    command += ["model.pretrained=false", "model.image_size=32", f"data.source={digits_folder}"]
    command += ["data.label_column=label", f"training.output_dir={out}", "training.dataloader_num_workers=0"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "probe: chose C=" in proc.stderr and "cached features of dim" in proc.stderr
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["probe"]["C"] in [g["C"] for g in run["probe"]["grid"]]
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["transfer"]["strategy"] == "linear_probe" and "num_train_epochs" not in saved["training"]
    assert "C = " in (out / "README.md").read_text()

    model = AutoModelForImageClassification.from_pretrained(out)
    assert sorted(model.config.id2label.values()) == ["one", "two", "zero"]
    image = next((digits_folder / "test").rglob("*.png"))
    top = pipeline("image-classification", model=str(out))(str(image), top_k=1)[0]
    assert top["label"] == predict(out, [image], top_k=1)[0]["predictions"][0]["label"]


def test_linear_probe_recipe_writing_training_keys_is_refused_naming_them(tiny_recipe, tmp_path: Path, capsys):
    recipe = tiny_recipe(transfer={"strategy": "linear_probe"}, augmentation={"preset": "light"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.num_train_epochs" in err and "training.learning_rate" in err and "augmentation" in err
    assert "strategy head_only" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_linear_probe_with_resume_or_a_learning_rate_option_is_refused(digits_folder: Path, tmp_path: Path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_probe_recipe(digits_folder, tmp_path / "out", **{})))
    assert main(["train", str(path), "--resume", "transfer.head_lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "resume_from_checkpoint (--resume)" in err and "transfer.head_lr" in err and "Traceback" not in err


def test_probe_epochs_outside_lp_ft_is_refused(tiny_recipe, tmp_path: Path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(transfer={"strategy": "head_only", "probe_epochs": 1})))
    assert main(["train", str(path)]) == 2
    assert "transfer.probe_epochs: applies to strategy lp_ft only, not head_only" in capsys.readouterr().err


def test_a_head_that_is_not_one_linear_is_refused_pointing_at_head_only():
    from hf_finetune.models.structure import head_linear

    class TwoLayerHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.classifier = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))

    with pytest.raises(ModelError, match=r"Linear, Linear\. Use transfer\.strategy head_only"):
        head_linear(TwoLayerHead())
    flat = TwoLayerHead()
    flat.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))  # HF ResNet's head: accepted
    assert head_linear(flat) is flat.classifier[1]


@pytest.mark.slow
def test_linear_probe_under_two_ranks_is_refused_before_any_data_is_loaded(tiny_recipe, tmp_path: Path):
    import re

    from test_distributed import _launch, _write

    out = tmp_path / "probe"
    recipe = _probe_recipe(tmp_path / "no such folder", out)
    proc = _launch(["-m", "hf_finetune", "train", str(_write(recipe, tmp_path / "r.yaml"))])
    codes = [int(c) for c in re.findall(r"exitcode\s+:\s+(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -15}, proc.stderr[-4000:]
    assert "transfer.strategy linear_probe" in proc.stderr and "run it in one process" in proc.stderr
    assert "no such folder" not in proc.stderr and "hf_finetune/" not in proc.stderr  # no data error, no traceback
    assert not out.exists()


def test_a_near_constant_feature_gets_no_outsized_weight():
    """A feature with a spread of 1e-30 (MiniLM's mean-pooled features hold one at 7.6e-33) is scaled by a floor, not
    by its own spread: folded into the head, its weight would otherwise be ~1e30 and any other input would explode
    the logits (and lp_ft's gradients). The fit is then that of the informative features alone."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hf_finetune.probe import fit_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)) + np.repeat(np.eye(3, 4) * 2.0, 100, axis=0)
    y = np.repeat(np.arange(3), 100)
    junk = rng.normal(scale=1e-30, size=(300, 1))
    xj = np.hstack([x, junk])
    train, validation = (xj[::2], y[::2]), (xj[1::2], y[1::2])

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    for scaling in ("feature", "global"):
        weight, bias, fit = fit_probe(train, validation, 3, accuracy, scaling=scaling)
        assert np.isfinite(weight).all() and np.abs(weight).max() < 1e3, scaling
        assert fit.info()["scaling"] == scaling
    weight, bias, fit = fit_probe(train, validation, 3, accuracy)
    scaler = StandardScaler().fit(x[::2])
    reference = LogisticRegression(C=fit.C, max_iter=5000).fit(scaler.transform(x[::2]), y[::2])
    ours = (xj[1::2] @ weight.T + bias).argmax(-1)
    assert (ours == reference.predict(scaler.transform(x[1::2]))).all()
