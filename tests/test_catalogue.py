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
EXTRA = {"vit-b16-timm": {"model.config": {"img_size": 32}}}
HF_IMAGE_IDS = {"vit-base-hf": "google/vit-base-patch16-224-in21k", "resnet50-hf": "microsoft/resnet-50"}


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
@pytest.mark.parametrize("name", sorted(list_recipes()))
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
    result = finetune(name, overrides)
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    split = "test" if "test" in saved else "eval"
    report, matrix = saved[split], saved[split]["confusion_matrix"]
    # data.max_eval_samples caps every split but train, and each capped row is counted exactly once
    assert report["num_samples"] == sum(map(sum, matrix)) == 8, report
    assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(len(matrix))) / 8)

    # the saved recipe is the shipped file plus this test's overrides, key for key (it adds the defaults too);
    # the one-command actions are never saved, so a re-run of recipe.yaml does not wipe, resume or push again
    expected = yaml.safe_load(list_recipes()[name].read_text(encoding="utf-8"))
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = expected
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    written = yaml.safe_load((result.output_dir / "recipe.yaml").read_text(encoding="utf-8"))
    written_leaves = dict(_leaves(written))
    for key, value in _leaves(expected):
        if key in ACTIONS:
            continue
        assert key in written_leaves, f"{name}: {key} is missing from the saved recipe.yaml"
        assert written_leaves[key] == value, f"{name}: {key} saved as {written_leaves[key]!r}, not {value!r}"
    assert written.get("name") == name


# one-command actions: another part of the run decides what of these is written (see test_train's overwrite tests)
ACTIONS = {"overwrite", "training.resume_from_checkpoint", "hub.push"}


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
