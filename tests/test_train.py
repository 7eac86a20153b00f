"""End to end through `finetune`: data → model → Trainer → metrics → output folder, on tiny models."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from hf_finetune import finetune, predict
from hf_finetune.errors import OutputDirError
from hf_finetune.recipe import load_recipe


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_simple_cnn_end_to_end(tiny_recipe, digits_folder: Path):
    from transformers import AutoModelForImageClassification, pipeline

    asked = tiny_recipe(metrics={"top_k": [2]})
    result = finetune(asked)
    out = result.output_dir
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "recipe.yaml",
        "metrics.json",
        "confusion_matrix_eval.csv",
        "confusion_matrix_eval.png",
        "confusion_matrix_test.csv",
        "confusion_matrix_test.png",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) or {p.name for p in out.glob("*.bin")} == {"training_args.bin"}

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["label_names"] == ["one", "two", "zero"]
    assert set(saved) >= {"train", "eval", "test", "label_names"}
    test = saved["test"]
    assert test["num_samples"] == 30
    assert sum(map(sum, test["confusion_matrix"])) == 30
    assert [row["label"] for row in test["per_class"]] == ["one", "two", "zero"]
    # three balanced classes: a constant guess scores 1/3 and a uniform one a loss of ln 3
    assert test["accuracy"] > 0.5 and test["top2_accuracy"] >= 0.8 and test["loss"] < math.log(3), test
    # the saved figures are the model's own: recomputed from predict() over every test image
    images = sorted((digits_folder / "test").rglob("*.png"))
    truth = [p.parent.name for p in images]
    ranked = [[p["label"] for p in row["predictions"]] for row in predict(out, images, top_k=2)]
    pairs = list(zip(ranked, truth, strict=True))
    assert test["accuracy"] == pytest.approx(sum(r[0] == t for r, t in pairs) / 30)
    assert test["top2_accuracy"] == pytest.approx(sum(t in r for r, t in pairs) / 30)
    names = saved["label_names"]
    assert test["confusion_matrix"] == [
        [sum(t == true and r[0] == pred for r, t in pairs) for pred in names] for true in names
    ]
    assert saved["test"] == {k: v for k, v in result.metrics["test"].items()}
    # validation was carved from train (27 of 90 rows would be 30%; default 10% → 9)
    assert saved["eval"]["num_samples"] == 9

    # the saved recipe is the one asked for (defaults filled in), not just whatever the run ended up with
    assert load_recipe(out / "recipe.yaml") == load_recipe(asked) == result.recipe

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {0: "one", 1: "two", 2: "zero"}
    classifier = pipeline("image-classification", model=str(out))
    image_path = next((digits_folder / "test" / "two").glob("*.png"))
    piped = classifier(Image.open(image_path), top_k=3)
    ours = predict(out, [image_path], top_k=3)[0]["predictions"]
    assert [p["label"] for p in piped] == [p["label"] for p in ours]
    assert [p["score"] for p in piped] == pytest.approx([p["score"] for p in ours], abs=1e-5)

    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "hf_finetune" in card
    assert f"{test['accuracy']:.4f}" in card


def test_non_empty_output_dir_is_refused_and_left_untouched(tiny_recipe):
    recipe = tiny_recipe(training={"num_train_epochs": 1})
    out = finetune(recipe).output_dir
    before = _digest(out)
    with pytest.raises(OutputDirError, match="already holds results of an earlier run"):
        finetune(recipe)
    assert _digest(out) == before


def test_overwrite_replaces_the_earlier_run(tiny_recipe):
    out = finetune(tiny_recipe(training={"num_train_epochs": 2, "save_total_limit": 5})).output_dir
    assert len(list(out.glob("checkpoint-*"))) == 2
    stray = out / "stray.txt"
    stray.write_text("the user's, not the earlier run's")
    finetune(tiny_recipe(training={"num_train_epochs": 1}, overwrite=True))
    assert stray.read_text() == "the user's, not the earlier run's"  # only what hf_finetune wrote is replaced
    assert len(list(out.glob("checkpoint-*"))) == 1


def test_bad_data_fails_before_anything_is_written(tiny_recipe, tmp_path: Path):
    from hf_finetune.errors import DataError

    recipe = tiny_recipe(data={"label_column": "species"})
    with pytest.raises(DataError, match=r"no column 'species'.*\['image', 'label'\]"):
        finetune(recipe)
    assert not Path(recipe["training"]["output_dir"]).exists()


class _WreckAtEpoch(__import__("transformers").TrainerCallback):
    """Ruin the weights right before epoch `epoch` is evaluated, so that epoch cannot be the best."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if round(state.epoch) == self.epoch:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(-3.0).add_(0.5)


@pytest.mark.parametrize("which", ["vit", "simple_cnn"])
def test_best_model_is_really_loaded_when_it_is_not_the_last_epoch(which, tiny_recipe, tiny_vit_dir: Path, caplog):
    from safetensors.torch import load_file

    caplog.set_level("INFO", logger="hf_finetune")
    model = {"name": str(tiny_vit_dir), "config": {}} if which == "vit" else {}
    recipe = tiny_recipe(
        model=model,
        training={
            "num_train_epochs": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "loss",
            "save_total_limit": 5,
        },
    )
    result = finetune(recipe, callbacks=[_WreckAtEpoch(2)])
    out = result.output_dir
    history = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert result.best_checkpoint == str(history[0])
    assert f"weights verified against {history[0].name}" in caplog.text
    best = load_file(history[0] / "model.safetensors")
    last = load_file(history[1] / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in best), "final model must be the best checkpoint"
    assert not all(torch.equal(final[k], last[k]) for k in last)
    # the reported validation metrics are those of the best epoch, not the wrecked one
    state = json.loads((history[1] / "trainer_state.json").read_text())
    epoch1 = next(h for h in state["log_history"] if "eval_loss" in h and round(h["epoch"]) == 1)
    assert result.metrics["eval"]["loss"] == pytest.approx(epoch1["eval_loss"], rel=1e-5)


def test_timm_architecture_end_to_end(tiny_recipe, digits_folder: Path):
    from transformers import pipeline

    recipe = tiny_recipe(
        model={"name": "timm:test_resnet", "pretrained": False, "image_size": 32, "config": {}},
        training={"num_train_epochs": 1},
    )
    result = finetune(recipe)
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    classifier = pipeline("image-classification", model=str(result.output_dir))
    labels = {p["label"] for p in classifier(Image.open(next((digits_folder / "test" / "one").glob("*.png"))))}
    assert labels <= {"zero", "one", "two"} and labels


def test_transformers_model_folder_gets_a_new_head(tiny_recipe, tiny_vit_dir: Path):
    result = finetune(tiny_recipe(model={"name": str(tiny_vit_dir), "config": {}}, training={"num_train_epochs": 1}))
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "one", "1": "two", "2": "zero"}
    from safetensors.torch import load_file

    weights = load_file(result.output_dir / "model.safetensors")
    assert weights["classifier.weight"].shape == (3, 32)


def test_drop_last_applies_to_training_batches_only(tiny_recipe):
    # 81 training rows, batch 16: drop_last trains on 80; 9 validation and 30 test rows are all evaluated
    recipe = tiny_recipe(
        training={
            "num_train_epochs": 1,
            "dataloader_drop_last": True,
            "per_device_eval_batch_size": 16,
        }
    )
    result = finetune(recipe)
    assert result.metrics["eval"]["num_samples"] == 9
    assert result.metrics["test"]["num_samples"] == 30
    assert sum(map(sum, result.metrics["test"]["confusion_matrix"])) == 30
    # one epoch of 80 rows is 5 steps of 16 (6 with the last partial batch): the epoch's checkpoint says which
    assert [p.name for p in result.output_dir.glob("checkpoint-*")] == ["checkpoint-5"]


def test_result_files_get_ordinary_permissions(tiny_recipe):
    import os
    import stat

    out = finetune(tiny_recipe(training={"num_train_epochs": 1})).output_dir
    umask = os.umask(0)
    os.umask(umask)
    # written through a private temporary file, but not left private (0600) like mkstemp makes it
    for name in ("metrics.json", "recipe.yaml", "README.md", "confusion_matrix_test.csv", "confusion_matrix_test.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name
