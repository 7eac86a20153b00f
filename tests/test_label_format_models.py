"""Models for `data.label_format: multi_label | regression` (issue 13): every builder of both tasks sets
`config.problem_type`, sizes the head (regression: one output named after the target), collates `labels` with the
dtype and shape the problem type takes, and the model's own loss is BCE with logits / MSE; saved folders load back
with their problem type and thresholds; mixup is never built for labels that are not class ids."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Sequence, Value

from hf_finetune.errors import DataError, ModelError
from hf_finetune.names import LABEL_THRESHOLDS_KEY, PROBLEM_TYPES
from hf_finetune.recipe import AugmentationSpec, ModelSpec, TokenizationSpec
from hf_finetune.tasks import PrepareSettings, get_task
from hf_finetune.tasks import image_classification as image_task
from hf_finetune.tasks import text_classification as text_task

NAMES = ["cat", "dog", "outdoor"]
TARGET = ["price"]
FORMATS = {"single": NAMES, "multi_label": NAMES, "regression": TARGET}
# one row's label per format, as the data layer gives them (class id, multi-hot float32 row, float32 target)
ROW_LABELS = {
    "single": [0, 2, 1, 2],
    "multi_label": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    "regression": [2.5, -1.25, 0.0, 10.0],
}
LABEL_DTYPES = {"single": torch.int64, "multi_label": torch.float32, "regression": torch.float32}


def _reference_loss(fmt: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss each problem type should have, computed here independently of any model code."""
    if fmt == "multi_label":
        p = torch.sigmoid(logits.double())
        y = labels.double()
        return -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    if fmt == "regression":
        return ((logits.double()[:, 0] - labels.double()) ** 2).mean()
    return F.cross_entropy(logits.double(), labels)


def _image_specs(tiny_vit_dir: Path) -> dict[str, ModelSpec]:
    return {
        "simple_cnn": ModelSpec(name="simple_cnn", image_size=16, config={"filters": [4], "dense_units": [8]}),
        "timm": ModelSpec(name="timm:test_resnet", pretrained=False, image_size=32),
        "vit": ModelSpec(name=str(tiny_vit_dir)),
    }


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("builder", ["simple_cnn", "timm", "vit"])
def test_image_builders_set_problem_type_head_collation_and_loss(builder, fmt, tiny_vit_dir: Path, caplog):
    torch.manual_seed(0)
    spec = _image_specs(tiny_vit_dir)[builder]
    with caplog.at_level(logging.INFO, logger="hf_finetune"):
        built = image_task.build_model(spec, FORMATS[fmt], fmt)
    config = built.model.config
    assert config.problem_type == PROBLEM_TYPES[fmt]
    assert config.num_labels == len(FORMATS[fmt])
    assert config.id2label == dict(enumerate(FORMATS[fmt]))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert {
        "single": "3 labels",
        "multi_label": "3 labels (multi-label",
        "regression": "regression on target 'price'",
    }[fmt] in logged

    # the collator the task hands Trainer, over rows as its batch transform makes them
    ds = Dataset.from_dict({"image": [None] * 4, "label": ROW_LABELS[fmt]})
    prepared = image_task.prepare(built, {"validation": ds}, PrepareSettings(AugmentationSpec(), TokenizationSpec(), 0))
    h, w = built.preprocess.size
    rows = [{"pixel_values": torch.randn(3, h, w), "labels": label} for label in ROW_LABELS[fmt]]
    batch = prepared.collate(rows)
    assert batch["labels"].dtype == LABEL_DTYPES[fmt]
    assert tuple(batch["labels"].shape) == {"single": (4,), "multi_label": (4, 3), "regression": (4,)}[fmt]
    assert batch["labels"].tolist() == ROW_LABELS[fmt]

    built.model.eval()
    out = built.model(**batch)
    assert out.logits.shape == (4, len(FORMATS[fmt]))
    assert out.loss.item() == pytest.approx(_reference_loss(fmt, out.logits, batch["labels"]).item(), rel=1e-5)
    out.loss.backward()  # the loss reaches the weights
    assert built.model.config.problem_type == PROBLEM_TYPES[fmt]  # no loss call re-inferred it


def _text_ds(fmt: str) -> Dataset:
    texts = ["good lovely ride", "bad slow car today", "the trip", "a very nice and calm ride it felt"]
    label = {
        "single": Value("int64"),
        "multi_label": Sequence(Value("float32")),
        "regression": Value("float32"),
    }[fmt]
    features = Features({"text": Value("string"), "label": label})
    return Dataset.from_dict({"text": texts, "label": ROW_LABELS[fmt]}, features=features)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_models_set_problem_type_and_collate_float_labels(pooling, fmt, padding, tiny_bert_dir: Path):
    torch.manual_seed(0)
    spec = ModelSpec(name=str(tiny_bert_dir), pooling=pooling)
    built = text_task.build_model(spec, FORMATS[fmt], fmt)
    config = built.model.config
    expected_class = "MeanPoolingForSequenceClassification" if pooling == "mean" else "BertForSequenceClassification"
    assert type(built.model).__name__ == expected_class
    assert config.problem_type == PROBLEM_TYPES[fmt]
    assert config.num_labels == len(FORMATS[fmt]) and built.model.classifier.out_features == len(FORMATS[fmt])
    assert config.id2label == dict(enumerate(FORMATS[fmt]))

    settings = PrepareSettings(AugmentationSpec(), TokenizationSpec(max_length=16, padding=padding), 0)
    prepared = text_task.prepare(built, {"train": _text_ds(fmt)}, settings)
    rows = [prepared.splits["train"][i] for i in range(4)]
    batch = prepared.collate(rows)
    assert batch["labels"].dtype == LABEL_DTYPES[fmt]
    assert tuple(batch["labels"].shape) == {"single": (4,), "multi_label": (4, 3), "regression": (4,)}[fmt]
    assert batch["labels"].tolist() == ROW_LABELS[fmt]
    built.model.eval()
    out = built.model(**batch)
    assert out.loss.item() == pytest.approx(_reference_loss(fmt, out.logits, batch["labels"]).item(), rel=1e-5)


def test_simple_cnn_loss_refuses_labels_of_the_wrong_shape():
    built = image_task.build_model(_image_specs(Path())["simple_cnn"], NAMES, "multi_label")
    pixels = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"multi-hot rows \(float tensor of shape \[2, 3\]\), got torch.int64"):
        built.model(pixel_values=pixels, labels=torch.tensor([0, 2]))
    regression = image_task.build_model(_image_specs(Path())["simple_cnn"], TARGET, "regression")
    with pytest.raises(ValueError, match=r"one number per output \(float tensor of shape \[2\]\), got .* \[2, 3\]"):
        regression.model(pixel_values=pixels, labels=torch.zeros(2, 3))
    # [N, 1] targets are one number per row too
    out = regression.model(pixel_values=pixels, labels=torch.tensor([[1.0], [2.0]]))
    assert out.loss.item() == pytest.approx(((out.logits[:, 0] - torch.tensor([1.0, 2.0])) ** 2).mean().item())


def test_collation_refuses_labels_that_do_not_fit_the_problem_type():
    rows = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": 1.0},
        {"pixel_values": torch.zeros(3, 4, 4), "labels": 0.0},
    ]
    with pytest.raises(DataError, match=r"multi-label batch needs one multi-hot row per input .* got shape \[2\]"):
        image_task.collate(rows, PROBLEM_TYPES["multi_label"])
    rows = [{"pixel_values": torch.zeros(3, 4, 4), "labels": [1.0, 0.0]}] * 2
    with pytest.raises(DataError, match=r"regression batch needs one number per input .* got shape \[2, 2\]"):
        image_task.collate(rows, PROBLEM_TYPES["regression"])


def test_bad_format_target_and_problem_type_key_are_refused(tiny_bert_dir: Path):
    with pytest.raises(ModelError, match=r"regression head has one output.* 3 label names"):
        image_task.build_model(_image_specs(Path())["simple_cnn"], NAMES, "regression")
    with pytest.raises(ModelError, match=r"data.label_format 'multilabel': expected one of single, multi_label"):
        text_task.build_model(ModelSpec(name=str(tiny_bert_dir)), NAMES, "multilabel")
    spec = ModelSpec(name=str(tiny_bert_dir), config={"problem_type": "regression"})
    with pytest.raises(ModelError, match=r"model.config.problem_type: .* set data.label_format instead"):
        text_task.build_model(spec, NAMES, "single")


@pytest.mark.parametrize("task_name", ["image-classification", "text-classification"])
def test_saved_folders_load_with_problem_type_and_thresholds(task_name, tiny_bert_dir: Path, tmp_path: Path):
    task = get_task(task_name)
    spec = _image_specs(Path())["simple_cnn"] if task_name == "image-classification" else ModelSpec(str(tiny_bert_dir))
    for fmt in ("multi_label", "regression"):
        built = task.build_model(spec, FORMATS[fmt], fmt)
        if fmt == "multi_label":
            setattr(built.model.config, LABEL_THRESHOLDS_KEY, {"cat": 0.3, "dog": 0.5, "outdoor": 0.75})
        folder = tmp_path / fmt
        built.model.save_pretrained(folder)
        built.processor.save_pretrained(folder)
        loaded = task.load_trained(folder).model.config
        assert loaded.problem_type == PROBLEM_TYPES[fmt]
        assert loaded.id2label == dict(enumerate(FORMATS[fmt]))
    assert getattr(loaded, LABEL_THRESHOLDS_KEY, None) is None  # regression has none
    multi = task.load_trained(tmp_path / "multi_label").model.config
    assert getattr(multi, LABEL_THRESHOLDS_KEY) == {"cat": 0.3, "dog": 0.5, "outdoor": 0.75}

    # a threshold file edited by hand is checked when the folder loads, naming the key and the fix
    import json

    config_file = tmp_path / "multi_label" / "config.json"
    saved = json.loads(config_file.read_text())
    saved[LABEL_THRESHOLDS_KEY] = {"cat": 0.3, "dgo": 0.5, "outdoor": 0.75}
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ModelError, match=r"label_thresholds names \['dgo'\] .* lacks \['dog'\]"):
        task.load_trained(tmp_path / "multi_label")
    saved[LABEL_THRESHOLDS_KEY] = {"cat": 0.3, "dog": 1.5, "outdoor": 0.75}
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ModelError, match=r"\{'dog': 1.5\} are not thresholds in \[0, 1\]"):
        task.load_trained(tmp_path / "multi_label")


def test_batch_mixer_is_built_only_for_single_label():
    aug = AugmentationSpec(mixup_alpha=0.2, cutmix_alpha=1.0)
    assert image_task.batch_mixer(aug, 3) is not None
    assert image_task.batch_mixer(aug, 3, 0.0, "single") is not None
    for fmt in ("multi_label", "regression"):
        assert image_task.batch_mixer(aug, 3, 0.0, fmt) is None
        assert text_task.batch_mixer(aug, 3, 0.0, fmt) is None
