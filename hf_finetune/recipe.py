"""Recipes: YAML file + dotted overrides → a frozen, validated `Recipe`.

Every problem (unknown key, wrong type, impossible value) is collected and reported at once, each naming the key,
what was given and how to fix it. The `training:` section keeps transformers' own `TrainingArguments` names.
Keys and types come first (choice fields are `Literal` types, checked with the others); once they are all right,
each section's `problems()` checks its own values, in section order, then the rules that span sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import RecipeError
from .names import RECIPE_FILE

# Choice fields are `Literal` types: the coercion code checks them like any other type (see `_coerce`).
TaskName = Literal["image-classification", "text-classification"]
TASKS: tuple[TaskName, ...] = typing.get_args(TaskName)
TransferStrategy = Literal["full", "linear_probe", "head_only", "partial", "lp_ft"]
TRANSFER_STRATEGIES: tuple[TransferStrategy, ...] = typing.get_args(TransferStrategy)
AugmentationPreset = Literal["none", "light", "standard", "strong"]
PeftMethod = Literal["none", "lora"]
PEFT_METHODS: tuple[PeftMethod, ...] = typing.get_args(PeftMethod)
# lp_ft's backbone learning rate = learning_rate × this, unless the recipe sets it. 1: LP-FT (Kumar et al., 2022)
# fine-tunes at full fine-tuning's learning rate; what protects the features is the fitted head, not a smaller rate.
# At 0.1 the backbone barely moved and lp_ft lost to the probe it started from (EfficientNet-Lite0, 1,293 digits:
# 0.906 test accuracy at 0.1, 0.961 at 1, frozen-feature logistic regression 0.925; benchmarks/README.md, quality)
DEFAULT_FINE_TUNE_LR_SCALE = 1.0
# What a fitted linear probe never uses: no epochs, optimizer, schedule or train-time batches (features are computed
# once with the eval batch size and preprocessing). A recipe that writes one with linear_probe is refused.
TRAINING_ONLY_KEYS = (
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "optim",
    "optim_args",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "gradient_accumulation_steps",
    "per_device_train_batch_size",
    "label_smoothing_factor",
    "load_best_model_at_end",
    "gradient_checkpointing",
    "early_stopping",
)
# `training:` keys the toolkit takes beside TrainingArguments' own fields (trainer.training_arguments leaves them out)
TOOLKIT_TRAINING_KEYS = ("early_stopping",)

# Augmentation presets fill in the options a recipe does not set itself.
AUGMENTATION_PRESETS: dict[AugmentationPreset, dict[str, Any]] = {
    "none": {},
    "light": {"random_resized_crop": True, "scale": [0.5, 1.0], "horizontal_flip": 0.5},
    "standard": {
        "random_resized_crop": True,
        "scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
    },
    "strong": {
        "random_resized_crop": True,
        "scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "rand_augment": True,
        "rand_augment_magnitude": 9,
        "random_erasing": 0.25,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
    },
}
# The field's type and the presets' table list the same names in the same order (error messages show that order);
# tests/test_recipe.py checks that they agree.


def _expects(wording: str) -> dict[str, str]:
    """Field metadata: what a wrong value's message says is expected, instead of the generic wording."""
    return {"expects": wording}


# (keys, is_wrong, what is expected instead): a set value (null is never checked) that is_wrong is reported as
# `section.key: <what is expected>, got <value>`.
_Ranges = Iterable[tuple[tuple[str, ...], Callable[[Any], bool], str]]


def _out_of_range(spec: object, section: str, ranges: _Ranges) -> list[str]:
    out = []
    for keys, is_wrong, expected in ranges:
        for key in keys:
            value = getattr(spec, key)
            if value is not None and is_wrong(value):
                out.append(f"{section}.{key}: {expected}, got {value}")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """Which network to fine-tune.

    `name` is `simple_cnn`, `timm/<hub id>` (e.g. `timm/resnet50.a1_in1k`), `timm:<architecture>` (e.g.
    `timm:resnet18`), or any transformers image-classification model id or local folder.
    """

    name: str = ""
    pretrained: bool = True
    # Overrides for the model's config (simple_cnn options, timm `model_args`, or transformers config fields).
    config: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # input size override; default: the model's own preprocessing config
    weights: str | None = None  # a local checkpoint (safetensors or a state dict) loaded before the head is replaced
    revision: str | None = None
    trust_remote_code: bool = False
    # text models: the features the head reads. mean: the mean of the last hidden state over the attention mask (what
    # sentence-transformers checkpoints were trained for); cls: the model's own head ([CLS] / pooler); auto: mean when
    # the checkpoint's 1_Pooling/config.json says mean pooling, else cls
    pooling: Literal["auto", "cls", "mean"] = field(default="auto", metadata=_expects("'auto', 'cls' or 'mean'"))

    @property
    def is_timm(self) -> bool:
        """A timm model: `timm:<architecture>` (built here) or `timm/<hub id>` (a timm checkpoint on the Hub)."""
        return self.name.startswith(("timm:", "timm/"))

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = []
        if not self.name:
            out.append("model.name: missing; e.g. simple_cnn, timm:resnet18, timm/resnet50.a1_in1k, google/vit-base…")
        return out + _out_of_range(self, "model", [(("image_size",), lambda x: x < 8, "must be at least 8 pixels")])


@dataclass(frozen=True)
class DataSpec:
    """Where the labelled images come from and how the splits are formed."""

    source: str = ""  # builtin:digits|tweets | image folder | csv/json/jsonl/parquet file | Hub dataset id
    config: str | None = None  # Hub dataset configuration name
    files: dict[str, str] = field(default_factory=dict)  # split name -> file, e.g. {train: a.csv, test: b.csv}
    image_column: str = "image"  # image tasks
    text_column: str = "text"  # text tasks
    text_pair_column: str | None = None  # text tasks: second sentence of a pair (NLI, paraphrase…)
    label_column: str = "label"
    # single: one class per row; multi_label: any number of labels per row (a list column, a delimited string, or
    # label_columns); regression: a number per row
    label_format: Literal["single", "multi_label", "regression"] = field(
        default="single", metadata=_expects("'single', 'multi_label' or 'regression'")
    )
    label_delimiter: str = "|"  # multi_label: separates the labels of a string column, e.g. "cat|outdoor"
    label_columns: list[str] | None = None  # multi_label: one 0/1 column per label, instead of label_column
    allow_empty_labels: bool = False  # multi_label: rows with no label at all are allowed (else an error)
    standardize_targets: bool = False  # regression: targets scaled to train's mean 0 / std 1, undone at predict
    encoding: str | None = None  # CSV/JSON text encoding, e.g. latin-1; default UTF-8
    # rows with an empty or null text: "error" (stop, counted) or "skip" (warn, drop)
    empty_text: Literal["error", "skip"] = field(default="error", metadata=_expects("'error' or 'skip'"))
    train_split: str = "train"
    validation_split: str | None = None  # None: "validation"/"valid"/"val"/"dev" if present; "none": split train
    test_split: str | None = None  # None: use "test" if present; "none": no test split
    validation_size: float = 0.1
    # carve a test split out of train too (a fraction of train, like validation_size: 0.1 and 0.1 leave 0.8 to train)
    # when the data has none; stratified, and group-whole with data.group_column. None: no test split is carved
    test_size: float | None = None
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    check_images: bool = True  # open every image before training so a corrupt file fails fast, by name
    # images: "decoded" decodes each image once into the split's Arrow table (datasets' map cache, reused by later
    # runs), so epochs skip decoding; "off" decodes every image every epoch
    cache: Literal["off", "decoded"] = field(
        default="off", metadata=_expects("'off' (decode every epoch) or 'decoded' (decode once, keep the pixels)")
    )
    # exact and near duplicates within and across splits, and inputs under conflicting labels (data/duplicates.py):
    # warn (log and record them), error (stop on cross-split copies or conflicting labels), drop (keep one copy: in
    # test before validation before train), off (no check)
    # a column naming each row's group (patient, device, session): a carved validation split keeps every group whole,
    # and groups found in more than one given split are reported (hf_finetune/data/groups.py)
    group_column: str | None = None
    duplicates: Literal["warn", "error", "drop", "off"] = field(
        default="warn", metadata=_expects("'warn', 'error', 'drop' or 'off'")
    )
    # stream the train split instead of loading it (data larger than the disk; hf_finetune/data/streaming.py):
    # validation/test stay map-style, labels come from the features or data.labels, checks run on a sample
    streaming: bool = False
    labels: list[str] | None = None  # streaming: the class names, in id order (when the features carry none)
    check_sample: int = 1000  # streaming: how many train rows the pre-flight checks read
    shuffle_buffer: int = 1000  # streaming: datasets' shuffle buffer (examples); the shard order is shuffled too

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = self._streaming_problems()
        if not self.source and not self.files:
            out.append("data.source: missing; e.g. builtin:digits, ./my_images, train.csv or a Hub dataset id")
        out += self._label_problems()
        both = (self.test_size or 0) + self.validation_size
        if self.test_size is not None and 0 < self.test_size < 1 and 0 < self.validation_size < 1 and both >= 1:
            out.append(
                f"data.test_size ({self.test_size:g}) + data.validation_size ({self.validation_size:g}) leave no "
                "train rows; both are fractions of train: make their sum less than 1, e.g. 0.1 and 0.1"
            )
        return out + _out_of_range(
            self,
            "data",
            [
                (
                    ("validation_size", "test_size"),
                    lambda x: not 0 < x < 1,
                    "must be between 0 and 1 (a fraction of train)",
                ),
                (("max_train_samples", "max_eval_samples"), lambda x: x < 1, "must be at least 1 (or null for all)"),
                # numpy's seeding refuses it only once the data is loaded
                (("seed",), lambda x: not 0 <= x < 2**32, "expected a seed between 0 and 2**32 - 1"),
            ],
        )

    def _streaming_problems(self) -> list[str]:
        """Keys that read only under streaming, and what a stream cannot do (it is read once, in order)."""
        out = []
        if not self.streaming:
            for key, default in (("labels", None), ("check_sample", 1000), ("shuffle_buffer", 1000)):
                if getattr(self, key) != default:
                    out.append(f"data.{key}: applies with data.streaming: true only; remove it or set data.streaming")
            return out
        if self.cache != "off":
            out.append(
                f"data.cache: {self.cache} stores the decoded train split to reuse every epoch; a stream is read "
                "once, as it arrives; set data.cache: off or data.streaming: false"
            )
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            out.append(f"data.labels: {self.labels!r}; list at least two distinct class names, in id order")
        if self.check_sample < 1 or self.shuffle_buffer < 1:
            out.append("data.check_sample and data.shuffle_buffer: must be at least 1")
        if self.label_format != "single":
            out.append(
                f"data.streaming: label_format {self.label_format} reads every row's labels before training; "
                "streaming supports label_format single; set data.streaming: false"
            )
        for key, default, why in (
            ("group_column", None, "keeping groups whole needs every row's group before splitting"),
            ("test_size", None, "carving a test split out of train needs the whole train split"),
        ):
            if getattr(self, key) != default:
                out.append(f"data.{key}: {why}, which a stream does not give; remove it or set data.streaming: false")
        if self.duplicates in ("error", "drop"):
            out.append(
                f"data.duplicates: {self.duplicates} needs every row hashed before training; under streaming the "
                "check reads data.check_sample rows: set data.duplicates: warn (the sample is reported) or off"
            )
        return out

    def _label_problems(self) -> list[str]:
        """Label keys that do not go with `label_format` (or with each other)."""
        out = []
        fmt = self.label_format
        # keys that only one format reads: written with another, they would be silently ignored
        for key, default, only in (
            ("label_columns", None, "multi_label"),
            ("label_delimiter", "|", "multi_label"),
            ("allow_empty_labels", False, "multi_label"),
            ("standardize_targets", False, "regression"),
        ):
            if getattr(self, key) != default and fmt != only:
                out.append(
                    f"data.{key}: applies to label_format {only} only, not {fmt}; remove it or set "
                    f"data.label_format: {only}"
                )
        if not self.label_delimiter and fmt == "multi_label":
            out.append('data.label_delimiter: must not be empty; e.g. "|" for labels written as cat|outdoor')
        if self.label_columns is not None:
            if not self.label_columns:
                out.append("data.label_columns: empty; list the 0/1 columns, one per label, e.g. [cat, outdoor]")
            repeated = sorted({c for c in self.label_columns if self.label_columns.count(c) > 1})
            if repeated:
                out.append(f"data.label_columns: {repeated} listed more than once; list each column once")
            if self.label_column != "label":
                out.append(
                    f"data.label_column ({self.label_column!r}) is not read when data.label_columns is set (one 0/1 "
                    "column per label); remove one of them"
                )
            if self.label_delimiter != "|" and fmt == "multi_label":
                out.append(
                    "data.label_delimiter: splits a string column of labels, but data.label_columns reads one 0/1 "
                    "column per label; remove one of them"
                )
        return out


@dataclass(frozen=True)
class AugmentationSpec:
    """Train-time augmentation, added on top of the model's own preprocessing."""

    random_resized_crop: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    horizontal_flip: float = 0.0  # probability
    vertical_flip: float = 0.0  # probability
    rotation: float = 0.0  # max degrees, either way
    brightness: float = 0.0  # jitter strength, as torchvision's ColorJitter
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # at most 0.5
    rand_augment: bool = False  # torchvision RandAugment (2 ops)
    rand_augment_magnitude: int = 9  # 0..30
    trivial_augment: bool = False  # torchvision TrivialAugmentWide
    random_erasing: float = 0.0  # probability, on the normalised tensor
    mixup_alpha: float = 0.0  # batch-level mixup (timm's Mixup), soft-target loss
    cutmix_alpha: float = 0.0  # batch-level CutMix
    mixup_prob: float = 1.0  # probability a batch is mixed at all
    mixup_switch_prob: float = 0.5  # with both on: chance of CutMix instead of mixup
    preset: AugmentationPreset | None = None  # fills the options not set explicitly (AUGMENTATION_PRESETS)

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        probability = "a probability between 0 and 1"
        out = _out_of_range(
            self,
            "augmentation",
            [
                (("horizontal_flip", "vertical_flip"), lambda x: not 0 <= x <= 1, probability),
                (
                    ("brightness", "contrast", "saturation", "rotation", "mixup_alpha", "cutmix_alpha"),
                    lambda x: x < 0,
                    "must be >= 0",
                ),
                (("random_erasing", "mixup_prob", "mixup_switch_prob"), lambda x: not 0 <= x <= 1, probability),
                (("hue",), lambda x: not 0 <= x <= 0.5, "between 0 and 0.5"),
                (("rand_augment_magnitude",), lambda x: not 0 <= x <= 30, "0..30"),
            ],
        )
        if self.rand_augment and self.trivial_augment:
            out.append("augmentation: rand_augment and trivial_augment are alternatives; keep one")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            out.append(f"augmentation.scale: need 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            out.append(f"augmentation.ratio: need 0 < min <= max, got {list(self.ratio)}")
        return out

    @property
    def mixes(self) -> bool:
        """Batch-level mixup or CutMix is on (each sample is mixed with another of its batch)."""
        return bool(self.mixup_alpha or self.cutmix_alpha)


@dataclass(frozen=True)
class TransferSpec:
    """Which parameters train, and at which learning rate (see hf_finetune/transfer.py)."""

    strategy: TransferStrategy = "full"
    unfreeze_last: int | None = None  # partial, and lp_ft's fine-tuning stage: how many of the last blocks train
    # lp_ft: unset = the fitted probe (hf_finetune/probe.py); written = that many epochs of the head training alone
    probe_epochs: float | None = None
    fine_tune_lr_scale: float | None = None  # lp_ft: backbone learning rate = learning_rate × this (default 1)
    layer_decay: float | None = None  # layer-wise learning-rate decay, e.g. 0.75
    head_lr: float | None = None  # the head's learning rate (default: training.learning_rate)

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = [
            f"transfer.{key}: applies to strategy lp_ft only, not {self.strategy}; remove it or use strategy lp_ft"
            for key in ("probe_epochs", "fine_tune_lr_scale")
            if getattr(self, key) is not None and self.strategy != "lp_ft"
        ]
        if self.strategy == "linear_probe":
            out += [
                f"transfer.{key}: linear_probe fits its head with no learning rate; remove it, or use strategy "
                "head_only (the head trains with the Trainer)"
                for key in ("head_lr", "layer_decay")
                if getattr(self, key) is not None
            ]
        return out + _out_of_range(
            self,
            "transfer",
            [
                (("layer_decay",), lambda x: not 0 < x <= 1, "between 0 (exclusive) and 1"),
                (("probe_epochs",), lambda x: x <= 0, "must be > 0"),
                (("fine_tune_lr_scale",), lambda x: not 0 < x <= 1, "between 0 (exclusive) and 1"),
                (("head_lr",), lambda x: x <= 0, "must be > 0"),
            ],
        )


@dataclass(frozen=True)
class PeftSpec:
    """Parameter-efficient fine-tuning with peft (see hf_finetune/lora.py): `method: lora` trains low-rank adapters
    in the backbone's blocks and the whole new head; the output folder gets the merged model and `adapter/`."""

    method: PeftMethod = "none"
    r: int = 8  # the adapters' rank
    alpha: float = 16.0  # LoRA's scale is alpha / r
    dropout: float = 0.1  # on each adapter's input
    # auto: the Linear layers inside the backbone's blocks (Conv2d for a network whose blocks have no Linear), never
    # the head; or module names (`query`, `value`, `blocks.11.attn.qkv`), each of which must name a module
    target_modules: Literal["auto"] | list[str] = field(
        default="auto", metadata=_expects("'auto' or a list of module names, e.g. [query, value]")
    )

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        if not self.enabled:
            written = [
                f.name for f in dataclasses.fields(self) if f.name != "method" and getattr(self, f.name) != f.default
            ]
            return [
                f"peft.{key}: applies to peft.method lora, and peft.method is none; set peft.method: lora or remove it"
                for key in written
            ]
        out = _out_of_range(
            self,
            "peft",
            [
                (("r",), lambda x: x < 1, "a rank of at least 1"),
                (("alpha",), lambda x: x <= 0, "must be > 0"),
                (("dropout",), lambda x: not 0 <= x < 1, "between 0 and 1 (1 exclusive)"),
            ],
        )
        if isinstance(self.target_modules, list) and not self.target_modules:
            out.append("peft.target_modules: an empty list adapts nothing; name modules or write auto")
        return out


@dataclass(frozen=True)
class LossSpec:
    """The training loss beyond TrainingArguments' own `label_smoothing_factor`: class weights (single-label
    cross-entropy), positive weights (multi-label BCE with logits) and MSE or Huber (regression)."""

    # "balanced" (inverse class frequency in train) or one weight per class
    class_weights: Literal["balanced"] | list[float] | None = field(
        default=None, metadata=_expects("'balanced' or a list with one weight per class")
    )
    # multi_label: BCEWithLogitsLoss's pos_weight: "balanced" (negatives / positives of each label in train) or one
    # weight per label
    pos_weight: Literal["balanced"] | list[float] | None = field(
        default=None, metadata=_expects("'balanced' or a list with one weight per label")
    )
    # regression: mean squared error, or Huber (quadratic within huber_delta of the target, linear beyond)
    regression: Literal["mse", "huber"] = field(default="mse", metadata=_expects("'mse' or 'huber'"))
    huber_delta: float = 1.0  # regression with huber, in the units the model is trained on

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = []
        for key in ("class_weights", "pos_weight"):
            weights = getattr(self, key)
            if isinstance(weights, list) and any(w < 0 for w in weights):
                out.append(f"loss.{key}: weights must be >= 0, got {weights}")
        if not self.huber_delta > 0:
            out.append(f"loss.huber_delta: must be above 0, got {self.huber_delta}")
        return out


@dataclass(frozen=True)
class CardSpec:
    """The model card (README.md) written into the output folder."""

    template: str | None = None  # a Jinja template file; default: the shipped one for the task
    license: str | None = None  # e.g. apache-2.0, mit; goes into the card's metadata
    language: str | list[str] | None = None  # text tasks, e.g. en

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        if self.template is not None and not Path(self.template).expanduser().is_file():
            return [f"card.template: no such file {self.template!r}"]
        return []


@dataclass(frozen=True)
class HubSpec:
    """Pushing the output folder to the Hugging Face Hub at the end of training (the token comes from HF_TOKEN or
    `hf auth login`, never from the recipe)."""

    push: bool = False
    repo_id: str | None = None  # USER/NAME or ORG/NAME
    private: bool = False
    revision: str | None = None  # branch to push to; default: main
    include_checkpoints: bool = False
    include: list[str] = field(default_factory=list)  # pickles to push anyway (hf-finetune push --include)
    delete_missing: bool = False  # also delete files on the branch that hf_finetune did not push

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = []
        if self.push and not self.repo_id:
            out.append("hub.repo_id: needed when hub.push is true, e.g. your-name/my-classifier")
        if self.repo_id is not None and self.repo_id.count("/") != 1:
            out.append(f"hub.repo_id: expected USER/NAME or ORG/NAME, got {self.repo_id!r}")
        return out


@dataclass(frozen=True)
class TokenizationSpec:
    """Text tasks: the model's own fast tokenizer, truncation, and padding per batch (dynamic) by default."""

    # a number of tokens, or "auto" (null too): the 99th percentile of the training texts' token lengths, rounded up
    # to a multiple of 8 and capped at the model's limit (at most 512); the run saves the number it chose
    max_length: Literal["auto"] | int | None = field(
        default="auto", metadata=_expects("a number of tokens (at least 2), 'auto' or null (auto)")
    )
    # "dynamic" (pad each batch to its longest) or "max_length" (every row to max_length)
    padding: Literal["dynamic", "max_length"] = field(default="dynamic", metadata=_expects("'dynamic' or 'max_length'"))

    @property
    def fixed_length(self) -> int | None:
        """The recipe's own number of tokens; None for auto (or null)."""
        return self.max_length if isinstance(self.max_length, int) else None

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        at_least_two = "at least 2 tokens (or auto)"
        return _out_of_range(
            self, "tokenization", [(("max_length",), lambda x: isinstance(x, int) and x < 2, at_least_two)]
        )


@dataclass(frozen=True)
class MetricsSpec:
    """Accuracy, precision/recall/F1 (macro, weighted, per class) and the confusion matrix are always computed."""

    top_k: list[int] = field(default_factory=list)  # e.g. [5] adds top5_accuracy
    extra: list[str] = field(default_factory=list)  # more `evaluate` metrics by name or path (Hub ones need network)
    # only used as the default when training keeps the best model; None: accuracy (single), map (multi_label, it
    # needs no threshold), rmse (regression, lower is better)
    metric_for_best_model: str | None = None
    # multi_label: "tune" (each label's F1-best threshold on the validation split, saved with the model) or one
    # threshold in (0, 1) for every label; None: tune
    thresholds: Literal["tune"] | float | None = field(
        default=None, metadata=_expects("'tune' or a threshold between 0 and 1, e.g. 0.5")
    )
    # majority: the majority-class baseline only (always there); linear: also a logistic regression fitted on the
    # pretrained model's frozen features before training (hf_finetune/probe.py), scored on every evaluated split
    baseline: Literal["majority", "linear"] = field(default="majority", metadata=_expects("'majority' or 'linear'"))
    # single: temperature scales the logits by one T fitted on the validation split after training, folded into the
    # head's output Linear (hf_finetune/calibration.py) and recorded in config.json; none: the logits as trained
    calibration: Literal["temperature", "none"] = field(default="none", metadata=_expects("'temperature' or 'none'"))
    # images: the final evaluation's test-time augmentation (hf_finetune/tta.py): flip averages each image with its
    # mirror, crops with five 7/8 crops; `eval` uses it too unless --tta says otherwise. none: one view
    tta: Literal["none", "flip", "crops"] = field(default="none", metadata=_expects("'none', 'flip' or 'crops'"))

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right)."""
        out = [f"metrics.top_k: each k must be >= 1, got {k}" for k in self.top_k if k < 1]
        t = self.thresholds
        if isinstance(t, float) and not 0 < t < 1:
            out.append(f"metrics.thresholds: a fixed threshold must be between 0 and 1 (exclusive), got {t}")
        return out


# `sweep.space` values: a list of choices, or {distribution: [low, high]} with one of these (int may add `log: true`)
SWEEP_DISTRIBUTIONS = ("loguniform", "uniform", "int")
# what a trial may not vary: the sweep sets each trial's folder itself, and these are one command's actions
SWEEP_FIXED_KEYS = ("training.output_dir", "training.resume_from_checkpoint", "overwrite", "name")
SWEEP_FIXED_SECTIONS = ("sweep", "hub")


@dataclass(frozen=True)
class SweepSpec:
    """`hf-finetune sweep`: an Optuna search over dotted recipe keys (hf_finetune/tuning.py). `hf-finetune train`
    trains the recipe's own values and says that this section is left to `sweep`."""

    trials: int = 10  # finished (complete or pruned) trials to reach; --trials overrides it
    # dotted recipe key -> [choice, ...] or {loguniform|uniform|int: [low, high]} (int also takes log: true)
    space: dict[str, Any] = field(default_factory=dict)
    # median: a trial whose evaluation is below the median of earlier trials' at the same epoch stops there
    pruner: Literal["median", "none"] = field(default="median", metadata=_expects("'median' or 'none'"))
    startup_trials: int = 5  # median: trials that finish before any is pruned (Optuna's own default)
    prune_after: int = 1  # median: the first evaluation (epoch) of a trial at which it may be pruned
    seed: int = 0  # the TPE sampler's seed

    @property
    def dimensions(self) -> dict[str, Any]:
        """`space` with every key dotted: an override `sweep.space.training.learning_rate=[…]` arrives nested
        ({training: {learning_rate: […]}}). Only an undotted key's mapping that names no distribution is such a
        nesting: under a dotted key it is a misspelt distribution, and reported as one."""
        return _dotted_space(self.space)

    def problems(self) -> list[str]:
        """This section's impossible values (keys and types are already right); the values a recipe would refuse
        are checked by `sweep` itself, by loading the recipe with each bound and choice applied."""
        out = []
        for key, value in self.dimensions.items():
            out += _space_entry_problems(key, value)
        defaults = SweepSpec()
        out += [
            f"sweep.{key}: applies to pruner median only, not none; remove it or set sweep.pruner: median"
            for key in ("startup_trials", "prune_after")
            if self.pruner == "none" and getattr(self, key) != getattr(defaults, key)
        ]
        return out + _out_of_range(
            self,
            "sweep",
            [
                (("trials",), lambda x: x < 1, "at least 1 trial"),
                (("startup_trials",), lambda x: x < 0, "0 or more trials"),
                (("prune_after",), lambda x: x < 1, "at least 1 (the first evaluation)"),
                (("seed",), lambda x: not 0 <= x < 2**32, "a seed between 0 and 2**32 - 1"),
            ],
        )


def _dotted_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in space.items():
        nested = isinstance(value, dict) and value and not set(value) & {*SWEEP_DISTRIBUTIONS, "log"}
        if nested and "." not in str(key):
            out |= _dotted_space(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _space_entry_problems(key: str, value: Any) -> list[str]:
    where = f"sweep.space.{key}"
    if key in SWEEP_FIXED_KEYS or key.split(".")[0] in SWEEP_FIXED_SECTIONS:
        return [
            f"{where}: not something a sweep varies (the sweep sets each trial's folder itself, and {key} belongs "
            "to one command); remove it from sweep.space"
        ]
    if isinstance(value, list):
        if not value:
            return [f"{where}: an empty list of choices; list at least one value, e.g. [16, 32]"]
        odd = [v for v in value if not isinstance(v, (str, int, float, bool)) and v is not None]
        if odd:
            return [f"{where}: a choice must be a number, a string, true/false or null, got {odd[0]!r}"]
        repeated = sorted({str(v) for v in value if value.count(v) > 1})
        return [f"{where}: {repeated} listed more than once; list each choice once"] if repeated else []
    shape = "a list of choices, or {loguniform|uniform|int: [low, high]}"
    if not isinstance(value, dict):
        return [f"{where}: expected {shape}, got {value!r}; a fixed value belongs in the recipe itself"]
    named = [k for k in value if k in SWEEP_DISTRIBUTIONS]
    extra = [k for k in value if k not in SWEEP_DISTRIBUTIONS and not (k == "log" and named == ["int"])]
    if len(named) != 1 or extra:
        unknown = f"; {extra[0]!r} is not one{_did_you_mean(str(extra[0]), SWEEP_DISTRIBUTIONS)}" if extra else ""
        return [f"{where}: expected {shape} with one distribution of {list(SWEEP_DISTRIBUTIONS)}{unknown}"]
    kind, bounds = named[0], value[named[0]]
    number = int if kind == "int" else (int, float)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b, number) for b in bounds)):
        what = "whole numbers" if kind == "int" else "numbers"
        return [f"{where}: {kind} takes [low, high], two {what}, got {bounds!r}"]
    low, high = bounds
    out = []
    if not low < high:
        out.append(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        out.append(f"{where}: loguniform needs low > 0 (it samples the logarithm), got {low}")
    log = value.get("log", False)
    if kind == "int" and not isinstance(log, bool):
        out.append(f"{where}.log: expected true or false, got {log!r}")
    elif kind == "int" and log and low < 1:
        out.append(f"{where}: int with log: true needs low >= 1, got {low}")
    return out


def _is_number(value: Any, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


# Paths and texts as they are: no \xe9 escapes, no long value folded at a space onto the next line.
_YAML_STYLE: dict[str, Any] = {"sort_keys": False, "allow_unicode": True, "width": 1 << 20}


@dataclass(frozen=True)
class Recipe:
    task: TaskName = "image-classification"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    augmentation: AugmentationSpec = field(default_factory=AugmentationSpec)
    tokenization: TokenizationSpec = field(default_factory=TokenizationSpec)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    peft: PeftSpec = field(default_factory=PeftSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    card: CardSpec = field(default_factory=CardSpec)
    hub: HubSpec = field(default_factory=HubSpec)
    # Passed to transformers.TrainingArguments unchanged (same names as transformers).
    training: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)  # read by `hf-finetune sweep` only
    overwrite: bool = False  # allow replacing another run's results in training.output_dir
    name: str | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        out = _plain(dataclasses.asdict(self))
        if self.sweep == SweepSpec():
            del out["sweep"]  # a recipe without a search: its saved copies read as before
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def for_rerun(self) -> Recipe:
        """This recipe without the one-off actions of the command that ran it: overwriting the output folder,
        pushing to the Hub, resuming. Those belong to one command line, not to the run, so the copy saved with
        the outputs can be run again without wiping, publishing or resuming by itself."""
        training = {k: v for k, v in self.training.items() if k != "resume_from_checkpoint"}
        return dataclasses.replace(
            self, overwrite=False, hub=dataclasses.replace(self.hub, push=False), training=training
        )

    def to_saved_yaml(self) -> str:
        """The `recipe.yaml` written into the output folder: `for_rerun()`, with a header saying what was left out."""
        saved = self.for_rerun().to_dict()
        del saved["overwrite"]  # the default (false); an action, not a setting of the run
        lines = [
            "# The resolved recipe of the run in this folder, written by hf_finetune.",
            "# Resume it:     hf-finetune train <this file> --resume",
            "# Train again:   hf-finetune train <this file> --output-dir <another folder>",
        ]
        if self.hub.push:
            lines += [
                f"# The run was set to push to the Hub as {self.hub.repo_id}; hub.push is false here so that running",
                f"# this file again does not publish again. Push again: hf-finetune push <this folder> --repo-id "
                f"{self.hub.repo_id}",
            ]
        if self.training.get("resume_from_checkpoint"):
            lines.append("# The run resumed from a checkpoint; resume_from_checkpoint is left out (use --resume).")
        return "\n".join(lines) + "\n" + dump_yaml(saved)


# --------------------------------------------------------------------------------------------- loading

# YAML 1.1 (PyYAML's default) reads `no`/`off`/`yes`/`on` as booleans and `1e-4` as a string: transformers' own
# values (`eval_strategy: no`) and the usual way to write a learning rate would arrive changed. Recipes and overrides
# are read with YAML 1.2's core schema instead: only true/false are booleans, `1e-4` is a float, `010` is ten, and
# dates stay strings.
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YAML11_ONLY = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
_YAML12_RESOLVERS = [
    (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    (_INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|[-+]?0o[0-7_]+|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789")),
    (
        _FLOAT,
        re.compile(
            r"^(?:[-+]?(?:\.[0-9][0-9_]*|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    ),
]


class RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 core-schema scalars (see above); still no Python objects."""


class RecipeDumper(yaml.SafeDumper):
    """`yaml.SafeDumper` that also quotes the strings `RecipeLoader` would read as numbers (`'1e-4'`, `'08'`), so a
    dumped recipe reads back the same with either loader."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeDumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
for _tag, _regexp, _first in _YAML12_RESOLVERS:
    RecipeLoader.add_implicit_resolver(_tag, _regexp, _first)
    RecipeDumper.add_implicit_resolver(_tag, _regexp, _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    digits = text.lstrip("+-")
    # YAML 1.2: a leading zero is still decimal; octal is written 0o17
    return int(text, 0) if digits[:2].lower() in ("0o", "0x") else int(text, 10)


RecipeLoader.add_constructor(_INT, _construct_int)


def read_yaml(text: str) -> Any:
    """Parse recipe YAML (a file's text or an override's value) with `RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: plain data only


def read_saved_recipe(output_dir: str | Path) -> dict[str, Any]:
    """The raw mapping of an output folder's `recipe.yaml`, read as recipes are; {} when it has none."""
    saved = Path(output_dir) / RECIPE_FILE
    raw = read_yaml(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    return raw if isinstance(raw, dict) else {}


def load_saved_recipe(output_dir: str | Path, task: TaskName) -> Recipe:
    """An output folder's resolved recipe, validated like any recipe; the defaults for `task` when it has none
    (a model trained elsewhere, or a folder from before recipes were saved)."""
    saved = Path(output_dir) / RECIPE_FILE
    return load_recipe(saved) if saved.is_file() else Recipe(task=task)


def dump_yaml(data: Any) -> str:
    """YAML text for a recipe that `read_yaml` (and `yaml.safe_load`) read back unchanged."""
    # never folded: a long path split over two lines would escape the push's path redaction
    return yaml.dump(data, Dumper=RecipeDumper, **_YAML_STYLE)


def shipped_dir(name: str) -> Path:
    """`recipes` or `model_cards`: inside the installed package, or at the repo root in a source checkout."""
    pkg = Path(__file__).resolve().parent
    installed = pkg / "_shipped" / name
    return installed if installed.is_dir() else pkg.parent / name


RECIPE_FOLDERS = ("image", "text")  # recipes/accelerate holds accelerate launch configs, not recipes


def list_recipes() -> dict[str, Path]:
    """Shipped recipes by name (the file stem, e.g. `quickstart`, `resnet50`)."""
    root = shipped_dir("recipes")
    return {p.stem: p for folder in RECIPE_FOLDERS for p in sorted((root / folder).glob("*.yaml"))}


def accelerate_configs() -> dict[str, Path]:
    """Shipped `accelerate launch --config_file` files by name (single_gpu, multi_gpu_ddp, fsdp, two_machines)."""
    return {p.stem: p for p in sorted((shipped_dir("recipes") / "accelerate").glob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file from a path, or a shipped recipe from a bare name (`quickstart`: no folder, no .yaml).

    A path that does not exist is an error, never a shipped recipe of the same name: `./mine/resnet50.yaml` with a
    typo in the folder must not quietly train the shipped resnet50 on other data."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    shipped = list_recipes()
    if _is_bare_name(text):
        if text in shipped:
            return shipped[text]
        raise RecipeError(
            [
                f"no shipped recipe named {text!r}{_did_you_mean(text, shipped)}; `hf-finetune recipes ls` lists "
                "them (a recipe file is given by its path, e.g. ./my_recipe.yaml)"
            ]
        )
    if path.is_dir():
        raise RecipeError([f"recipe {text!r} is a folder; give a recipe file (.yaml) in it"])
    hints = []
    if not path.parent.is_dir():
        hints.append(f"the folder {str(path.parent)!r} does not exist")
    else:
        siblings = {p.name: p for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()}
        close = difflib.get_close_matches(path.name, list(siblings), n=1, cutoff=0.6)
        if close:
            hints.append(f"did you mean {str(siblings[close[0]])!r}?")
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    close = difflib.get_close_matches(stem, list(shipped), n=1, cutoff=0.6)
    if close:
        hints.append(f"for the shipped recipe {close[0]!r}, give its bare name: hf-finetune train {close[0]}")
    raise RecipeError([f"recipe file {text!r}: no such file" + "".join(f"; {h}" for h in hints)])


def _is_bare_name(text: str) -> bool:
    """`quickstart` names a shipped recipe; anything with a folder or a YAML suffix is a path."""
    separators = {"/", "\\"} | ({os.sep, os.altsep} - {None})
    return (
        not any(sep in text for sep in separators)
        and not text.endswith((".yaml", ".yml"))
        and text not in ("", ".", "..")
    )


def load_recipe(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Recipe:
    """Read a recipe (path, shipped name, dict or Recipe), apply overrides, validate everything at once."""
    source = None
    if isinstance(recipe, Recipe):
        raw = recipe.to_dict()
    elif isinstance(recipe, dict):
        raw = _plain(recipe)
    else:
        path = find_recipe(recipe)
        source = str(path)
        try:
            raw = read_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise RecipeError([f"not valid YAML: {err}"], source) from None
        if not isinstance(raw, dict):
            raise RecipeError([f"a recipe is a mapping of sections, got {type(raw).__name__}"], source)
        raw.setdefault("name", path.stem)
    problems: list[str] = []
    for key, value in _override_items(overrides, problems):
        _set_dotted(raw, key, value, problems)
    _expand_preset(raw)
    recipe_obj = _build(Recipe, raw, "", problems)
    recipe_obj = dataclasses.replace(recipe_obj, training=_check_training(recipe_obj.training, problems))
    _check_training_values(recipe_obj.training, problems)
    # keys and types everywhere first: the value checks only make sense once those are right
    if not problems:
        problems = _value_problems(recipe_obj)
    if problems:
        raise RecipeError(problems, source)
    return _with_default_output_dir(recipe_obj)


def _expand_preset(raw: dict[str, Any]) -> None:
    """`augmentation.preset` fills the augmentation keys the recipe leaves unset (explicit keys win); an unknown
    preset fills nothing and is reported with the section's other types."""
    aug = raw.get("augmentation")
    preset = aug.get("preset") if isinstance(aug, dict) else None
    if isinstance(preset, str) and preset in AUGMENTATION_PRESETS:
        for key, value in AUGMENTATION_PRESETS[typing.cast(AugmentationPreset, preset)].items():
            aug.setdefault(key, value)


def parse_override(text: str) -> tuple[str, Any]:
    """`training.learning_rate=1e-4` -> ("training.learning_rate", 0.0001); values are read as recipe YAML, so
    `training.eval_strategy=no` stays the string "no"."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE (e.g. training.learning_rate=1e-4)")
    key, _, value = text.partition("=")
    return key.strip(), read_yaml(value) if value.strip() else None


def _override_items(overrides: list[str] | dict[str, Any] | None, problems: list[str]) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        items: list[tuple[str, Any]] = []
        for key, value in overrides.items():
            # finetune(recipe, training={"num_train_epochs": 1}) merges into the section, key by key
            if isinstance(value, dict) and "." not in key and key in {f.name for f in dataclasses.fields(Recipe)}:
                items.extend((f"{key}.{k}", v) for k, v in _flatten(value))
            else:
                items.append((key, value))
        return items
    out = []
    for text in overrides:
        try:
            out.append(parse_override(text))
        except (ValueError, yaml.YAMLError) as err:
            problems.append(str(err))
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _set_dotted(raw: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            problems.append(f"override {key}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
            return
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------- validation


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Dataclass from a dict, appending a problem for every unknown key and wrong type instead of raising."""
    where = prefix.rstrip(".") or "recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a section (mapping), got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(
                f"{prefix}{key}: unknown key{_did_you_mean(str(key), fields)}; {where} takes {list(fields)}"
            )
            continue
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            kwargs[key] = _build(expected, value, f"{prefix}{key}.", problems)
            continue
        ok, converted = _coerce(value, expected)
        if ok:
            kwargs[key] = converted
        else:
            problems.append(f"{prefix}{key}: {_refused(value, expected, fields[key].metadata)}")
    return cls(**kwargs)


def _refused(value: Any, expected: Any, metadata: Mapping[str, Any]) -> str:
    """What a problem says about a value its field's type refuses: the field's own wording when it has one."""
    if "expects" in metadata:
        return f"{metadata['expects']}, got {value!r}"
    choices = _choices(expected)
    if choices:
        return f"{value!r} is not one of {list(choices)}{_did_you_mean(str(value), choices)}"
    return f"expected {_type_name(expected)}, got {value!r}{_quote_hint(value, expected)}"


def _choices(hint: Any) -> tuple[Any, ...]:
    """The values a `Literal[...]` (or `Literal[...] | None`) field takes; () for any other type."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(hint) if a is not type(None)]
        return _choices(others[0]) if len(others) == 1 else ()
    return ()


def _quote_hint(value: Any, expected: Any) -> str:
    """A number (or true/false) where a string was wanted: YAML read it as one; quotes keep it text."""
    takes_str = expected is str or str in typing.get_args(expected)
    if takes_str and isinstance(value, (bool, int, float)):
        return f" (YAML read it as {type(value).__name__}; write it in quotes to keep it text)"
    return ""


def _coerce(value: Any, expected: Any) -> tuple[bool, Any]:
    """(ok, value) for a value against a type hint; YAML strings like '1e-4' count as floats."""
    if expected is Any:
        return True, value
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(expected))
    if origin is Literal:
        # the very value, not an equal one of another type (true == 1)
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(expected)), value
    if origin in (list, tuple):
        return _coerce_items(value, expected)
    if origin is dict:
        return isinstance(value, dict), value
    scalar = _SCALARS.get(expected)
    return scalar(value) if scalar else (True, value)


def _coerce_union(value: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    if value is None and type(None) in args:
        return True, None
    if isinstance(value, str) and str in args:
        return True, value  # `bool | str` keeps "no" as written: converting is for fields that take no strings
    for arg in args:
        if arg is type(None):
            continue
        ok, converted = _coerce(value, arg)
        if ok:
            return True, converted
    return False, value


def _coerce_items(value: Any, expected: Any) -> tuple[bool, Any]:
    """A list (any length, one item type) or a tuple (one type per position), from a YAML list."""
    args = typing.get_args(expected)
    as_list = typing.get_origin(expected) is list
    if not isinstance(value, (list, tuple)) or (not as_list and len(value) != len(args)):
        return False, value
    hints = [args[0] if args else Any] * len(value) if as_list else args
    out = []
    for item, hint in zip(value, hints, strict=True):
        ok, converted = _coerce(item, hint)
        if not ok:
            return False, value
        out.append(converted)
    return True, out if as_list else tuple(out)


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _to_bool(value: Any) -> tuple[bool, Any]:
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return True, _BOOL_WORDS[value.lower()]  # YAML 1.1's yes/no/on/off, for fields that are true/false
    return isinstance(value, bool), value


def is_count(value: object) -> bool:
    """A count of at least 1 (batch sizes, top_k, samples); true/false are not numbers here."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _to_int(value: Any) -> tuple[bool, Any]:
    return isinstance(value, int) and not isinstance(value, bool), value


def _to_float(value: Any) -> tuple[bool, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True, float(value)
    if isinstance(value, str):
        try:
            return True, float(value)
        except ValueError:
            return False, value
    return False, value


def _to_str(value: Any) -> tuple[bool, Any]:
    return isinstance(value, str), value


_SCALARS: dict[Any, Callable[[Any], tuple[bool, Any]]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} numbers"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# Renamed or removed in transformers 5: say what to write instead of a bare "unknown key".
_TRAINING_RENAMED = {
    "evaluation_strategy": "use eval_strategy (renamed in transformers 5)",
    "overwrite_output_dir": "removed in transformers 5; set the top-level `overwrite: true` or pass --overwrite",
    "no_cuda": "use use_cpu: true (renamed in transformers 5)",
    "warmup_ratio": "use warmup_steps with a float below 1, e.g. 0.1 (transformers 5)",
    "logging_dir": "removed in transformers 5; logs go under output_dir",
    "group_by_length": "use train_sampling_strategy: group_by_length (transformers 5)",
}


# Trainer's own Hub pushing would bypass the toolkit's card and staging, and a token in a recipe ends up in
# recipe.yaml and training_args.bin: both belong to the `hub:` section and the usual token store.
_TRAINING_REFUSED = {
    "push_to_hub": "use the recipe's hub section (hub.push: true, hub.repo_id: USER/NAME)",
    "hub_model_id": "use hub.repo_id",
    "hub_strategy": "hub.push uploads the finished output folder (hub.include_checkpoints for checkpoints)",
    "hub_private_repo": "use hub.private",
    "hub_revision": "use hub.revision",
    "hub_always_push": "use the recipe's hub section",
    "hub_token": "never put a token in a recipe: set HF_TOKEN or run `hf auth login`",
}


def _training_fields() -> dict[str, Any]:
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def _check_training(training: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    fields = _training_fields()
    out = {}
    for key, value in training.items():
        if key in _TRAINING_RENAMED:
            problems.append(f"training.{key}: {_TRAINING_RENAMED[key]}")
            continue
        if key in _TRAINING_REFUSED:
            shown = "" if key == "hub_token" else f" (got {value!r})"
            problems.append(f"training.{key}: not taken here{shown}; {_TRAINING_REFUSED[key]}")
            continue
        if key == "early_stopping":
            stopping = _early_stopping_value(value, problems)
            if stopping is not None:
                out[key] = stopping
            continue
        if key not in fields:
            problems.append(f"training.{key}: not a transformers.TrainingArguments field{_did_you_mean(key, fields)}")
            continue
        hint = fields[key]
        if key == "resume_from_checkpoint" and isinstance(value, bool):
            value = "latest" if value else None  # `true` means what --resume means: the newest complete checkpoint
        choices = _enum_choices(hint)
        if choices and value is not None:
            if not isinstance(value, str) or value not in choices:
                problems.append(f"training.{key}: {_choice_problem(value, choices)}")
                continue
            out[key] = choices[choices.index(value)]  # a plain string even if given as the Enum: it dumps as YAML
            continue
        # Only plain scalar fields are type-checked here; TrainingArguments itself checks the rest.
        scalar = {bool, int, float, str}
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if value is not None and all(b in scalar for b in base):
            ok, converted = _coerce(value, hint)
            if not ok:
                problems.append(f"training.{key}: expected {_type_name(hint)}, got {value!r}")
                continue
            value = converted
        out[key] = value
    return out


_EARLY_STOPPING_EXAMPLE = "e.g. training.early_stopping: {patience: 3, threshold: 0.001}"


def _early_stopping_value(value: Any, problems: list[str]) -> dict[str, Any] | None:
    """training.early_stopping: {patience: N (evaluations without improvement), threshold: x (the improvement that
    counts, in the metric's units; default 0)} — transformers' EarlyStoppingCallback arguments. null: off."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"training.early_stopping: expected a mapping, got {value!r}; {_EARLY_STOPPING_EXAMPLE}")
        return None
    unknown = sorted(set(value) - {"patience", "threshold"})
    if unknown:
        problems.append(
            f"training.early_stopping: unknown key(s) {unknown}; it takes patience and threshold "
            f"({_EARLY_STOPPING_EXAMPLE}){_did_you_mean(str(unknown[0]), ['patience', 'threshold'])}"
        )
    patience, threshold = value.get("patience"), value.get("threshold", 0.0)
    ok_patience = is_count(patience)
    if not ok_patience:
        problems.append(
            "training.early_stopping.patience: expected how many evaluations without improvement end the run "
            f"(a whole number >= 1), got {patience!r}"
        )
    ok_threshold, threshold = _to_float(threshold) if not isinstance(threshold, bool) else (False, threshold)
    if not ok_threshold or threshold < 0:
        problems.append(
            "training.early_stopping.threshold: expected the improvement that counts, a number >= 0 in the "
            f"metric's units (0: any improvement), got {value.get('threshold')!r}"
        )
        ok_threshold = False
    if unknown or not ok_patience or not ok_threshold:
        return None
    return {"patience": int(patience), "threshold": float(threshold)}


def _enum_choices(hint: Any) -> list[str]:
    """The values of the Enum in a `SomeEnum | str` TrainingArguments hint (eval_strategy, optim…), else []."""
    import enum

    for arg in typing.get_args(hint) or (hint,):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return [str(member.value) for member in arg]
    return []


def _choice_problem(value: Any, choices: list[str]) -> str:
    shown = choices if len(choices) <= 12 else [*choices[:12], "…"]
    text = f"expected one of {shown}, got {value!r}"
    if isinstance(value, bool):
        # a YAML 1.1 reader (yaml.safe_load) turns an unquoted no/off into false before it reaches us
        word = "no" if not value and "no" in choices else None
        return text + (f"; write {word!r} in quotes" if word else "; write the value in quotes")
    return text + _did_you_mean(str(value), choices)


# TrainingArguments takes these values without complaint, but they train nothing, crash mid-run or are silently
# ignored; (rule, what to write instead) per key. `x` is the value, already of the field's type.
_TRAINING_RANGES: dict[str, tuple[Any, str]] = {
    "learning_rate": (lambda x: x >= 0, "a learning rate >= 0, e.g. 5e-5"),
    "per_device_train_batch_size": (lambda x: x >= 1, "a batch size of at least 1"),
    "per_device_eval_batch_size": (lambda x: x >= 1, "a batch size of at least 1"),
    "gradient_accumulation_steps": (lambda x: x >= 1, "at least 1 (1: no accumulation)"),
    "eval_accumulation_steps": (lambda x: x >= 1, "at least 1, or null to keep predictions on the device"),
    "weight_decay": (lambda x: x >= 0, "a weight decay >= 0, e.g. 0.01"),
    "warmup_steps": (
        lambda x: 0 <= x < 1 or x == int(x),
        "a fraction of the run below 1 (e.g. 0.1) or a whole number of steps >= 0",
    ),
    "label_smoothing_factor": (lambda x: 0 <= x < 1, "a smoothing factor in [0, 1), e.g. 0.1"),
    "save_total_limit": (lambda x: x >= 1, "at least 1, or null to keep every checkpoint"),
    "max_grad_norm": (lambda x: x >= 0, "a norm >= 0 (0 turns clipping off), e.g. 1.0"),
    "adam_beta1": (lambda x: 0 <= x < 1, "a value in [0, 1), e.g. 0.9"),
    "adam_beta2": (lambda x: 0 <= x < 1, "a value in [0, 1), e.g. 0.999"),
    "adam_epsilon": (lambda x: x >= 0, "a value >= 0, e.g. 1e-8"),
    "seed": (lambda x: 0 <= x < 2**32, "a seed between 0 and 2**32 - 1"),
    "data_seed": (lambda x: 0 <= x < 2**32, "a seed between 0 and 2**32 - 1, or null to use seed"),
    "dataloader_num_workers": (lambda x: x >= 0, "0 (load in the main process) or more worker processes"),
    "logging_steps": (lambda x: x > 0, "a number of steps >= 1, or a fraction of the run below 1"),
    "eval_steps": (lambda x: x > 0, "a number of steps >= 1, a fraction of the run below 1, or null"),
    "save_steps": (lambda x: x > 0, "a number of steps >= 1, or a fraction of the run below 1"),
    "eval_delay": (lambda x: x >= 0, "a number of epochs or steps >= 0 to wait before the first evaluation"),
}


def _check_training_values(training: dict[str, Any], problems: list[str]) -> None:
    """Numeric `training:` values that TrainingArguments accepts but that make no sense, all reported at once."""
    for key, (ok, expected) in _TRAINING_RANGES.items():
        value = training.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            problems.append(f"training.{key}: expected {expected}, got {value!r}")
    max_steps = training.get("max_steps")
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        problems.append(
            f"training.max_steps: expected a positive number of steps, or -1 (the default) to train for "
            f"num_train_epochs, got {max_steps!r}"
        )
    epochs = training.get("num_train_epochs")
    steps_set = isinstance(max_steps, int) and max_steps > 0  # then max_steps decides and epochs are not used
    if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs <= 0 and not steps_set:
        problems.append(
            f"training.num_train_epochs: expected a number of epochs > 0 (e.g. 3, or 0.5 for half an epoch), "
            f"got {epochs!r}: nothing would be trained; or set training.max_steps"
        )
    if training.get("early_stopping") and training.get("eval_strategy") == "no":
        problems.append(
            "training.early_stopping: needs evaluations to count, and training.eval_strategy is 'no'; set "
            "eval_strategy to 'epoch' or 'steps', or remove early_stopping"
        )
    report_to = training.get("report_to")
    named = [report_to] if isinstance(report_to, str) else report_to if isinstance(report_to, list) else []
    if [n for n in named if n not in ("none", "all")]:
        problems.extend(_report_to_problems(named))
    scheduler_kwargs = training.get("lr_scheduler_kwargs")
    if isinstance(scheduler_kwargs, dict) and scheduler_kwargs:
        problems.extend(_scheduler_kwargs_problems(training.get("lr_scheduler_type", "linear"), scheduler_kwargs))


def _report_to_problems(names: list[Any]) -> list[str]:
    """Trackers Trainer cannot start: it raises (unknown name, package missing) only when the run is set up."""
    from transformers.integrations import integration_utils

    installed = integration_utils.get_available_reporting_integrations()
    out = []
    for name in names:
        if name in ("none", "all") or name in installed:
            continue
        if name not in integration_utils.INTEGRATION_TO_CALLBACK:
            known = list(integration_utils.INTEGRATION_TO_CALLBACK)
            out.append(
                f"training.report_to: {name!r} is not a tracker transformers knows{_did_you_mean(str(name), known)}"
            )
        else:
            command = f"pip install {_TRACKER_PACKAGES.get(name, name)}"
            out.append(f"training.report_to: {name!r} is not installed; {command}, or set report_to: none")
    return out


# report_to name -> what to pip install where it is not the name itself (tensorboard: hf_finetune's extra)
_TRACKER_PACKAGES = {
    "tensorboard": '"hf_finetune[tensorboard]"',
    "azure_ml": "azureml-core",
    "dagshub": "dagshub mlflow",
    "flyte": "flytekit flytekitplugins-deck-standard",
}


def _scheduler_kwargs_problems(name: Any, kwargs: dict[str, Any]) -> list[str]:
    """Options the scheduler function does not take: a TypeError when training starts, or (constant schedules)
    silently dropped by transformers.get_scheduler."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    try:
        kind = SchedulerType(name)
    except ValueError:
        return []  # TrainingArguments names an unknown lr_scheduler_type itself
    if kind in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP):
        return [
            f"training.lr_scheduler_kwargs: lr_scheduler_type {kind.value!r} takes no options, got {sorted(kwargs)}; "
            "remove them or choose a scheduler that uses them"
        ]
    params = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[kind]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []  # passed on to a torch scheduler that checks them itself
    takes = [n for n in params if n not in ("optimizer", "num_warmup_steps", "num_training_steps")]
    where = f"not an option of the {kind.value!r} scheduler"
    return [
        f"training.lr_scheduler_kwargs.{key}: {where}{_did_you_mean(key, takes)}; it takes {takes}"
        for key in kwargs
        if key not in takes
    ]


def _value_problems(recipe: Recipe) -> list[str]:
    """Each section's own value checks, in the recipe's section order, then the rules that span sections."""
    sections = [getattr(recipe, f.name) for f in dataclasses.fields(recipe)]
    own = [problem for section in sections if dataclasses.is_dataclass(section) for problem in section.problems()]
    return own + _cross_section_problems(recipe)


def _cross_section_problems(recipe: Recipe) -> list[str]:
    out = _linear_probe_problems(recipe) + _linear_baseline_problems(recipe) + _label_format_problems(recipe)
    out += _peft_problems(recipe) + _streaming_problems(recipe)
    if recipe.task != "text-classification" and recipe.model.pooling != "auto":
        out.append(f"model.pooling: {recipe.model.pooling!r} applies to text-classification only; remove it")
    a = recipe.augmentation
    if recipe.task == "text-classification" and a.mixes:
        out.append("augmentation.mixup_alpha/cutmix_alpha: mixing applies to images only")
    if recipe.task == "text-classification" and a != AugmentationSpec():
        out.append("augmentation: image augmentation does not apply to text-classification; remove the section")
    if recipe.task == "text-classification" and recipe.data.cache != "off":
        out.append(
            f"data.cache: {recipe.data.cache} stores decoded image pixels; it does not apply to text-classification "
            "(tokenized text is cached by datasets already); remove it"
        )
    if recipe.task == "text-classification" and recipe.metrics.tta != "none":
        out.append(
            f"metrics.tta: {recipe.metrics.tta!r} averages over flipped or cropped views of an image; a text has "
            "none, so it does not apply to text-classification; remove it"
        )
    # mixup/CutMix mixes each sample with another one of its batch: a batch of one cannot be mixed
    batch = recipe.training.get("per_device_train_batch_size", 8)  # TrainingArguments' default
    if a.mixes and isinstance(batch, int) and batch < 2:
        out.append(
            f"training.per_device_train_batch_size: mixup/CutMix mixes each sample with another of its batch and "
            f"needs at least 2 per device, got {batch}; raise it or set augmentation.mixup_alpha/cutmix_alpha to 0"
        )
    return out


def _streaming_problems(recipe: Recipe) -> list[str]:
    """data.streaming with what needs the whole train split in memory at once."""
    if not recipe.data.streaming:
        return []
    out = []
    if recipe.transfer.strategy in ("linear_probe", "lp_ft") or recipe.metrics.baseline == "linear":
        out.append(
            "data.streaming: transfer.strategy linear_probe/lp_ft and metrics.baseline linear fit on the features of "
            "the whole train split at once; use transfer.strategy full or partial (no baseline), or stream off"
        )
    if recipe.training.get("max_steps", -1) in (None, -1) and "num_train_epochs" in recipe.training:
        epochs = recipe.training["num_train_epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not float(epochs).is_integer():
            out.append(
                f"training.num_train_epochs: {epochs!r}; under data.streaming max_steps is derived from whole "
                "passes over the stream: give a whole number, or set training.max_steps"
            )
    return out


# metric_for_best_model's default per data.label_format (threshold-free for multi_label)
BEST_METRIC = {"single": "accuracy", "multi_label": "map", "regression": "rmse"}


def best_metric(recipe: Recipe) -> str:
    """The metric that picks the best checkpoint (and the probe's regularisation) when the recipe names none."""
    return recipe.metrics.metric_for_best_model or BEST_METRIC[recipe.data.label_format]


def _label_format_problems(recipe: Recipe) -> list[str]:
    """Keys that only one label format reads (written with another they would be ignored), and what the multi-label
    and regression losses cannot do: class weights, label smoothing and mixup are defined on one class per row."""
    fmt = recipe.data.label_format
    out = []
    only = [
        ("metrics.thresholds", recipe.metrics.thresholds is not None, "multi_label"),
        ("metrics.calibration", recipe.metrics.calibration != "none", "single"),
        ("loss.pos_weight", recipe.loss.pos_weight is not None, "multi_label"),
        ("loss.regression", recipe.loss.regression != "mse", "regression"),
        ("loss.huber_delta", recipe.loss.huber_delta != 1.0, "regression"),
    ]
    for key, written, needs in only:
        if written and fmt != needs:
            out.append(f"{key}: applies to data.label_format {needs} only, not {fmt}; remove it")
    if recipe.loss.huber_delta != 1.0 and fmt == "regression" and recipe.loss.regression != "huber":
        out.append("loss.huber_delta: applies to loss.regression huber only; set loss.regression: huber or remove it")
    if fmt == "single":
        return out
    instead = "loss.pos_weight (one weight per label)" if fmt == "multi_label" else "nothing: regression has no classes"
    if recipe.loss.class_weights is not None:
        out.append(f"loss.class_weights: weights classes of single-label data, not {fmt}; use {instead}")
    if recipe.training.get("label_smoothing_factor"):
        out.append(
            f"training.label_smoothing_factor: smooths one-hot class targets, and data.label_format {fmt} has "
            "none (transformers applies it to cross-entropy only); remove it"
        )
    if recipe.augmentation.mixes:
        out.append(
            f"augmentation.mixup_alpha/cutmix_alpha: mixing makes soft class targets, which data.label_format {fmt} "
            "does not train on in this version; set them to 0"
        )
    return out


def _linear_probe_problems(recipe: Recipe) -> list[str]:
    """A fitted probe uses no epochs, optimizer or augmentation: a recipe writing them would be ignored, so it is
    refused (the epoch-trained probe that uses them is strategy head_only)."""
    if recipe.transfer.strategy != "linear_probe":
        return []
    out = []
    written = [f"training.{k}" for k in TRAINING_ONLY_KEYS if k in recipe.training]
    if recipe.augmentation != AugmentationSpec():
        written.append("augmentation")
    if written:
        out.append(
            f"{', '.join(written)}: transfer.strategy linear_probe fits the head on features computed once with eval "
            "preprocessing, so it uses no epochs, optimizer, learning rate or augmentation; remove them, or use "
            "strategy head_only (the head trains with the Trainer for num_train_epochs)"
        )
    if recipe.training.get("resume_from_checkpoint"):
        out.append(
            "training.resume_from_checkpoint (--resume): transfer.strategy linear_probe is one fit, with no "
            "checkpoints to resume from; run it again with --overwrite"
        )
    return out


def _peft_problems(recipe: Recipe) -> list[str]:
    """What LoRA cannot combine with: strategies that leave it nothing to train, and options whose parameter names
    (per-layer learning rates, a mid-run unfreeze) are the plain model's, not those of the adapters."""
    if not recipe.peft.enabled:
        return []
    t, out = recipe.transfer, []
    if t.strategy in ("linear_probe", "head_only"):
        out.append(
            f"peft.method lora: transfer.strategy {t.strategy} trains only the head, so LoRA would have nothing to "
            "adapt; use strategy full (adapters in every block), partial (in the last transfer.unfreeze_last blocks) "
            "or lp_ft (adapters after the fitted probe), or set peft.method: none"
        )
    for key, why in (
        ("layer_decay", "per-layer learning rates are set on the plain model's parameters, not on the adapters"),
        ("head_lr", "the head and the adapters train with training.learning_rate"),
        ("probe_epochs", "the head-only epochs unfreeze the backbone's own parameters mid-run"),
        ("fine_tune_lr_scale", "the adapters train with training.learning_rate"),
    ):
        if getattr(t, key) is not None:
            out.append(
                f"transfer.{key}: not available with peft.method lora ({why}); remove it or set peft.method: none"
            )
    m = recipe.model
    if (m.name == "simple_cnn" or not m.pretrained) and not m.weights:
        why = "simple_cnn starts" if m.name == "simple_cnn" else "with model.pretrained false the model starts"
        out.append(
            f"peft.method lora: {why} from random weights, and an adapter only works on the base it was trained "
            "on, which nothing could rebuild; start from trained weights (model.pretrained: true, or model.weights: "
            "<a checkpoint>), or set peft.method: none"
        )
    return out


def _linear_baseline_problems(recipe: Recipe) -> list[str]:
    """The linear baseline reads the pretrained model's features: a model that starts from random weights has none
    worth fitting on (a logistic regression on a random network's features says nothing about fine-tuning)."""
    m = recipe.model
    from_scratch = (m.name == "simple_cnn" or not m.pretrained) and not m.weights
    if recipe.metrics.baseline != "linear" or not from_scratch:
        return []
    if m.name == "simple_cnn":
        why, fix = "simple_cnn always starts from random weights", "model.weights: <a trained checkpoint>"
    else:
        why, fix = "model.pretrained is false", "model.pretrained: true, or model.weights: <a checkpoint>"
    return [
        f"metrics.baseline: 'linear' fits a logistic regression on the pretrained model's frozen features, and {why}, "
        "so there are no pretrained features to compare with; remove metrics.baseline (the majority-class baseline is "
        f"always reported), or start from trained weights ({fix})"
    ]


def _with_default_output_dir(recipe: Recipe) -> Recipe:
    """`training.output_dir` defaults to outputs/<recipe name> (logged by the trainer)."""
    if "output_dir" in recipe.training:
        return recipe
    training = {**recipe.training, "output_dir": str(Path("outputs") / (recipe.name or "run"))}
    return dataclasses.replace(recipe, training=training)


def _plain(obj: Any) -> Any:
    """Tuples → lists and Paths → str so the recipe dumps as plain YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
