"""The model card: metadata huggingface_hub parses back, the body's sections, and what is left out when data is missing.

Most tests render from hand-made results (fast); one trains a tiny model and checks the card `finetune` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard

from hf_finetune import finetune
from hf_finetune.card import (
    CardFacts,
    card_for_repo,
    format_duration,
    hyperparameters,
    wilson_interval,
    write_model_card,
)
from hf_finetune.recipe import load_recipe

LABELS = ["one", "two", "zero"]


def _split(accuracy: float, f1: float, n: int, weak: bool = False) -> dict[str, Any]:
    per_class = [
        {"label": "one", "precision": 0.9, "recall": 1.0, "f1": 0.95, "support": n // 3},
        {"label": "two", "precision": 0.2, "recall": 0.1, "f1": 0.1333 if weak else 0.9, "support": n // 3},
        {"label": "zero", "precision": 1.0, "recall": 0.9, "f1": 0.9474, "support": n // 3},
    ]
    return {
        "loss": 0.4,
        "accuracy": accuracy,
        "precision_macro": 0.7,
        "recall_macro": 0.6666666,
        "f1_macro": f1,
        "precision_weighted": 0.7,
        "recall_weighted": 0.6666666,
        "f1_weighted": f1 + 0.01,
        "top2_accuracy": 0.95,
        "per_class": per_class,
        "confusion_matrix": [[n // 3, 0, 0], [2, 1, n // 3 - 3], [0, 1, n // 3 - 1]],
        "num_samples": n,
        "baseline": {"majority_class": "one", "accuracy": 1 / 3, "f1_macro": 1 / 6},
    }


def _run(**changes: Any) -> dict[str, Any]:
    run = {
        "data": "imagefolder folder /data/digits",
        "splits": {
            "train": {"rows": 81, "class_counts": {"one": 27, "two": 27, "zero": 27}},
            "validation": {"rows": 9, "class_counts": {"one": 3, "two": 3, "zero": 3}},
            "test": {"rows": 30, "class_counts": {"one": 10, "two": 10, "zero": 10}},
        },
        "hardware": {"device": "CPU (x86_64, 2 cores)", "processes": 1, "precision": "fp32"},
        "versions": {"transformers": "5.24.0", "torch": "2.14.1", "hf_finetune": "0.1.0"},
        "wall_time_s": 125.4,
        "best_checkpoint": None,
    }
    run.update(changes)
    return run


def _write(out: Path, recipe: Any, results: dict[str, Any], run: dict[str, Any], png: bool = True) -> ModelCard:
    """What `_write_results` leaves before the card: metrics.json and the confusion-matrix images; then the card."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"label_names": LABELS, **results, "run": run}))
    for prefix in ("eval", "test"):
        if png and prefix in results:
            (out / f"confusion_matrix_{prefix}.png").write_bytes(b"\x89PNG")
    facts = CardFacts.from_run(
        recipe, _training_args(recipe), LABELS, results, run["data"], "simple_cnn (from scratch)", run
    )
    return ModelCard.load(write_model_card(out, facts))


def _training_args(recipe: Any, **changes: Any) -> Any:
    """The TrainingArguments `finetune` would resolve for `recipe` (its `training:` plus the toolkit's defaults)."""
    from hf_finetune.trainer import build_training_args, training_defaults

    training = {**recipe.training, **changes}
    return build_training_args(training, training_defaults(training, {}, recipe.metrics.metric_for_best_model))


def _eval_results(card: ModelCard) -> dict[tuple[str, str, str | None], float]:
    return {(r.dataset_split, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}


def test_image_card_metadata_and_every_section(tiny_recipe, tmp_path: Path):
    recipe = load_recipe(tiny_recipe(card={"license": "apache-2.0"}, augmentation={"horizontal_flip": 0.5}))
    results = {"train": {"train_loss": 0.5}, "eval": _split(0.8888, 0.88, 9), "test": _split(0.6667, 0.5556, 30, True)}
    out = recipe.output_dir
    card = _write(out, recipe, results, _run(best_checkpoint="/runs/tiny/checkpoint-12"))
    text = card.content

    data = card.data
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-classification" and data.library_name == "transformers"
    assert "hf_finetune" in data.tags and "simple_cnn" in data.tags
    assert data.base_model is None and data.datasets is None  # from scratch, local data: no Hub ids to claim
    assert data.model_name == "tiny"
    parsed = _eval_results(card)
    for prefix, split in (("eval", "validation"), ("test", "test")):
        m = results[prefix]
        assert parsed[(split, "accuracy", None)] == pytest.approx(m["accuracy"], abs=1e-4)
        assert parsed[(split, "f1", "macro")] == pytest.approx(m["f1_macro"], abs=1e-4)
        assert parsed[(split, "f1", "weighted")] == pytest.approx(m["f1_weighted"], abs=1e-4)
        assert parsed[(split, "precision", "macro")] == pytest.approx(m["precision_macro"], abs=1e-4)
        assert parsed[(split, "recall", "macro")] == pytest.approx(m["recall_macro"], abs=1e-4)
    assert {r.dataset_type for r in data.eval_results} == {"imagefolder"}

    assert "An image classifier: it sorts an image into one of 3 classes (one, two, zero)." in text
    assert "| 2 | zero |" in text  # label table
    assert "| test | 30 | 0.6667 | 0.7000 | 0.6667 | 0.5556 | 0.5656 | 0.9500 | 0.3333 | 0.1667 |" in text
    assert "### Per class (test split)" in text and "| two | 0.2000 | 0.1000 | 0.1333 | 10 |" in text
    assert "![Confusion matrix, test split](confusion_matrix_test.png)" in text
    assert "![Confusion matrix, validation split](confusion_matrix_eval.png)" in text
    # provenance: source, splits and class counts
    assert "Source: imagefolder folder /data/digits." in text
    assert "| class | train | validation | test |" in text and "| zero | 27 | 3 | 10 |" in text
    assert "| **total** | **81** | **9** | **30** |" in text
    # transfer, augmentation, hyperparameters, hardware, time, versions
    assert "starting point: random init" in text and "full fine-tuning" in text
    assert "`horizontal_flip`: 0.5" in text
    assert "| learning_rate | 0.003 |" in text and "| per_device_train_batch_size | 16 |" in text
    assert "| optim | adamw_torch_fused |" in text  # transformers' default, filled in: the value that ran
    assert "CPU (x86_64, 2 cores), 1 process(es)" in text and "wall time: 2 min 5 s" in text
    assert "- transformers 5.24.0" in text and "- torch 2.14.1" in text
    assert "best checkpoint: `checkpoint-12`" in text and "/runs/tiny" not in text
    # usage: simple_cnn's code travels with it (trust_remote_code, no hf_finetune); the card loads the local folder
    assert "import hf_finetune" not in text and "The model's code is in the repo" in text
    assert f'pipeline("image-classification", model="{out}", trust_remote_code=True)' in text
    # the resolved recipe, whole
    recipe_block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert load_recipe(_yaml(recipe_block)) == recipe
    # honest limitations from this run's numbers
    limitations = text.split("## Limitations", 1)[1]
    assert "30 rows" in limitations and "95% interval" in limitations
    assert "two (F1 0.13)" in limitations
    assert "More information needed" not in text and "[optional]" not in text
    assert "\n\n\n" not in text


def _yaml(block: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(block)


def test_sections_without_data_are_left_out(tiny_recipe, tmp_path: Path):
    recipe = load_recipe(tiny_recipe(training={"load_best_model_at_end": True, "eval_strategy": "epoch"}))
    results = {"eval": _split(0.9, 0.9, 9)}  # no test split
    run = _run(versions={}, hardware={}, wall_time_s=None)
    run["splits"].pop("test")
    card = _write(recipe.output_dir, recipe, results, run, png=False)
    text = card.content

    assert {split for split, _, _ in _eval_results(card)} == {"validation"}
    assert "| test |" not in text
    assert "### Per class (validation split)" in text  # the per-class table falls back to validation
    assert "Confusion matrix" not in text  # no image was written
    assert "### Framework versions" not in text and "### Hardware and time" not in text
    assert "| class | train | validation |\n" in text
    assert "no separate test split" in text and "optimistic" in text
    assert "More information needed" not in text


def test_card_template_override(tiny_recipe, tmp_path: Path):
    template = tmp_path / "my_card.md"
    template.write_text(
        "---\n{{ card_data }}\n---\n\n# Custom card for {{ model_name }}\n\n"
        "{% for r in metric_rows %}{{ r.split }}={{ r.accuracy }};{% endfor %}\n\n"
        'pipeline("image-classification", model="{{ model_ref }}")\n'
    )
    recipe = load_recipe(tiny_recipe(card={"template": str(template)}))
    card = _write(recipe.output_dir, recipe, {"eval": _split(0.5, 0.4, 9), "test": _split(0.25, 0.2, 30)}, _run())
    assert card.text.lstrip().startswith("# Custom card for tiny")
    assert "validation=0.5000;test=0.2500;" in card.content
    assert _eval_results(card)[("test", "accuracy", None)] == 0.25  # metadata still comes from ModelCardData


def test_text_card_says_text_classification_with_a_text_example(text_recipe, tmp_path: Path):
    recipe = load_recipe(text_recipe(card={"language": "en", "license": "mit"}, tokenization={"max_length": 64}))
    card = _write(recipe.output_dir, recipe, {"eval": _split(0.8, 0.8, 9), "test": _split(0.7, 0.7, 30)}, _run())
    text = card.content
    assert card.data.pipeline_tag == "text-classification" and card.data.language == "en"
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}
    assert {r.dataset_type for r in card.data.eval_results} == {"csv"}
    assert f'pipeline("text-classification", model="{recipe.output_dir}")' in text
    assert 'classifier("Replace this sentence with the text you want to classify.")' in text
    usage = text.split("## How to use", 1)[1].split("```", 2)[1]
    assert "import hf_finetune" not in usage and "trust_remote_code" not in usage  # BERT's code is transformers'
    assert "truncation to 64 tokens" in text and "augmentation" not in text.split("## Recipe")[0]
    assert "text column `review`, label column `sentiment`" in text


def test_credentials_never_reach_the_card(tiny_recipe, tmp_path: Path):
    import dataclasses

    # recipes refuse training.hub_token; the card still redacts any *token value it is handed (defence in depth)
    base = load_recipe(tiny_recipe())
    recipe = dataclasses.replace(base, training={**base.training, "hub_token": "hf_do_not_print_me"})
    card = _write(recipe.output_dir, recipe, {"eval": _split(0.5, 0.4, 9)}, _run())
    assert "hf_do_not_print_me" not in str(card)
    assert "hub_token: <redacted>" in card.content


def test_hyperparameters_are_the_resolved_training_arguments(tmp_path: Path):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=0.01,
        num_train_epochs=1.5,
        max_steps=40,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        optim="sgd",
        seed=7,
        load_best_model_at_end=True,
        eval_strategy="epoch",
        save_strategy="epoch",
        use_cpu=True,
        report_to="none",
    )
    assert hyperparameters(args, processes=2) == [
        ("learning_rate", "0.01"),
        ("num_train_epochs", "1.5"),
        ("max_steps", "40"),
        ("per_device_train_batch_size", "4"),
        ("gradient_accumulation_steps", "2"),
        ("weight_decay", "0.0"),
        ("lr_scheduler_type", "cosine"),  # enums as the value a recipe would write, not SchedulerType.COSINE
        ("warmup_steps", "3"),
        ("optim", "sgd"),
        ("max_grad_norm", "1.0"),
        ("label_smoothing_factor", "0.0"),
        ("seed", "7"),
        ("load_best_model_at_end", "True"),
        ("effective batch size", "16 (2 process(es))"),
        ("metric_for_best_model", "loss"),  # transformers' own fallback: what the run really compared
    ]


def test_card_shows_the_values_the_run_trained_with_not_the_recipe(tiny_recipe, tmp_path: Path):
    # values the recipe never wrote (a launcher's, a default filled in later) still reach the card: it reads the
    # TrainingArguments the run used, not recipe.training
    recipe = load_recipe(tiny_recipe())
    args = _training_args(recipe, learning_rate=0.01, optim="sgd", max_steps=5, gradient_accumulation_steps=3)
    run = _run()
    recipe.output_dir.mkdir(parents=True)
    facts = CardFacts.from_run(recipe, args, LABELS, {"eval": _split(0.5, 0.4, 9)}, run["data"], "simple_cnn", run)
    text = ModelCard.load(write_model_card(recipe.output_dir, facts)).content
    assert "| learning_rate | 0.01 |" in text and "| learning_rate | 0.003 |" not in text
    assert "| optim | sgd |" in text and "| max_steps | 5 |" in text
    assert "| effective batch size | 48 (1 process(es)) |" in text


def test_card_for_repo_points_the_snippet_at_the_repo():
    text = 'x\nclassifier = pipeline("image-classification", model="/tmp/out dir")\nclassifier("a.png")\n'
    assert card_for_repo(text, "me/digits") == (
        'x\nclassifier = pipeline("image-classification", model="me/digits")\nclassifier("a.png")\n'
    )
    # simple_cnn's snippet: the repo id replaces the folder, the flag its code needs stays
    remote = 'classifier = pipeline("image-classification", model="/tmp/out", trust_remote_code=True)\n'
    assert card_for_repo(remote, "me/cnn", "dev") == (
        'classifier = pipeline("image-classification", model="me/cnn", revision="dev", trust_remote_code=True)\n'
    )


def test_small_helpers():
    assert format_duration(13.4) == "13 s" and format_duration(3725) == "1 h 2 min"
    low, high = wilson_interval(1.0, 10)
    assert 0.65 < low < 0.75 and high == 1.0


def test_finetune_writes_a_card_with_the_run_metrics(tiny_recipe):
    result = finetune(tiny_recipe(card={"license": "mit"}, training={"num_train_epochs": 1}))
    out = result.output_dir
    card = ModelCard.load(out / "README.md")
    saved = json.loads((out / "metrics.json").read_text())
    parsed = _eval_results(card)
    for prefix, split in (("eval", "validation"), ("test", "test")):
        assert parsed[(split, "accuracy", None)] == pytest.approx(saved[prefix]["accuracy"], abs=1e-4)
        assert parsed[(split, "f1", "macro")] == pytest.approx(saved[prefix]["f1_macro"], abs=1e-4)
    assert card.data.license == "mit"
    text = card.content
    counts = saved["run"]["splits"]["train"]["class_counts"]
    assert f"| zero | {counts['zero']} |" in text
    assert "![Confusion matrix, test split](confusion_matrix_test.png)" in text
    assert f"- torch {saved['run']['versions']['torch']}" in text
    assert "More information needed" not in text
