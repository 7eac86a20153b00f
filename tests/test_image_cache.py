"""data.cache: decoded: each image decoded once into Arrow (datasets' map cache), the same pixels as decoding."""

from pathlib import Path

import pytest
import torch

from hf_finetune.data import sources
from hf_finetune.errors import DataError, RecipeError
from hf_finetune.recipe import load_recipe
from hf_finetune.tasks import PrepareSettings
from hf_finetune.tasks import image_classification as task

AUGMENTATION = {"horizontal_flip": 0.5, "rotation": 15, "brightness": 0.3, "random_erasing": 0.5}


def _prepared(recipe_dict: dict, cache: str):
    recipe = load_recipe(recipe_dict)
    data = sources.load_data(recipe.data, task.INPUTS)
    built = task.build_model(recipe.model, data.label_names)
    return task.prepare(built, data.splits, PrepareSettings(recipe.augmentation, recipe.tokenization, 42, cache))


def _cache_files(prepared) -> set[Path]:
    folders = {Path(f["filename"]).parent for ds in prepared.splits.values() for f in ds.cache_files}
    return {p for folder in folders for p in folder.glob("cache-*.arrow")}


@pytest.mark.parametrize("channels", [3, 1])
def test_cached_splits_give_the_pixels_of_decoding(tiny_recipe, channels: int):
    model = {"name": "simple_cnn", "image_size": 12, "config": {"filters": [4], "num_channels": channels}}
    recipe = tiny_recipe(model=model, augmentation=AUGMENTATION)
    plain, cached = _prepared(recipe, "off"), _prepared(recipe, "decoded")
    assert set(plain.splits) == set(cached.splits) and "train" in cached.splits
    for name in plain.splits:
        assert task.PIXELS in cached.splits[name].column_names and "image" not in cached.splits[name].column_names
        assert cached.splits[name].cache_files, name  # stored on disk, beside the split's own Arrow files
        for prepared in (plain, cached):
            task_fn = prepared.splits[name].format["format_kwargs"]["transform"]
            task_fn.set_epoch(3, seed=7)  # a later epoch's seeded draws (augmentation on train)
        rows = [0, 5, len(plain.splits[name]) - 1]
        expected = plain.collate([plain.splits[name][i] for i in rows])
        got = cached.collate([cached.splits[name][i] for i in rows])
        assert torch.equal(got["pixel_values"], expected["pixel_values"]), name
        assert torch.equal(got["labels"], expected["labels"]), name


def test_a_second_run_reuses_the_cache(tiny_recipe):
    recipe = tiny_recipe(augmentation=AUGMENTATION)
    first = _prepared(recipe, "decoded")
    files = _cache_files(first)
    again = _prepared(recipe, "decoded")
    assert _cache_files(again) == files  # no new cache file
    for name, ds in again.splits.items():
        assert ds.cache_files == first.splits[name].cache_files, name
    # another channel count shapes other pixels: its own cache, not the 3-channel one
    gray = _prepared(tiny_recipe(model={"name": "simple_cnn", "config": {"num_channels": 1}}), "decoded")
    for name, ds in gray.splits.items():
        assert ds.cache_files != first.splits[name].cache_files, name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"cache": "pixels"},
            "data.cache: 'off' (decode every epoch) or 'decoded' (decode once, keep the pixels), got 'p",
        ),
        ({"cache": True}, "data.cache: 'off' (decode every epoch) or 'decoded'"),
        ({"cache": "decoded", "streaming": True}, "data.cache: decoded stores the decoded train split"),
    ],
)
def test_bad_cache_values_are_refused_by_name(tiny_recipe, data: dict, message: str):
    recipe = tiny_recipe()
    with pytest.raises(RecipeError) as err:
        load_recipe({**recipe, "data": {**recipe["data"], **data}})
    assert message in str(err.value)


def test_cache_is_refused_for_text_and_by_prepare(tiny_recipe):
    with pytest.raises(RecipeError, match="does not apply to text-classification"):
        load_recipe(
            {
                "task": "text-classification",
                "model": {"name": "bert-base-uncased"},
                "data": {"source": "reviews.csv", "cache": "decoded"},
                "training": {"output_dir": "out"},
            }
        )
    with pytest.raises(DataError) as err:
        _prepared(tiny_recipe(), "pixels")
    assert "data.cache: 'pixels'; expected 'off' (decode each epoch) or 'decoded'" in str(err.value)
