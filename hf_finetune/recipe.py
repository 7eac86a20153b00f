"""Recipes: YAML file + dotted overrides → a frozen, validated `Recipe`.

Every problem (unknown key, wrong type, impossible value) is collected and reported at once, each naming the key,
what was given and how to fix it. The `training:` section keeps transformers' own `TrainingArguments` names.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError

TASKS = ("image-classification", "text-classification")
TRANSFER_STRATEGIES = ("full", "linear_probe", "partial", "lp_ft")

# Augmentation presets fill in the options a recipe does not set itself.
AUGMENTATION_PRESETS: dict[str, dict[str, Any]] = {
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

    @property
    def is_timm(self) -> bool:
        """A timm model: `timm:<architecture>` (built here) or `timm/<hub id>` (a timm checkpoint on the Hub)."""
        return self.name.startswith(("timm:", "timm/"))


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
    encoding: str | None = None  # CSV/JSON text encoding, e.g. latin-1; default UTF-8
    empty_text: str = "error"  # rows with an empty or null text: "error" (stop, counted) or "skip" (warn, drop)
    train_split: str = "train"
    validation_split: str | None = None  # None: "validation"/"valid"/"val"/"dev" if present; "none": split train
    test_split: str | None = None  # None: use "test" if present; "none": no test split
    validation_size: float = 0.1
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    check_images: bool = True  # open every image before training so a corrupt file fails fast, by name


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
    preset: str | None = None  # none | light | standard | strong: fills the options not set explicitly


@dataclass(frozen=True)
class TransferSpec:
    """Which parameters train, and at which learning rate (see hf_finetune/transfer.py)."""

    strategy: str = "full"  # full | linear_probe | partial | lp_ft
    unfreeze_last: int | None = None  # partial, and lp_ft's fine-tuning stage: how many of the last blocks train
    probe_epochs: float = 1.0  # lp_ft: epochs with only the head training
    fine_tune_lr_scale: float = 0.1  # lp_ft: backbone learning rate = learning_rate × this
    layer_decay: float | None = None  # layer-wise learning-rate decay, e.g. 0.75
    head_lr: float | None = None  # the head's learning rate (default: training.learning_rate)


@dataclass(frozen=True)
class LossSpec:
    """Cross-entropy options beyond TrainingArguments' own `label_smoothing_factor`."""

    class_weights: str | list[float] | None = None  # "balanced" (inverse class frequency in train) or one per class


@dataclass(frozen=True)
class CardSpec:
    """The model card (README.md) written into the output folder."""

    template: str | None = None  # a Jinja template file; default: the shipped one for the task
    license: str | None = None  # e.g. apache-2.0, mit; goes into the card's metadata
    language: str | list[str] | None = None  # text tasks, e.g. en


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


@dataclass(frozen=True)
class TokenizationSpec:
    """Text tasks: the model's own fast tokenizer, truncation, and padding per batch (dynamic) by default."""

    max_length: int | None = None  # default: the model's limit, at most 512
    padding: str = "dynamic"  # "dynamic" (pad each batch to its longest) or "max_length" (every row to max_length)


@dataclass(frozen=True)
class MetricsSpec:
    """Accuracy, precision/recall/F1 (macro, weighted, per class) and the confusion matrix are always computed."""

    top_k: list[int] = field(default_factory=list)  # e.g. [5] adds top5_accuracy
    extra: list[str] = field(default_factory=list)  # more `evaluate` metrics by name or path (Hub ones need network)
    metric_for_best_model: str = "accuracy"  # only used as the default when training keeps the best model


# Paths and texts as they are: no \xe9 escapes, no long value folded at a space onto the next line.
_YAML_STYLE: dict[str, Any] = {"sort_keys": False, "allow_unicode": True, "width": 1 << 20}


@dataclass(frozen=True)
class Recipe:
    task: str = "image-classification"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    augmentation: AugmentationSpec = field(default_factory=AugmentationSpec)
    tokenization: TokenizationSpec = field(default_factory=TokenizationSpec)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    card: CardSpec = field(default_factory=CardSpec)
    hub: HubSpec = field(default_factory=HubSpec)
    # Passed to transformers.TrainingArguments unchanged (same names as transformers).
    training: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    overwrite: bool = False  # allow replacing another run's results in training.output_dir
    name: str | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

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
    saved = Path(output_dir) / "recipe.yaml"
    raw = read_yaml(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    return raw if isinstance(raw, dict) else {}


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
    _expand_preset(raw, problems)
    recipe_obj = _build(Recipe, raw, "", problems)
    # keys and types everywhere first; the checks that combine values only make sense once those are right
    recipe_obj = dataclasses.replace(recipe_obj, training=_check_training(recipe_obj.training, problems))
    _check_training_values(recipe_obj.training, problems)
    if not 0 <= recipe_obj.data.seed < 2**32:  # numpy's seeding refuses it only once the data is loaded
        problems.append(f"data.seed: expected a seed between 0 and 2**32 - 1, got {recipe_obj.data.seed}")
    if not problems:
        recipe_obj = _finish(recipe_obj, problems)
        _check_mixing(recipe_obj, problems)
    if problems:
        raise RecipeError(problems, source)
    return recipe_obj


def _expand_preset(raw: dict[str, Any], problems: list[str]) -> None:
    """`augmentation.preset` fills the augmentation keys the recipe leaves unset (explicit keys win)."""
    aug = raw.get("augmentation")
    if not isinstance(aug, dict) or aug.get("preset") is None:
        return
    preset = aug["preset"]
    if preset not in AUGMENTATION_PRESETS:
        hint = _did_you_mean(str(preset), AUGMENTATION_PRESETS)
        problems.append(f"augmentation.preset: {preset!r} is not one of {list(AUGMENTATION_PRESETS)}{hint}")
        return
    for key, value in AUGMENTATION_PRESETS[preset].items():
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
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key{_did_you_mean(str(key), names)}; {where} takes {names}")
            continue
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            kwargs[key] = _build(expected, value, f"{prefix}{key}.", problems)
            continue
        ok, converted = _coerce(value, expected)
        if ok:
            kwargs[key] = converted
        else:
            hint = _quote_hint(value, expected)
            problems.append(f"{prefix}{key}: expected {_type_name(expected)}, got {value!r}{hint}")
    return cls(**kwargs)


def _quote_hint(value: Any, expected: Any) -> str:
    """A number (or true/false) where a string was wanted: YAML read it as one; quotes keep it text."""
    takes_str = expected is str or str in typing.get_args(expected)
    if takes_str and isinstance(value, (bool, int, float)):
        return f" (YAML read it as {type(value).__name__}; write it in quotes to keep it text)"
    return ""


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _coerce(value: Any, expected: Any) -> tuple[bool, Any]:
    """(ok, value) for a value against a type hint; YAML strings like '1e-4' count as floats."""
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if expected is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
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
    if expected is bool:
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return True, _BOOL_WORDS[value.lower()]  # YAML 1.1's yes/no/on/off, for fields that are true/false
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if expected is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for item in value:
            ok, converted = _coerce(item, args[0] if args else Any)
            if not ok:
                return False, value
            out.append(converted)
        return True, out
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        out = []
        for item, arg in zip(value, args, strict=True):
            ok, converted = _coerce(item, arg)
            if not ok:
                return False, value
            out.append(converted)
        return True, tuple(out)
    if origin is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} numbers"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _did_you_mean(word: str, choices: Any) -> str:
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


def _check_mixing(recipe: Recipe, problems: list[str]) -> None:
    """mixup/CutMix mixes each sample with another one of its batch: a batch of one cannot be mixed."""
    a = recipe.augmentation
    batch = recipe.training.get("per_device_train_batch_size", 8)  # TrainingArguments' default
    if (a.mixup_alpha or a.cutmix_alpha) and isinstance(batch, int) and batch < 2:
        problems.append(
            f"training.per_device_train_batch_size: mixup/CutMix mixes each sample with another of its batch and "
            f"needs at least 2 per device, got {batch}; raise it or set augmentation.mixup_alpha/cutmix_alpha to 0"
        )


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
            out.append(f"training.report_to: {name!r} is not installed; pip install it, or set report_to: none")
    return out


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


def _finish(recipe: Recipe, problems: list[str]) -> Recipe:
    """Checks that need more than one key, plus the defaults that depend on the recipe (logged by the trainer)."""
    if recipe.task not in TASKS:
        problems.append(f"task: {recipe.task!r} is not one of {list(TASKS)}{_did_you_mean(recipe.task, TASKS)}")
    if not recipe.model.name:
        problems.append("model.name: missing; e.g. simple_cnn, timm:resnet18, timm/resnet50.a1_in1k, google/vit-base…")
    if not recipe.data.source and not recipe.data.files:
        problems.append("data.source: missing; e.g. builtin:digits, ./my_images, train.csv or a Hub dataset id")
    d, a = recipe.data, recipe.augmentation
    if not 0 < d.validation_size < 1:
        problems.append(f"data.validation_size: must be between 0 and 1 (a fraction of train), got {d.validation_size}")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        if value is not None and value < 1:
            problems.append(f"data.{key}: must be at least 1 (or null for all), got {value}")
    for key in ("horizontal_flip", "vertical_flip"):
        if not 0 <= getattr(a, key) <= 1:
            problems.append(f"augmentation.{key}: a probability between 0 and 1, got {getattr(a, key)}")
    for key in ("brightness", "contrast", "saturation", "rotation", "mixup_alpha", "cutmix_alpha"):
        if getattr(a, key) < 0:
            problems.append(f"augmentation.{key}: must be >= 0, got {getattr(a, key)}")
    for key in ("random_erasing", "mixup_prob", "mixup_switch_prob"):
        if not 0 <= getattr(a, key) <= 1:
            problems.append(f"augmentation.{key}: a probability between 0 and 1, got {getattr(a, key)}")
    if not 0 <= a.hue <= 0.5:
        problems.append(f"augmentation.hue: between 0 and 0.5, got {a.hue}")
    if not 0 <= a.rand_augment_magnitude <= 30:
        problems.append(f"augmentation.rand_augment_magnitude: 0..30, got {a.rand_augment_magnitude}")
    if a.rand_augment and a.trivial_augment:
        problems.append("augmentation: rand_augment and trivial_augment are alternatives; keep one")
    tr = recipe.transfer
    if tr.strategy not in TRANSFER_STRATEGIES:
        hint = _did_you_mean(tr.strategy, TRANSFER_STRATEGIES)
        problems.append(f"transfer.strategy: {tr.strategy!r} is not one of {list(TRANSFER_STRATEGIES)}{hint}")
    if tr.layer_decay is not None and not 0 < tr.layer_decay <= 1:
        problems.append(f"transfer.layer_decay: between 0 (exclusive) and 1, got {tr.layer_decay}")
    if tr.probe_epochs <= 0:
        problems.append(f"transfer.probe_epochs: must be > 0, got {tr.probe_epochs}")
    if not 0 < tr.fine_tune_lr_scale <= 1:
        problems.append(f"transfer.fine_tune_lr_scale: between 0 (exclusive) and 1, got {tr.fine_tune_lr_scale}")
    if tr.head_lr is not None and tr.head_lr <= 0:
        problems.append(f"transfer.head_lr: must be > 0, got {tr.head_lr}")
    if recipe.hub.push and not recipe.hub.repo_id:
        problems.append("hub.repo_id: needed when hub.push is true, e.g. your-name/my-classifier")
    if recipe.hub.repo_id is not None and recipe.hub.repo_id.count("/") != 1:
        problems.append(f"hub.repo_id: expected USER/NAME or ORG/NAME, got {recipe.hub.repo_id!r}")
    if recipe.card.template is not None and not Path(recipe.card.template).expanduser().is_file():
        problems.append(f"card.template: no such file {recipe.card.template!r}")
    cw = recipe.loss.class_weights
    if isinstance(cw, str) and cw != "balanced":
        problems.append(f"loss.class_weights: 'balanced' or a list with one weight per class, got {cw!r}")
    if isinstance(cw, list) and any(w < 0 for w in cw):
        problems.append(f"loss.class_weights: weights must be >= 0, got {cw}")
    if recipe.task == "text-classification" and (a.mixup_alpha or a.cutmix_alpha):
        problems.append("augmentation.mixup_alpha/cutmix_alpha: mixing applies to images only")
    if not 0 < a.scale[0] <= a.scale[1] <= 1:
        problems.append(f"augmentation.scale: need 0 < min <= max <= 1, got {list(a.scale)}")
    if not 0 < a.ratio[0] <= a.ratio[1]:
        problems.append(f"augmentation.ratio: need 0 < min <= max, got {list(a.ratio)}")
    if d.empty_text not in ("error", "skip"):
        problems.append(f"data.empty_text: 'error' or 'skip', got {d.empty_text!r}")
    t = recipe.tokenization
    if t.padding not in ("dynamic", "max_length"):
        problems.append(f"tokenization.padding: 'dynamic' or 'max_length', got {t.padding!r}")
    if t.max_length is not None and t.max_length < 2:
        problems.append(
            f"tokenization.max_length: at least 2 tokens (or null for the model's limit), got {t.max_length}"
        )
    if recipe.task == "text-classification" and recipe.augmentation != AugmentationSpec():
        problems.append("augmentation: image augmentation does not apply to text-classification; remove the section")
    if recipe.model.image_size is not None and recipe.model.image_size < 8:
        problems.append(f"model.image_size: must be at least 8 pixels, got {recipe.model.image_size}")
    for k in recipe.metrics.top_k:
        if k < 1:
            problems.append(f"metrics.top_k: each k must be >= 1, got {k}")
    training = dict(recipe.training)
    if "output_dir" not in training:
        training["output_dir"] = str(Path("outputs") / (recipe.name or "run"))
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
