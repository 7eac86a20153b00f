"""Every task module provides what the `Task` Protocol states, with the same parameters: api.py calls the members
without asking which task it holds."""

import inspect

import datasets
import pytest

from hf_finetune.data.checks import check_inputs
from hf_finetune.errors import DataError
from hf_finetune.recipe import TASKS, DataSpec
from hf_finetune.tasks import MODULES, Task, get_task

MEMBERS = [n for n in vars(Task) if not n.startswith("_")]


def test_every_recipe_task_has_a_module_named_after_it():
    assert list(MODULES) == list(TASKS)
    for name in TASKS:
        task = get_task(name)
        assert name == task.NAME
        assert task.__name__ == f"hf_finetune.tasks.{name.replace('-', '_')}"


@pytest.mark.parametrize("name", TASKS)
def test_task_module_satisfies_the_protocol(name: str):
    task = get_task(name)
    assert set(MEMBERS) >= {"build_model", "training_defaults", "prepare", "batch_mixer", "load_trained", "predict"}
    for member in MEMBERS:
        assert hasattr(task, member), f"{name} has no {member}"
        expected = inspect.signature(getattr(Task, member))
        parameters = list(expected.parameters.values())[1:]  # without `self`: a module's functions take none
        assert list(inspect.signature(getattr(task, member)).parameters.values()) == parameters, member
    assert set(Task.__annotations__) == {"NAME", "INPUTS"}
    assert isinstance(task.NAME, str)
    assert isinstance(task.INPUTS, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in task.INPUTS.items()
    )


def test_a_task_with_an_image_input_gets_its_images_checked_unless_the_recipe_turns_it_off():
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"garbage", "path": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    splits = {"train": broken}
    image, text = get_task("image-classification"), get_task("text-classification")

    with pytest.raises(DataError, match=r"1 of 1 images cannot be decoded"):
        check_inputs(splits, image.INPUTS, DataSpec())
    check_inputs(splits, image.INPUTS, DataSpec(check_images=False))
    check_inputs(splits, text.INPUTS, DataSpec())  # texts: empty ones were handled when the data was loaded
