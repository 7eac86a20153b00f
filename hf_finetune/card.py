"""A short model card (README.md) rendered from `model_cards/` with huggingface_hub's ModelCard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .outputs import write_text_atomic
from .recipe import Recipe, shipped_dir

TEMPLATES = {"image-classification": "image_classification.md", "text-classification": "text_classification.md"}


def write_model_card(
    out: Path,
    *,
    recipe: Recipe,
    label_names: list[str],
    results: dict[str, Any],
    data_description: str,
    model_description: str,
    run: dict[str, Any],
) -> Path:
    from huggingface_hub import ModelCard, ModelCardData

    split_results = {k: v for k, v in results.items() if k in ("eval", "test")}
    name = recipe.model.name
    base_model = name if recipe.model.pretrained and name != "simple_cnn" and ":" not in name else None
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=recipe.task,
        tags=["hf_finetune", recipe.task],
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        metrics=["accuracy", "precision", "recall", "f1"],
    )
    card = ModelCard.from_template(
        data,
        template_path=str(shipped_dir("model_cards") / TEMPLATES[recipe.task]),
        model_name=recipe.name or out.name,
        model_description=model_description,
        data_description=data_description,
        label_names=label_names,
        results=split_results,
        recipe=recipe,
        seconds=run["wall_time_s"],
        model_path=str(out),
        needs_import=recipe.model.name == "simple_cnn",
        pairs=bool(recipe.data.text_pair_column),
        example_text="I would happily ride in a self-driving car." if recipe.task == "text-classification" else "",
    )
    path = out / "README.md"
    write_text_atomic(path, str(card))
    return path
