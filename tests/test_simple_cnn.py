"""SimpleCNN: config validation, module structure, training signal, save/load round-trip and pipeline use."""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

import hf_finetune.models as hf_models
from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification

LABELS = ["cat", "dog", "bird"]


def _labelled_config(**kwargs) -> SimpleCNNConfig:
    return SimpleCNNConfig(id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}, **kwargs)


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- forward -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_kwargs", "batch"),
    [
        ({}, 4),
        ({"num_channels": 1, "image_size": 28, "filters": [8, 16, 16], "dense_units": [], "num_labels": 10}, 2),
        ({"image_size": 33, "filters": [4], "kernel_sizes": [5], "dense_units": 7, "num_labels": 2}, 1),
    ],
)
def test_logits_shape(config_kwargs: dict, batch: int) -> None:
    config = SimpleCNNConfig(**config_kwargs)
    model = SimpleCNNForImageClassification(config).eval()
    size = config.image_size
    out = model(torch.randn(batch, config.num_channels, size, size))
    assert isinstance(out, transformers.modeling_outputs.ImageClassifierOutput)
    assert out.logits.shape == (batch, config.num_labels)
    assert out.loss is None
    assert out.hidden_states is None


def test_hidden_states_and_tuple_output() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(filters=[4, 8, 16], num_labels=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, labels=torch.tensor([0, 2]), output_hidden_states=True)
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    loss, logits, hidden = model(x, labels=torch.tensor([0, 2]), output_hidden_states=True, return_dict=False)
    assert torch.equal(logits, out.logits)
    assert torch.equal(loss, out.loss)
    assert len(hidden) == 3
    (logits_only,) = model(x, return_dict=False)
    assert torch.equal(logits_only, out.logits)


def test_wrong_channel_count_is_a_clear_error() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=3))
    with pytest.raises(ValueError, match=r"1 channels but the model expects num_channels=3") as info:
        model(torch.randn(2, 1, 32, 32))
    assert "[batch, 3, 32, 32]" in str(info.value)


def test_wrong_image_size_is_a_clear_error() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=3))
    with pytest.raises(ValueError, match=r"64x64 but the model expects image_size=32"):
        model(torch.randn(2, 3, 64, 64))


def test_bad_labels_are_a_clear_error() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=3))
    with pytest.raises(ValueError, match=r"labels must be class ids"):
        model(torch.randn(2, 3, 32, 32), labels=torch.zeros(2, 5))


# --- loss / training -----------------------------------------------------------------------------------------------


def test_overfits_a_tiny_batch() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=3))
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(x, labels=y).loss.item()

    before = eval_loss()
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(x, labels=y).loss
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.2 * before, (before, after)
    model.eval()
    assert torch.equal(model(x).logits.argmax(-1), y)


def test_soft_targets_match_hard_labels_for_one_hot() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=4)).eval()
    x = torch.randn(5, 3, 32, 32)
    y = torch.tensor([0, 3, 1, 2, 3])
    hard = model(x, labels=y).loss
    soft = model(x, labels=nn.functional.one_hot(y, 4).float()).loss
    torch.testing.assert_close(soft, hard)
    # And a genuinely soft target gives the probability-weighted cross entropy.
    mixed = 0.7 * nn.functional.one_hot(y, 4).float() + 0.3 * nn.functional.one_hot(y.flip(0), 4).float()
    log_probs = model(x).logits.log_softmax(-1)
    expected = -(mixed * log_probs).sum(-1).mean()
    torch.testing.assert_close(model(x, labels=mixed).loss, expected)


class _Rows(torch.utils.data.Dataset):
    """Fixed tensors as Trainer rows (no augmentation, so two runs see the same pixels)."""

    def __init__(self, pixels: torch.Tensor, labels: list[int]) -> None:
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


# every run of 4 rows holds the same classes, so a class-weighted mean over 4 rows and over 8 rows weigh alike
_GA_LABELS = [0, 1, 2, 2, 2, 0, 1, 2]
_GA_WEIGHTS = [1.0, 2.0, 3.0]
_GA_LR = 0.5


def _ga_model() -> SimpleCNNForImageClassification:
    torch.manual_seed(0)
    config = _labelled_config(image_size=8, filters=[4], dense_units=[8], dropout=0.0)
    return SimpleCNNForImageClassification(config)


def _one_sgd_step(tmp_path: Path, batch: int, accumulate: int, loss=None, mixup=None):
    """One optimizer step of the toolkit's Trainer (plain SGD, constant lr, no clipping, rows in order)."""
    from hf_finetune.tasks.image_classification import collate
    from hf_finetune.trainer import build_trainer

    pixels = torch.randn(len(_GA_LABELS), 3, 8, 8, generator=torch.Generator().manual_seed(1))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / f"b{batch}x{accumulate}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulate,
        max_steps=1,
        learning_rate=_GA_LR,
        lr_scheduler_type="constant",
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    model = _ga_model()
    trainer = build_trainer(
        model=model,
        args=args,
        train_dataset=_Rows(pixels, _GA_LABELS),
        eval_dataset=None,
        collate=collate,
        processor=None,
        compute_metrics=None,
        preprocess_logits=None,
        loss=loss,
        mixup=mixup,
    )
    trainer.train()
    return pixels, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "loss_kind", ["model's own loss", "class weights (compute_loss_func)"], ids=["model-loss", "class-weights"]
)
def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path, loss_kind: str) -> None:
    from hf_finetune.loss import cross_entropy_loss

    loss = cross_entropy_loss(_GA_WEIGHTS) if loss_kind.startswith("class") else None
    _, accumulated = _one_sgd_step(tmp_path, batch=4, accumulate=2, loss=loss)
    _, big = _one_sgd_step(tmp_path, batch=8, accumulate=1, loss=loss)
    start = dict(_ga_model().named_parameters())
    for name, weight in big.items():
        assert not torch.equal(weight, start[name]), f"{name} did not move: the step trained nothing"
        # an undivided (summed) accumulation would move every weight twice as far
        torch.testing.assert_close(accumulated[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_accumulation_with_mixup_and_class_weights_averages_the_mixed_micro_batches(tmp_path: Path) -> None:
    """timm's Mixup pairs rows within a micro-batch and draws a fresh lambda for each, so an accumulated step is
    compared with the gradient of the two mixed micro-batches the Trainer actually saw, computed here by hand."""
    import numpy as np
    from timm.data import Mixup

    from hf_finetune.loss import cross_entropy_loss

    mixer = Mixup(mixup_alpha=1.0, num_classes=len(LABELS))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording_mixer(x, y):
        x, soft = mixer(x, y)
        seen.append((x.detach().clone(), soft.detach().clone()))
        return x, soft

    np.random.seed(0)  # timm draws lambda from numpy's global RNG
    loss = cross_entropy_loss(_GA_WEIGHTS)
    _, trained = _one_sgd_step(tmp_path, batch=4, accumulate=2, loss=loss, mixup=recording_mixer)

    assert len(seen) == 2 and all(soft.is_floating_point() and soft.shape == (4, 3) for _, soft in seen)
    assert not torch.allclose(seen[0][1], torch.nn.functional.one_hot(torch.tensor(_GA_LABELS[:4]), 3).float())
    model = _ga_model()
    model.zero_grad()
    for pixels, soft in seen:
        (loss(model(pixel_values=pixels), soft) / len(seen)).backward()
    for name, param in model.named_parameters():
        expected = param.detach() - _GA_LR * param.grad
        torch.testing.assert_close(trained[name], expected, rtol=1e-5, atol=1e-6, msg=name)


# --- config → structure --------------------------------------------------------------------------------------------


def test_defaults_build_the_classic_network() -> None:
    config = SimpleCNNConfig()
    assert (config.num_channels, config.image_size, config.filters, config.kernel_sizes) == (3, 32, [32, 64], 3)
    assert (config.pooling, config.activation, config.dense_units, config.dropout) == ("max", "relu", [128], 0.5)
    assert config.batch_norm is False
    model = SimpleCNNForImageClassification(config)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), "same"),
        (32, 64, (3, 3), "same"),
    ]
    assert _count(model, nn.MaxPool2d) == 2
    assert _count(model, nn.ReLU) == 3  # one per conv block, one per dense layer
    assert _count(model, nn.BatchNorm2d) == 0
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 8 * 8, 128), (128, 2)]
    assert isinstance(model.flatten, nn.Flatten)


def test_number_of_conv_blocks_follows_filters() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(filters=[4, 8, 16, 32]))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32]
    assert _count(model, nn.MaxPool2d) == 4
    assert model.dense[0].linear.in_features == 32 * 2 * 2  # 32 // 2**4 = 2


def test_kernel_sizes_per_block() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(filters=[4, 8], kernel_sizes=[5, 1]))
    assert [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)] == [(5, 5), (1, 1)]
    model = SimpleCNNForImageClassification(SimpleCNNConfig(filters=[4, 8], kernel_sizes=7))
    assert [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)] == [(7, 7), (7, 7)]


def test_avg_pooling() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(pooling="avg"))
    assert _count(model, nn.AvgPool2d) == 2
    assert _count(model, nn.MaxPool2d) == 0


@pytest.mark.parametrize(
    ("activation", "module"), [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid), ("gelu", nn.GELU)]
)
def test_activation(activation: str, module: type[nn.Module]) -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(activation=activation, dense_units=[16, 8]))
    assert _count(model, module) == 4  # 2 conv blocks + 2 dense layers
    others = {nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU} - {module}
    assert not any(_count(model, other) for other in others)


def test_batch_norm_adds_bn_and_drops_conv_bias() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(batch_norm=True))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [32, 64]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    block = model.blocks[0]
    assert list(block.children()) == [block.conv, block.norm, block.act, block.pool]


@pytest.mark.parametrize(("dense_units", "expected"), [([], []), (64, [64]), ([64, 32], [64, 32])])
def test_dense_units(dense_units, expected: list[int]) -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(dense_units=dense_units, dropout=0.25, num_labels=3))
    hidden = [block.linear.out_features for block in model.dense]
    assert hidden == expected
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25] * len(expected)
    assert model.classifier.in_features == (expected[-1] if expected else 64 * 8 * 8)
    assert model.classifier.out_features == 3


def test_config_stores_json_lists() -> None:
    config = SimpleCNNConfig(filters=(8, 16), kernel_sizes=(3, 5), dense_units=(32,), dropout=0)
    assert config.filters == [8, 16] and isinstance(config.filters, list)
    assert config.kernel_sizes == [3, 5] and isinstance(config.kernel_sizes, list)
    assert config.dense_units == [32]
    assert config.dropout == 0.0 and isinstance(config.dropout, float)
    saved = json.loads(config.to_json_string())
    assert saved["model_type"] == "simple_cnn"
    assert (saved["filters"], saved["kernel_sizes"], saved["dense_units"]) == ([8, 16], [3, 5], [32])


def test_init_weights() -> None:
    model = SimpleCNNForImageClassification(SimpleCNNConfig(filters=[64], batch_norm=True, dense_units=[256]))
    conv = model.blocks[0].conv
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)  # Kaiming normal, ReLU gain
    dense = model.dense[0].linear
    xavier_std = (2 / (dense.in_features + dense.out_features)) ** 0.5
    assert dense.weight.std().item() == pytest.approx(xavier_std, rel=0.1)
    assert torch.count_nonzero(dense.bias) == 0
    assert torch.count_nonzero(model.classifier.bias) == 0
    bn = model.blocks[0].norm
    assert torch.all(bn.weight == 1) and torch.count_nonzero(bn.bias) == 0


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "mean"}, "pooling='mean' is not one of 'max', 'avg'"),
        ({"activation": "swish"}, "activation='swish' is not one of 'relu', 'tanh', 'sigmoid', 'gelu'"),
        ({"filters": []}, "filters=[]"),
        ({"filters": [32, 0]}, "filters=[32, 0]"),
        ({"filters": 32}, "filters=32"),
        ({"kernel_sizes": [3]}, "kernel_sizes=[3] has 1 entries but filters=[32, 64] has 2"),
        ({"kernel_sizes": 0}, "kernel_sizes=0"),
        ({"kernel_sizes": [3, -1]}, "kernel_sizes=[3, -1]"),
        ({"image_size": 3}, "image_size=3 is too small for 2 conv blocks"),
        ({"image_size": 16, "filters": [8, 8, 8, 8, 8]}, "image_size=16 is too small for 5 conv blocks"),
        ({"image_size": 0}, "image_size=0"),
        ({"image_size": 32.0}, "image_size=32.0"),
        ({"num_channels": 0}, "num_channels=0"),
        ({"dense_units": 0}, "dense_units=0"),
        ({"dense_units": [128, "x"]}, "dense_units=[128, 'x']"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"dropout": "0.5"}, "dropout='0.5'"),
        ({"batch_norm": "yes"}, "batch_norm='yes'"),
    ],
)
def test_invalid_values_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SimpleCNNConfig(**kwargs)
    assert message in str(info.value)


def test_smallest_valid_image_size() -> None:
    config = SimpleCNNConfig(image_size=4, filters=[2, 2], num_labels=2)
    model = SimpleCNNForImageClassification(config)
    assert model.classifier.in_features == 128
    assert model(torch.randn(1, 3, 4, 4)).logits.shape == (1, 2)


# --- save / load / pipeline ----------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_save_and_auto_load_round_trip(tmp_path: Path) -> None:
    config = _labelled_config(batch_norm=True, filters=[8, 16], kernel_sizes=[5, 3], dense_units=[32], pooling="avg")
    model = SimpleCNNForImageClassification(config)
    # One training step so that weights and BN running statistics are far from anything a re-init would produce.
    model.train()
    x = torch.randn(6, 3, 32, 32)
    model(x, labels=torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))

    assert type(AutoConfig.from_pretrained(tmp_path)) is SimpleCNNConfig
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        loaded, info = AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        logger.removeHandler(records)
    assert type(loaded) is SimpleCNNForImageClassification
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not [m for m in records.messages if "initialized" in m.lower() or "missing" in m.lower()], records.messages
    assert loaded.config.to_dict() | {"_name_or_path": None} == model.config.to_dict() | {"_name_or_path": None}
    assert loaded.config.id2label == dict(enumerate(LABELS))

    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_registration_survives_a_second_import() -> None:
    importlib.reload(hf_models)
    assert type(AutoConfig.for_model("simple_cnn")) is SimpleCNNConfig
    model = AutoModelForImageClassification.from_config(SimpleCNNConfig(num_labels=2))
    assert type(model) is SimpleCNNForImageClassification


def test_registration_refuses_a_foreign_simple_cnn() -> None:
    class OtherConfig(transformers.PretrainedConfig):
        model_type = "simple_cnn"

    AutoConfig.register("simple_cnn", OtherConfig, exist_ok=True)
    try:
        with pytest.raises(ValueError, match="already registered with AutoConfig"):
            importlib.reload(hf_models)
    finally:
        AutoConfig.register("simple_cnn", SimpleCNNConfig, exist_ok=True)
    assert type(AutoConfig.for_model("simple_cnn")) is SimpleCNNConfig


def test_image_classification_pipeline_rgb_and_grayscale(tmp_path: Path) -> None:
    SimpleCNNForImageClassification(_labelled_config()).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path
    )
    classifier = transformers.pipeline("image-classification", model=str(tmp_path))
    assert type(classifier.model) is SimpleCNNForImageClassification

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), "RGB")
    gray = rgb.convert("L")

    for image in (rgb, gray):
        predictions = classifier(image)
        assert sorted(p["label"] for p in predictions) == sorted(LABELS)
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)

    # The 3-channel model accepts the "L" image because the pipeline converts it to RGB first: the scores are
    # exactly those of the explicitly converted image.
    assert classifier(gray) == classifier(gray.convert("RGB"))
    assert classifier(gray) != classifier(rgb)
    assert classifier([rgb, gray], top_k=1)[1][0]["label"] in LABELS
