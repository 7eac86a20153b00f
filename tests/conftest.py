"""Tests run offline: a Hub lookup would otherwise wait 20–45 s before failing."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# two busy processes on a 2-core machine collapse multi-threaded torch; keep tests from spinning idle threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _digit_images(classes: tuple[int, ...], per_class: int, size: int, offset: int = 0):
    """Real (if tiny) signal: scikit-learn's digits, upscaled and saved as RGB PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for c in classes:
        rows = np.flatnonzero(digits.target == c)[offset : offset + per_class]
        for i in rows:
            pixels = (digits.images[i] * (255 / 16)).astype("uint8")
            out.append((c, Image.fromarray(pixels).resize((size, size)).convert("RGB")))
    return out


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """An image folder with train/ and test/ splits, three classes named zero/one/two."""
    root = tmp_path_factory.mktemp("digits_folder")
    names = {0: "zero", 1: "one", 2: "two"}
    for split, per_class, offset in (("train", 30, 0), ("test", 10, 40)):
        for n, (c, img) in enumerate(_digit_images((0, 1, 2), per_class, 16, offset)):
            folder = root / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{n}.png")
    return root


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny ViT saved as a 'pretrained' checkpoint with its processor, for the transformers-model path."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


@pytest.fixture
def tiny_recipe(digits_folder: Path, tmp_path: Path):
    """A simple_cnn recipe over the digits folder that trains in a few seconds."""

    def make(**sections):
        recipe = {
            "name": "tiny",
            "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
            "data": {"source": str(digits_folder)},
            "training": {
                "output_dir": str(tmp_path / "out"),
                "num_train_epochs": 2,
                "per_device_train_batch_size": 16,
                "learning_rate": 3e-3,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
            },
        }
        for key, value in sections.items():
            recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
        return recipe

    return make
