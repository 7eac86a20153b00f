"""Train/serve parity: the same file gives the same probabilities whichever way it reaches the model — training's
data path, `evaluate`'s, `hf-finetune predict` and `transformers.pipeline()` on the saved folder — for the awkward
files users have: transparent, EXIF-rotated, palette, 16-bit, CMYK, grayscale+alpha and 1-bit images."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_finetune.errors import DataError
from hf_finetune.tasks import image_classification as task

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("zero", "one")


def _odd_images() -> dict[str, Image.Image]:
    """32 px images whose conversion matters: coloured pixels under transparency, a non-square picture rotated by
    its EXIF tag, 16-bit values both below and above 255."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = np.where(np.arange(32)[:, None] < 16, 255, 0).astype(np.uint8) * np.ones((1, 32), np.uint8)
    rgba = Image.fromarray(np.dstack([colour, alpha]), "RGBA")
    return {
        "rgba.png": rgba,
        "exif.jpg": Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), "RGB"),
        "palette.png": Image.fromarray(colour, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "sixteen.png": Image.fromarray(rng.integers(0, 400, (32, 32)).astype(np.uint16)),
        "cmyk.jpg": Image.fromarray(colour, "RGB").convert("CMYK"),
        "gray_alpha.png": rgba.convert("LA"),
        "bits.png": Image.fromarray(colour[..., 0]).convert("1"),
    }


def _save(image: Image.Image, path: Path) -> None:
    if path.name == "exif.jpg":
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° clockwise to view"
        image.save(path, exif=exif, quality=95)
    elif path.name == "palette.png":
        image.save(path, transparency=0)  # palette entry 0 transparent: pipeline's loader ignores it, so do we
    else:
        image.save(path)


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_images")
    for n, (name, image) in enumerate(_odd_images().items()):
        folder = root / CLASSES[n % 2]
        folder.mkdir(exist_ok=True)
        _save(image, folder / name)
    with Image.open(_file(root, "sixteen.png")) as sixteen:  # Pillow 11 opens it as I;16, Pillow 10 as I
        assert sixteen.mode in ("I;16", "I") and sixteen.getextrema()[1] > 255
    assert Image.open(_file(root, "cmyk.jpg")).mode == "CMYK"
    return root


def _file(root: Path, name: str) -> Path:
    return next(root.rglob(name))


def _probabilities(model, pixel_values: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits.softmax(-1).numpy()


def _data_path(built, folder: Path, labels: list[str]) -> dict[str, np.ndarray]:
    """Probabilities per file through `load_data` → `prepare` (the eval-split transform: training's decoding
    without augmentation), as `finetune` and `evaluate` feed the model."""
    import datasets

    from hf_finetune.data import sources
    from hf_finetune.recipe import AugmentationSpec, DataSpec, TokenizationSpec
    from hf_finetune.tasks import PrepareSettings

    loaded = sources.load_data(DataSpec(source=str(folder)), task.INPUTS, label_names=labels, carve_validation=False)
    split = loaded.splits["train"]
    paths = [row["path"] for row in split.cast_column("image", datasets.Image(decode=False))["image"]]
    prepared = task.prepare(built, {"test": split}, PrepareSettings(AugmentationSpec(), TokenizationSpec(), 0))
    ds = prepared.splits["test"]
    pixels = prepared.collate([ds[i] for i in range(len(ds))])["pixel_values"]
    return dict(zip(paths, _probabilities(built.model, pixels), strict=True))


def _by_label(scores: list[dict], labels: list[str]) -> np.ndarray:
    found = {s["label"]: s["score"] for s in scores}
    return np.array([found[label] for label in labels])


def _predict_cli(out: Path, files: list[str], labels: list[str]) -> dict[str, np.ndarray]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "hf_finetune", "predict", str(out), *files, "--top-k", str(len(labels))]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["image"]: _by_label(row["predictions"], labels) for row in rows}


def _pipeline(out: Path, files: list[str], labels: list[str]) -> dict[str, np.ndarray]:
    from transformers import pipeline

    import hf_finetune.models  # noqa: F401  (simple_cnn's model class; the processor's code comes from the folder)

    classify = pipeline("image-classification", model=str(out), trust_remote_code=True, device="cpu")
    return {f: _by_label(classify(f, top_k=len(labels)), labels) for f in files}


MODELS = {
    "simple_cnn-rgb": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [4], "dense_units": [8]}},
    "simple_cnn-1ch": {
        "name": "simple_cnn",
        "image_size": 16,
        "config": {"num_channels": 1, "filters": [4], "dense_units": [8]},
    },
    "vit": "vit",
}


@pytest.mark.slow  # ~20 s each: a 1-step run, a predict subprocess and a pipeline
@pytest.mark.parametrize("model", list(MODELS), ids=list(MODELS))
def test_train_evaluate_predict_and_pipeline_see_the_same_pixels(
    model: str, odd_folder: Path, tiny_recipe, tiny_vit_dir: Path
):
    from hf_finetune import evaluate, finetune
    from hf_finetune.recipe import ModelSpec

    spec = {"name": str(tiny_vit_dir), "config": {}} if MODELS[model] == "vit" else MODELS[model]
    recipe = tiny_recipe(model=spec, training={"max_steps": 1, "eval_strategy": "no", "save_strategy": "no"})
    result = finetune(recipe)
    out = Path(result.output_dir)
    labels = list(result.label_names)
    saved = task.load_trained(out)

    # training's own model and processor (built from the recipe), holding the trained weights
    trained = task.build_model(ModelSpec(**spec), labels)
    trained.model.load_state_dict(saved.model.state_dict())
    paths = {
        "train": _data_path(trained, odd_folder, labels),
        "evaluate": _data_path(saved, odd_folder, labels),
    }
    files = sorted(paths["train"])
    assert len(files) == len(_odd_images())
    paths["predict"] = _predict_cli(out, files, labels)
    paths["pipeline"] = _pipeline(out, files, labels)

    for name, probs in paths.items():
        assert sorted(probs) == files, name
        for f in files:
            np.testing.assert_allclose(probs[f], paths["pipeline"][f], atol=1e-5, err_msg=f"{name}: {f}")
    # the files differ from each other, so agreeing is not a coincidence of a constant output
    assert len({tuple(np.round(paths["pipeline"][f], 4)) for f in files}) > 3

    # `evaluate` on these files reports the loss and accuracy of pipeline()'s probabilities (a folder without split
    # sub-folders loads as "train": it must still be scored without the training transform)
    truth = [labels.index(Path(f).parent.name) for f in files]
    served = np.stack([paths["pipeline"][f] for f in files])
    scores = evaluate(out, data=str(odd_folder))
    assert scores["num_samples"] == len(files)
    assert scores["loss"] == pytest.approx(-np.log(served[np.arange(len(files)), truth]).mean(), abs=1e-5)
    assert scores["accuracy"] == pytest.approx(np.mean(served.argmax(-1) == truth))
    # a run that starts from this folder gets the same processor (a 1-channel net's grayscale one, too)
    again = task.build_model(ModelSpec(name=str(out)), labels)
    assert type(again.processor) is type(saved.processor) and again.preprocess == saved.preprocess


def test_conversion_is_pipelines_loader(odd_folder: Path):
    from transformers.image_utils import load_image

    for path in sorted(odd_folder.rglob("*.*")):
        with Image.open(path) as img:
            ours = task.to_model_mode(img, 3)
            gray = task.to_model_mode(img, 1)
        theirs = load_image(str(path))
        assert ours.mode == "RGB" and np.array_equal(np.asarray(ours), np.asarray(theirs)), path.name
        assert gray.mode == "L" and np.array_equal(np.asarray(gray), np.asarray(theirs.convert("L"))), path.name
    with Image.open(_file(odd_folder, "exif.jpg")) as img:
        assert img.size == (40, 24) and task.to_model_mode(img, 3).size == (24, 40)  # rotated upright


def test_a_mode_pil_cannot_convert_is_refused_with_the_file_and_mode():
    with pytest.raises(DataError, match=r"scan\.tif: image mode 'La' cannot be converted to RGB"):
        task.to_model_mode(Image.new("La", (4, 4)), 3, "scan.tif")


def test_sixteen_bit_images_that_saturate_are_named_in_a_warning(odd_folder: Path, tmp_path: Path, caplog):
    from hf_finetune.data import sources
    from hf_finetune.data.checks import check_images
    from hf_finetune.recipe import DataSpec

    caplog.set_level(logging.INFO, logger="hf_finetune.data.checks")
    loaded = sources.load_data(DataSpec(source=str(odd_folder)), task.INPUTS, carve_validation=False)
    check_images(loaded.splits)
    assert "1 image(s) hold values above 255" in caplog.text and "sixteen.png" in caplog.text

    low = tmp_path / "low"
    for name in CLASSES:
        (low / name).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(low / "zero" / "dim.png")  # 16-bit, nothing above 255
    Image.new("RGB", (8, 8)).save(low / "one" / "rgb.png")
    caplog.clear()
    check_images(sources.load_data(DataSpec(source=str(low)), task.INPUTS, carve_validation=False).splits)
    assert "above 255" not in caplog.text and "all 2 images decode" in caplog.text
