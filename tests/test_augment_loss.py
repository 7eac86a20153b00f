"""Augmentation presets and options (torchvision transforms), batch-level Mixup/CutMix with a soft-target loss, label
smoothing and class weights."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torchvision.transforms import v2 as T

import hf_finetune.loss as loss_module
from hf_finetune import finetune
from hf_finetune.cli import main
from hf_finetune.errors import RecipeError
from hf_finetune.loss import class_weights
from hf_finetune.recipe import AUGMENTATION_PRESETS, AugmentationSpec, load_recipe
from hf_finetune.tasks import image_classification as task

BASE = {"model": {"name": "simple_cnn"}, "data": {"source": "builtin:digits"}}
PRE = task.Preprocess((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 3)


def _image() -> Image.Image:
    return Image.effect_mandelbrot((48, 40), (-2, -1.2, 1, 1.2), 60).convert("RGB")


# --------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(AUGMENTATION_PRESETS))
def test_each_preset_fills_its_values_into_the_resolved_recipe(preset: str):
    recipe = load_recipe({**BASE, "augmentation": {"preset": preset}})
    resolved = recipe.to_dict()["augmentation"]
    for key, value in AUGMENTATION_PRESETS[preset].items():
        assert resolved[key] == value, key
    defaults = AugmentationSpec().__dict__
    untouched = {k for k in defaults if k not in AUGMENTATION_PRESETS[preset] and k != "preset"}
    assert all(getattr(recipe.augmentation, k) == defaults[k] for k in untouched)
    assert load_recipe(yaml.safe_load(recipe.to_yaml())) == recipe  # the resolved recipe reproduces it


def test_explicit_keys_win_over_the_preset():
    recipe = load_recipe(
        {**BASE, "augmentation": {"preset": "strong", "horizontal_flip": 0.0, "mixup_alpha": 0.8}},
        ["augmentation.scale=[0.3, 1.0]", "augmentation.rand_augment=false"],
    )
    a = recipe.augmentation
    # explicit values, even a 0 or false the preset would turn on, win …
    assert (a.horizontal_flip, a.mixup_alpha, a.scale, a.rand_augment) == (0.0, 0.8, (0.3, 1.0), False)
    # … and the keys left unset come from the preset
    assert (a.random_resized_crop, a.random_erasing, a.cutmix_alpha, a.rand_augment_magnitude) == (True, 0.25, 1.0, 9)
    assert recipe.to_dict()["augmentation"]["cutmix_alpha"] == 1.0


def test_unknown_preset_is_a_recipe_error_with_a_suggestion():
    with pytest.raises(RecipeError) as err:
        load_recipe({**BASE, "augmentation": {"preset": "strnog"}})
    assert "augmentation.preset: 'strnog' is not one of ['none', 'light', 'standard', 'strong']" in str(err.value)
    assert "did you mean 'strong'?" in str(err.value)


# --------------------------------------------------------------------------------------------- transforms


def test_rand_augment_trivial_augment_and_random_erasing_stages_run_on_a_pil_image():
    rand = task.build_train_transform(PRE, AugmentationSpec(rand_augment=True, rand_augment_magnitude=7))
    kinds = [type(s) for s in rand.transforms]
    assert kinds == [T.Resize, T.RandAugment, T.ToImage, T.ToDtype, T.Normalize]
    assert rand.transforms[1].num_ops == 2 and rand.transforms[1].magnitude == 7

    trivial = task.build_train_transform(PRE, AugmentationSpec(trivial_augment=True))
    assert [type(s) for s in trivial.transforms] == [T.Resize, T.TrivialAugmentWide, T.ToImage, T.ToDtype, T.Normalize]

    erasing = task.build_train_transform(PRE, AugmentationSpec(random_erasing=1.0))
    assert [type(s) for s in erasing.transforms][-2:] == [T.Normalize, T.RandomErasing]  # on the normalised tensor
    assert erasing.transforms[-1].p == 1.0

    image = _image()
    plain = task.build_train_transform(PRE, AugmentationSpec())(image)
    for transform in (rand, trivial, erasing):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.manual_seed(0)
    erased = erasing(image)
    differs = (erased != plain).any(0).float().mean()
    assert 0 < differs < 1  # a patch was erased, not the whole image
    # grayscale (1-channel simple_cnn) images go through the same stages
    gray = task.Preprocess((32, 32), (0.5,), (0.5,), "bilinear", 1)
    out = task.build_train_transform(gray, AugmentationSpec(rand_augment=True, random_erasing=0.5))(image.convert("L"))
    assert out.shape == (1, 32, 32)


def test_strong_preset_builds_its_transform_stages():
    aug = load_recipe({**BASE, "augmentation": {"preset": "strong"}}).augmentation
    stages = task.build_train_transform(PRE, aug).transforms
    assert [type(s) for s in stages] == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandAugment,
        T.ToImage,
        T.ToDtype,
        T.Normalize,
        T.RandomErasing,
    ]
    assert stages[0].scale == (0.08, 1.0) and stages[-1].p == 0.25
    mixer = task.batch_mixer(aug, num_labels=3)
    assert (mixer.mixup_alpha, mixer.cutmix_alpha, mixer.num_classes) == (0.2, 1.0, 3)


# --------------------------------------------------------------------------------------------- mixup in training


def test_mixup_sends_soft_targets_to_the_loss_with_class_weights_and_smoothing(tiny_recipe, monkeypatch):
    calls: list[dict] = []
    seen: list[torch.Tensor] = []
    real = loss_module.cross_entropy_loss

    def recording_loss(class_weights=None, label_smoothing=0.0):
        calls.append({"class_weights": class_weights, "label_smoothing": label_smoothing})
        loss = real(class_weights, label_smoothing)

        def wrapped(outputs, labels, num_items_in_batch=None):
            seen.append(labels.detach().clone())
            return loss(outputs, labels, num_items_in_batch)

        return wrapped

    monkeypatch.setattr(loss_module, "cross_entropy_loss", recording_loss)
    result = finetune(
        tiny_recipe(
            augmentation={"mixup_alpha": 1.0},
            loss={"class_weights": [1.0, 2.0, 3.0]},
            training={"num_train_epochs": 1, "label_smoothing_factor": 0.1},
        )
    )
    assert calls == [{"class_weights": [1.0, 2.0, 3.0], "label_smoothing": 0.1}]
    soft = [y for y in seen if y.is_floating_point()]
    hard = [y for y in seen if not y.is_floating_point()]
    assert soft and hard  # training batches mixed, evaluation batches with class ids
    for y in soft:
        assert y.ndim == 2 and y.shape[1] == 3
        torch.testing.assert_close(y.sum(-1), torch.ones(len(y)))
    rows = torch.cat(soft)
    assert rows.min() >= 0.1 / 3 - 1e-6  # label smoothing reached the mixer
    assert ((rows > 0.1).sum(-1) >= 2).any()  # and some rows mix two classes
    assert all(y.ndim == 1 and y.dtype == torch.long for y in hard)
    test = result.metrics["test"]
    assert test["accuracy"] == pytest.approx(sum(test["confusion_matrix"][i][i] for i in range(3)) / 30)
    # one epoch on mixed, weighted, smoothed targets: 16 of 30 here, where a constant guess gets 10
    assert test["accuracy"] > 0.4, test


def test_mixup_on_text_is_a_recipe_error_and_the_cli_exits_2(text_recipe, tmp_path: Path, capsys):
    with pytest.raises(RecipeError, match="mixup_alpha/cutmix_alpha: mixing applies to images only"):
        load_recipe(text_recipe(augmentation={"cutmix_alpha": 1.0}))
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(text_recipe(augmentation={"mixup_alpha": 0.2})))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mixing applies to images only" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- class weights


def test_balanced_class_weights_are_n_over_classes_times_count():
    labels = [0, 0, 0, 0, 1, 1, 2, 0]
    weights = class_weights("balanced", labels, ["a", "b", "c"])
    assert weights == pytest.approx([8 / (3 * 5), 8 / (3 * 2), 8 / (3 * 1)])
    assert class_weights([1, 2.5, 0], labels, ["a", "b", "c"]) == [1.0, 2.5, 0.0]
    assert class_weights(None, labels, ["a", "b", "c"]) is None


def test_class_weight_list_of_the_wrong_length_names_both_counts(tiny_recipe):
    with pytest.raises(RecipeError, match=r"2 weights given, the data has 3 classes \['one', 'two', 'zero'\]"):
        finetune(tiny_recipe(loss={"class_weights": [1.0, 2.0]}))
    with pytest.raises(RecipeError, match="'balanced' or a list with one weight per class, got 'inverse'"):
        load_recipe(tiny_recipe(loss={"class_weights": "inverse"}))


# --------------------------------------------------------------------------------------------- the loss itself


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(8, 3) * 3
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    return {"logits": logits}, labels


def test_label_smoothing_changes_the_loss_as_torch_defines_it():
    outputs, labels = _batch()
    plain = loss_module.cross_entropy_loss()(outputs, labels)
    smooth = loss_module.cross_entropy_loss(label_smoothing=0.1)(outputs, labels)
    assert not torch.isclose(plain, smooth)
    torch.testing.assert_close(plain, F.cross_entropy(outputs["logits"], labels))
    torch.testing.assert_close(smooth, F.cross_entropy(outputs["logits"], labels, label_smoothing=0.1))


def test_soft_targets_equal_hard_labels_for_one_hot_and_smoothed_targets():
    from timm.data.mixup import mixup_target

    outputs, labels = _batch()
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(
        loss_module.cross_entropy_loss()(outputs, one_hot), loss_module.cross_entropy_loss()(outputs, labels)
    )
    # timm's mixer with lam=1 (nothing mixed) smooths exactly as the hard-label loss does
    smoothed = mixup_target(labels, 3, lam=1.0, smoothing=0.1)
    torch.testing.assert_close(
        loss_module.cross_entropy_loss(label_smoothing=0.1)(outputs, smoothed),
        loss_module.cross_entropy_loss(label_smoothing=0.1)(outputs, labels),
    )


def test_class_weights_weigh_soft_and_hard_targets_alike():
    # batches that mixup leaves unmixed (odd-sized) and evaluation use hard labels: the same examples must give the
    # same loss either way, or the loss jumps between batches
    outputs, labels = _batch()
    weights = [1.0, 2.0, 3.0]
    loss = loss_module.cross_entropy_loss(weights)
    hard = loss(outputs, labels)
    torch.testing.assert_close(hard, F.cross_entropy(outputs["logits"], labels, weight=torch.tensor(weights)))
    torch.testing.assert_close(loss(outputs, F.one_hot(labels, 3).float()), hard)


def test_batch_mixer_takes_the_label_smoothing_and_is_off_without_alphas():
    mixer = task.batch_mixer(AugmentationSpec(cutmix_alpha=1.0, mixup_prob=0.5), num_labels=4, label_smoothing=0.1)
    assert (mixer.label_smoothing, mixer.num_classes, mixer.mix_prob, mixer.cutmix_alpha) == (0.1, 4, 0.5, 1.0)
    assert task.batch_mixer(AugmentationSpec(horizontal_flip=0.5), num_labels=4) is None
    x = torch.randn(4, 3, 8, 8)
    mixed, soft = mixer(x.clone(), torch.tensor([0, 1, 2, 3]))
    assert mixed.shape == x.shape and soft.shape == (4, 4) and soft.is_floating_point()
