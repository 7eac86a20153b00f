"""Every shipped recipe runs offline, shrunk by overrides: random init from config, tiny data, two steps.

Recipes naming a Hub model id keep everything but the model, which is swapped for a tiny local one of the same
family (the id itself is checked); timm recipes build their real architecture without pretrained weights.
"""

import json
from pathlib import Path

import pytest
import yaml

from hf_finetune import finetune
from hf_finetune.recipe import list_recipes, load_recipe

# larger inputs where an architecture needs them (Inception-v3's stem needs >= 75 px)
IMAGE_SIZE = {"inception-v3": 80, "xception": 64}
EXTRA = {"vit-b16-timm": {"model.config": {"img_size": 32}}, "vit-b16-timm-lora": {"model.config": {"img_size": 32}}}
HF_IMAGE_IDS = {"vit-base-hf": "google/vit-base-patch16-224-in21k", "resnet50-hf": "microsoft/resnet-50"}


def _label_format(path: Path) -> str:
    return (yaml.safe_load(path.read_text(encoding="utf-8")).get("data") or {}).get("label_format", "single")


# recipes of data.label_format multi_label / regression: their metrics have no accuracy or confusion matrix, and their
# data needs a label column of that kind (test_label_format_recipe_trains_offline below)
LABEL_FORMAT_RECIPES = sorted(name for name, path in list_recipes().items() if _label_format(path) != "single")


@pytest.fixture(scope="module")
def tiny_hf_resnet_dir(tmp_path_factory) -> Path:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    path = tmp_path_factory.mktemp("tiny_resnet")
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=1000)
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


def _shrink(name: str, recipe, tmp_path: Path, fixtures: dict[str, Path]) -> dict:
    overrides: dict = {
        "training.output_dir": str(tmp_path / name),
        "training.max_steps": 2,
        "training.per_device_train_batch_size": 4,
        "training.per_device_eval_batch_size": 16,
        "training.dataloader_num_workers": 0,
        "training.disable_tqdm": True,
        "data.max_eval_samples": 8,
    }
    if recipe.task == "image-classification":
        overrides |= {"data.source": str(fixtures["digits"]), "data.label_column": "label"}
        if recipe.model.name.startswith("timm:"):
            overrides |= {"model.pretrained": False, "model.image_size": IMAGE_SIZE.get(name, 32)}
        elif name in HF_IMAGE_IDS:
            assert recipe.model.name == HF_IMAGE_IDS[name]
            key = "vit" if "vit" in name else "resnet"
            overrides["model.name"] = str(fixtures[key])
    elif recipe.model.name.startswith("builtin:"):
        # the real offline MiniLM on a handful of tweets
        overrides |= {"data.max_train_samples": 32, "tokenization.max_length": 16}
    else:
        overrides |= {
            "model.name": str(fixtures["bert"]),
            "data.source": str(fixtures["texts"] / "train.csv"),
            "data.text_column": "review",
            "data.label_column": "sentiment",
            "tokenization.max_length": 64,  # the tiny BERT has 128 positions
        }
    if recipe.transfer.strategy == "linear_probe":  # a fitted probe takes no steps or train batches (it refuses them)
        for key in ("training.max_steps", "training.per_device_train_batch_size"):
            del overrides[key]
    return overrides | {k: v for k, v in EXTRA.get(name, {}).items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(list_recipes()) - set(LABEL_FORMAT_RECIPES)))
def test_shipped_recipe_trains_offline(
    name, tmp_path, digits_folder, tiny_vit_dir, tiny_hf_resnet_dir, tiny_bert_dir, text_csv
):
    recipe = load_recipe(name)
    fixtures = {
        "digits": digits_folder,
        "vit": tiny_vit_dir,
        "resnet": tiny_hf_resnet_dir,
        "bert": tiny_bert_dir,
        "texts": text_csv,
    }
    overrides = _shrink(name, recipe, tmp_path, fixtures)
    if recipe.peft.enabled and overrides.get("model.pretrained") is False:
        overrides["model.weights"] = _random_timm_weights(recipe.model.name, overrides, tmp_path)
    result = finetune(name, overrides)
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    split = "test" if "test" in saved else "eval"
    report, matrix = saved[split], saved[split]["confusion_matrix"]
    # data.max_eval_samples caps every split but train, and each capped row is counted exactly once
    assert report["num_samples"] == sum(map(sum, matrix)) == 8, report
    assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(len(matrix))) / 8)

    _check_saved_recipe(name, overrides, result.output_dir)


def _random_timm_weights(name: str, overrides: dict, tmp_path: Path) -> str:
    """LoRA adapts a given base (it refuses random init): a random one of the same architecture, saved as the file
    `model.weights` names, stands in for the pretrained weights offline."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(name.removeprefix("timm:"), pretrained=False, **overrides.get("model.config", {}))
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# one-command actions: another part of the run decides what of these is written (see test_train's overwrite tests)
ACTIONS = {"overwrite", "training.resume_from_checkpoint", "hub.push"}


def _check_saved_recipe(name: str, overrides: dict, output_dir: Path) -> None:
    # the saved recipe is the shipped file plus this test's overrides, key for key (it adds the defaults too);
    # the one-command actions are never saved, so a re-run of recipe.yaml does not wipe, resume or push again
    expected = yaml.safe_load(list_recipes()[name].read_text(encoding="utf-8"))
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = expected
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    written = yaml.safe_load((output_dir / "recipe.yaml").read_text(encoding="utf-8"))
    written_leaves = dict(_leaves(written))
    for key, value in _leaves(expected):
        if key in ACTIONS:
            continue
        assert key in written_leaves, f"{name}: {key} is missing from the saved recipe.yaml"
        assert written_leaves[key] == value, f"{name}: {key} saved as {written_leaves[key]!r}, not {value!r}"
    assert written.get("name") == name


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# Hub ids the label-format recipes name (checked, then swapped for the tiny local BERT)
HF_TEXT_IDS = {
    "bert-base-uncased-stsb": "google-bert/bert-base-uncased",
    "roberta-base-go-emotions": "FacebookAI/roberta-base",
}
# the built-in column each label format trains on when a recipe's own data is not offline
BUILTIN_LABELS = {
    ("image-classification", "multi_label"): ("builtin:digits", "tags"),
    ("image-classification", "regression"): ("builtin:digits", "value"),
    ("text-classification", "multi_label"): ("builtin:tweets", "tags"),
    ("text-classification", "regression"): ("builtin:tweets", "polarity"),
}


def _shrink_label_format(name: str, recipe, tmp_path: Path, tiny_bert_dir: Path) -> dict:
    """Two steps on the built-in data's tags or numbers, with the recipe's own model family."""
    overrides: dict = {
        "training.output_dir": str(tmp_path / name),
        "training.max_steps": 2,
        "training.per_device_train_batch_size": 4,
        "training.per_device_eval_batch_size": 16,
        "training.dataloader_num_workers": 0,
        "training.disable_tqdm": True,
        "data.max_train_samples": 32,
        "data.max_eval_samples": 8,
    }
    fmt = recipe.data.label_format
    source, column = BUILTIN_LABELS[(recipe.task, fmt)]
    if recipe.data.source != source:  # a recipe for the user's own (or Hub) data
        overrides |= {"data.source": source, "data.label_column": column, "data.config": None}
        if fmt == "multi_label":
            # the digits' ones have no tag; every tweet has two
            overrides |= {"data.label_delimiter": "|", "data.allow_empty_labels": True}
    if recipe.task == "image-classification":
        overrides["data.image_column"] = "image"
        if recipe.model.name.startswith("timm:"):
            overrides |= {"model.pretrained": False, "model.image_size": 32}
    else:
        overrides |= {"data.text_column": "text", "data.text_pair_column": None, "data.test_split": None}
        if recipe.model.name.startswith("builtin:"):
            overrides["tokenization.max_length"] = 16  # the real offline MiniLM
        else:
            assert recipe.model.name == HF_TEXT_IDS[name]
            overrides |= {"model.name": str(tiny_bert_dir), "tokenization.max_length": 64}
    return overrides


@pytest.mark.slow
@pytest.mark.parametrize("name", LABEL_FORMAT_RECIPES)
def test_label_format_recipe_trains_offline(name, tmp_path, tiny_bert_dir):
    import math

    recipe = load_recipe(name)
    overrides = _shrink_label_format(name, recipe, tmp_path, tiny_bert_dir)
    result = finetune(name, overrides)
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    config = json.loads((result.output_dir / "config.json").read_text())
    report = saved["test"] if "test" in saved else saved["eval"]
    assert report["num_samples"] == 8, report
    labels = result.label_names
    if recipe.data.label_format == "multi_label":
        assert config["problem_type"] == "multi_label_classification"
        assert sorted(config["label_thresholds"]) == sorted(labels)
        assert [row["label"] for row in report["per_class"]] == labels
        for key in ("f1_micro", "f1_macro", "map", "subset_accuracy", "hamming_loss"):
            assert 0 <= report[key] <= 1, (key, report[key])
        assert report["baseline"]["kind"] == "prevalence"
        assert saved["run"]["label_format"] == "multi_label"
        assert saved["run"]["thresholds"]["mode"] == (
            "tune" if recipe.metrics.thresholds in (None, "tune") else "fixed"
        )
    else:
        # the target's name: the column the run read (an override may point a real-data recipe at built-in data)
        column = overrides.get("data.label_column", recipe.data.label_column)
        assert config["problem_type"] == "regression" and labels == [column]
        assert len(config["id2label"]) == 1
        # RMSE >= MAE for any errors; both finite
        assert math.isfinite(report["mae"]) and report["rmse"] >= report["mae"] >= 0
        assert report["baseline"]["kind"] == "mean"
        assert saved["run"]["label_format"] == "regression"
        assert (saved["run"]["target_scaler"] is not None) == recipe.data.standardize_targets
    _check_saved_recipe(name, overrides, result.output_dir)
