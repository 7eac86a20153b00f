"""training.early_stopping: transformers' EarlyStoppingCallback from the recipe, checked against the evaluation and
save strategies, in the log, metrics.json and the card, and counted across --resume.

A learning rate of 0 makes the evaluations exactly equal: the first one is the best, every later one is "no
improvement", so the epoch the run must stop at is known in advance (1 + patience)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from hf_finetune.errors import RecipeError, TrainingInterrupted
from hf_finetune.recipe import load_recipe


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def _train(recipe: Path) -> subprocess.CompletedProcess:
    """`python -m hf_finetune train RECIPE`, run where the recipe is, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", "train", str(recipe)],
        cwd=recipe.parent,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def _epochs_evaluated(out: Path) -> list[float]:
    state = json.loads((out / f"checkpoint-{_checkpoint_steps(out)[-1]}" / "trainer_state.json").read_text())
    return [e["epoch"] for e in state["log_history"] if "eval_loss" in e]


def test_the_run_stops_patience_evaluations_after_its_best_and_says_so(tiny_recipe, tmp_path: Path):
    """Through the CLI with the user's defaults (dataloader workers, per-epoch evaluation and saving): patience 2
    on ten epochs whose evaluations never improve ends after epoch 3; the best (epoch 1) model is the one saved."""
    recipe = tiny_recipe(training={"num_train_epochs": 10, "learning_rate": 0.0, "early_stopping": {"patience": 2}})
    del recipe["training"]["dataloader_num_workers"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = _train(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(recipe["training"]["output_dir"])
    run = json.loads((out / "metrics.json").read_text())["run"]
    info = run["early_stopping"]
    assert info["stopped"] is True and info["epoch"] == 3.0 and info["best_epoch"] == 1.0
    assert info["patience"] == 2 and info["threshold"] == 0.0 and info["metric"] == "eval_accuracy"
    assert info["kept"] == "best" and info["step"] * 10 == info["max_steps"] * 3
    assert _epochs_evaluated(out) == [1.0, 2.0, 3.0]
    assert run["best_checkpoint"].endswith(f"checkpoint-{info['best_step']}")
    # the defaults it needs are logged with their reason
    assert "load_best_model_at_end = True (training.early_stopping: the run ends with its best model" in proc.stderr
    assert "early stopping after 2 evaluations without an improvement of more than 0" in proc.stderr
    assert "early stopping: stopped at epoch 3 (step" in proc.stderr
    card = (out / "README.md").read_text()
    assert "| early stopping | patience 2, threshold 0 on eval_accuracy: stopped at epoch 3" in card
    assert "the best model is the one saved" in card
    # the saved recipe keeps the setting, so a re-run does the same
    assert yaml.safe_load((out / "recipe.yaml").read_text())["training"]["early_stopping"] == {
        "patience": 2,
        "threshold": 0.0,
    }


def test_the_threshold_is_the_improvement_that_counts(tiny_recipe):
    """A model that learns, but whose accuracy cannot rise by more than 1: every evaluation after the first is no
    improvement for the count, so patience 1 ends the run after epoch 2 of 6. The threshold only decides stopping
    (transformers' semantics): the best model kept is still the most accurate one, epoch 2's."""
    from hf_finetune import finetune

    strict = finetune(tiny_recipe(training={"num_train_epochs": 6, "early_stopping": {"patience": 1, "threshold": 1}}))
    info = json.loads((strict.output_dir / "metrics.json").read_text())["run"]["early_stopping"]
    assert info["stopped"] is True and info["epoch"] == 2.0 and info["best_epoch"] == 2.0
    assert info["best_metric"] == strict.metrics["eval"]["accuracy"]  # the final scores are the kept model's


def test_patience_longer_than_the_run_does_not_trigger(tiny_recipe):
    from hf_finetune import finetune

    result = finetune(tiny_recipe(training={"num_train_epochs": 2, "early_stopping": {"patience": 5}}))
    info = json.loads((result.output_dir / "metrics.json").read_text())["run"]["early_stopping"]
    assert info["stopped"] is False and info["epoch"] == 2.0 and info["step"] == info["max_steps"]
    assert (
        "early stopping | patience 5, threshold 0 on eval_accuracy: did not trigger"
        in (result.output_dir / "README.md").read_text()
    )


def test_a_recipe_that_saves_only_at_the_end_keeps_its_last_model(tiny_recipe, caplog):
    """save_strategy no (which plain transformers takes with the callback): honoured; best-model loading, which
    needs a checkpoint per evaluation, is not switched on, and the record says the last model is the one saved."""
    from hf_finetune import finetune

    recipe = tiny_recipe(
        training={
            "num_train_epochs": 6,
            "learning_rate": 0.0,
            "save_strategy": "no",
            "early_stopping": {"patience": 1},
        }
    )
    result = finetune(recipe)
    info = json.loads((result.output_dir / "metrics.json").read_text())["run"]["early_stopping"]
    assert info["stopped"] is True and info["epoch"] == 2.0 and info["kept"] == "last"
    assert _checkpoint_steps(result.output_dir) == []
    assert "load_best_model_at_end = True" not in caplog.text


class _StopAfterEpoch(TrainerCallback):
    """Sends this process SIGTERM once the given epoch is evaluated: the run saves that epoch's checkpoint and stops
    (a signal before the evaluation stops the run without it: the resumed run would never evaluate that epoch)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_evaluate(self, args, state, control, **kwargs):
        if round(state.epoch) == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_goes_on_counting_evaluations_without_improvement(tiny_recipe):
    """Stopped after epoch 2 (one evaluation without improvement so far), resumed: patience 3 ends the run after
    epoch 4, as an uninterrupted run would; a count starting again at 0 would end it after epoch 5."""
    from hf_finetune import finetune

    recipe = tiny_recipe(training={"num_train_epochs": 10, "learning_rate": 0.0, "early_stopping": {"patience": 3}})
    with pytest.raises(TrainingInterrupted):
        finetune(recipe, callbacks=[_StopAfterEpoch(2)])
    out = Path(recipe["training"]["output_dir"])
    assert _epochs_evaluated(out) == [1.0, 2.0]
    result = finetune(str(out / "recipe.yaml"), ["training.resume_from_checkpoint=latest"])
    info = json.loads((result.output_dir / "metrics.json").read_text())["run"]["early_stopping"]
    assert info["stopped"] is True and info["epoch"] == 4.0 and info["best_epoch"] == 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, "training.early_stopping: expected a mapping, got 3"),
        ({"patience": 0}, "training.early_stopping.patience: expected how many evaluations"),
        ({"patience": "three"}, "got 'three'"),
        ({}, "training.early_stopping.patience: expected how many evaluations without improvement end the run"),
        ({"patience": 2, "threshold": -0.1}, "training.early_stopping.threshold: expected the improvement"),
        ({"patience": 2, "treshold": 0.1}, "unknown key(s) ['treshold']"),
    ],
)
def test_bad_settings_are_recipe_errors(tiny_recipe, value, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe(training={"early_stopping": value}))
    assert expected in str(err.value)


def test_early_stopping_without_evaluations_or_with_a_fitted_probe_is_refused(tiny_recipe, tmp_path: Path):
    with pytest.raises(RecipeError, match=re.escape("needs evaluations to count, and training.eval_strategy is 'no'")):
        load_recipe(tiny_recipe(training={"eval_strategy": "no", "early_stopping": {"patience": 2}}))
    probe = tiny_recipe(training={"early_stopping": {"patience": 2}}, transfer={"strategy": "linear_probe"})
    for key in ("num_train_epochs", "learning_rate"):
        del probe["training"][key]
    with pytest.raises(
        RecipeError, match=re.escape("training.early_stopping: transfer.strategy linear_probe fits the head")
    ):
        load_recipe(probe)
    # through the CLI: exit 2, the message, no traceback, nothing written
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(training={"early_stopping": {"patience": 0}})))
    proc = _train(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training.early_stopping.patience" in proc.stderr
    assert not (tmp_path / "out").exists()
