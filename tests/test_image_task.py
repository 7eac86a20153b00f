"""The image task: model builders, preprocessing read from the model, transforms, colour modes."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from hf_finetune.errors import ModelError
from hf_finetune.recipe import AugmentationSpec, ModelSpec
from hf_finetune.tasks import image_classification as task

LABELS = ["cat", "dog", "fox"]


def test_simple_cnn_builder_sets_labels_and_processor():
    built = task.build_model(ModelSpec(name="simple_cnn", image_size=24, config={"filters": [4]}), LABELS)
    config = built.model.config
    assert config.id2label == {0: "cat", 1: "dog", 2: "fox"} and config.label2id["fox"] == 2
    assert built.processor.size == {"height": 24, "width": 24}
    assert built.preprocess == task.Preprocess((24, 24), (0.5,) * 3, (0.5,) * 3, "bilinear", 3)


def test_simple_cnn_bad_option_is_a_model_error():
    with pytest.raises(ModelError, match="pooling"):
        task.build_model(ModelSpec(name="simple_cnn", config={"pooling": "mean"}), LABELS)


def test_timm_architecture_keeps_timm_init_and_data_config():
    import timm

    built = task.build_model(ModelSpec(name="timm:test_resnet", pretrained=False), LABELS)
    model = built.model
    assert model.config.num_labels == 3 and model.timm_model.get_classifier().out_features == 3
    # timm zero-inits the last BatchNorm of each residual block; the wrapper's own init would not
    last_bn = model.timm_model.layer1[0].bn2.weight
    assert torch.count_nonzero(last_bn) == 0
    cfg = timm.create_model("test_resnet").pretrained_cfg
    assert built.preprocess.size == tuple(cfg["input_size"][1:])
    assert built.preprocess.mean == tuple(cfg["mean"]) and built.preprocess.interpolation == cfg["interpolation"]


def test_timm_image_size_override_reaches_the_saved_config(tmp_path: Path):
    built = task.build_model(ModelSpec(name="timm:test_resnet", pretrained=False, image_size=48), LABELS)
    assert built.preprocess.size == (48, 48)
    built.model.save_pretrained(tmp_path)
    loaded = task.load_trained(tmp_path)
    assert loaded.preprocess.size == (48, 48)


def test_unknown_timm_architecture_suggests_names():
    with pytest.raises(ModelError, match=r"timm has no architecture 'resnet181'.*did you mean"):
        task.build_model(ModelSpec(name="timm:resnet181", pretrained=False), LABELS)


def test_transformers_folder_replaces_head_even_when_sizes_match(tiny_vit_dir: Path):
    from transformers import ViTForImageClassification

    five = ["a", "b", "c", "d", "e"]  # same size as the saved head, other classes
    original = ViTForImageClassification.from_pretrained(tiny_vit_dir)
    built = task.build_model(ModelSpec(name=str(tiny_vit_dir)), five)
    assert built.model.config.id2label[4] == "e"
    assert not torch.equal(built.model.classifier.weight, original.classifier.weight)
    # the backbone is the pretrained one
    assert torch.equal(
        built.model.vit.embeddings.patch_embeddings.projection.weight,
        original.vit.embeddings.patch_embeddings.projection.weight,
    )


def test_non_image_model_is_refused(tmp_path: Path):
    from transformers import BertConfig

    BertConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="Bert model, which transformers cannot use for image classification"):
        task.build_model(ModelSpec(name=str(tmp_path)), LABELS)


def test_train_transform_lists_the_recipe_augmentations():
    from torchvision.transforms import v2 as T

    pre = task.Preprocess((32, 32), (0.5,) * 3, (0.2,) * 3, "bicubic", 3)
    aug = AugmentationSpec(
        random_resized_crop=True, horizontal_flip=0.5, vertical_flip=0.1, rotation=10, brightness=0.2, contrast=0.3
    )
    stages = task.build_train_transform(pre, aug).transforms
    kinds = [type(s) for s in stages]
    assert kinds == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandomVerticalFlip,
        T.RandomRotation,
        T.ColorJitter,
        T.ToImage,
        T.ToDtype,
        T.Normalize,
    ]
    assert stages[0].interpolation.value == "bicubic" and stages[0].scale == aug.scale
    plain = [type(s) for s in task.build_train_transform(pre, AugmentationSpec()).transforms]
    assert plain == [T.Resize, T.ToImage, T.ToDtype, T.Normalize]
    out = task.build_train_transform(pre, aug)(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


_AUGMENTATIONS = {
    "none": AugmentationSpec(),
    "flip-rotate-jitter": AugmentationSpec(horizontal_flip=0.5, rotation=10, brightness=0.3),
    "crop-randaugment-erasing": AugmentationSpec(random_resized_crop=True, rand_augment=True, random_erasing=0.7),
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("aug", list(_AUGMENTATIONS), ids=list(_AUGMENTATIONS))
def test_batch_transform_gives_each_row_the_pixels_of_its_own_seeded_transform(aug: str, channels: int):
    # BatchTransform normalises the stacked batch once; every row must still get exactly the floats (and the random
    # draws) of the whole transform run on it alone, under its row's seed, and torch's RNG must be left as it was
    pre = task.Preprocess((32, 32), (0.5,) * channels, (0.2,) * channels, "bicubic", channels)
    transform = task.build_train_transform(pre, _AUGMENTATIONS[aug])
    images = [Image.effect_mandelbrot((40 + 3 * i, 30 + i), (-2, -1.2, 1, 1.2), 50 + i) for i in range(5)]
    rows = [5, 9, 1, 0, 44]
    seeded = task.BatchTransform(transform, channels, seed=3)
    seeded.set_epoch(2)
    before = torch.get_rng_state()
    got = seeded({"image": images, "label": [0] * 5, task.ROW_ID: rows})["pixel_values"]
    assert torch.equal(torch.get_rng_state(), before)
    for image, row, pixels in zip(images, rows, got, strict=True):
        torch.default_generator.manual_seed(task.sample_seed(3, 2, row))
        assert torch.equal(pixels, transform(task.to_model_mode(image, channels))), row
    # without row ids (a stream): the draws follow torch's generator in row order, as the whole transform's do
    torch.manual_seed(1)
    unseeded = task.BatchTransform(transform, channels)({"image": images})["pixel_values"]
    torch.manual_seed(1)
    for image, pixels in zip(images, unseeded, strict=True):
        assert torch.equal(pixels, transform(task.to_model_mode(image, channels)))


def test_eval_transform_is_the_processor(tiny_vit_dir: Path):
    built = task.build_model(ModelSpec(name=str(tiny_vit_dir)), LABELS)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    expected = built.processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(task.build_eval_transform(built)(image), expected)


@pytest.mark.parametrize("mode", ["L", "P", "PA", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_colour_modes_become_rgb(mode: str):
    # made directly in I;16: Pillow 10.0 (the lowest allowed) cannot convert RGB to it
    image = (
        Image.new(mode, (5, 5), 200 * 257) if mode == "I;16" else Image.new("RGB", (5, 5), (200, 10, 10)).convert(mode)
    )
    converted = task.to_model_mode(image, 3)
    assert converted.mode == "RGB" and converted.size == (5, 5)
    assert task.to_model_mode(image, 1).mode == "L"


def test_transparency_is_dropped_as_pipelines_loader_drops_it():
    # load_image's .convert("RGB"): a transparent pixel shows the colour stored under it (black in most files)
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    image.putpixel((1, 1), (200, 10, 10, 0))
    converted = task.to_model_mode(image, 3)
    assert converted.getpixel((0, 0)) == (0, 0, 0) and converted.getpixel((1, 1)) == (200, 10, 10)


def test_one_channel_simple_cnn_trains_and_predicts(tmp_path: Path):
    built = task.build_model(
        ModelSpec(name="simple_cnn", image_size=16, config={"num_channels": 1, "filters": [4]}), LABELS
    )
    assert type(built.processor).__name__ == "SimpleCNNImageProcessor" and built.preprocess.channels == 1
    batch = task.make_batch_transform(task.build_eval_transform(built), 1)(
        {"image": [Image.new("RGB", (9, 9))], "label": [1]}
    )
    assert batch["pixel_values"][0].shape == (1, 16, 16)
    built.model.save_pretrained(tmp_path)
    from hf_finetune.api import predict

    image = tmp_path / "x.png"
    Image.new("RGB", (9, 9)).save(image)
    assert predict(tmp_path, [image], top_k=2)[0]["predictions"][0]["label"] in LABELS


def test_train_geometry_without_random_crop_matches_eval():
    # timm's test_resnet: 160 px with crop_pct 0.95 → resize the shorter side to 168, centre-crop 160
    built = task.build_model(ModelSpec(name="timm:test_resnet", pretrained=False), LABELS)
    assert built.preprocess.resize_shorter == 168
    image = Image.effect_mandelbrot((220, 180), (-2, -1.2, 1, 1.2), 100).convert("RGB")
    train = task.build_train_transform(built.preprocess, AugmentationSpec())(image)
    evaluated = task.build_eval_transform(built)(image)
    assert train.shape == evaluated.shape == (3, 160, 160)
    assert torch.allclose(train, evaluated, atol=1e-5)


def test_timm_wrapper_folder_from_config_keeps_timm_init(tmp_path: Path):
    # the `timm/<hub id>` path with pretrained: false, exercised on a local TimmWrapper folder
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(architecture="test_resnet", num_labels=3)
    model = TimmWrapperForImageClassification(config)
    model.config.pretrained_cfg = dict(model.timm_model.pretrained_cfg)
    model.save_pretrained(tmp_path)
    built = task.build_model(ModelSpec(name=str(tmp_path), pretrained=False), LABELS)
    assert type(built.model).__name__ == "TimmWrapperForImageClassification"
    assert torch.count_nonzero(built.model.timm_model.layer1[0].bn2.weight) == 0
    assert built.model.config.id2label == {0: "cat", 1: "dog", 2: "fox"}


def test_local_weights_give_a_zero_head_and_honest_provenance(tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", num_classes=7)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    built = task.build_model(
        ModelSpec(name="timm:test_resnet", pretrained=False, weights=str(tmp_path / "w.safetensors")), LABELS
    )
    head = built.model.timm_model.get_classifier()
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    # the backbone is the file's
    assert torch.equal(built.model.timm_model.conv1[0].weight, source.conv1[0].weight)
    cfg = built.model.config.pretrained_cfg
    assert cfg["num_classes"] == 3 and not {"url", "hf_hub_id", "file"} & set(cfg)
    # from scratch keeps timm's own (non-zero) head init
    scratch = task.build_model(ModelSpec(name="timm:test_resnet", pretrained=False), LABELS)
    assert torch.count_nonzero(scratch.model.timm_model.get_classifier().weight) > 0
