"""The model card (README.md): a Jinja template from `model_cards/` rendered through huggingface_hub's ModelCard.

The numbers, tables and caveats are worked out here in Python and handed to the template as plain values, so a
user's own template (`card.template: PATH`) gets the same facts and only decides how to lay them out. A section whose
data is missing (no test split, no confusion-matrix image, no provenance) gets an empty value and the template leaves
it out — the card never says "more information needed".
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import write_text_atomic
from .names import CARD_FILE, EVALUATED_PREFIXES, SPLIT_OF_PREFIX, confusion_matrix_files
from .recipe import (
    DEFAULT_FINE_TUNE_LR_SCALE,
    TASKS,
    AugmentationSpec,
    CardSpec,
    DataSpec,
    LossSpec,
    ModelSpec,
    Recipe,
    TokenizationSpec,
    TransferSpec,
    shipped_dir,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData
    from transformers import TrainingArguments

# the shipped template of each task: model_cards/image_classification.md for image-classification, ...
TEMPLATES = {task: task.replace("-", "_") + ".md" for task in TASKS}
TRAINING_KEYS = (  # hyperparameters worth a row on the card, in reading order
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "max_grad_norm",
    "label_smoothing_factor",
    "seed",
    "load_best_model_at_end",
)
# Model-index rows, as (metrics.json key, metric type, config, display name): the Hub reads `type` + `config`.
INDEX_METRICS = (
    ("accuracy", "accuracy", None, "Accuracy"),
    ("f1_macro", "f1", "macro", "F1 (macro)"),
    ("f1_weighted", "f1", "weighted", "F1 (weighted)"),
    ("precision_macro", "precision", "macro", "Precision (macro)"),
    ("recall_macro", "recall", "macro", "Recall (macro)"),
)
# multi-label and regression runs: the model-index rows (metrics.json key, type, config, name); only finite values
FORMAT_INDEX_METRICS = {
    "multi_label": (
        ("f1_micro", "f1", "micro", "F1 (micro)"),
        ("f1_macro", "f1", "macro", "F1 (macro)"),
        ("map", "mean_average_precision", None, "mAP"),
        ("subset_accuracy", "accuracy", "subset", "Subset accuracy"),
        ("hamming_loss", "hamming_loss", None, "Hamming loss"),
    ),
    "regression": (
        ("mae", "mae", None, "MAE"),
        ("rmse", "rmse", None, "RMSE"),
        ("r2", "r_squared", None, "R²"),
        ("pearson", "pearsonr", None, "Pearson"),
        ("spearman", "spearmanr", None, "Spearman"),
    ),
}
FORMAT_METRICS = {"multi_label": ["f1", "mean_average_precision"], "regression": ["mae", "rmse", "r_squared"]}
# `builtin:` models are Hub models packaged for offline use; the card names the Hub original
BUILTIN_BASE_MODELS = {"builtin:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_EXAMPLE = "Replace this sentence with the text you want to classify."
# a TrainingArguments field that holds a credential; never shown on a card or pushed in recipe.yaml
SECRET_KEY = re.compile(r"token$", re.IGNORECASE)
SNIPPET_MODEL = re.compile(r"""(pipeline\([^)]*?\bmodel\s*=\s*)(["'])(.*?)\2""", re.DOTALL)


# the recipe's sections the card reads, each a field of CardFacts under the same name
RECIPE_SECTIONS = ("model", "data", "augmentation", "tokenization", "transfer", "loss", "card")


@dataclass(frozen=True)
class CardFacts:
    """What a card is made from, gathered once when the run is over (`CardFacts.from_run`)."""

    task: str
    model_name: str  # the card's title and the model-index name
    model: ModelSpec
    data: DataSpec
    augmentation: AugmentationSpec
    tokenization: TokenizationSpec
    transfer: TransferSpec
    loss: LossSpec
    card: CardSpec
    label_names: list[str]
    results: dict[str, Any]  # as in metrics.json: {"train": ..., "eval": ..., "test": ...}
    run: dict[str, Any]  # the run's provenance, as in metrics.json's "run": splits, hardware, versions, time
    data_description: str
    model_description: str
    hyperparameters: list[tuple[str, str]]  # (TrainingArguments field, value) as the run used them
    best_model_chosen: bool  # load_best_model_at_end: the validation split also picked the checkpoint
    recipe_yaml: str  # the recipe shown on the card: as saved for a re-run, credentials redacted
    # handed whole to templates as `recipe` (users' templates may read any field); the card itself reads the sections
    recipe: Recipe | None = None
    model_ref: str | None = None  # what the usage snippet loads; default: the output folder's path

    @classmethod
    def from_run(
        cls,
        recipe: Recipe,
        args: TrainingArguments,
        label_names: list[str],
        results: dict[str, Any],
        data_description: str,
        model_description: str,
        run: dict[str, Any],
        model_ref: str | None = None,
    ) -> CardFacts:
        """The facts of a finished run: its recipe's sections and the TrainingArguments it really trained with."""
        processes = (run.get("hardware") or {}).get("processes") or 1
        return cls(
            task=recipe.task,
            model_name=recipe.name or Path(recipe.output_dir).name,
            **{section: getattr(recipe, section) for section in RECIPE_SECTIONS},
            label_names=label_names,
            results=results,
            run=run,
            data_description=data_description,
            model_description=model_description,
            # a fitted linear probe has no epochs, optimizer or learning rate: rows for them would be Trainer's unused
            # defaults
            hyperparameters=[]
            if recipe.transfer.strategy == "linear_probe"
            else [*hyperparameters(args, processes), *early_stopping_rows(run.get("early_stopping"))],
            best_model_chosen=bool(args.load_best_model_at_end),
            # the recipe as saved with the outputs: without the one-off actions (overwrite, push, resume)
            recipe_yaml=_recipe_yaml(recipe),
            recipe=recipe,
            model_ref=model_ref,
        )

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """The evaluated splits' metrics, by metrics.json prefix (eval, test), in card order."""
        return {p: self.results[p] for p in EVALUATED_PREFIXES if isinstance(self.results.get(p), dict)}

    @property
    def starts_pretrained(self) -> bool:
        return self.model.pretrained and self.model.name != "simple_cnn"


def write_model_card(out: Path, facts: CardFacts) -> Path:
    """Render the card for the output folder `out` and write it as `out/README.md`."""
    path = Path(out) / CARD_FILE
    write_text_atomic(path, render_model_card(out, facts))
    return path


def render_model_card(out: Path, facts: CardFacts) -> str:
    """The card's text."""
    from huggingface_hub import ModelCard

    out = Path(out)
    template = (
        Path(facts.card.template).expanduser()
        if facts.card.template
        else shipped_dir("model_cards") / TEMPLATES[facts.task]
    )
    context = card_context(out, facts)
    card = ModelCard.from_template(build_card_data(facts), template_path=str(template), **context)
    # Jinja keeps the blank lines of left-out sections; more than one in a row is only noise in the markdown
    return re.sub(r"\n{3,}", "\n\n", str(card)).rstrip() + "\n"


def card_for_repo(text: str, repo_id: str, revision: str | None = None) -> str:
    """The card as it should read on the Hub: the usage snippet loads `repo_id` (at `revision`, a branch other than
    main) instead of the local folder."""
    branch = f', revision="{revision}"' if revision and revision != "main" else ""
    return SNIPPET_MODEL.sub(lambda m: f'{m.group(1)}"{repo_id}"{branch}', text)


def redact_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe as a plain dict with any credential (e.g. `training.hub_token`) replaced by a placeholder."""
    plain = dict(recipe)
    training = dict(plain.get("training") or {})
    for key in training:
        if SECRET_KEY.search(key) and training[key] is not None:
            training[key] = "<redacted>"
    plain["training"] = training
    return plain


# --------------------------------------------------------------------------------------------- metadata


def build_card_data(facts: CardFacts) -> ModelCardData:
    """ModelCardData: license, base model, datasets, tags, pipeline tag, and one model-index row per split × metric."""
    from huggingface_hub import EvalResult, ModelCardData

    source = data_source(facts.data, facts.task)
    eval_results = [
        EvalResult(
            task_type=facts.task,
            task_name=facts.task.replace("-", " ").title(),
            dataset_type=source["type"],
            dataset_name=source["name"],
            dataset_config=source["config"],
            dataset_split=SPLIT_OF_PREFIX[prefix],
            metric_type=metric_type,
            metric_config=config,
            metric_name=name,
            metric_value=round(float(m[key]), 4),
        )
        for prefix, m in facts.splits.items()
        for key, metric_type, config, name in FORMAT_INDEX_METRICS.get(facts.data.label_format, INDEX_METRICS)
        if _finite(m.get(key))
    ]
    tags = ["hf_finetune", facts.task]
    if facts.model.is_timm:
        tags.append("timm")
    if facts.model.name == "simple_cnn":
        tags.append("simple_cnn")
    return ModelCardData(
        model_name=facts.model_name,
        license=facts.card.license,
        language=facts.card.language if facts.task == "text-classification" else None,
        library_name="transformers",
        pipeline_tag=facts.task,
        tags=tags,
        base_model=base_model(facts.model),
        datasets=[source["id"]] if source["id"] else None,
        metrics=FORMAT_METRICS.get(facts.data.label_format, ["accuracy", "f1", "precision", "recall"]),
        eval_results=eval_results or None,
    )


def base_model(model: ModelSpec) -> str | None:
    """The Hub id the weights started from, or None (from scratch, a local folder, a bare timm architecture)."""
    name = model.name
    if not model.pretrained or model.weights:
        return None
    if name in BUILTIN_BASE_MODELS:
        return BUILTIN_BASE_MODELS[name]
    if name == "simple_cnn" or ":" in name or name.count("/") > 1 or Path(name).expanduser().exists():
        return None  # a timm architecture (timm picks the weights), or a local folder: no Hub id to name
    return name


def data_source(data: DataSpec, task: str) -> dict[str, Any]:
    """What the model-index calls the dataset: a Hub id when there is one, else the kind and name of local data."""
    if data.files:
        first = Path(next(iter(data.files.values())))
        return {
            "id": None,
            "type": first.suffix.lstrip(".").lower() or "files",
            "name": first.parent.name,
            "config": None,
        }
    if data.source.startswith("builtin:"):
        kind = data.source.removeprefix("builtin:")
        return {"id": None, "type": kind, "name": kind, "config": None}
    path = Path(data.source).expanduser()
    if path.is_dir():
        kind = "imagefolder" if task == "image-classification" else "folder"
        return {"id": None, "type": kind, "name": path.name, "config": data.config}
    if path.is_file():
        return {"id": None, "type": path.suffix.lstrip(".").lower(), "name": path.stem, "config": None}
    return {"id": data.source, "type": data.source, "name": data.source, "config": data.config}


# --------------------------------------------------------------------------------------------- body


def card_context(out: Path, facts: CardFacts) -> dict[str, Any]:
    """Everything a template can use. Empty values mean "leave the section out"."""
    splits = facts.splits
    headline = _headline(splits)
    run = facts.run
    code_files = shipped_code_files(out)
    fmt = facts.data.label_format
    single = bool(headline) and fmt == "single"
    return {
        "model_name": facts.model_name,
        "task": facts.task,
        "model_description": facts.model_description,
        "base_model_id": base_model(facts.model),
        "pretrained": facts.starts_pretrained,
        "data_description": facts.data_description,
        "dataset_id": data_source(facts.data, facts.task)["id"],
        "label_names": facts.label_names,
        "labels": [{"id": i, "name": _cell(n)} for i, n in enumerate(facts.label_names)],
        "label_format": fmt,
        "format_section": format_section(out, facts) if fmt != "single" else "",
        "score_section": score_section(out, facts) if fmt == "single" else "",
        "failure_section": failure_section(facts) if fmt == "single" else "",
        "usage_section": usage_section(facts, code_files, facts.model_ref or str(out)) if fmt != "single" else "",
        # the single-label tables; the other formats' results are in format_section
        "metric_rows": [_metric_row(p, m) for p, m in splits.items()] if fmt == "single" else [],
        "topk_names": sorted({k for m in splits.values() for k in m if re.fullmatch(r"top\d+_accuracy", k)}),
        "has_baseline": any(_baseline(m, "baseline") is not None for m in splits.values()),
        "linear_baseline": _linear_baseline_note(splits),
        "tta_note": _tta_note(run),
        "per_class_split": SPLIT_OF_PREFIX[headline] if single and splits[headline].get("per_class") else None,
        "per_class": _per_class(splits[headline]) if single else [],
        "confusion_images": _confusion_images(Path(out), splits),
        "data_splits": _data_splits(run),
        "class_counts": _class_counts(run, facts.label_names, fmt),
        "data_notes": _data_notes(facts),
        "preprocessing": _preprocessing(facts),
        "transfer": _transfer(facts),
        "augmentation": _augmentation(facts),
        "hyperparameters": facts.hyperparameters,
        "hardware": run.get("hardware") or {},
        "wall_time": format_duration(run["wall_time_s"]) if run.get("wall_time_s") is not None else None,
        # the folder's name only: its local path means nothing on the Hub, where checkpoints are usually not pushed
        "best_checkpoint": Path(run["best_checkpoint"]).name if run.get("best_checkpoint") else None,
        "versions": sorted((run.get("versions") or {}).items()),
        "model_ref": facts.model_ref or str(out),
        "code_files": code_files,
        # the folder's own code must run to load it: simple_cnn (transformers lacks it) or a remote-code model
        "trust_remote_code": bool(code_files) or facts.model.name == "simple_cnn" or facts.model.trust_remote_code,
        "pairs": bool(facts.data.text_pair_column),
        "example_text": TEXT_EXAMPLE,
        "recipe_yaml": facts.recipe_yaml,
        "limitations": limitations(facts),
        # the raw inputs, for templates that want more than the prepared tables
        "recipe": facts.recipe,
        "results": facts.results,
        "run": run,
    }


# The files of a folder whose `auto_map` names code saved beside it: the model's (config.json) and its image
# processor's (a 1-channel simple_cnn's grayscale processor).
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json")


def shipped_code_files(out: Path) -> list[str]:
    """The .py files of `out` that the `auto_map` of its config.json or preprocessor_config.json names: the model's
    own code (and its processor's), saved beside it."""
    import json

    refs: list[str] = []
    for name in AUTO_MAP_FILES:
        try:
            auto_map = json.loads((Path(out) / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        refs += [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    # "repo--module.Class" points at another repo's code, not a file here
    return sorted({f"{r.rsplit('.', 1)[0]}.py" for r in refs if "--" not in r and "." in r})


def _headline(splits: Mapping[str, Any]) -> str | None:
    """The split whose numbers the card leads with: test if there is one, else validation."""
    return "test" if "test" in splits else "eval" if "eval" in splits else None


def _cell(value: Any) -> str:
    """Text that cannot break a markdown table row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _baseline(m: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """A split's baseline entry (`baseline`: majority class, `baseline_linear`), or None where the run has none (or
    metrics.json was edited into something else)."""
    value = m.get(key)
    return value if isinstance(value, dict) else None


def _metric_row(prefix: str, m: dict[str, Any]) -> dict[str, Any]:
    baseline, linear = _baseline(m, "baseline") or {}, _baseline(m, "baseline_linear") or {}
    return {
        "split": SPLIT_OF_PREFIX[prefix],
        "rows": m.get("num_samples", ""),
        **{k: _fmt(m.get(k)) for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")},
        "topk": {k: _fmt(v) for k, v in m.items() if re.fullmatch(r"top\d+_accuracy", k)},
        "baseline_accuracy": _fmt(baseline.get("accuracy")),
        "baseline_f1_macro": _fmt(baseline.get("f1_macro")),
        "majority_class": _cell(baseline.get("majority_class", "")),
        "linear_accuracy": _fmt(linear.get("accuracy")),
        "linear_f1_macro": _fmt(linear.get("f1_macro")),
    }


def _linear_baseline_note(splits: Mapping[str, Any]) -> str:
    """What the logistic-regression columns are (`metrics.baseline: linear`); empty when the run has none."""
    linear = [b for m in splits.values() if (b := _baseline(m, "baseline_linear")) is not None]
    if not linear:
        return ""
    if linear[0].get("same_as"):
        return "The logistic-regression columns are this run's own: a linear probe is that regression."
    chosen = f" (C={linear[0]['C']:g}, chosen on validation)" if "C" in linear[0] else ""
    return (
        f"The logistic-regression columns are a logistic regression{chosen} fitted on the pretrained model's frozen "
        "features before training: what fine-tuning has to beat to have paid off."
    )


# what the TTA note compares, by label format: metrics.json key, its name in the card
_TTA_HEADLINES = {"single": ("accuracy", "accuracy"), "multi_label": ("map", "mAP"), "regression": ("rmse", "RMSE")}


def _tta_note(run: Mapping[str, Any]) -> str:
    """metrics.tta: the results are averaged over views, which `pipeline()` does not do; say so, and what one view
    scores (run.tta.without)."""
    tta = run.get("tta")
    if not isinstance(tta, dict):
        return ""
    key, name = _TTA_HEADLINES.get(run.get("label_format") or "single", _TTA_HEADLINES["single"])
    without = tta.get("without") or {}
    split = "test" if "test" in without else next(iter(without), None)
    plain = without.get(split, {}).get(key) if split else None
    how = "each image and its mirror" if tta.get("views") == "flip" else "each image and five 7/8 crops of it"
    averaged = "outputs" if run.get("label_format") == "regression" else "probabilities"
    line = (
        f"These results use test-time augmentation ({tta.get('views')}: {tta.get('count')} views, {how}, "
        f"{averaged} averaged). `pipeline()` and `hf-finetune predict` score one view unless asked "
        f"(`hf-finetune predict --tta {tta.get('views')}`)"
    )
    if _finite(plain):
        line += f"; with one view the {SPLIT_OF_PREFIX.get(split, split)} {name} is {float(plain):.4f}"
    return line + "."


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{float(value):.4f}"


def _per_class(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "label": _cell(row["label"]),
            "precision": _fmt(row.get("precision")),
            "recall": _fmt(row.get("recall")),
            "f1": _fmt(row.get("f1")),
            "support": row.get("support", ""),
        }
        for row in m.get("per_class") or []
    ]


def _confusion_images(out: Path, splits: Mapping[str, Any]) -> list[dict[str, str]]:
    """The confusion-matrix images the output stage wrote (a run without matplotlib has none)."""
    images = []
    for prefix in EVALUATED_PREFIXES:
        _, png = confusion_matrix_files(prefix)
        if (out / png).is_file():
            images.append({"split": SPLIT_OF_PREFIX[prefix], "file": png})
    return images


def _data_splits(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"split": name, "rows": info.get("rows")} for name, info in (run.get("splits") or {}).items()]


def _class_counts(run: dict[str, Any], label_names: list[str], fmt: str = "single") -> dict[str, Any]:
    # a streamed train split has no class counts (data.streaming): its column is left out, not shown as zeros
    splits = {
        name: info.get("class_counts") or {}
        for name, info in (run.get("splits") or {}).items()
        if not info.get("streamed")
    }
    if not any(splits.values()):
        return {}
    rows = [{"label": _cell(n), "counts": [splits[s].get(n, 0) for s in splits]} for n in label_names]
    if fmt == "multi_label":  # a row may carry several labels (or none): the column sums are not row counts
        return {
            "title": "Rows with each label, per split (a row can carry several labels, or none):",
            "column": "label",
            "splits": list(splits),
            "rows": rows,
            "totals": [(run["splits"][s] or {}).get("rows") for s in splits],
            "total_name": "rows",
        }
    return {
        "title": "Rows per class and split:",
        "column": "class",
        "splits": list(splits),
        "rows": rows,
        "totals": [sum(c.values()) for c in splits.values()],
        "total_name": "total",
    }


def _data_notes(facts: CardFacts) -> list[str]:
    d = facts.data
    notes = []
    if d.files:
        notes.append("files: " + ", ".join(f"{split} `{Path(f).name}`" for split, f in d.files.items()))
    streamed = facts.run.get("streaming")
    if streamed is not None:  # data.streaming: no split was carved, and train was never counted row by row
        rows = streamed["train_rows"]
        notes.append(
            f"train: streamed, {rows if rows is not None else 'an unknown number of'} rows "
            f"({streamed['counted_by']}), {streamed['shards']} shards; the pre-flight checks read its first "
            f"{streamed['check_sample']} rows; validation and test are the data's own splits, read whole"
        )
    elif d.validation_split is None and "validation" in (facts.run.get("splits") or {}):
        notes.append(
            f"validation: the data's own validation split if it has one, else {d.validation_size:g} of train held "
            f"out (stratified, seed {d.seed})"
        )
    if d.test_size is not None and "test" in (facts.run.get("splits") or {}):
        how = "whole groups" if d.group_column else "stratified"
        notes.append(
            f"test: {d.test_size:g} of train held out before training ({how}, seed {d.seed}); `data.test_size` "
            "carves the same rows again for `hf-finetune eval`"
        )
    for key in ("max_train_samples", "max_eval_samples"):
        if getattr(d, key) is not None:
            notes.append(f"`data.{key}`: {getattr(d, key)} (the data was cut to this many rows)")
    if facts.task == "text-classification":
        columns = f"text column `{d.text_column}`" + (
            f", pair column `{d.text_pair_column}`" if d.text_pair_column else ""
        )
        notes.append(f"{columns}, label column `{d.label_column}`; empty texts: {d.empty_text}")
    else:
        notes.append(f"image column `{d.image_column}`, label column `{d.label_column}`")
    if facts.loss.class_weights is not None:
        notes.append(f"loss class weights: {facts.loss.class_weights}")
    if d.group_column:
        overlap = facts.run.get("groups_across_splits") or {}
        rows = overlap.get("rows") or {}
        notes.append(
            f"groups: `{d.group_column}`; carved validation and test splits keep each group whole"
            + (
                "; groups in more than one split: " + ", ".join(f"{n} {s} rows" for s, n in rows.items() if n)
                if rows
                else "; no group is in more than one split"
            )
        )
    duplicates = _duplicates_note(facts.run.get("duplicates"))
    if duplicates:
        notes.append(duplicates)
    return notes


def _duplicates_note(info: Any) -> str:
    """What the duplicate check (data.duplicates) found and dropped; empty when it did not run."""
    if not isinstance(info, dict) or not isinstance(info.get("counts"), dict):
        return ""
    c = info["counts"]
    line = (
        f"duplicates (`data.duplicates: {info.get('policy')}`): {c.get('exact_cross', 0)} exact and "
        f"{c.get('near_cross', 0)} near duplicate groups across splits, {c.get('exact_within', 0)} exact and "
        f"{c.get('near_within', 0)} near within a split, {c.get('conflicting', 0)} with conflicting labels"
    )
    dropped = info.get("dropped") or {}
    if dropped:
        line += "; dropped before training: " + ", ".join(f"{n} {s} rows" for s, n in dropped.items())
    elif c.get("exact_cross") or c.get("near_cross"):
        line += "; kept, so the scores of the splits they span may be optimistic"
    return line


def _preprocessing(facts: CardFacts) -> list[str]:
    if facts.task == "text-classification":
        t = facts.tokenization
        cut = facts.run.get("truncation") or {}  # the run's truncation report (metrics.json's run info)
        limit = f"{t.max_length} tokens" if isinstance(t.max_length, int) else "a length chosen from the training data"
        if cut.get("chosen_by", "").startswith("auto"):
            limit += f" ({cut['chosen_by']})"
        padding = (
            "dynamic padding (each batch to its longest text)" if t.padding == "dynamic" else "padding to max_length"
        )
        lines = [f"the model's own tokenizer, truncation to {limit}, {padding}"]
        shares = [
            f"{name} {r['truncated']} of {r['texts']} ({r['share']:.1%})" for name, r in cut.get("splits", {}).items()
        ]
        if shares:
            lines.append("texts longer than that, truncated: " + ", ".join(shares))
        return lines
    size = f"{facts.model.image_size} px" if facts.model.image_size else "the model's own input size"
    return [f"resize and normalisation from the model's image processor (saved with the model), input size {size}"]


TRANSFER_TEXT = {
    "full": "full fine-tuning: every parameter trains",
    "linear_probe": "linear probe: the new classification head is fitted (multinomial logistic regression, L-BFGS) "
    "on the frozen backbone's features, computed once with eval preprocessing; the backbone is unchanged",
    "head_only": "head only: only the new classification head trains (with the Trainer), the backbone stays frozen",
    "partial": "partial fine-tuning: the head and the last blocks of the backbone train, the rest stays frozen",
    "lp_ft": "LP-FT: the head is first fitted alone on the frozen features (linear probe), then the backbone is "
    "unfrozen and fine-tuned",
}


def _transfer(facts: CardFacts) -> list[str]:
    tr, default, weights = facts.transfer, TransferSpec(), facts.model.weights
    start = "pretrained weights" if facts.starts_pretrained else "random init"
    lines = [f"starting point: {start}" + (f" plus `{weights}`" if weights else "")]
    peft = facts.run.get("peft")
    if peft:  # the strategy only says where the adapters go: no pretrained weight trains
        blocks = f"the last {tr.unfreeze_last} blocks" if tr.unfreeze_last is not None else "every block"
        lines.append(f"LoRA: the pretrained weights stay frozen; low-rank adapters in {blocks} and the new head train")
    else:
        lines.append(TRANSFER_TEXT.get(tr.strategy, tr.strategy))
    if tr.strategy in ("partial", "lp_ft") and tr.unfreeze_last is not None and not peft:
        lines.append(f"last {tr.unfreeze_last} blocks unfrozen")
    if tr.strategy == "lp_ft":
        scale = tr.fine_tune_lr_scale if tr.fine_tune_lr_scale is not None else DEFAULT_FINE_TUNE_LR_SCALE
        epochs = tr.probe_epochs
        probe = f"head-only training for {epochs:g} epoch(s)" if epochs is not None else "fitted probe"
        rate = "the same learning rate" if scale == 1 else f"backbone learning rate × {scale:g}"
        lines.append(f"{probe}, then fine-tuning at {rate}")
    fit = facts.run.get("probe")
    if fit:
        # a ridge regression (regression targets) is tuned by its penalty alpha, a logistic regression by C
        key, what = ("alpha", "ridge penalty alpha") if "alpha" in fit else ("C", "L2 strength C")
        lines.append(
            f"probe {fit['fitted_on']}; {what} = {fit[key]:g} chosen by {fit['chosen_by']} from "
            f"{[g[key] for g in fit['grid']]}; features {fit['feature_seconds']:.1f} s, fit {fit['fit_seconds']:.1f} s"
        )
    lines += _peft_lines(peft)
    if tr.layer_decay is not None:
        lines.append(f"layer-wise learning-rate decay {tr.layer_decay:g}")
    if tr.head_lr is not None and tr.head_lr != default.head_lr:
        lines.append(f"head learning rate {tr.head_lr:g}")
    return lines


def _peft_lines(peft: dict[str, Any] | None) -> list[str]:
    """peft.method lora (metrics.json's run.peft): what was adapted, how much trained, what the folder holds."""
    if not peft:
        return []
    share = peft["trainable_parameters"] / max(1, peft["total_parameters"])
    return [
        f"LoRA (peft): rank {peft['r']}, alpha {peft['alpha']:g}, dropout {peft['dropout']:g}, on "
        f"{peft['adapted_layers']} layers ({', '.join(f'`{n}`' for n in peft['adapted_names'])}); the head "
        f"({', '.join(f'`{n}`' for n in peft['modules_to_save'])}) trained whole",
        f"trainable parameters: {peft['trainable_parameters']:,} of {peft['total_parameters']:,} ({share:.2%})",
        f"this folder holds the merged model (loads like any other) and the adapter in `{peft['adapter']}/` "
        f'(`PeftModel.from_pretrained(base_model, "{peft["adapter"]}")`), both checked to reproduce the trained '
        "model's logits",
    ]


def _augmentation(facts: CardFacts) -> list[str]:
    """The train-time augmentation that differs from none; ["none"] says so explicitly for image models."""
    if facts.task != "image-classification":
        return []
    aug, default = facts.augmentation, AugmentationSpec()
    changed = [
        f"`{f.name}`: {_plain(getattr(aug, f.name))}"
        for f in dataclasses.fields(AugmentationSpec)
        if f.name != "preset" and getattr(aug, f.name) != getattr(default, f.name)
    ]
    head = [f"preset `{aug.preset}`"] if aug.preset else []
    return head + changed or ["none: only the model's resize and normalisation"]


def _plain(value: object) -> str:
    if isinstance(value, tuple):
        return str(list(value))
    if isinstance(value, Enum):  # TrainingArguments' optim, lr_scheduler_type: the name the user would write
        return str(value.value)
    return str(value)


def hyperparameters(args: TrainingArguments, processes: int) -> list[tuple[str, str]]:
    """The card's rows for the values the run trained with: the recipe's, the toolkit's defaults, a launcher's."""
    rows = []
    for key in TRAINING_KEYS:
        value = getattr(args, key)
        if key == "max_steps" and value <= 0:
            continue  # epochs decide the length
        rows.append((key, _plain(value)))
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if per_device and accumulation:
        rows.append(("effective batch size", f"{per_device * accumulation * processes} ({processes} process(es))"))
    if args.load_best_model_at_end:
        rows.append(("metric_for_best_model", str(args.metric_for_best_model)))
    return rows


def early_stopping_rows(info: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The card's row for training.early_stopping: the setting, and where it ended the run (metrics.json's
    run.early_stopping)."""
    if not info:
        return []
    setting = f"patience {info['patience']}, threshold {info['threshold']:g} on {info['metric']}"
    best = f"best {_num(info['best_metric'])} at epoch {_epoch(info['best_epoch'])} (step {info['best_step']})"
    if info["stopped"]:
        ended = f"stopped at epoch {_epoch(info['epoch'])} (step {info['step']} of {info['max_steps']})"
    else:
        ended = "did not trigger"
    return [("early stopping", f"{setting}: {ended}; {best}; the {info['kept']} model is the one saved")]


def _epoch(value: float | None) -> str:
    return "?" if value is None else f"{float(value):g}"


def _recipe_yaml(recipe: Recipe) -> str:
    from .recipe import dump_yaml

    return dump_yaml(redact_recipe(recipe.for_rerun().to_dict())).rstrip()


def format_duration(seconds: float) -> str:
    seconds = round(float(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion measured on n rows; unlike p ± 1.96·se it stays inside [0, 1]."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def limitations(facts: CardFacts) -> list[str]:
    """Caveats that follow from this run's own numbers, then the ones every classifier of this kind has."""
    if facts.data.label_format != "single":
        return _format_limitations(facts)
    splits = facts.splits
    headline = _headline(splits)
    notes = _headline_caveats(SPLIT_OF_PREFIX[headline], splits[headline]) if headline else []
    if "test" not in splits and "eval" in splits:
        chose = " and also chose the best checkpoint, so they are optimistic" if facts.best_model_chosen else ""
        notes.append(f"There is no separate test split: the numbers come from the validation split{chose}.")
    train_counts = ((facts.run.get("splits") or {}).get("train") or {}).get("class_counts") or {}
    notes += _imbalance_caveat(train_counts)
    notes.append(
        f"The model knows only these {len(facts.label_names)} classes: every input gets one of them, including inputs "
        "that belong to none."
    )
    if facts.task == "text-classification":
        notes.append(
            "The metrics hold for texts like the evaluation data; other domains, styles or languages can score lower, "
            "and texts longer than the truncation length are judged on their beginning only."
        )
    else:
        notes.append(
            "The metrics hold for images like the evaluation data; another source, camera, resolution or class "
            "balance can score lower."
        )
    return notes


def _headline_caveats(name: str, m: dict[str, Any]) -> list[str]:
    """What the headline split's own numbers say: how uncertain they are, which classes are weak or thin."""
    notes = []
    n, acc = m.get("num_samples"), m.get("accuracy")
    if n and acc is not None:
        low, high = wilson_interval(float(acc), int(n))
        notes.append(
            f"The {name} split has {n} rows: accuracy {acc:.3f} has a 95% interval of about {low:.3f}–{high:.3f}"
            ", so smaller differences between models are noise."
        )
    weak = sorted(
        (row for row in m.get("per_class") or [] if row.get("f1") is not None and row["f1"] < 0.5),
        key=lambda row: row["f1"],
    )
    if weak:
        listed = ", ".join(f"{row['label']} (F1 {row['f1']:.2f})" for row in weak[:5])
        notes.append(f"Weak classes on the {name} split: {listed}. Do not rely on the model for these.")
    small = [row["label"] for row in m.get("per_class") or [] if 0 < row.get("support", 0) < 10]
    if small:
        notes.append(
            f"Some classes have fewer than 10 {name} rows ({', '.join(map(str, small[:5]))}"
            f"{'…' if len(small) > 5 else ''}): their per-class numbers are very uncertain."
        )
    baseline = _baseline(m, "baseline")
    if baseline and m.get("f1_macro") is not None and m["f1_macro"] <= baseline.get("f1_macro", 0) + 0.05:
        notes.append(
            f"Macro F1 ({m['f1_macro']:.3f}) is barely above always answering the majority class "
            f"({baseline['f1_macro']:.3f}): the model has learned little."
        )
    return notes + _linear_baseline_caveat(name, m)


def _linear_baseline_caveat(name: str, m: dict[str, Any]) -> list[str]:
    """Fine-tuning that beats a logistic regression on the frozen pretrained features neither in accuracy nor in
    macro F1 cost its training for nothing (a linear probe, which is that regression, is never flagged)."""
    linear = _baseline(m, "baseline_linear")
    if not linear or linear.get("same_as") or m.get("accuracy") is None or m.get("f1_macro") is None:
        return []
    if m["accuracy"] > linear["accuracy"] or m["f1_macro"] > linear["f1_macro"]:
        return []
    return [
        f"On the {name} split the fine-tuned model (accuracy {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f}) does "
        f"not beat the logistic-regression baseline (accuracy {linear['accuracy']:.3f}, macro F1 "
        f"{linear['f1_macro']:.3f}): fine-tuning did not pay off over a logistic regression on the pretrained model's "
        "frozen features: consider transfer.strategy linear_probe."
    ]


def _imbalance_caveat(train_counts: dict[str, int]) -> list[str]:
    if (
        not train_counts
        or min(train_counts.values()) <= 0
        or max(train_counts.values()) < 3 * min(train_counts.values())
    ):
        return []
    big = max(train_counts, key=train_counts.get)
    few = min(train_counts, key=train_counts.get)
    return [
        f"The training data is imbalanced ({big}: {train_counts[big]} rows, {few}: {train_counts[few]}); "
        "accuracy hides how the rare classes fare — read the per-class table."
    ]


# --------------------------------------------------------------------------------------------- multi-label, regression


def _finite(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    """A table cell: four decimals, or n/a for a missing or non-finite value (Pearson of a constant prediction)."""
    return f"{float(value):.4f}" if _finite(value) else "n/a"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# single-label score metrics (score_metrics.ScoreMetrics): metrics.json key, column title
SCORE_COLUMNS = (
    ("roc_auc_macro", "ROC-AUC (macro)"),
    ("pr_auc_macro", "PR-AUC (macro)"),
    ("log_loss", "log loss"),
    ("brier", "Brier"),
    ("ece", "ECE"),
)


def score_section(out: Path, facts: CardFacts) -> str:
    """How far a single-label model's probabilities can be trusted: ranking (ROC/PR-AUC), proper scores (log loss,
    Brier), calibration (ECE, reliability diagrams) and, with metrics.calibration, the temperature and its effect."""
    from .names import reliability_diagram_file

    splits = facts.splits
    rows = [
        [SPLIT_OF_PREFIX[p], *(_num(m.get(k)) for k, _ in SCORE_COLUMNS)]
        for p, m in splits.items()
        if any(k in m for k, _ in SCORE_COLUMNS)
    ]
    if not rows:
        return ""
    parts = [
        "### Scores and calibration",
        "",
        _table(["split", *(title for _, title in SCORE_COLUMNS)], rows),
        "",
        "ROC-AUC and PR-AUC are one-vs-rest, averaged over classes; log loss and Brier score the probabilities "
        "themselves (lower is better); ECE is the expected calibration error of the top class's probability over "
        "equal-width confidence bins (0: a probability of 0.8 is right 80% of the time).",
    ]
    calibration = facts.run.get("calibration")
    if calibration:
        line = (
            f"The probabilities are calibrated by temperature scaling: T = {float(calibration['temperature']):.4g}, "
            f"fitted on {calibration.get('rows')} validation rows and folded into the classifier's last layer, so "
            "`pipeline()` and any other loader already see calibrated probabilities (config.json records "
            "`calibration_temperature`; do not divide by it again)."
        )
        before, after = calibration.get("before", {}), calibration.get("after", {})
        split = "test" if "test" in after else next(iter(after), None)
        if split is not None:
            b, a = before.get(split, {}), after.get(split, {})
            line += (
                f" On the {SPLIT_OF_PREFIX.get(split, split)} split: log loss {_num(b.get('log_loss'))} → "
                f"{_num(a.get('log_loss'))}, ECE {_num(b.get('ece'))} → {_num(a.get('ece'))}."
            )
        parts += ["", line]
    images = [p for p in splits if (Path(out) / reliability_diagram_file(p)).is_file()]
    if images:
        parts += [""] + [
            f"![Reliability diagram, {SPLIT_OF_PREFIX[p]} split]({reliability_diagram_file(p)})" for p in images
        ]
    return "\n".join(parts)


def failure_section(facts: CardFacts) -> str:
    """ "Where the model fails": each evaluated split's accuracy, most-confused pairs and their share of the errors
    (from metrics.json's `error_analysis`), and where the row-level files are. Those files hold the data's rows, so
    `push` keeps them local unless asked: the card names them but does not link or embed them."""
    from .error_analysis import summary_lines

    analysed = {p: m["error_analysis"] for p, m in facts.splits.items() if isinstance(m.get("error_analysis"), dict)}
    if not analysed:
        return ""
    parts = ["### Where the model fails", ""]
    for prefix, info in analysed.items():
        parts += [f"- {line}" for line in summary_lines(SPLIT_OF_PREFIX[prefix], info)]
    files = ", ".join(f"`{name}`" for info in analysed.values() for name in info.get("files", []))
    parts += [
        "",
        f"Each row's prediction, its loss, the highest-loss examples and the least-confident correct ones are in "
        f"the training output folder ({files}); `hf-finetune push` leaves them out unless named with `--include`, "
        "as they hold the evaluated data's rows.",
    ]
    return "\n".join(parts)


def format_section(out: Path, facts: CardFacts) -> str:
    """The results of a multi-label or regression run, as markdown (the single-label card has its own tables)."""
    if facts.data.label_format == "multi_label":
        return _multi_label_section(facts)
    return _regression_section(Path(out), facts)


def _multi_label_section(facts: CardFacts) -> str:
    splits, run = facts.splits, facts.run
    keys = ("f1_micro", "f1_macro", "f1_samples", "map", "subset_accuracy", "hamming_loss")
    header = ["split", "rows", "F1 (micro)", "F1 (macro)", "F1 (samples)", "mAP", "exact match", "Hamming loss"]
    header += ["prevalence F1 (micro)", "prevalence mAP"]
    linear = any(_baseline(m, "baseline_linear") for m in splits.values())
    if linear:
        header += ["linear F1 (micro)", "linear mAP"]
    rows = []
    for prefix, m in splits.items():
        b, lin = _baseline(m, "baseline") or {}, _baseline(m, "baseline_linear") or {}
        row = [SPLIT_OF_PREFIX[prefix], m.get("num_samples", ""), *(_num(m.get(k)) for k in keys)]
        row += [_num(b.get("f1_micro")), _num(b.get("map"))]
        if linear:
            row += [_num(lin.get("f1_micro")), _num(lin.get("map"))]
        rows.append(row)
    parts = ["## Results", "", _table(header, rows), ""]
    parts.append(
        "A label is predicted when its sigmoid score reaches its threshold. mAP (the mean over labels of average "
        "precision) needs no threshold. The prevalence columns score always answering the labels present in at "
        "least half of the training rows, with each label's training share as its score."
    )
    if linear:
        parts.append(_linear_baseline_note(splits).replace("logistic-regression columns", "linear columns"))
    thresholds = run.get("thresholds") or {}
    if thresholds.get("mode") == "tune" and "eval" in splits:
        parts.append(
            "The validation split chose the thresholds, so its F1 scores are optimistic; the test split's are the "
            "honest ones."
        )
    headline = _headline(splits)
    per_label = splits[headline].get("per_class") if headline else None
    if per_label:
        parts += ["", f"### Per label ({SPLIT_OF_PREFIX[headline]} split)", ""]
        parts.append(
            _table(
                ["label", "precision", "recall", "F1", "positives", "average precision", "threshold"],
                [
                    [
                        _cell(r["label"]),
                        _num(r.get("precision")),
                        _num(r.get("recall")),
                        _num(r.get("f1")),
                        r.get("support", ""),
                        _num(r.get("average_precision")),
                        f"{float(r['threshold']):.3f}",
                    ]
                    for r in per_label
                ],
            )
        )
    if thresholds:
        parts += ["", "### Decision thresholds", ""]
        values = thresholds.get("values") or {}
        if thresholds.get("mode") == "tune":
            parts.append(
                "Each label's threshold is the one with the best F1 on the validation split (`metrics.thresholds: "
                "tune`), chosen after training."
            )
        else:
            parts.append(
                f"Every label uses the fixed threshold `metrics.thresholds: {next(iter(values.values()), '')}`."
            )
        if thresholds.get("untuned"):
            parts.append(
                f"No validation row had {', '.join(map(str, thresholds['untuned']))}: they keep the threshold 0.5."
            )
        parts.append(
            "`config.json` holds them as `label_thresholds`; `hf-finetune predict` and `hf-finetune eval` use them."
        )
    return "\n".join(parts)


def _regression_section(out: Path, facts: CardFacts) -> str:
    splits, run = facts.splits, facts.run
    target = facts.label_names[0] if facts.label_names else "target"
    keys = ("mae", "rmse", "r2", "pearson", "spearman")
    header = ["split", "rows", "MAE", "RMSE", "R²", "Pearson", "Spearman", "mean-baseline MAE", "mean-baseline RMSE"]
    linear = any(_baseline(m, "baseline_linear") for m in splits.values())
    if linear:
        header += ["ridge MAE", "ridge RMSE"]
    rows = []
    for prefix, m in splits.items():
        b, lin = _baseline(m, "baseline") or {}, _baseline(m, "baseline_linear") or {}
        row = [SPLIT_OF_PREFIX[prefix], m.get("num_samples", ""), *(_num(m.get(k)) for k in keys)]
        row += [_num(b.get("mae")), _num(b.get("rmse"))]
        if linear:
            row += [_num(lin.get("mae")), _num(lin.get("rmse"))]
        rows.append(row)
    parts = ["## Results", "", f"The model predicts **{_cell(target)}**, a number.", "", _table(header, rows), ""]
    means = [b.get("value") for m in splits.values() if (b := _baseline(m, "baseline")) and _finite(b.get("value"))]
    if means:
        parts.append(
            f"The mean-baseline columns score always answering the training mean ({means[0]:.4g}); R² compares "
            "the model with that same constant, so R² ≤ 0 means the model does no better."
        )
    if any(not _finite(m.get(k)) for m in splits.values() for k in ("pearson", "spearman")):
        parts.append("n/a: the correlation is undefined because the predictions (or the targets) do not vary.")
    scaler = run.get("target_scaler")
    if scaler:
        parts.append(
            f"Training standardised the targets (mean {scaler['mean']:.6g}, standard deviation {scaler['std']:.6g}, "
            "from the training rows); the saved model's head has them folded in, so it outputs the original units."
        )
    images = []
    for prefix, m in splits.items():
        for kind, title in (("scatter", "Predicted vs true"), ("residuals", "Residuals")):
            name = (m.get("plots") or {}).get(kind)
            if name and (out / name).is_file():
                images.append(f"![{title}, {SPLIT_OF_PREFIX[prefix]} split]({name})")
    if images:
        parts += ["", "### Predicted vs true", "", "\n".join(images)]
    return "\n".join(parts)


def usage_section(facts: CardFacts, code_files: Sequence[str], model_ref: str) -> str:
    """How to use a multi-label or regression model with `pipeline()`, and with the toolkit's own predict."""
    image = facts.task == "image-classification"
    trust = bool(code_files) or facts.model.name == "simple_cnn" or facts.model.trust_remote_code
    lines = ["## How to use", "", "```python", "from transformers import pipeline", ""]
    if trust:
        lines.append("# The model's code is in the repo, beside its weights: trust_remote_code=True runs it (read it).")
    extra = ", trust_remote_code=True" if trust else ""
    example = '"photo.jpg"' if image else f'"{TEXT_EXAMPLE}"'
    if facts.data.label_format == "multi_label":
        lines += [
            f'tagger = pipeline("{facts.task}", model="{model_ref}"{extra})',
            # the image pipeline caps top_k=None at 5 labels; the text one returns all with None
            f"scores = tagger({example}, top_k={len(facts.label_names) if image else None})"
            "  # every label with its sigmoid score, best first",
            "thresholds = tagger.model.config.label_thresholds  # tuned per label when the model was trained",
            'labels = [s["label"] for s in scores if s["score"] >= thresholds[s["label"]]]',
            "```",
            "",
            "`pipeline()` applies the sigmoid (the config says `problem_type: multi_label_classification`) but knows "
            "no thresholds: compare each score with `config.label_thresholds` as above. `hf-finetune predict` does "
            "that and lists the labels above their thresholds.",
        ]
    else:
        lines += [
            f'regressor = pipeline("{facts.task}", model="{model_ref}"{extra})',
            f'value = regressor({example}, function_to_apply="none")[0]["score"]  # the predicted '
            f"{facts.label_names[0] if facts.label_names else 'value'}",
            "```",
            "",
            "For `problem_type: regression` `pipeline()` already returns the raw output (no sigmoid or softmax) as "
            'the one entry\'s `"score"`, under the target\'s name as `"label"`; `function_to_apply="none"` only '
            "says so. The value is in the target's own units.",
        ]
    return "\n".join(lines)


def _format_limitations(facts: CardFacts) -> list[str]:
    """Caveats of a multi-label or regression run, from its own numbers, then the general ones."""
    splits = facts.splits
    headline = _headline(splits)
    name = SPLIT_OF_PREFIX[headline] if headline else ""
    m = splits[headline] if headline else {}
    notes = []
    if "test" not in splits and "eval" in splits:
        notes.append("There is no separate test split: the numbers come from the validation split, which also chose "
                     "the thresholds or the checkpoint, so they are optimistic.")  # fmt: skip
    if facts.data.label_format == "multi_label":
        few = [r["label"] for r in m.get("per_class") or [] if r.get("support", 0) < 10]
        if few:
            shown = ", ".join(map(str, few[:5])) + ("…" if len(few) > 5 else "")
            notes.append(f"Some labels have fewer than 10 positive {name} rows ({shown}): their numbers are very "
                         "uncertain.")  # fmt: skip
        validation_rows = ((facts.run.get("splits") or {}).get("validation") or {}).get("rows")
        if (facts.run.get("thresholds") or {}).get("mode") == "tune" and validation_rows and validation_rows < 200:
            notes.append(f"The thresholds were tuned on {validation_rows} validation rows: with so few, a label's "
                         "best threshold is itself uncertain.")  # fmt: skip
        b = _baseline(m, "baseline") or {}
        if _finite(m.get("f1_micro")) and _finite(b.get("f1_micro")) and m["f1_micro"] <= b["f1_micro"] + 0.05:
            notes.append(f"Micro F1 ({m['f1_micro']:.3f}) is barely above answering the frequent labels always "
                         f"({b['f1_micro']:.3f}): the model has learned little.")  # fmt: skip
        notes.append("Labels are predicted independently: the model can give a row labels that never occur together.")
    else:
        if _finite(m.get("r2")) and m["r2"] <= 0:
            notes.append(f"R² on the {name} split is {m['r2']:.3f}: the model does no better than always answering "
                         "the training mean.")  # fmt: skip
        summary = ((facts.run.get("splits") or {}).get("train") or {}).get("target") or {}
        if _finite(summary.get("min")) and _finite(summary.get("max")):
            notes.append(f"The training targets range from {summary['min']:.4g} to {summary['max']:.4g}: "
                         "predictions outside that range are extrapolation.")  # fmt: skip
    kind = "texts" if facts.task == "text-classification" else "images"
    notes.append(f"The metrics hold for {kind} like the evaluation data; other sources can score lower.")
    return notes
