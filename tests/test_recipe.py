"""Recipes: YAML + overrides → validated Recipe; every problem reported at once."""

from pathlib import Path

import pytest
import yaml

from hf_finetune.errors import RecipeError
from hf_finetune.names import RECIPE_FILE
from hf_finetune.recipe import Recipe, find_recipe, list_recipes, load_recipe, load_saved_recipe

BASE = {"model": {"name": "simple_cnn"}, "data": {"source": "builtin:digits"}}


def test_overrides_win_over_file_and_yaml_style_floats_are_numbers(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "training": {"learning_rate": "2e-5", "num_train_epochs": 3}}))
    recipe = load_recipe(path, ["training.learning_rate=1e-4", "data.source=./pets", "augmentation.rotation=15"])
    assert recipe.training["learning_rate"] == pytest.approx(1e-4)
    assert isinstance(recipe.training["learning_rate"], float)
    assert recipe.training["num_train_epochs"] == 3
    assert recipe.data.source == "./pets"
    assert recipe.augmentation.rotation == 15.0
    assert recipe.name == "r"


def test_plain_yaml_1e_notation_becomes_float(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: simple_cnn}\ndata: {source: builtin:digits}\ntraining: {learning_rate: 2e-5}\n")
    assert load_recipe(path).training["learning_rate"] == pytest.approx(2e-5)


def test_all_problems_reported_at_once_with_suggestions():
    raw = {
        "modle": {"name": "x"},
        "model": {"name": "simple_cnn", "pretrianed": False},
        "data": {"source": "builtin:digits", "validation_size": 1.5, "seed": "abc"},
        "augmentation": {"horizontal_flip": 2.0, "scale": [0.9, 0.5]},
        "training": {"learning_rat": 0.1, "evaluation_strategy": "epoch", "num_train_epochs": "many"},
    }
    with pytest.raises(RecipeError) as info:
        load_recipe(raw)
    text = str(info.value)
    problems = info.value.problems
    assert any("modle" in p and "did you mean 'model'" in p for p in problems), text
    assert any("model.pretrianed" in p and "did you mean 'pretrained'" in p for p in problems), text
    assert any("data.seed" in p and "an integer" in p and "'abc'" in p for p in problems), text
    assert any("training.learning_rat" in p and "did you mean 'learning_rate'" in p for p in problems), text
    assert any("training.evaluation_strategy" in p and "eval_strategy" in p for p in problems), text
    assert any("training.num_train_epochs" in p and "'many'" in p for p in problems), text
    # value checks run in a second pass, only once the keys and types are right
    assert len(problems) == 6, text


def test_impossible_values_reported_together():
    raw = {
        **BASE,
        "data": {"source": "builtin:digits", "validation_size": 1.5, "max_train_samples": 0},
        "augmentation": {"horizontal_flip": 2.0, "scale": [0.9, 0.5], "rotation": -3},
        "metrics": {"top_k": [0]},
    }
    with pytest.raises(RecipeError) as info:
        load_recipe(raw)
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == [
        "data.validation_size",
        "data.max_train_samples",
        "augmentation.horizontal_flip",
        "augmentation.rotation",
        "augmentation.scale",
        "metrics.top_k",
    ]
    assert "got 1.5" in info.value.problems[0]


def test_missing_model_and_data_are_named():
    with pytest.raises(RecipeError) as info:
        load_recipe({})
    assert [p.split(":")[0] for p in info.value.problems] == ["model.name", "data.source"]


def test_removed_transformers_keys_say_what_to_use():
    with pytest.raises(RecipeError) as info:
        load_recipe({**BASE, "training": {"overwrite_output_dir": True, "no_cuda": True, "warmup_ratio": 0.1}})
    text = str(info.value)
    assert "overwrite: true" in text and "use_cpu" in text and "warmup_steps" in text


def test_bad_override_syntax_is_a_recipe_problem():
    with pytest.raises(RecipeError) as info:
        load_recipe(BASE, ["training.learning_rate"])
    assert "KEY=VALUE" in str(info.value)


def test_override_into_a_scalar_is_reported():
    with pytest.raises(RecipeError) as info:
        load_recipe(BASE, ["model.name.sub=1"])
    assert "model.name" in str(info.value) and "not a section" in str(info.value)


def test_dict_overrides_merge_into_sections():
    recipe = load_recipe({**BASE, "training": {"seed": 1, "num_train_epochs": 2}}, {"training": {"seed": 7}})
    assert recipe.training["seed"] == 7 and recipe.training["num_train_epochs"] == 2


def test_output_dir_defaults_to_outputs_slash_name():
    recipe = load_recipe({**BASE, "name": "pets"})
    assert recipe.training["output_dir"] == str(Path("outputs") / "pets")


def test_resolved_recipe_round_trips(tmp_path: Path):
    recipe = load_recipe(BASE, ["augmentation.scale=[0.5, 1.0]", "training.num_train_epochs=2"])
    (tmp_path / "recipe.yaml").write_text(recipe.to_yaml())
    assert load_recipe(tmp_path / "recipe.yaml") == recipe


def test_every_shipped_recipe_loads_and_starts_with_its_command():
    shipped = list_recipes()
    assert "quickstart" in shipped
    for name, path in shipped.items():
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("#"), f"{path} must open with a comment"
        recipe = load_recipe(path)
        # A recipe with a sweep section is run by `hf-finetune sweep`; every other one by `hf-finetune train`.
        command = "sweep" if recipe.sweep.space else "train"
        assert f"hf-finetune {command} {name}" in path.read_text(encoding="utf-8"), f"{path} must show how to run it"


def test_unknown_recipe_name_suggests():
    with pytest.raises(RecipeError) as info:
        find_recipe("quikstart")
    assert "did you mean 'quickstart'" in str(info.value)


def test_hub_keys_in_training_are_refused_and_a_token_is_never_echoed():
    with pytest.raises(RecipeError) as info:
        load_recipe({**BASE, "training": {"push_to_hub": True, "hub_token": "hf_secret_value_123"}})
    text = str(info.value)
    assert "training.push_to_hub" in text and "hub.push" in text
    assert "training.hub_token" in text and "HF_TOKEN" in text
    assert "hf_secret_value_123" not in text


def test_hub_push_needs_a_repo_id():
    with pytest.raises(RecipeError, match=r"hub\.repo_id: needed"):
        load_recipe({**BASE, "hub": {"push": True}})


def test_value_problems_come_in_section_order_then_the_rules_across_sections():
    raw = {
        "task": "text-classification",
        "metrics": {"top_k": [0]},
        "hub": {"repo_id": "no-slash"},
        "augmentation": {"mixup_alpha": 0.2},
        "data": {"source": "builtin:tweets", "seed": -1},
        "model": {"name": "simple_cnn", "image_size": 4},
        "training": {"per_device_train_batch_size": 1},
    }
    with pytest.raises(RecipeError) as info:
        load_recipe(raw)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "model.image_size",
        "data.seed",
        "hub.repo_id",
        "metrics.top_k",
        "augmentation.mixup_alpha/cutmix_alpha",
        "augmentation",
        "training.per_device_train_batch_size",
    ]


def test_saved_recipe_is_the_folders_resolved_recipe_or_the_tasks_defaults(tmp_path: Path):
    assert load_saved_recipe(tmp_path, "text-classification") == Recipe(task="text-classification")
    recipe = load_recipe({**BASE, "data": {"source": "./pets", "seed": 7}, "training": {"output_dir": str(tmp_path)}})
    (tmp_path / RECIPE_FILE).write_text(recipe.to_saved_yaml(), encoding="utf-8")
    saved = load_saved_recipe(tmp_path, "text-classification")
    assert saved.task == "image-classification" and saved.data == recipe.data and saved.output_dir == tmp_path


def test_every_augmentation_preset_is_a_choice_of_the_preset_field():
    """`augmentation.preset` is checked against its Literal type: a preset missing there could never be chosen,
    and a name there without a preset would pass the check and fail when it is expanded."""
    import typing

    from hf_finetune.recipe import AUGMENTATION_PRESETS, AugmentationPreset

    assert typing.get_args(AugmentationPreset) == tuple(AUGMENTATION_PRESETS)
    for name in AUGMENTATION_PRESETS:
        assert (
            load_recipe(
                {
                    "model": {"name": "simple_cnn"},
                    "data": {"source": "builtin:digits"},
                    "augmentation": {"preset": name},
                }
            ).augmentation.preset
            == name
        )
