"""Every shipped recipe runs offline, shrunk by overrides: random init from config, tiny data, two steps.

Recipes naming a Hub model id keep everything but the model, which is swapped for a tiny local one of the same
family (the id itself is checked); timm recipes build their real architecture without pretrained weights.
"""

import json
from pathlib import Path

import pytest

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
    result = finetune(name, _shrink(name, recipe, tmp_path, fixtures))
    saved = json.loads((result.output_dir / "metrics.json").read_text())
    split = "test" if "test" in saved else "eval"
    assert 0 <= saved[split]["accuracy"] <= 1
    assert saved[split]["num_samples"] > 0
    # the run used the recipe's own strategy, augmentation and schedule
    resolved = load_recipe(result.output_dir / "recipe.yaml")
    assert resolved.transfer == recipe.transfer
    assert resolved.augmentation == recipe.augmentation
    assert resolved.training["learning_rate"] == recipe.training["learning_rate"]
