"""Image classification: build the model and its image processor, and the train/eval transforms.

Model names:
  simple_cnn               the classic conv → pool → flatten → dense → dropout net, trained from scratch
  timm:<architecture>      a timm architecture (e.g. timm:resnet18) inside transformers' TimmWrapper
  timm/<hub id>            a timm checkpoint on the Hub (e.g. timm/resnet50.a1_in1k), through TimmWrapper
  <model id or folder>     any transformers image-classification model (ViT, ResNet, ConvNeXt…)

Eval preprocessing is the model's own image processor — the same one `pipeline()` uses on the saved model — so the
metrics measure what users will get. Train preprocessing resizes/normalises the same way and adds the recipe's
augmentation with torchvision transforms.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, ModelError
from ..models.weights import load_weights_file
from ..recipe import AugmentationSpec, ModelSpec
from ._common import (
    SINGLE,
    BuiltModel,
    PredictInputs,
    Prepared,
    PrepareSettings,
    Preprocess,
    check_config_keys,
    head_config,
    head_description,
    hub_kwargs,
    label_format_of,
    label_thresholds,
    labels_tensor,
    load_classifier,
    load_error,
    rows_from_logits,
    saved_trust_remote_code,
)

if TYPE_CHECKING:
    import PIL.Image
    import torch
    from datasets import Dataset
    from timm.data import Mixup
    from torchvision.transforms import InterpolationMode
    from transformers import BaseImageProcessor, PreTrainedModel, TimmWrapperImageProcessor

    from ..models import SimpleCNNConfig

logger = logging.getLogger(__name__)

NAME = "image-classification"
PROCESSOR_FILE = "preprocessor_config.json"  # where save_pretrained puts an image processor
ORIENTATION = 0x0112  # the EXIF tag that says how to rotate/flip the stored pixels for viewing
INPUTS = {"image": "image_column"}  # canonical column -> DataSpec key


Builder = Callable[[ModelSpec, list[str], str], BuiltModel]  # (model spec, label names, data.label_format)
_BUILDERS: list[tuple[Callable[[str], bool], Builder]] = []


def register_builder(matches: Callable[[str], bool]) -> Callable[[Builder], Builder]:
    """Register a model builder; the first one whose `matches(model.name)` is true builds the model."""

    def wrap(fn: Builder) -> Builder:
        _BUILDERS.append((matches, fn))
        return fn

    return wrap


def build_model(spec: ModelSpec, label_names: list[str], label_format: str = SINGLE) -> BuiltModel:
    """The model with a head for `label_names` (id2label/label2id set; regression: one output named after the
    target) and `config.problem_type` for `label_format`, and its processor."""
    head_config(label_names, label_format)  # refuse a bad format or target before any weights load
    for matches, builder in _BUILDERS:
        if matches(spec.name):
            built = builder(spec, label_names, label_format)
            logger.info("model: %s, %s", built.description, head_description(label_names, label_format))
            return built
    raise ModelError(f"model.name {spec.name!r}: no builder matches")  # unreachable: the last builder matches all


@register_builder(lambda name: name == "simple_cnn")
def build_simple_cnn(spec: ModelSpec, label_names: list[str], label_format: str = SINGLE) -> BuiltModel:
    from ..models import SimpleCNNConfig, SimpleCNNForImageClassification

    check_config_keys(spec.config, SimpleCNNConfig, "simple_cnn")
    options = dict(spec.config)
    if spec.image_size:
        options["image_size"] = spec.image_size
    try:
        config = SimpleCNNConfig(**options, **head_config(label_names, label_format))
    except (TypeError, ValueError) as err:
        raise ModelError(f"model.config for simple_cnn: {err}") from None
    model = SimpleCNNForImageClassification(config)
    if spec.weights:
        load_weights_file(model, spec.weights, _head_names(model))
    processor = _simple_cnn_processor(config)
    return BuiltModel(model, processor, "simple_cnn (from scratch)", preprocess_from_model(model, processor))


def _simple_cnn_processor(config: SimpleCNNConfig) -> BaseImageProcessor:
    """ViT's resize + normalise, so `pipeline()` on the saved folder prepares images as training did; a 1-channel
    net gets the grayscale variant (pipeline's loader hands every processor RGB), whose code travels with the folder."""
    from transformers import ViTImageProcessor

    from ..models.image_processing_simple_cnn import SimpleCNNImageProcessor

    channels = config.num_channels
    if channels not in (1, 3):
        raise ModelError(
            f"model.config.num_channels {channels}: image files become RGB (3 channels) or grayscale (1) "
            "as pipeline() reads them; use 1 or 3"
        )
    processor_class = SimpleCNNImageProcessor if channels == 1 else ViTImageProcessor
    if channels == 1:
        SimpleCNNImageProcessor.register_for_auto_class()  # save_pretrained copies the code and writes auto_map
    return processor_class(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=[0.5] * channels,
        image_std=[0.5] * channels,
    )


@register_builder(lambda name: name.startswith("timm:"))
def build_timm_architecture(spec: ModelSpec, label_names: list[str], label_format: str = SINGLE) -> BuiltModel:
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    arch = spec.name.removeprefix("timm:")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('*name*')` lists them"
        raise ModelError(f"model.name {spec.name!r}: timm has no architecture {arch!r}{hint}")
    model_args = dict(spec.config)
    try:
        # timm's own init (e.g. zero-init of the last BN per residual block) or its pretrained weights; the wrapper
        # built from a config alone would re-initialise every layer with N(0, 0.02). Hub weights are not fetched
        # when the recipe brings its own file (loaded strictly below: timm's file loader is lenient on a new head).
        source = timm.create_model(
            arch, pretrained=spec.pretrained and not spec.weights, num_classes=len(label_names), **model_args
        )
    except Exception as err:  # network, missing weights or bad model_args: all end the run the same way
        _check_timm_option(arch, err, model_args)
        raise ModelError(
            f"model.name {spec.name!r}: timm.create_model failed ({type(err).__name__}: {err}). "
            + ("Pretrained weights come from the Hub; offline, set model.pretrained: false." if spec.pretrained else "")
        ) from None
    pretrained_cfg = _plain_cfg(source.pretrained_cfg)
    pretrained_cfg["num_classes"] = len(label_names)
    if spec.weights:
        # the weights are the user's file, not the Hub checkpoint the default config names
        for key in ("url", "hf_hub_id", "file", "tag"):
            pretrained_cfg.pop(key, None)
    if spec.image_size:
        pretrained_cfg["input_size"] = [3, spec.image_size, spec.image_size]
    config = TimmWrapperConfig(
        architecture=arch, model_args=model_args or None, **head_config(label_names, label_format)
    )
    config.pretrained_cfg = pretrained_cfg
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(source.state_dict())
    if spec.weights:
        load_weights_file(model, spec.weights, _head_names(model))
    if spec.pretrained or spec.weights:
        zero_head(model)
    processor = _timm_processor(pretrained_cfg, arch)
    kind = f"from {spec.weights}" if spec.weights else "pretrained" if spec.pretrained else "random init"
    return BuiltModel(model, processor, f"timm {arch} ({kind})", preprocess_from_model(model, processor))


def _check_timm_option(arch: str, err: Exception, model_args: dict[str, Any]) -> None:
    """A `model.config` key the timm model class does not take, named with the options it does take."""
    import inspect
    import re
    import sys

    import timm

    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(err))
    if not isinstance(err, TypeError) or not found or found.group(2) not in model_args:
        return
    class_name, key = found.groups()
    module = sys.modules.get(timm.models.model_entrypoint(arch).__module__)
    model_class = getattr(module, class_name, None)
    options = [] if model_class is None else list(inspect.signature(model_class).parameters)
    options = [o for o in options if o not in ("args", "kwargs", "num_classes")]
    close = difflib.get_close_matches(key, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelError(
        f"model.config.{key}: not an option of timm's {arch} ({class_name}){hint}; it takes {options}"
    ) from None


def zero_head(model: PreTrainedModel) -> None:
    """A new head on pretrained features starts at zero: timm's own head init (uniform ±1/√classes for the
    EfficientNet family) starts the loss near 9 instead of ln(classes) and cost 6–30 points of accuracy in the
    EfficientNet-Lite0 benchmark (benchmarks/README.md); zero logits give every class the same start."""
    import torch

    from ..models.structure import head_module

    head = head_module(model)
    modules = head if isinstance(head, (tuple, list)) else [head]
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.zero_()
    logger.info("model: new classification head initialised to zero (pretrained backbone)")


def _head_names(model: PreTrainedModel) -> set[str]:
    """State-dict keys of the classification head (replaced for the new labels, so a checkpoint's may differ)."""
    from ..models.structure import head_parameter_names

    return set(head_parameter_names(model))


def _plain_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(cfg).items()}


def _timm_processor(pretrained_cfg: dict[str, Any], arch: str) -> TimmWrapperImageProcessor:
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=arch)


@register_builder(lambda name: True)
def build_transformers_model(spec: ModelSpec, label_names: list[str], label_format: str = SINGLE) -> BuiltModel:
    from transformers import AutoModelForImageClassification

    from .. import models  # noqa: F401  (registers simple_cnn with the Auto classes: a saved one loads here)
    from ..models.structure import is_timm_model

    model = load_classifier(
        spec, spec.name, label_names, AutoModelForImageClassification, "image classification", label_format
    )
    if is_timm_model(model) and not spec.pretrained:
        _timm_init(model)
    if spec.weights:
        load_weights_file(model, spec.weights, _head_names(model))
    try:
        processor = _load_processor(spec.name, model, **hub_kwargs(spec))
    except Exception as err:
        raise ModelError(
            f"model {spec.name!r} has no image processor config ({type(err).__name__}: {err}); "
            "save one next to the model (preprocessor_config.json)"
        ) from None
    if spec.image_size:
        processor = _resized_processor(processor, spec.image_size)
    kind = "pretrained" if spec.pretrained else "random init"
    description = f"{spec.name} ({type(model).__name__}, {kind})"
    return BuiltModel(model, processor, description, preprocess_from_model(model, processor))


def _timm_init(model: PreTrainedModel) -> None:
    import timm

    cfg = model.config
    source = timm.create_model(cfg.architecture, num_classes=cfg.num_labels, **(cfg.model_args or {}))
    model.timm_model.load_state_dict(source.state_dict())


def _resized_processor(processor: BaseImageProcessor, size: int) -> BaseImageProcessor:
    from ..models.structure import is_timm_processor

    if is_timm_processor(processor):
        cfg = dict(processor.data_config)
        cfg["input_size"] = [3, size, size]
        return _timm_processor(cfg, getattr(processor, "architecture", None) or "")
    if "height" in processor.size:
        processor.size = {"height": size, "width": size}
    else:
        processor.size = {"shortest_edge": size}
    if getattr(processor, "crop_size", None):
        processor.crop_size = {"height": size, "width": size}
    return processor


def load_trained(path: str | Path) -> BuiltModel:
    """A model saved by `finetune` (or any image-classification folder), with its processor."""
    from transformers import AutoModelForImageClassification

    from .. import models  # noqa: F401  (registers simple_cnn)

    trust = saved_trust_remote_code(path)  # the folder's own code runs only if training trusted it
    try:
        model = AutoModelForImageClassification.from_pretrained(str(path), trust_remote_code=trust)
    except Exception as err:
        raise ModelError(load_error(path, "image-classification", err)) from None
    if label_format_of(model.config) == "multi_label":
        label_thresholds(model.config, path)  # a bad `label_thresholds` is refused before anything is predicted
    processor = _saved_processor(path, model, trust)
    return BuiltModel(model, processor, str(path), preprocess_from_model(model, processor))


def _saved_processor(path: str | Path, model: PreTrainedModel, trust: bool) -> BaseImageProcessor | None:
    """The folder's image processor. None only for a 1-channel simple_cnn saved before it had one (the toolkit's
    own transforms then)."""
    if getattr(model.config, "model_type", "") == "simple_cnn" and not (Path(path) / PROCESSOR_FILE).is_file():
        return None
    try:
        return _load_processor(str(path), model, trust_remote_code=trust)
    except Exception as err:
        raise ModelError(
            f"{path}: has a model but its image processor ({PROCESSOR_FILE}) cannot be loaded "
            f"({type(err).__name__}: {err})"
        ) from None


def _load_processor(name: str, model: PreTrainedModel, **kwargs: Any) -> BaseImageProcessor:
    """`AutoImageProcessor`, except that a 1-channel simple_cnn's processor is our own class: the copy of its code
    in the folder (there for users without hf_finetune) never runs here."""
    from transformers import AutoImageProcessor
    from transformers.image_processing_base import ImageProcessingMixin

    from ..models.image_processing_simple_cnn import SimpleCNNImageProcessor

    if getattr(model.config, "model_type", "") == "simple_cnn":
        location = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
        saved, _ = ImageProcessingMixin.get_image_processor_dict(name, **location)
        if saved.get("image_processor_type") == SimpleCNNImageProcessor.__name__:
            return SimpleCNNImageProcessor.from_pretrained(name, **location)
    return AutoImageProcessor.from_pretrained(name, **kwargs)


# --------------------------------------------------------------------------------------------- preprocessing


def preprocess_from_model(model: PreTrainedModel, processor: BaseImageProcessor | None) -> Preprocess:
    """Input size, normalisation and interpolation as the model's processor defines them."""
    from ..models.structure import is_timm_processor

    config = model.config
    channels = int(getattr(config, "num_channels", 3) or 3)
    if processor is None:  # 1-channel simple_cnn
        return Preprocess((config.image_size, config.image_size), (0.5,) * channels, (0.5,) * channels, "bilinear", 1)
    if is_timm_processor(processor):
        cfg = processor.data_config
        _, h, w = cfg["input_size"]
        crop_pct = cfg.get("crop_pct") or 1.0
        # as timm's eval transform: shorter side to floor(size / crop_pct), then a centre crop
        shorter = math.floor(min(h, w) / crop_pct) if crop_pct < 1 else None
        return Preprocess((h, w), tuple(cfg["mean"]), tuple(cfg["std"]), str(cfg["interpolation"]), 3, shorter)
    size = processor.size or {}
    crop = getattr(processor, "crop_size", None) or {}
    shorter = None
    if getattr(processor, "do_center_crop", False) and "height" in crop:
        hw = (crop["height"], crop["width"])
        shorter = size.get("shortest_edge") or min(size.get("height", hw[0]), size.get("width", hw[1]))
    elif "height" in size:
        hw = (size["height"], size["width"])
    elif "shortest_edge" in size:
        hw = (size["shortest_edge"], size["shortest_edge"])
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct and crop_pct < 1:
            shorter = math.floor(size["shortest_edge"] / crop_pct)
    else:
        raise ModelError(f"cannot read the input size from the image processor's size {size!r}")
    mean = tuple(processor.image_mean or (0.5,) * channels)
    std = tuple(processor.image_std or (0.5,) * channels)
    interpolation = _interpolation_name(getattr(processor, "resample", None))
    return Preprocess(hw, mean, std, interpolation, channels, shorter if shorter != min(hw) else None)


def _interpolation_name(resample: Any) -> str:
    if resample is None:
        return "bilinear"
    name = getattr(resample, "name", None) or str(resample)
    if isinstance(resample, int) and not hasattr(resample, "name"):
        name = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}.get(resample, "")
    name = name.lower().split(".")[-1]
    return name if name in {"nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"} else "bilinear"


def to_model_mode(image: PIL.Image.Image, channels: int, source: str | None = None) -> PIL.Image.Image:
    """The image as `pipeline()`'s loader (`transformers.image_utils.load_image`) makes it: EXIF orientation applied,
    then PIL's `convert("RGB")` — transparency is dropped, not composited (a transparent pixel shows the colour
    stored under it, black in most files), palette/CMYK/16-bit converted by PIL (16-bit values saturate at 255).
    A 1-channel model gets that RGB image's PIL grayscale, as its saved processor computes it. `source` (a file
    name) is named in the error for a mode PIL cannot convert."""
    from PIL import ImageOps

    try:
        # `datasets` already applied (and removed) the orientation tag of the images it decoded
        upright = ImageOps.exif_transpose(image) if image.getexif().get(ORIENTATION) else image
        image = upright if upright.mode == "RGB" else upright.convert("RGB")
    except (ValueError, OSError) as err:
        where = source or getattr(image, "filename", "") or "an image"
        raise DataError(
            f"{where}: image mode {image.mode!r} cannot be converted to RGB the way pipeline() reads images "
            f"({type(err).__name__}: {err}); save it as an 8-bit RGB or grayscale PNG/JPEG"
        ) from None
    return image.convert("L") if channels == 1 else image


def build_train_transform(pre: Preprocess, aug: AugmentationSpec) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """PIL image → normalised tensor with augmentation (torchvision transforms, listed in application order)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    interp = InterpolationMode(pre.interpolation)
    # geometry and colour work on the PIL image: tensors lack bicubic/lanczos for rotation and some resizes
    stages: list[Any] = []
    if aug.random_resized_crop:
        stages.append(T.RandomResizedCrop(pre.size, scale=aug.scale, ratio=aug.ratio, interpolation=interp))
    elif pre.resize_shorter:
        stages += [T.Resize(pre.resize_shorter, interpolation=interp), T.CenterCrop(pre.size)]
    else:
        stages.append(T.Resize(pre.size, interpolation=interp))
    if aug.horizontal_flip:
        stages.append(T.RandomHorizontalFlip(aug.horizontal_flip))
    if aug.vertical_flip:
        stages.append(T.RandomVerticalFlip(aug.vertical_flip))
    if aug.rotation:
        stages.append(T.RandomRotation(aug.rotation, interpolation=interp))
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        stages.append(
            T.ColorJitter(
                brightness=aug.brightness or None,
                contrast=aug.contrast or None,
                saturation=aug.saturation or None,
                hue=aug.hue or None,
            )
        )
    if aug.rand_augment:
        stages.append(
            T.RandAugment(num_ops=2, magnitude=aug.rand_augment_magnitude, interpolation=_tensor_safe(interp))
        )
    if aug.trivial_augment:
        stages.append(T.TrivialAugmentWide(interpolation=_tensor_safe(interp)))
    stages += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    if aug.random_erasing:
        # on the normalised tensor, as timm does: erased patches are noise around the mean, not black
        stages.append(T.RandomErasing(p=aug.random_erasing, value="random"))
    return T.Compose(stages)


def _tensor_safe(interp: InterpolationMode) -> InterpolationMode:
    """RandAugment/TrivialAugment geometry takes nearest or bilinear only."""
    from torchvision.transforms import InterpolationMode

    return interp if interp in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR) else InterpolationMode.BILINEAR


def batch_mixer(
    aug: AugmentationSpec, num_labels: int, label_smoothing: float = 0.0, label_format: str = SINGLE
) -> Mixup | None:
    """timm's Mixup/CutMix for training batches (soft targets), or None when the recipe asks for neither. Only
    single-label batches are mixed: timm's Mixup turns class ids into one-hot rows, which multi-hot labels and
    regression targets are not (the recipe refuses mixup for those formats)."""
    if not (aug.mixup_alpha or aug.cutmix_alpha) or label_format != SINGLE:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        label_smoothing=label_smoothing,
        num_classes=num_labels,
    )


class ProcessorTransform:
    """PIL image → tensor through an image processor (a module-level class, so it pickles for `spawn` workers)."""

    def __init__(self, processor: BaseImageProcessor):
        self.processor = processor

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


def build_eval_transform(built: BuiltModel) -> Callable[[PIL.Image.Image], torch.Tensor]:
    """PIL image → tensor exactly as the saved image processor (and so `pipeline()`) prepares it."""
    processor, pre = built.processor, built.preprocess
    if processor is None:
        return build_train_transform(pre, AugmentationSpec())  # no augmentation: deterministic resize + normalise
    return ProcessorTransform(processor)


ROW_ID = "__hf_finetune_row__"  # the column `with_row_ids` adds: a row's number in the split's Arrow table


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """The seed of one row's augmentation in one epoch: a hash, so neighbouring rows and epochs are unrelated."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


_frozen_in: int | None = None  # the process (pid) whose inherited objects are frozen; a forked worker inherits it


def freeze_inherited_heap() -> None:
    """In a DataLoader worker, once: put every object inherited from the main process in the garbage collector's
    permanent generation (`gc.freeze`). A collection writes to the header of every object it visits, so the first
    full collection in a forked worker copies every page of the main process's Python heap that the worker shares
    copy-on-write: measured on a 60,000-image epoch (benchmarks/datapath.py), +66 MB in the worker and, as the
    pages stop being shared, +66 MB in the main process, part-way through the epoch, in each worker and each epoch.
    Freezing splices lists and touches no object. Objects the worker makes later are collected as usual; the main
    process (no worker) is left alone; a `spawn` worker's frozen objects are the modules and the dataset it loaded,
    which live as long as it does anyway."""
    global _frozen_in
    import os

    if _frozen_in == os.getpid():
        return
    import gc

    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        gc.freeze()
        _frozen_in = os.getpid()


class BatchTransform:
    """For `datasets.Dataset.with_transform`: rows of PIL images → `pixel_values` / `labels`.

    With a `seed`, the random augmentation of each row is drawn from torch's CPU generator seeded with
    `sample_seed(seed, epoch, row id)`, and the generator's state is put back afterwards. A row's pixels then depend
    on nothing else: not on the RNG's history, nor on which worker or process decodes it, nor on how many batches a
    resumed run skipped (so `--resume` mid-epoch reproduces the uninterrupted run, and training never disturbs the
    RNG that dropout and mixup draw from). `set_epoch` gives every row a fresh draw; the value lives in shared memory
    so that persistent dataloader workers see it too. Module-level, so it pickles for `spawn`/`forkserver` workers.
    """

    def __init__(self, image_fn: Callable[[PIL.Image.Image], torch.Tensor], channels: int, seed: int | None = None):
        import torch

        self.image_fn = image_fn
        self.channels = channels
        self._seed_epoch = None if seed is None else torch.tensor([seed, 0], dtype=torch.int64).share_memory_()
        self._stages = _split_at_normalisation(image_fn)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        if self._seed_epoch is None:
            return
        if seed is not None:
            self._seed_epoch[0] = seed
        self._seed_epoch[1] = epoch

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        freeze_inherited_heap()
        if PIXELS in batch:  # data.cache: decoded (already converted as to_model_mode converts)
            images = _cached_images(batch, self.channels)
        else:
            images = [to_model_mode(img, self.channels) for img in batch["image"]]
        seeds = None
        if self._seed_epoch is not None and ROW_ID in batch:
            seed, epoch = (int(v) for v in self._seed_epoch)
            seeds = [sample_seed(seed, epoch, int(row)) for row in batch[ROW_ID]]
        out = {"pixel_values": self._pixels(images, seeds)}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def _pixels(self, images: list[PIL.Image.Image], seeds: list[int] | None) -> list[torch.Tensor]:
        """`image_fn` of each image, each under its own seed when `seeds` are given. A transform that ends in
        ToImage → ToDtype(float32) → Normalize (every train transform; the eval one without a processor) has that
        step done once on the stacked uint8 batch: per image it cost more than the rest of the transform (106 of
        187 µs on a 28-px image, 8 µs batched). Same floats either way: the same elementwise ops, none random."""
        import torch
        from torchvision import tv_tensors

        head, normalise, tail = self._stages or (None, None, None)
        # unseeded, a stage after Normalize must draw right after its own image's earlier stages, as rows arrive
        if head is None or (tail is not None and seeds is None):
            return self._each(self.image_fn, images, seeds)
        states: list[torch.Tensor] = []
        raw = self._each(head, images, seeds, states if tail is not None else None)
        if len({tuple(r.shape) for r in raw}) == 1:
            pixels = list(normalise(tv_tensors.Image(torch.stack(raw))).unbind(0))
        else:  # not reached by the toolkit's transforms (every one ends at a fixed size)
            pixels = [normalise(r) for r in raw]
        if tail is None:
            return pixels
        # a stage after Normalize (RandomErasing) draws from where the image's own earlier stages left its seed
        return self._each(tail, pixels, seeds, resume=states)

    @staticmethod
    def _each(
        fn: Callable[[Any], torch.Tensor],
        items: list[Any],
        seeds: list[int] | None,
        keep: list[torch.Tensor] | None = None,
        resume: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """`fn` of each item; with `seeds`, the generator seeded per item (or set to its `resume` state), its state
        after each item appended to `keep`, and its own state put back at the end."""
        import torch

        if seeds is None:
            return [fn(item) for item in items]
        # torchvision's transforms draw only from torch's default CPU generator; torch.manual_seed would also
        # reseed (lazily) every GPU's generator, which the training step uses
        generator = torch.default_generator
        saved = generator.get_state()
        try:
            out = []
            for i, (item, seed) in enumerate(zip(items, seeds, strict=True)):
                if resume is None:
                    generator.manual_seed(seed)
                else:
                    generator.set_state(resume[i])
                out.append(fn(item))
                if keep is not None:
                    keep.append(generator.get_state())
            return out
        finally:
            generator.set_state(saved)


def _split_at_normalisation(fn: Callable[[Any], torch.Tensor]) -> tuple[Any, Any, Any] | None:
    """A torchvision Compose with ToImage → ToDtype(float32, scale) → Normalize as (stages up to ToImage, those two,
    the stages after or None); None for any other transform (an image processor's: applied whole, per image)."""
    import torch
    from torchvision.transforms import v2 as T

    if not isinstance(fn, T.Compose):
        return None
    stages = list(fn.transforms)
    for i in range(len(stages) - 2):
        to_image, to_float, normalise = stages[i : i + 3]
        if (
            type(to_image) is T.ToImage
            and type(to_float) is T.ToDtype
            and to_float.dtype == torch.float32
            and to_float.scale
            and type(normalise) is T.Normalize
        ):
            rest = stages[i + 3 :]
            return T.Compose(stages[: i + 1]), T.Compose([to_float, normalise]), T.Compose(rest) if rest else None
    return None


def make_batch_transform(
    image_fn: Callable[[PIL.Image.Image], torch.Tensor], channels: int, seed: int | None = None
) -> BatchTransform:
    """For `datasets.Dataset.with_transform`: rows of PIL images → `pixel_values` / `labels` (see BatchTransform)."""
    return BatchTransform(image_fn, channels, seed)


# data.cache: decoded: each image as `to_model_mode` makes it, at its own size, stored in the split's Arrow table
PIXELS = "__hf_finetune_pixels__"  # the raw uint8 bytes, rows of width × channels
WIDTH = "__hf_finetune_width__"
HEIGHT = "__hf_finetune_height__"
CACHES = ("off", "decoded")  # data.cache
DECODE_BATCH = 100  # images per map batch and per Arrow record batch: what one decoding step holds in memory


class DecodeImages:
    """For `Dataset.map(batched=True)`: the `image` column → `PIXELS`, `WIDTH`, `HEIGHT`. Module-level, so
    datasets' fingerprint of the map (which names the cache file) hashes this instance's attributes: the channels and
    `pixels`, the description of how the stored pixels are made."""

    def __init__(self, channels: int):
        self.channels = channels
        # change this whenever to_model_mode (or anything else shaping the stored pixels) changes: runs would
        # otherwise reuse caches of pixels made the old way
        self.pixels = "to_model_mode v1: EXIF orientation applied, convert('RGB'), then 'L' for 1 channel; own size"

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        images = [to_model_mode(img, self.channels) for img in batch["image"]]
        return {
            PIXELS: [img.tobytes() for img in images],
            WIDTH: [img.width for img in images],
            HEIGHT: [img.height for img in images],
        }


def _cached_images(batch: dict[str, list[Any]], channels: int) -> list[PIL.Image.Image]:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    stored = zip(batch[PIXELS], batch[WIDTH], batch[HEIGHT], strict=True)
    return [Image.frombytes(mode, (w, h), data) for data, w, h in stored]


def cache_decoded(ds: Dataset, channels: int) -> Dataset:
    """`ds` with each image decoded once into Arrow (`DecodeImages`) instead of its encoded file: epochs then skip
    decoding. `Dataset.map`'s own cache: a later run on the same data and channels reuses the file. The pixels are
    exactly those the transforms would get from decoding (same conversion, no resize); on disk each image takes
    width × height × channels bytes."""
    from datasets import Value

    features = ds.features.copy()
    del features["image"]
    features[PIXELS] = Value("large_binary")  # one Arrow chunk of large images can pass binary's 2 GiB offsets
    features[WIDTH] = features[HEIGHT] = Value("int32")
    return ds.map(
        DecodeImages(channels),
        batched=True,
        batch_size=DECODE_BATCH,
        writer_batch_size=DECODE_BATCH,
        remove_columns=["image"],
        features=features,
        desc=f"data.cache: decoded ({ds.split or 'split'})",
    )


def with_row_ids(ds: Dataset) -> Dataset:
    """`ds` with a `ROW_ID` column: each row's number in the underlying Arrow table, stable across runs, processes
    and resumes. Added beside the table without copying it: `Dataset.add_column` would first rewrite a split or
    shuffled dataset (every image's bytes) to a new cache file."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, Value
    from datasets.fingerprint import update_fingerprint
    from datasets.table import InMemoryTable, concat_tables

    numbers = InMemoryTable.from_arrays([pa.array(np.arange(len(ds.data), dtype=np.int64))], names=[ROW_ID])
    info = ds.info.copy()
    info.features = ds.features.copy()
    info.features[ROW_ID] = Value("int64")
    return Dataset(
        concat_tables([ds.data, numbers], axis=1),
        info=info,
        split=ds.split,
        indices_table=ds._indices,  # the split's row selection stays a view
        fingerprint=update_fingerprint(ds._fingerprint, with_row_ids, {}),
    )


def collate(rows: list[dict[str, Any]], problem_type: str | None = None) -> dict[str, torch.Tensor]:
    """Stacked `pixel_values`, and `labels` as the model's `problem_type` takes them (`labels_tensor`: int64 [N]
    class ids; multi-label float32 [N, L]; regression float32 [N])."""
    import torch

    batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows])}
    if "labels" in rows[0]:
        batch["labels"] = labels_tensor([r["labels"] for r in rows], problem_type)
    return batch


# --------------------------------------------------------------------------------------------- the task interface


def training_defaults() -> dict[str, Any]:
    import os

    return {
        # the image column must reach the transform; Trainer would drop it as "unused" by the model
        "remove_unused_columns": False,
        # decoding + augmenting images is CPU work that overlaps with the step in worker processes
        "dataloader_num_workers": min(4, max(0, (os.cpu_count() or 1) - 1)),
    }


def prepare(built: BuiltModel, splits: Mapping[str, Dataset], settings: PrepareSettings) -> Prepared:
    """Decode + transform on the fly (`with_transform`): train with the recipe's augmentation, the rest as eval."""
    channels = built.preprocess.channels
    if settings.cache not in CACHES:
        raise DataError(f"data.cache: {settings.cache!r}; expected 'off' (decode each epoch) or 'decoded'")
    decoded = settings.cache == "decoded"
    train_fn = BatchTransform(
        build_train_transform(built.preprocess, settings.augmentation), channels, seed=settings.seed
    )
    eval_fn = BatchTransform(build_eval_transform(built), channels)
    ready = {
        name: _train_split(ds, train_fn, decoded)
        if name == "train"
        else (cache_decoded(ds, channels) if decoded else ds).with_transform(eval_fn)
        for name, ds in splits.items()
    }
    problem_type = built.model.config.problem_type
    # a partial of the module-level function pickles for worker processes; single-label keeps `collate` itself
    collator = collate if label_format_of(built.model.config) == SINGLE else partial(collate, problem_type=problem_type)
    return Prepared(ready, collator)


def _train_split(ds: Any, train_fn: BatchTransform, decoded: bool = False) -> Any:
    """Map-style: decoded (or read from the `decoded` cache) and augmented on the fly, each row's draw seeded by its
    row id. data.streaming: the stream is decoded and augmented as it is read (`IterableDataset.map`); a stream has no
    stable row ids, so augmentation draws from torch's generator in the order rows arrive."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        if decoded:  # the recipe check refuses it first
            raise DataError("data.cache: decoded needs a map-style train split; a stream is read once, as it arrives")
        unseeded = BatchTransform(train_fn.image_fn, train_fn.channels)
        return ds.map(unseeded, batched=True, remove_columns=["image", "label"])
    numbered = with_row_ids(ds)  # before caching: a row keeps its number (its seeds) in the uncached table
    return (cache_decoded(numbered, train_fn.channels) if decoded else numbered).with_transform(train_fn)


def predict(
    built: BuiltModel, inputs: PredictInputs, top_k: int, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """One row per image file of one batch, with the saved model's own preprocessing: its top-k labels (multi-label:
    also the labels over their thresholds; regression: the value; see `rows_from_logits`), or `error` when the file
    cannot be read (the batch's other files are predicted all the same)."""
    import torch

    transform = build_eval_transform(built)
    built.model.eval()
    rows: list[dict[str, Any]] = [{} for _ in inputs]
    pixels, good = [], []
    for i, path in enumerate(map(str, inputs)):
        try:
            pixels.append(_read_for_predict(path, transform, built.preprocess.channels))
            good.append(i)
        except DataError as err:
            rows[i] = {"image": path, "error": str(err)}
    if good:
        with torch.no_grad():
            logits = built.model(pixel_values=torch.stack(pixels).to(device)).logits
        keys = [str(inputs[i]) for i in good]
        for i, row in zip(good, rows_from_logits(keys, "image", logits, built.model.config, top_k), strict=True):
            rows[i] = row
    return rows


def _read_for_predict(path: str, transform: Callable[[PIL.Image.Image], torch.Tensor], channels: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return transform(to_model_mode(img, channels, path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot be read as an image ({type(err).__name__}: {err})") from None
