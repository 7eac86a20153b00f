"""What the task modules share: the built model, label maps, and loading a transformers classifier with a new head."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, ModelError
from ..names import LABEL_THRESHOLDS_KEY, PROBLEM_TYPES, RECIPE_FILE
from ..recipe import AugmentationSpec, ModelSpec, TokenizationSpec

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        BaseImageProcessor,
        PreTrainedConfig,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

logger = logging.getLogger(__name__)

# one batch of what a task's `predict` takes: image files, or texts and (text, text_pair) pairs; an input it cannot
# read is a row with `error`, never an exception that would lose the batch
PredictInput = str | Path | tuple[str, str]  # an image path, a text, or a (text, text_pair)
PredictInputs = Sequence[PredictInput]


@dataclass(frozen=True)
class Preprocess:
    """What the model expects, read from its image processor (never copy-pasted numbers)."""

    size: tuple[int, int]  # (height, width) fed to the network
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # torchvision InterpolationMode name: bilinear, bicubic, nearest…
    channels: int = 3
    # Shorter side to resize to before a centre crop to `size` (timm's crop_pct, a processor's crop_size);
    # None: resize straight to `size`. Training without random-resized-crop uses the same geometry as evaluation.
    resize_shorter: int | None = None


@dataclass
class BuiltModel:
    model: PreTrainedModel  # with a head sized for the labels
    # saved next to the model; None only for the 1-channel simple_cnn (image processors feed RGB)
    processor: BaseImageProcessor | PreTrainedTokenizerBase | None
    description: str
    preprocess: Preprocess | None = None  # image tasks: what the network expects
    # recipe sections as building settled what they left open (text: `model` with pooling auto → mean or cls)
    settled: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Datasets ready for Trainer (train with augmentation, the others without) and the batch collator."""

    splits: dict[str, Dataset]
    collate: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]]
    # recipe sections as preparing settled what they left open (text: `tokenization` with max_length auto → the
    # length chosen), so that recipe.yaml re-runs the same way and the card says what was used
    settled: dict[str, Any] = field(default_factory=dict)
    # what preparing found, for metrics.json's run info (text: the truncation report)
    run_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrepareSettings:
    """What a task's `prepare` takes from the recipe: only these sections, never the whole `Recipe`."""

    augmentation: AugmentationSpec
    tokenization: TokenizationSpec
    # where the training split's random augmentation starts: Trainer's data_seed, else its seed (Trainer passes the
    # same value and the epoch on through `set_epoch`)
    seed: int
    cache: str = "off"  # data.cache: "decoded" stores each image decoded once (image task)


def label_maps(label_names: list[str], with_count: bool = True) -> dict[str, Any]:
    maps: dict[str, Any] = {
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }
    if with_count:
        maps["num_labels"] = len(label_names)
    return maps


# data.label_format ← a config's problem_type (None, and any other value, read as single-label, as before formats)
LABEL_FORMAT_OF = {problem: fmt for fmt, problem in PROBLEM_TYPES.items()}
SINGLE = "single"
MULTI_LABEL = "multi_label"
REGRESSION = "regression"


def head_config(label_names: list[str], label_format: str = SINGLE, with_count: bool = True) -> dict[str, Any]:
    """The config keys of a new head: `label_maps` and the `problem_type` of `label_format` (which the model's own
    loss and `pipeline()` read: cross entropy/softmax, BCE/sigmoid, MSE/the raw output). A regression head has one
    output, named after the target (`label_names` is [the target column's name])."""
    if label_format not in PROBLEM_TYPES:
        raise ModelError(f"data.label_format {label_format!r}: expected one of {', '.join(PROBLEM_TYPES)}")
    if label_format == REGRESSION and len(label_names) != 1:
        raise ModelError(
            f"data.label_format regression: a regression head has one output, named after the target column, but "
            f"{len(label_names)} label names were given ({label_names[:10]}); set data.label_column to the one "
            "target column"
        )
    return {**label_maps(label_names, with_count), "problem_type": PROBLEM_TYPES[label_format]}


def label_format_of(config: PreTrainedConfig) -> str:
    """The `data.label_format` a model was built for, from its `problem_type` (unset: single-label)."""
    return LABEL_FORMAT_OF.get(getattr(config, "problem_type", None), SINGLE)


def head_description(label_names: list[str], label_format: str) -> str:
    """How the log names a head: its labels (multi-label: any number per input) or its regression target."""
    if label_format == REGRESSION:
        return f"regression on target {label_names[0]!r}"
    if label_format == MULTI_LABEL:
        return f"{len(label_names)} labels (multi-label: any number per input)"
    return f"{len(label_names)} labels"


def labels_tensor(values: Sequence[Any], problem_type: str | None) -> torch.Tensor:
    """A batch's `labels` as the model's problem type takes them: class ids int64 [N] (single-label), multi-hot
    float32 [N, L] (multi-label), targets float32 [N] (regression)."""
    import torch

    fmt = LABEL_FORMAT_OF.get(problem_type, SINGLE)
    if fmt == SINGLE:
        return torch.as_tensor(values, dtype=torch.long)
    labels = torch.as_tensor(values, dtype=torch.float32)
    if fmt == MULTI_LABEL and labels.ndim != 2:
        raise DataError(
            f"labels: a multi-label batch needs one multi-hot row per input (shape [N, num_labels]), got shape "
            f"{list(labels.shape)}; load the data with data.label_format: multi_label"
        )
    if fmt == REGRESSION:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise DataError(
                f"labels: a regression batch needs one number per input (shape [N]), got shape "
                f"{list(labels.shape)}; load the data with data.label_format: regression"
            )
    return labels


class LabelsAs:
    """A collator whose `labels` come out as the model's problem type takes them (`labels_tensor`): wraps a text
    collator, which would otherwise pick the dtype from the Python values. Module-level, so it pickles."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], Mapping[str, Any]], problem_type: str | None):
        self.collate, self.problem_type = collate, problem_type

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.collate(rows))
        if "labels" in batch:
            batch["labels"] = labels_tensor(batch["labels"], self.problem_type)
        return batch


def label_thresholds(config: PreTrainedConfig, where: str | Path = "the model") -> list[float]:
    """A multi-label model's decision threshold per label, in label order: its config's `label_thresholds`
    ({label: t}), or 0.5 for every label when it has none."""
    import math

    names = label_names_of(config)
    saved = getattr(config, LABEL_THRESHOLDS_KEY, None)
    if saved is None:
        return [0.5] * len(names)
    key = f"{where}: config.json {LABEL_THRESHOLDS_KEY}"
    if not isinstance(saved, Mapping):
        raise ModelError(f"{key} is {saved!r}; expected {{label: threshold}} for the labels {names[:10]}")
    unknown = [k for k in saved if k not in names]
    missing = [n for n in names if n not in saved]
    if unknown or missing:
        raise ModelError(
            f"{key} names {unknown[:10]} that are not labels of the model and lacks {missing[:10]}; give one "
            "threshold per label (its id2label names), or remove the key to use 0.5 for every label"
        )
    bad = {
        k: v
        for k, v in saved.items()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1
    }
    if bad:
        raise ModelError(f"{key}: {dict(list(bad.items())[:10])} are not thresholds in [0, 1]; fix or remove them")
    return [float(saved[n]) for n in names]


def label_names_of(config: PreTrainedConfig) -> list[str]:
    return [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []


def hub_kwargs(spec: ModelSpec) -> dict[str, Any]:
    return {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}


def saved_trust_remote_code(path: str | Path) -> bool:
    """Whether the run that wrote `path` trusted the model's own code (`model.trust_remote_code` in its recipe.yaml):
    only then is the code shipped in the folder run again when it is loaded."""
    from ..recipe import read_saved_recipe

    model = read_saved_recipe(path).get("model") or {}
    return isinstance(model, dict) and model.get("trust_remote_code") is True


def load_error(path: str | Path, task_words: str, err: Exception) -> str:
    """Why a saved folder does not load, with the fix when its model needs its own code."""
    first = str(err).splitlines()[0] if str(err) else ""
    if "trust_remote_code" in str(err):
        return (
            f"{path}: its model runs code shipped in the folder, and the {RECIPE_FILE} there does not say "
            f"model.trust_remote_code: true. Read that code; if you trust it, set model.trust_remote_code: true in "
            f"{Path(path) / RECIPE_FILE} ({type(err).__name__}: {first})"
        )
    return f"{path}: not a saved {task_words} model ({type(err).__name__}: {first})"


# Keywords every transformers config's __init__ takes besides its fields (PreTrainedConfig.__post_init__).
_CONFIG_INIT_KEYWORDS = {
    "attn_implementation",
    "experts_implementation",
    "output_attentions",
    "per_layer_config",
    "rope_scaling",
    "rope_theta",
}


def check_config_keys(given: dict[str, Any], config: PreTrainedConfig | type[PreTrainedConfig], what: str) -> None:
    """Refuse `model.config` keys the model's config does not know: transformers configs keep any extra keyword as a
    silent attribute, so a typo would otherwise train the default model. `config` is the config class or a loaded
    config (whose own attributes, e.g. extra keys from its config.json, count as known)."""
    import dataclasses
    import difflib
    import inspect

    if "problem_type" in given:
        raise ModelError(
            "model.config.problem_type: the problem type follows data.label_format (single, multi_label, "
            "regression); remove the key and set data.label_format instead"
        )
    from_data = [k for k in given if k in ("num_labels", "id2label", "label2id")]
    if from_data:
        raise ModelError(
            f"model.config.{from_data[0]}: the labels come from the data (its class names), not the recipe; "
            "remove the key (rename classes in the data instead)"
        )
    cls = config if isinstance(config, type) else type(config)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    known |= _CONFIG_INIT_KEYWORDS
    known |= set(getattr(cls, "attribute_map", None) or {})
    known |= {n for n in dir(cls) if not callable(getattr(cls, n, None))}  # properties (num_labels…), class values
    if not isinstance(config, type):
        known |= set(vars(config))
    if "__init__" in vars(cls):  # configs with their own __init__ (remote code) take its parameters
        known |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "args"}
    unknown = [k for k in given if k not in known]
    if unknown:
        choices = sorted(k for k in known if not k.startswith("_"))
        hints = [
            f"{k!r}" + "".join(f" (did you mean {c!r}?)" for c in difflib.get_close_matches(k, choices, 1))
            for k in unknown
        ]
        raise ModelError(
            f"model.config: {', '.join(hints)} {'is' if len(unknown) == 1 else 'are'} not "
            f"{'an option' if len(unknown) == 1 else 'options'} of {what} ({cls.__name__}); fix the spelling or "
            "remove the key"
        )


def load_classifier(
    spec: ModelSpec,
    name: str,
    label_names: list[str],
    auto_class: type[AutoModelForImageClassification | AutoModelForSequenceClassification],
    task_words: str,
    label_format: str = SINGLE,
) -> PreTrainedModel:
    """`auto_class.from_pretrained` (or `from_config` when not pretrained) with a head for `label_names`.

    The head is replaced for the new labels: by size (`ignore_mismatched_sizes`) and also when the old head has the
    same size but other classes, whose weights would mean nothing here.
    """
    from transformers import AutoConfig

    from .. import models  # noqa: F401  (the toolkit's own model types: a simple_cnn folder is named as such)

    common = hub_kwargs(spec)
    original = checked_config(spec, name)
    try:
        # num_labels follows from id2label; passing both makes transformers warn about the old label map
        config = AutoConfig.from_pretrained(
            name, **common, **head_config(label_names, label_format, False), **spec.config
        )
        if spec.pretrained:
            model = auto_class.from_pretrained(name, config=config, ignore_mismatched_sizes=True, **common)
        else:
            model = auto_class.from_config(config, trust_remote_code=spec.trust_remote_code)
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ModelError(
                f"model.name {spec.name!r} is a {type(original).__name__.removesuffix('Config')} model, "
                f"which transformers cannot use for {task_words}; pick another model"
            ) from None
        raise ModelError(f"model {spec.name!r}: {err}") from None
    except OSError as err:
        raise ModelError(not_found(spec.name, err)) from None
    if spec.pretrained and original.num_labels == len(label_names) and label_names_of(original) != label_names:
        reset_head(model)
    return model


def checked_config(spec: ModelSpec, name: str) -> PreTrainedConfig:
    """The checkpoint's own config, with `model.config`'s keys checked against it (a clear error when it cannot be
    found or read)."""
    from transformers import AutoConfig

    try:
        original = AutoConfig.from_pretrained(name, **hub_kwargs(spec))
    except Exception as err:  # OSError (not found / offline), ValueError (not a model folder)
        raise ModelError(unknown_model_type(spec, name, err) or not_found(spec.name, err)) from None
    check_config_keys(spec.config, original, f"the model {spec.name!r}")
    return original


def unknown_model_type(spec: ModelSpec, name: str, err: Exception) -> str | None:
    """For a local folder whose config.json names a model type this transformers lacks: whether its own code
    would help (auto_map), rather than transformers' guess that it is out of date."""
    import json

    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_type = saved.get("model_type")
    if saved.get("auto_map") and not spec.trust_remote_code:
        return (
            f"model.name {spec.name!r}: its model type {model_type!r} is defined by code shipped in the folder "
            f"(auto_map in config.json: {sorted(saved['auto_map'].values())}). Read that code; if you trust it, "
            "set model.trust_remote_code: true"
        )
    if "does not recognize this architecture" not in str(err):
        return None
    import transformers

    return (
        f"model.name {spec.name!r}: model type {model_type!r} (config.json) is not one transformers "
        f"{transformers.__version__} knows, and the folder ships no code for it (no auto_map). If it is a newer "
        "transformers architecture, upgrade transformers; otherwise pick a transformers model"
    )


def not_found(name: str, err: Exception) -> str:
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    where = "local folder" if looks_local else "Hub model id or local folder"
    return (
        f"model.name {name!r}: cannot load it as a {where} ({type(err).__name__}: {str(err).splitlines()[0]}). "
        "Expected a transformers model id or a folder with config.json (image tasks also take simple_cnn, "
        "timm:<architecture> and timm/<hub id>). Offline, only local folders and built-in models work."
    )


def reset_head(model: PreTrainedModel) -> None:
    """Fresh weights for the classification head (timm's `reset_classifier`, else the `classifier` module)."""
    import torch

    from ..models.structure import is_timm_model

    if is_timm_model(model):
        model.timm_model.reset_classifier(model.config.num_labels)
        return
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        logger.warning("model: could not find the classification head to re-initialise; it keeps its old weights")
        return
    for module in head.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    logger.info("model: re-initialised the classification head for the new labels")


def scores_to_rows(
    keys: list[str], key_name: str, probs: torch.Tensor, id2label: dict[int, str], k: int
) -> list[dict[str, Any]]:
    """Top-k labels and scores per input, as `predict` prints them (one JSON line each)."""
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    scores, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [
        {
            key_name: key,
            "predictions": [
                {"label": id2label[int(i)], "score": round(float(s), 6)} for s, i in zip(row_s, row_i, strict=True)
            ],
        }
        for key, row_s, row_i in zip(keys, scores, ids, strict=True)
    ]


def rows_from_logits(
    keys: list[str], key_name: str, logits: torch.Tensor, config: PreTrainedConfig, k: int
) -> list[dict[str, Any]]:
    """`predict`'s rows for one batch of logits, by the model's problem type: single-label the top-k softmax scores;
    multi-label the labels whose sigmoid score reaches their threshold and the top-k scores; regression the value."""
    fmt = label_format_of(config)
    if fmt == MULTI_LABEL:
        return multi_label_rows(keys, key_name, logits, config, k)
    if fmt == REGRESSION:
        return regression_rows(keys, key_name, logits, config)
    return scores_to_rows(keys, key_name, logits.softmax(-1).cpu(), config.id2label, k)


def multi_label_rows(
    keys: list[str], key_name: str, logits: torch.Tensor, config: PreTrainedConfig, k: int
) -> list[dict[str, Any]]:
    """Per input: `labels`, every label with sigmoid score >= its threshold (highest score first), and
    `predictions`, the top-k labels by score with their thresholds. The scores and decisions are those of
    `multilabel_metrics` (float64 sigmoid, `p >= t`), so predict and the reported metrics agree exactly."""
    import numpy as np

    from ..multilabel_metrics import apply_thresholds, probabilities

    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    names = label_names_of(config)
    thresholds = label_thresholds(config)
    probs = probabilities(logits)
    chosen = apply_thresholds(logits, thresholds)
    rows = []
    for key, p, yes in zip(keys, probs, chosen, strict=True):
        order = np.argsort(-p, kind="stable")  # highest first; ties in label order
        rows.append(
            {
                key_name: key,
                "labels": [{"label": names[i], "score": round(float(p[i]), 6)} for i in order if yes[i]],
                "predictions": [
                    {"label": names[i], "score": round(float(p[i]), 6), "threshold": thresholds[i]} for i in order[:k]
                ],
            }
        )
    return rows


def regression_rows(
    keys: list[str], key_name: str, outputs: torch.Tensor, config: PreTrainedConfig
) -> list[dict[str, Any]]:
    """Per input: `value`, the model's output as it is (a saved regression model outputs the target's own units),
    and `predictions` [{label: the target's name, score: value}] as `pipeline()` gives it."""
    import numpy as np

    target = label_names_of(config)[0]
    # float32 outputs as their shortest decimal (0.1234568, not 0.12345679104328156): the same float32 either way
    values = outputs.detach().float().reshape(len(keys), -1)[:, 0].cpu().numpy().astype(np.float32)
    rows = []
    for key, v in zip(keys, values, strict=True):
        value = float(str(v))
        rows.append({key_name: key, "value": value, "predictions": [{"label": target, "score": value}]})
    return rows
