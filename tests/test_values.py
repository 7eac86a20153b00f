"""A value the user wrote is honoured or refused, never ignored; toolkit defaults never turn a configuration plain
transformers accepts into an error (issue 9, items 6, 7, 10, 11, 18 and part of 19).

User-facing behaviour is driven through the CLI in a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_finetune.recipe import dump_yaml, load_recipe, read_yaml


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
    )


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _trainer_state(out: Path) -> dict:
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())


# --------------------------------------------------------------------------------------------- item 6: strategies


@pytest.mark.slow
def test_eval_steps_with_load_best_model_at_end_trains(tiny_recipe, tmp_path: Path):
    # plain transformers accepts this (its save_strategy default is "steps"); the toolkit's per-epoch saving must
    # follow the recipe's evaluation instead of turning it into "requires the save and eval strategy to match"
    out = tmp_path / "out"
    recipe = tiny_recipe(
        training={
            "num_train_epochs": 1,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "load_best_model_at_end": True,
            "save_total_limit": None,
            "output_dir": str(out),
        }
    )
    proc = _cli("train", str(_write(recipe, tmp_path / "r.yaml")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "save_strategy = 'steps' (follows training.eval_strategy" in proc.stderr
    assert re.search(r"save_steps = 2(\.0)? \(follows training.eval_steps", proc.stderr)
    # 81 training rows in batches of 16: 6 steps, evaluated and saved every 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    state = _trainer_state(out)
    assert [e["step"] for e in state["log_history"] if "eval_accuracy" in e] == [2, 4, 6]
    metrics = json.loads((out / "metrics.json").read_text())
    assert Path(metrics["best_checkpoint"]).name == Path(state["best_model_checkpoint"]).name


def test_strategy_defaults_follow_what_the_recipe_sets():
    from transformers import TrainingArguments

    from hf_finetune.trainer import training_defaults

    cases = [
        ({}, {"eval_strategy": "epoch", "save_strategy": "epoch", "logging_strategy": "epoch"}),
        ({"save_strategy": "steps", "save_steps": 10}, {"eval_strategy": "steps", "eval_steps": 10}),
        ({"eval_strategy": "steps", "logging_steps": 7}, {"save_strategy": "steps", "eval_steps": 7, "save_steps": 7}),
        ({"eval_strategy": "no"}, {"save_strategy": "epoch"}),  # saving still happens once per epoch
    ]
    for training, expected in cases:
        defaults = training_defaults(training, {}, "accuracy")
        assert {k: defaults[k] for k in expected} == expected, training
        args = TrainingArguments(output_dir="x", load_best_model_at_end=training.get("eval_strategy") != "no",
                                 **training, **defaults)  # fmt: skip
        assert args.save_strategy.value == (training.get("save_strategy") or defaults["save_strategy"])


# --------------------------------------------------------------------------------------------- item 7: DDP


@pytest.mark.slow
def test_dinov2_with_unused_parameters_trains_under_two_ranks(tiny_recipe, tmp_path: Path):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2ForImageClassification

    # DINOv2's mask_token is only used for masked image modelling: a classification forward pass never touches it
    model_dir = tmp_path / "tiny_dinov2"
    torch.manual_seed(0)
    config = Dinov2Config(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    Dinov2ForImageClassification(config).save_pretrained(model_dir)
    BitImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(model_dir)
    out = tmp_path / "out"
    recipe = tiny_recipe(
        model={"name": str(model_dir), "image_size": None, "config": {}},
        training={"num_train_epochs": 1, "per_device_train_batch_size": 8, "output_dir": str(out)},
    )
    path = _write(recipe, tmp_path / "r.yaml")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_finetune", "train", str(path),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["hardware"]["processes"] == 2
    assert metrics["test"]["num_samples"] == 30


# --------------------------------------------------------------------------------------------- item 10: precision


_RECORD_PRECISION = """
import json, sys, torch
from transformers import TrainerCallback
import hf_finetune

seen = []

class Record(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # a leaf layer runs inside the autocast that accelerate wraps around the model's forward
        leaf = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        leaf.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)) if m.training else None)

hf_finetune.finetune(sys.argv[1], sys.argv[3:], callbacks=[Record()])
json.dump(sorted(set(seen)), open(sys.argv[2], "w"))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "overrides", "expected", "dtype"),
    [
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, [], "bf16", "torch.bfloat16"),  # what `accelerate launch` sets
        ({}, ["training.bf16=true", "training.use_cpu=true"], "bf16", "torch.bfloat16"),
        ({}, [], "fp32", "torch.float32"),
    ],
)
def test_precision_reported_is_the_precision_used(tiny_recipe, tmp_path: Path, env, overrides, expected, dtype):
    out = tmp_path / "out"
    path = _write(tiny_recipe(training={"num_train_epochs": 1, "output_dir": str(out)}), tmp_path / "r.yaml")
    dtypes = tmp_path / "dtypes.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RECORD_PRECISION, str(path), str(dtypes), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(**env),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(dtypes.read_text()) == [dtype]  # what the training steps really computed in
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["hardware"]["precision"] == expected
    assert f"- precision: {expected}\n" in (out / "README.md").read_text()


@pytest.mark.slow
def test_fp16_on_a_cpu_run_is_refused_not_silently_fp32(tiny_recipe, tmp_path: Path):
    # accelerate turns fp16 autocast off on the CPU and trains in fp32 without a word
    path = _write(tiny_recipe(), tmp_path / "r.yaml")
    for env, overrides, named in (
        ({}, ["training.fp16=true", "training.use_cpu=true"], "training.fp16"),
        ({"ACCELERATE_MIXED_PRECISION": "fp16"}, ["training.use_cpu=true"], "mixed_precision=fp16"),
    ):
        proc = _cli("train", str(path), *overrides, env=_env(**env))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert named in proc.stderr and "bf16" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- item 11: values


@pytest.mark.slow
def test_eval_strategy_no_works_in_validate_and_train(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = tiny_recipe(training={"num_train_epochs": 1, "output_dir": str(out)})
    path = tmp_path / "r.yaml"
    # written by hand, unquoted, as a user types it (yaml.safe_dump would quote it)
    path.write_text(_write(recipe, path).read_text().replace("  num_train_epochs: 1\n", "  eval_strategy: no\n"))
    assert "eval_strategy: no\n" in path.read_text()

    validated = _cli("validate", str(path), "training.save_strategy=no")
    assert validated.returncode == 0, validated.stderr[-2000:]
    resolved = read_yaml(validated.stdout)["training"]
    assert (resolved["eval_strategy"], resolved["save_strategy"]) == ("no", "no")

    trained = _cli("train", str(path), "training.save_strategy=no", "training.num_train_epochs=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert not list(out.glob("checkpoint-*"))  # save_strategy no was honoured
    saved = (out / "recipe.yaml").read_text()
    assert load_recipe(out / "recipe.yaml").training["eval_strategy"] == "no"
    assert yaml.safe_load(saved)["training"]["eval_strategy"] == "no"  # a YAML 1.1 reader reads it back too


@pytest.mark.slow
def test_a_boolean_strategy_is_refused_alike_by_validate_and_train(tiny_recipe, tmp_path: Path):
    # `eval_strategy: false` (or a YAML 1.1 reader's `no`): one message naming the key and the fix, in both commands
    path = tmp_path / "r.yaml"
    _write(tiny_recipe(training={"eval_strategy": False}), path)
    messages = []
    for command in ("validate", "train"):
        proc = _cli(command, str(path))
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        line = next(x for x in proc.stderr.splitlines() if "training.eval_strategy" in x)
        assert "'no'" in line and "quotes" in line
        messages.append(line)
    assert messages[0] == messages[1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_floats_in_free_form_mappings_arrive_as_floats(tiny_recipe, tiny_vit_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    recipe = tiny_recipe(
        model={"name": str(tiny_vit_dir), "config": {"layer_norm_eps": "EPS"}},
        training={
            "num_train_epochs": 1,
            "lr_scheduler_type": "cosine_with_min_lr",
            "lr_scheduler_kwargs": {"min_lr": "MIN_LR"},
            "logging_strategy": "steps",
            "logging_steps": 1,
            "output_dir": str(out),
        },
    )
    path = tmp_path / "r.yaml"
    # unquoted, as a user writes them: YAML 1.1 would read both as strings
    path.write_text(_write(recipe, path).read_text().replace("EPS", "1e-4").replace("MIN_LR", "2e-4"))
    proc = _cli("train", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-4 and isinstance(config["layer_norm_eps"], float)
    lrs = [e["learning_rate"] for e in _trainer_state(out)["log_history"] if "learning_rate" in e]
    # cosine from learning_rate 3e-3 down to min_lr 2e-4 (each step logs the rate it trained with): the float
    # reached the scheduler
    n = len(lrs)
    assert n == 6
    assert lrs == pytest.approx([2e-4 + 2.8e-3 * 0.5 * (1 + math.cos(math.pi * k / n)) for k in range(n)])
    saved = load_recipe(out / "recipe.yaml")
    assert saved.model.config["layer_norm_eps"] == 1e-4
    assert saved.training["lr_scheduler_kwargs"]["min_lr"] == 2e-4


@pytest.mark.slow
def test_overrides_after_an_option_and_resume_from_checkpoint_true(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    path = _write(tiny_recipe(training={"num_train_epochs": 2}), tmp_path / "r.yaml")
    first = _cli("train", str(path), "--output-dir", str(out), "training.num_train_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _trainer_state(out)["epoch"] == pytest.approx(1.0)  # the override after --output-dir was applied

    resumed_recipe = tiny_recipe(training={"num_train_epochs": 2, "output_dir": str(out)})
    resumed_recipe["training"]["resume_from_checkpoint"] = True
    resumed = _cli("train", str(_write(resumed_recipe, tmp_path / "resume.yaml")))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from" in resumed.stderr and "checkpoint-6" in resumed.stderr
    assert _trainer_state(out)["epoch"] == pytest.approx(2.0)


def test_unknown_arguments_after_options_are_still_refused(tmp_path: Path):
    proc = _cli("train", "quickstart", "--output-dir", str(tmp_path / "o"), "--num-epochs", "3")
    assert proc.returncode == 2
    assert "unrecognized arguments: --num-epochs 3" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_yaml_1_2_scalars_and_round_trip():
    text = "a: no\nb: off\nc: yes\nd: 1e-4\ne: 010\nf: 0o17\ng: 2024-01-01\nh: true\ni: 1.0e4\nj: ~\n"
    assert read_yaml(text) == {
        "a": "no", "b": "off", "c": "yes", "d": 1e-4, "e": 10, "f": 15, "g": "2024-01-01", "h": True, "i": 1e4,
        "j": None,
    }  # fmt: skip
    # strings that look like numbers to the 1.2 reader are quoted, so either reader gets them back as strings
    strings = {"revision": "1234e56", "lr": "1e-4", "zero": "08", "word": "no"}
    dumped = dump_yaml(strings)
    assert read_yaml(dumped) == strings and yaml.safe_load(dumped) == strings


def test_yes_no_words_for_true_false_fields_and_typed_values(tiny_recipe):
    recipe = load_recipe(
        tiny_recipe(),
        ["model.pretrained=no", "data.check_images=off", "training.bf16=yes", "training.use_cpu=on",
         "training.learning_rate=1e-4", "training.resume_from_checkpoint=false"],
    )  # fmt: skip
    assert recipe.model.pretrained is False and recipe.data.check_images is False
    assert recipe.training["bf16"] is True and recipe.training["use_cpu"] is True
    assert recipe.training["learning_rate"] == 1e-4 and recipe.training["resume_from_checkpoint"] is None
    assert load_recipe(read_yaml(recipe.to_yaml())) == recipe


def test_a_number_where_text_is_expected_says_to_quote_it(tiny_recipe):
    from hf_finetune.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        load_recipe(tiny_recipe(), ["model.revision=1234e56"])
    assert "model.revision" in str(info.value) and "quotes" in str(info.value)


# --------------------------------------------------------------------------------------------- mixup, odd batches


def test_mix_batch_mixes_every_sample_of_an_odd_batch():
    import torch
    from timm.data import Mixup

    from hf_finetune.trainer import mix_batch

    torch.manual_seed(0)
    mixer = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.0, num_classes=7)
    for n in (3, 5, 7):
        pixels = torch.rand(n, 3, 8, 8)
        labels = torch.arange(n)  # one class each, so a partner shows in the soft targets
        mixed, soft = mix_batch(mixer, pixels.clone(), labels)
        assert mixed.shape == pixels.shape and soft.shape == (n, 7)
        for i in range(n):
            assert not torch.allclose(mixed[i], pixels[i]), f"sample {i} of {n} was not mixed"
            assert (soft[i] > 0).sum() == 2  # its own class and its partner's
            partner = int(soft[i].topk(2).indices[soft[i].topk(2).indices != labels[i]][0])
            lam = float(soft[i, labels[i]])
            assert torch.allclose(mixed[i], lam * pixels[i] + (1 - lam) * pixels[partner], atol=1e-5)


@pytest.mark.slow
def test_mixup_with_an_odd_batch_mixes_every_training_batch(tiny_recipe, monkeypatch):
    import hf_finetune.trainer as trainer_lib
    from hf_finetune import finetune

    sizes = []
    original = trainer_lib.mix_batch

    def recording(mixer, pixels, labels):
        before = pixels.clone()
        mixed, soft = original(mixer, pixels, labels)
        sizes.append(len(labels))
        assert soft.is_floating_point() and soft.shape[0] == len(labels)
        assert all(not (mixed[i] == before[i]).all() for i in range(len(labels)))
        return mixed, soft

    monkeypatch.setattr(trainer_lib, "mix_batch", recording)
    # 78 training rows in batches of 5: 15 full (odd) batches and a last one of 3
    finetune(
        tiny_recipe(
            augmentation={"mixup_alpha": 0.4},
            data={"max_train_samples": 78},
            training={"num_train_epochs": 1, "per_device_train_batch_size": 5, "eval_strategy": "no"},
        )
    )
    assert sizes == [5] * 15 + [3]


def test_mixup_with_a_batch_of_one_is_refused(tiny_recipe, tmp_path: Path):
    path = _write(tiny_recipe(augmentation={"cutmix_alpha": 1.0}), tmp_path / "r.yaml")
    proc = _cli("validate", str(path), "training.per_device_train_batch_size=1")
    assert proc.returncode == 2
    assert "training.per_device_train_batch_size" in proc.stderr and "at least 2" in proc.stderr


@pytest.mark.slow
def test_mixup_trims_a_last_batch_of_one(tiny_recipe, monkeypatch):
    import hf_finetune.trainer as trainer_lib
    from hf_finetune import finetune

    sizes = []
    original = trainer_lib.mix_batch
    monkeypatch.setattr(trainer_lib, "mix_batch", lambda m, x, y: (sizes.append(len(y)), original(m, x, y))[1])
    # 81 rows in batches of 4 would end each epoch on a batch of one, which nothing could be mixed with
    finetune(
        tiny_recipe(
            model={"name": "simple_cnn", "config": {"filters": [8], "dense_units": [16], "batch_norm": False}},
            augmentation={"mixup_alpha": 0.4},
            training={"num_train_epochs": 1, "per_device_train_batch_size": 4, "eval_strategy": "no"},
        )
    )
    assert sizes == [4] * 20


# --------------------------------------------------------------------------------------------- item 18: --debug


@pytest.mark.slow
def test_debug_shows_the_traceback_with_its_original_cause(tiny_recipe, tmp_path: Path):
    # transformers rejects the value; the toolkit reports it as a recipe error, raised `from None`
    path = _write(tiny_recipe(), tmp_path / "r.yaml")
    bad = ["training.logging_strategy=steps", "training.logging_steps=1.5"]
    plain = _cli("train", str(path), *bad)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    errors = [line for line in plain.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "logging_steps" in plain.stderr

    for args, env in (((*bad, "--debug"), _env()), (bad, _env(HF_FINETUNE_DEBUG="1"))):
        debug = _cli("train", str(path), *args, env=env)
        assert debug.returncode == 1, debug.stderr[-2000:]
        assert "Traceback (most recent call last)" in debug.stderr
        # the exception transformers raised, then the toolkit's error that replaced it
        assert "ValueError: --logging_steps must be an integer" in debug.stderr
        assert "During handling of the above exception" in debug.stderr
        assert "hf_finetune.errors.RecipeError" in debug.stderr
