"""DataLoader workers under every start method (fork, spawn, forkserver), and augmentation as a function of
(seed, epoch, row): the same pixels wherever a row is decoded, fresh ones each epoch."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hf_finetune.data import sources
from hf_finetune.recipe import load_recipe
from hf_finetune.tasks import PrepareSettings
from hf_finetune.tasks import image_classification as task


def _prepared(recipe_dict: dict):
    recipe = load_recipe(recipe_dict)
    data = sources.load_data(recipe.data, task.INPUTS)
    built = task.build_model(recipe.model, data.label_names)
    # seed 42: TrainingArguments' default, as these recipes set neither training.seed nor training.data_seed
    return task.prepare(built, data.splits, PrepareSettings(recipe.augmentation, recipe.tokenization, seed=42))


def _transform(ds):
    return ds.format["format_kwargs"]["transform"]


@pytest.mark.parametrize(
    "model",
    [
        {"name": "simple_cnn"},
        {"name": "simple_cnn", "config": {"num_channels": 1}},  # its own grayscale image processor
        {"name": "timm:test_resnet", "pretrained": False, "config": {}},
        "vit",
    ],
    ids=["simple_cnn", "simple_cnn-1ch", "timm", "vit"],
)
def test_every_transform_and_collator_pickles(tiny_recipe, tiny_vit_dir: Path, model):
    # spawn/forkserver workers receive the dataset (with its transform) and the collator pickled
    model = {"name": str(tiny_vit_dir), "config": {}} if model == "vit" else model
    prepared = _prepared(tiny_recipe(model=model, augmentation={"preset": "strong"}))
    assert pickle.loads(pickle.dumps(prepared.collate)) is prepared.collate
    for name, ds in prepared.splits.items():
        copy = pickle.loads(pickle.dumps(ds))
        assert type(_transform(copy)) is task.BatchTransform, name
        rows = [0, 1, 2]
        original = prepared.collate([ds[i] for i in rows])
        again = prepared.collate([copy[i] for i in rows])
        assert torch.equal(original["pixel_values"], again["pixel_values"]), name
        assert torch.equal(original["labels"], again["labels"]), name


def _loader_pixels(ds, collate, **loader) -> torch.Tensor:
    from torch.utils.data import DataLoader

    return torch.cat([b["pixel_values"] for b in DataLoader(ds, batch_size=5, collate_fn=collate, **loader)])


@pytest.mark.slow
def test_a_row_gets_the_same_pixels_in_the_main_process_fork_and_spawn_workers(tiny_recipe):
    prepared = _prepared(tiny_recipe(augmentation={"preset": "strong"}))
    train, collate = prepared.splits["train"], prepared.collate
    transform = _transform(train)
    transform.set_epoch(1, seed=7)

    before = torch.get_rng_state()
    main = torch.stack([train[i]["pixel_values"] for i in range(len(train))])
    assert torch.equal(torch.get_rng_state(), before)  # dropout and mixup draw from it; augmentation leaves it be
    assert torch.equal(torch.stack([train[i]["pixel_values"] for i in range(len(train))]), main)
    assert torch.equal(_loader_pixels(train, collate, num_workers=2, multiprocessing_context="fork"), main)
    assert torch.equal(_loader_pixels(train, collate, num_workers=1, multiprocessing_context="spawn"), main)

    # every epoch is a new draw for (nearly) every row; so is another seed
    transform.set_epoch(2, seed=7)
    epoch2 = torch.stack([train[i]["pixel_values"] for i in range(len(train))])
    changed = [not torch.equal(a, b) for a, b in zip(main, epoch2, strict=True)]
    assert sum(changed) >= 0.9 * len(train)
    transform.set_epoch(1, seed=8)
    other_seed = torch.stack([train[i]["pixel_values"] for i in range(len(train))])
    assert sum(not torch.equal(a, b) for a, b in zip(main, other_seed, strict=True)) >= 0.9 * len(train)

    # persistent workers keep their copy of the dataset: the epoch still reaches them
    from torch.utils.data import DataLoader

    transform.set_epoch(1, seed=7)
    loader = DataLoader(
        train, batch_size=5, collate_fn=collate, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    assert torch.equal(torch.cat([b["pixel_values"] for b in loader]), main)
    transform.set_epoch(2, seed=7)
    assert torch.equal(torch.cat([b["pixel_values"] for b in loader]), epoch2)


def test_augmentation_follows_the_row_not_its_position_in_the_batch(tiny_recipe):
    prepared = _prepared(tiny_recipe(augmentation={"preset": "standard"}))
    train = prepared.splits["train"]
    alone = [train[i]["pixel_values"] for i in (3, 5, 8)]
    together = train.__getitems__([8, 5, 3])  # the batched fetch DataLoader uses, in another order
    for a, b in zip(alone, reversed(together), strict=True):
        assert torch.equal(a, b["pixel_values"])


SCRIPT = """
import multiprocessing
import sys

from hf_finetune.cli import main

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    sys.exit(main(sys.argv[2:]))
"""


def _train_with_start_method(method: str, recipe: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "start_method.py"
    script.write_text(SCRIPT)
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(script), method, "train", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.mark.slow
def test_image_training_with_spawn_workers(tiny_recipe, tmp_path: Path):
    out = tmp_path / "spawn"
    recipe = tiny_recipe(
        augmentation={"preset": "standard"},
        training={"num_train_epochs": 1, "dataloader_num_workers": 1, "eval_strategy": "no", "output_dir": str(out)},
    )
    proc = _train_with_start_method("spawn", recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


@pytest.mark.slow
def test_text_training_with_forkserver_workers(text_recipe, tmp_path: Path):
    out = tmp_path / "forkserver"
    recipe = text_recipe(
        training={"num_train_epochs": 1, "dataloader_num_workers": 1, "eval_strategy": "no", "output_dir": str(out)}
    )
    proc = _train_with_start_method("forkserver", recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


def test_trainer_gives_the_transform_each_epoch_and_the_data_seed(tiny_recipe, tmp_path: Path):
    from transformers import TrainerCallback

    import hf_finetune

    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen.append(tuple(int(v) for v in _transform(train_dataloader.dataset)._seed_epoch))

    recipe = tiny_recipe(
        augmentation={"preset": "light"},
        training={"seed": 5, "data_seed": 9, "eval_strategy": "no", "save_strategy": "no"},
    )
    hf_finetune.finetune(recipe, callbacks=[Record()])
    steps = len(seen) // 2
    assert steps > 0 and seen == [(9, 0)] * steps + [(9, 1)] * steps


def _freeze_count_collate(rows):
    """Runs where the rows were decoded: the worker's count of frozen objects beside the batch."""
    import gc

    return gc.get_freeze_count()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_worker_freezes_what_it_inherited_and_the_main_process_does_not(tiny_recipe, context):
    # the first full collection in a forked worker would otherwise write to every inherited object's header and
    # so copy the main process's whole Python heap into the worker (task.freeze_inherited_heap)
    import gc

    from torch.utils.data import DataLoader

    train = _prepared(tiny_recipe()).splits["train"]
    assert gc.get_freeze_count() == 0
    in_main = [_freeze_count_collate([train[i] for i in range(3)])]
    loader = DataLoader(
        train, batch_size=4, collate_fn=_freeze_count_collate, num_workers=1, multiprocessing_context=context
    )
    in_worker = list(loader)
    assert in_main == [0] and gc.get_freeze_count() == 0  # the main process collects as before
    assert len(in_worker) >= 2 and all(count > 10_000 for count in in_worker), in_worker
