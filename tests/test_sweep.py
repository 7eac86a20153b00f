"""`hf-finetune sweep`: the search space is checked before any trial, trials are scored on their best evaluation and
pruned by the median pruner, a killed sweep resumes from its SQLite study, and each trial's recipe.yaml re-runs it."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from transformers import TrainerControl, TrainerState

from hf_finetune.errors import OutputDirError, RecipeError
from hf_finetune.recipe import load_recipe
from hf_finetune.tuning import (
    LEADERBOARD_CSV,
    SWEEP_FILE,
    TrialReporter,
    _claim_folder,
    _identity,
    leaderboard_rows,
    objective,
)

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", OMP_NUM_THREADS="1")
    env.update(PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("HF_FINETUNE_DEBUG", None)
    return env


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_finetune", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def sweep_recipe(**sweep) -> dict:
    """simple_cnn on a few hundred of the built-in digits: a trial takes a couple of seconds."""
    return {
        "name": "digits-sweep",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": "builtin:digits", "max_train_samples": 200, "max_eval_samples": 60},
        "training": {
            "output_dir": "sweep",
            "num_train_epochs": 2,
            "per_device_train_batch_size": 16,
            "learning_rate": 3e-3,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
        "sweep": {
            "trials": 4,
            "space": {
                "training.learning_rate": {"loguniform": [1e-3, 3e-2]},
                "training.per_device_train_batch_size": [16, 32],
            },
            **sweep,
        },
    }


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------- the search space


def test_a_bad_space_is_one_recipe_error_listing_every_shape_problem():
    space = {
        "training.learning_rate": {"loguniform": [0.0, 1e-3]},
        "training.weight_decay": {"uniform": [0.1, 0.0]},
        "training.num_train_epochs": {"normal": [1, 3]},
        "training.per_device_train_batch_size": [],
        "training.warmup_steps": 0.1,
        "training.output_dir": ["a", "b"],
        "model.image_size": {"int": [8.5, 32]},
    }
    with pytest.raises(RecipeError) as err:
        load_recipe(sweep_recipe(space=space))
    problems = err.value.problems
    assert len(problems) == 7, problems
    text = "\n".join(problems)
    assert "sweep.space.training.learning_rate: loguniform needs low > 0" in text
    assert "sweep.space.training.weight_decay: uniform needs low < high, got [0.1, 0.0]" in text
    assert "'normal' is not one (did you mean 'uniform'?)" in text
    assert "sweep.space.training.per_device_train_batch_size: an empty list of choices" in text
    assert "a fixed value belongs in the recipe itself" in text
    assert "sweep.space.training.output_dir: not something a sweep varies" in text
    assert "sweep.space.model.image_size: int takes [low, high], two whole numbers, got [8.5, 32]" in text


def test_median_pruner_settings_without_the_median_pruner_are_refused():
    with pytest.raises(RecipeError) as err:
        load_recipe(sweep_recipe(pruner="none", startup_trials=2, trials=0))
    assert err.value.problems == [
        "sweep.startup_trials: applies to pruner median only, not none; remove it or set sweep.pruner: median",
        "sweep.trials: at least 1 trial, got 0",
    ]


def test_a_space_written_as_dotted_overrides_reads_as_dotted_keys():
    recipe = load_recipe(sweep_recipe(), ["sweep.space.training.weight_decay={uniform: [0.0, 0.1]}"])
    assert recipe.sweep.dimensions["training.weight_decay"] == {"uniform": [0.0, 0.1]}
    assert "training.learning_rate" in recipe.sweep.dimensions


def test_a_recipe_without_a_sweep_saves_as_before_and_one_with_a_sweep_keeps_it():
    plain = load_recipe("quickstart")
    assert "sweep" not in yaml.safe_load(plain.to_saved_yaml())
    searched = load_recipe(sweep_recipe())
    assert yaml.safe_load(searched.to_saved_yaml())["sweep"]["trials"] == 4


def test_values_the_recipe_refuses_are_reported_together_before_any_trial(tmp_path: Path):
    recipe = sweep_recipe(
        space={
            "training.weight_decay": {"uniform": [-0.1, 0.2]},
            "training.learnig_rate": [1e-3, 1e-2],
            "transfer.strategy": ["full", "bogus"],
            "model.image_size": {"int": [4, 32]},
        }
    )
    path = _write(recipe, tmp_path / "r.yaml")
    proc = _cli(["sweep", str(path), "training.per_device_train_batch_size=8"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "4 problems in the recipe" in proc.stderr
    for expected in (
        "sweep.space.training.weight_decay = -0.1: the recipe refuses it: training.weight_decay: expected a weight "
        "decay >= 0",
        "sweep.space.training.learnig_rate = 0.001: the recipe refuses it: training.learnig_rate: not a "
        "transformers.TrainingArguments field (did you mean 'learning_rate'?)",
        "sweep.space.transfer.strategy = 'bogus'",
        "sweep.space.model.image_size = 4: the recipe refuses it: model.image_size: must be at least 8 pixels",
    ):
        assert expected in proc.stderr, proc.stderr
    assert not (tmp_path / "sweep").exists()  # nothing trained, nothing written


def test_a_swept_key_also_set_on_the_command_line_is_refused(tmp_path: Path, monkeypatch):
    from hf_finetune.tuning import sweep

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"training\.learning_rate: set on the command line and searched by sweep"):
        sweep(sweep_recipe(), ["training.learning_rate=1e-3"])
    with pytest.raises(RecipeError, match=r"sweep\.space: empty"):
        sweep(sweep_recipe(space={}))
    assert not (tmp_path / "sweep").exists()


# --------------------------------------------------------------------------------------------- scoring and pruning


def _evaluate(reporter: TrialReporter, epoch: float, value: float, key: str = "eval_accuracy") -> TrainerControl:
    state, control = TrainerState(), TrainerControl()
    state.epoch = epoch
    reporter.on_evaluate(None, state, control, metrics={key: value, "eval_loss": 1.0})
    return control


def _trained(reporter: TrialReporter, values: list[float], key: str = "eval_accuracy") -> list[TrainerControl]:
    reporter.on_train_begin(None, TrainerState(), TrainerControl())
    controls = [_evaluate(reporter, epoch, v, key) for epoch, v in enumerate(values, start=1)]
    reporter.on_train_end(None, TrainerState(), TrainerControl())
    return controls


def test_the_score_is_the_best_evaluation_not_the_last():
    reporter = TrialReporter("eval_accuracy", greater=True)
    _trained(reporter, [0.5, 0.9, float("nan"), 0.7])
    _evaluate(reporter, 4, 0.99)  # after training: the run's final evaluation, not one of the trial's
    assert reporter.best() == (0.9, 2.0)
    lower = TrialReporter("eval_rmse", greater=False)
    _trained(lower, [3.0, 1.0, 2.0], key="eval_rmse")
    assert lower.best() == (1.0, 2.0)


def test_the_objective_follows_the_best_model_metric_and_its_direction():
    assert objective(load_recipe(sweep_recipe())) == ("eval_accuracy", True)
    regression = sweep_recipe()
    regression["data"]["label_format"] = "regression"
    assert objective(load_recipe(regression)) == ("eval_rmse", False)
    f1 = sweep_recipe()
    f1["metrics"] = {"metric_for_best_model": "eval_f1_macro"}
    assert objective(load_recipe(f1)) == ("eval_f1_macro", True)


def test_the_median_pruner_stops_a_clearly_worse_trial_and_spares_a_good_one():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    first = study.ask()
    good = TrialReporter("eval_accuracy", True, first, prune=True)
    assert not any(c.should_training_stop for c in _trained(good, [0.6, 0.8, 0.9]))
    study.tell(first, good.best()[0])

    diverged = TrialReporter("eval_accuracy", True, study.ask(), prune=True)
    controls = _trained(diverged, [0.1])  # a learning rate that diverged: chance accuracy after one epoch
    assert controls[0].should_training_stop and diverged.pruned
    fine = TrialReporter("eval_accuracy", True, study.ask(), prune=True)
    assert not any(c.should_training_stop for c in _trained(fine, [0.7, 0.85])) and not fine.pruned


def test_a_missing_metric_is_named_with_the_ones_there_are():
    from hf_finetune.errors import HFFinetuneError

    reporter = TrialReporter("eval_f1_micro", True)
    reporter.on_train_begin(None, TrainerState(), TrainerControl())
    with pytest.raises(HFFinetuneError, match=r"no eval_f1_micro .*\['eval_accuracy', 'eval_loss'\]"):
        _evaluate(reporter, 1, 0.5)


def test_the_leaderboard_ranks_complete_then_pruned_trials_and_lower_is_better_when_minimising():
    study = optuna.create_study(direction="minimize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for score, state in ((2.0, "complete"), (0.5, "pruned"), (1.0, "complete"), (None, "fail")):
        trial = study.ask(dist)
        trial.set_user_attr("score", score)
        trial.set_user_attr("folder", f"trial-{trial.number:03d}")
        if state == "complete":
            study.tell(trial, score)
        else:
            trial.report(score or 9.0, 1)
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
    rows = leaderboard_rows(optuna, study)
    assert [(r["rank"], r["trial"], r["state"]) for r in rows] == [
        (1, 2, "complete"),
        (2, 0, "complete"),
        (3, 1, "pruned"),
        (None, 3, "fail"),
    ]
    assert rows[-1]["folder"] == ""  # a failed trial has no results to point at


# --------------------------------------------------------------------------------------------- the sweep folder


def _fake_trial_folder(folder: Path) -> None:
    from hf_finetune.outputs import finish_manifest, start_manifest

    folder.mkdir(parents=True)
    start_manifest(folder, resume=False)
    for name in ("recipe.yaml", "metrics.json", "model.safetensors"):
        (folder / name).write_text("x")
    finish_manifest(folder, ["recipe.yaml", "metrics.json", "model.safetensors"], before=set())


def test_a_folder_with_another_sweep_is_refused_and_overwrite_removes_only_what_the_sweep_wrote(tmp_path: Path):
    out = tmp_path / "sweep"
    first = load_recipe(sweep_recipe(), [f"training.output_dir={out}"])
    out.mkdir()
    entries = ["sweep.db", "leaderboard.csv", "trial-000"]
    meta = {"written_by": "hf_finetune", "identity": _identity(first), "entries": entries}
    (out / SWEEP_FILE).write_text(json.dumps(meta))
    (out / "sweep.db").write_text("db")
    (out / "leaderboard.csv").write_text("rank")
    _fake_trial_folder(out / "trial-000")
    (out / "trial-000" / "my_notes.txt").write_text("mine")  # the user's file inside a trial folder
    (out / "keep.txt").write_text("mine")

    assert _claim_folder(out, _identity(first), overwrite=False) is True  # the same sweep: it resumes
    other = load_recipe(sweep_recipe(), [f"training.output_dir={out}", "training.num_train_epochs=3"])
    with pytest.raises(OutputDirError, match=r"another sweep \(it differs in training.num_train_epochs\)"):
        _claim_folder(out, _identity(other), overwrite=False)
    assert (out / "trial-000" / "model.safetensors").is_file()  # nothing changed

    assert _claim_folder(out, _identity(other), overwrite=True) is False
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "trial-000"]
    assert [p.name for p in (out / "trial-000").iterdir()] == ["my_notes.txt"]


def test_a_folder_of_other_files_is_refused(tmp_path: Path):
    (tmp_path / "data.csv").write_text("a,b")
    recipe = load_recipe(sweep_recipe(), [f"training.output_dir={tmp_path}"])
    with pytest.raises(OutputDirError, match=r"files that are not an hf_finetune sweep \(data.csv\)"):
        _claim_folder(tmp_path, _identity(recipe), overwrite=False)
    (tmp_path / "sweep.db").write_text("someone's study")
    with pytest.raises(OutputDirError, match=r"holds a sweep.db that no hf_finetune sweep there recorded"):
        _claim_folder(tmp_path, _identity(recipe), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "sweep.db"]


# --------------------------------------------------------------------------------------------- end to end


def _rows(out: Path) -> list[dict]:
    with (out / LEADERBOARD_CSV).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _evaluations(trial: Path) -> list[float]:
    """Every per-epoch eval_accuracy of the trial's run, from its last checkpoint's trainer_state.json."""
    last = max(trial.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [h["eval_accuracy"] for h in history if "eval_accuracy" in h]


@pytest.mark.slow
def test_a_killed_sweep_resumes_keeps_finished_trials_and_returns_the_best(tmp_path: Path):
    path = _write(sweep_recipe(), tmp_path / "digits-sweep.yaml")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "hf_finetune", "sweep", str(path)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "trial-001" / "recipe.yaml").is_file():  # trial-001 has started training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "trial-001" / "metrics.json").exists()  # killed mid-trial
    assert (out / "trial-000" / "metrics.json").is_file()
    first = out / "trial-000" / "model.safetensors"
    stamp = first.stat().st_mtime_ns

    again = _cli(["sweep", str(path)], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "trial-001 was cut off by an earlier stop" in again.stderr
    assert "sweep: trial-000:" not in again.stderr  # kept, not run again
    assert first.stat().st_mtime_ns == stamp  # its model was not trained again
    rows = _rows(out)
    ranked = [r for r in rows if r["rank"]]
    assert sorted(int(r["trial"]) for r in ranked) == [0, 2, 3, 4]  # 4 finished in total
    (cut,) = [r for r in rows if r["trial"] == "1"]
    assert cut["state"] == "fail" and "ran again as trial-002" in cut["note"]
    (retry,) = [r for r in rows if r["trial"] == "2"]
    keys = ("training.learning_rate", "training.per_device_train_batch_size")
    assert [retry[k] for k in keys] == [cut[k] for k in keys]  # the kill did not change the values tried
    assert not (out / "trial-001").exists()  # the cut-off trial's folder (ours) was removed

    # scored on the best evaluation of each trial's whole run, ranked by it
    for row in ranked:
        assert float(row["eval_accuracy"]) == pytest.approx(max(_evaluations(out / row["folder"])))
    scores = [float(r["eval_accuracy"]) for r in ranked]
    assert scores == sorted(scores, reverse=True) and [int(r["rank"]) for r in ranked] == [1, 2, 3, 4]
    best = ranked[0]["folder"]
    assert f"best: {best} (eval_accuracy {max(scores):.4f})" in again.stdout
    assert "| rank | trial | state | eval_accuracy (best)" in again.stdout  # the leaderboard, printed
    assert (out / "leaderboard.md").read_text().count("| complete |") == 4
    run = json.loads((out / best / "metrics.json").read_text())["run"]["sweep"]
    assert (run["rank"], run["ranked"], run["trials"], run["score"]) == (1, 4, 4, max(scores))
    assert run["metric"] == "eval_accuracy" and run["space"] == sweep_recipe()["sweep"]["space"]
    card = (out / best / "README.md").read_text()
    assert "## Sweep" in card and "ranked **1 of 4** finished trials" in card
    assert card.count("## Sweep") == 1

    # a trial's recipe.yaml is an ordinary recipe: the trial's values, no sweep, and it trains the same model again
    saved = yaml.safe_load((out / best / "recipe.yaml").read_text())
    assert "sweep" not in saved
    assert saved["training"]["learning_rate"] == pytest.approx(float(ranked[0]["training.learning_rate"]))
    rerun = _cli(["train", str(out / best / "recipe.yaml"), "--output-dir", str(tmp_path / "rerun")], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again_metrics = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    trial_metrics = json.loads((out / best / "metrics.json").read_text())
    assert again_metrics["eval"]["accuracy"] == pytest.approx(trial_metrics["eval"]["accuracy"])
    assert again_metrics["test"]["loss"] == pytest.approx(trial_metrics["test"]["loss"], rel=1e-5)

    # finished: the same command again trains nothing and answers the same
    done = _cli(["sweep", str(path)], tmp_path)
    assert done.returncode == 0 and "0 to go" in done.stderr and "sweep: trial-" not in done.stderr
    assert f"best: {best}" in done.stdout


def test_train_on_a_recipe_with_a_sweep_trains_its_own_values_and_says_so(tmp_path: Path, caplog):
    import hf_finetune as hff

    recipe = sweep_recipe()
    recipe["data"].update(max_train_samples=40, max_eval_samples=20)
    recipe["training"].update(num_train_epochs=1, output_dir=str(tmp_path / "run"))
    with caplog.at_level("INFO", logger="hf_finetune"):
        result = hff.finetune(recipe)
    assert "sweep: training the recipe's own values; its sweep section is for `hf-finetune sweep`" in caplog.text
    assert result.recipe.training["learning_rate"] == 3e-3
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["training"]["learning_rate"] == 3e-3 and saved["sweep"]["space"]


@pytest.mark.slow
def test_two_ranks_run_each_trial_together_and_stop_a_pruned_one_together(tmp_path: Path):
    space = {"training.learning_rate": [0.01, 50.0]}  # 50 diverges: see the Python API test
    path = _write(sweep_recipe(trials=3, startup_trials=1, space=space), tmp_path / "r.yaml")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "hf_finetune", "sweep", str(path),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _rows(tmp_path / "sweep")
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert proc.stdout.count("best: ") == 1  # rank 0 reports
    for row in rows:
        run = json.loads((tmp_path / "sweep" / row["folder"] / "metrics.json").read_text())["run"]
        assert run["hardware"]["processes"] == 2
    by_trial = sorted(rows, key=lambda r: int(r["trial"]))
    lr = [float(r["training.learning_rate"]) for r in by_trial]
    after_good = [r for i, r in enumerate(by_trial) if lr[i] == 50.0 and 0.01 in lr[:i]]
    assert after_good, f"the sampler drew {lr}: no diverging trial after a good one; change sweep.seed"
    for row in after_good:
        # rank 0's decision reached rank 1: both stopped after that evaluation (else the run would hang or differ)
        assert row["state"] == "pruned", rows
        assert len(_evaluations(tmp_path / "sweep" / row["folder"])) == 1


@pytest.mark.slow
def test_the_python_api_prunes_a_diverging_trial_and_returns_the_best(tmp_path: Path, monkeypatch):
    import hf_finetune as hff

    monkeypatch.chdir(tmp_path)
    # 50 diverges (chance accuracy after one epoch); with one trial needed before pruning, a diverging trial that
    # comes after a good one has finished is below the median at its first evaluation
    recipe = sweep_recipe(trials=3, startup_trials=1, space={"training.learning_rate": [0.01, 50.0]})
    result = hff.sweep(recipe)
    assert isinstance(result, hff.SweepResult)
    by_trial = sorted(result.rows, key=lambda r: r["trial"])
    lr = [r["params"]["training.learning_rate"] for r in by_trial]
    after_good = [r for i, r in enumerate(by_trial) if lr[i] == 50.0 and 0.01 in lr[:i]]
    assert after_good, f"the sampler drew {lr}: no diverging trial after a good one; change sweep.seed"
    for row in after_good:
        assert row["state"] == "pruned", result.rows
        folder = result.output_dir / row["folder"]
        assert len(_evaluations(folder)) == 1  # stopped after the evaluation that pruned it (of 2 epochs)
        assert json.loads((folder / "metrics.json").read_text())["run"]["sweep"]["state"] == "pruned"
        assert "pruned (stopped early" in (folder / "README.md").read_text()
    assert result.best["params"]["training.learning_rate"] == 0.01 and result.best["state"] == "complete"
    assert result.best_dir == result.output_dir / result.best["folder"]
    assert result.best["score"] == max(r["score"] for r in result.rows if r["state"] == "complete")


class _FakeRun:
    """finetune() without training: the reporter sees `evaluations`, and the trials named in `fail` raise."""

    def __init__(self, evaluations: list[float], fail: set[str]):
        self.evaluations, self.fail, self.trained = evaluations, fail, []

    def __call__(self, recipe, callbacks=()):
        from types import SimpleNamespace

        from hf_finetune.errors import DataError

        name = recipe.output_dir.name
        self.trained.append(name)
        if name in self.fail:
            raise DataError(f"{name}: boom")
        for reporter in callbacks:
            _trained(reporter, self.evaluations)
        return SimpleNamespace(metrics={})


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch):
    import hf_finetune.api
    from hf_finetune.tuning import sweep

    monkeypatch.chdir(tmp_path)
    fake = _FakeRun([0.4, 0.6, 0.5], fail={"trial-001"})
    monkeypatch.setattr(hf_finetune.api, "finetune", fake)
    result = sweep(sweep_recipe(trials=3, pruner="none"))
    assert fake.trained == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert [(r["rank"], r["state"], r["score"]) for r in result.rows] == [
        (1, "complete", 0.6),
        (2, "complete", 0.6),
        (3, "complete", 0.6),
        (None, "fail", None),
    ]
    assert result.rows[-1]["note"] == "trial-001: boom"
    assert "|  | trial-001 | fail |  |  | " in (tmp_path / "sweep" / "leaderboard.md").read_text()
    assert (tmp_path / "sweep" / "leaderboard.md").read_text().splitlines()[-1].endswith("| trial-001: boom |")


def test_three_failing_trials_in_a_row_stop_the_sweep_with_the_last_error(tmp_path: Path, monkeypatch):
    import hf_finetune.api
    from hf_finetune.errors import HFFinetuneError
    from hf_finetune.tuning import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hf_finetune.api, "finetune", _FakeRun([0.5], fail={f"trial-00{i}" for i in range(5)}))
    with pytest.raises(HFFinetuneError, match=r"3 trials in a row failed; the last one \(trial-002\): trial-002: boom"):
        sweep(sweep_recipe(trials=2))


@pytest.mark.slow
def test_sigterm_stops_the_sweep_cleanly_and_the_same_command_resumes_it(tmp_path: Path):
    recipe = sweep_recipe(trials=1)
    recipe["training"]["num_train_epochs"] = 4
    path = _write(recipe, tmp_path / "r.yaml")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "hf_finetune", "sweep", str(path)]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    # the first epoch's checkpoint: training is under way (hf_finetune's stop-on-signal handler is in place)
    while not list((out / "trial-000").glob("checkpoint-*/hf_finetune_complete.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped: sweep stopped by a signal during trial-000; run the same command again to resume" in err
    assert "Traceback" not in err

    again = _cli(["sweep", str(path)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = _rows(out)
    assert [(r["trial"], r["state"]) for r in rows] == [("1", "complete"), ("0", "fail")]
    assert rows[0]["training.learning_rate"] == rows[1]["training.learning_rate"]
    assert "best: trial-001" in again.stdout


def test_a_second_sweep_in_a_running_sweeps_folder_is_refused(tmp_path: Path, monkeypatch):
    import fcntl

    import hf_finetune.api
    from hf_finetune.tuning import LOCK_FILE, sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hf_finetune.api, "finetune", _FakeRun([0.5], fail=set()))
    sweep(sweep_recipe(trials=1))  # a sweep folder, and its lock file, exist
    with (tmp_path / "sweep" / LOCK_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running sweep holds it
        with pytest.raises(OutputDirError, match="another hf-finetune sweep is running there"):
            sweep(sweep_recipe(trials=2), overwrite=True)
    assert (tmp_path / "sweep" / "sweep.db").is_file()  # nothing was removed
    resumed = sweep(sweep_recipe(trials=2))  # once it is free, the sweep resumes: trial 0 kept, one more run
    assert [(r["trial"], r["state"]) for r in resumed.rows] == [(0, "complete"), (1, "complete")]


def test_pushing_and_resuming_are_refused_for_a_sweep(tmp_path: Path, monkeypatch):
    from hf_finetune.tuning import sweep

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as err:
        sweep(
            sweep_recipe(), {"hub.push": True, "hub.repo_id": "me/model", "training.resume_from_checkpoint": "latest"}
        )
    assert [p.split(":")[0] for p in err.value.problems] == ["hub.push", "training.resume_from_checkpoint"]
    assert not (tmp_path / "sweep").exists()


def test_without_optuna_the_sweep_says_how_to_install_it(monkeypatch):
    from hf_finetune.errors import HFFinetuneError
    from hf_finetune.tuning import sweep

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(HFFinetuneError, match=r'pip install "hf_finetune\[sweep\]"'):
        sweep(sweep_recipe())


@pytest.mark.slow
def test_the_shipped_sweep_recipe_runs_as_its_header_says(tmp_path: Path):
    """`hf-finetune sweep quickstart-sweep`, shrunk by overrides (not by editing it): both trials draw different
    values from its space, each trial's recipe.yaml carries them and its early-stopping setting, and the printed
    best is the leaderboard's first row."""
    shrink = [
        "data.max_train_samples=200",
        "training.num_train_epochs=2",
        "model.image_size=16",
        "model.config.filters=[8]",
        "model.config.dense_units=[16]",
    ]
    proc = _cli(["sweep", "quickstart-sweep", "--trials", "2", "--output-dir", "sw", *shrink], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (tmp_path / "sw" / LEADERBOARD_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["complete", "complete"]
    assert float(rows[0]["eval_accuracy"]) >= float(rows[1]["eval_accuracy"])
    assert f"best: {rows[0]['folder']}" in proc.stdout
    swept = ("training.learning_rate", "training.weight_decay", "model.config.dropout")
    assert {tuple(r[k] for k in swept) for r in rows} != {tuple(rows[0][k] for k in swept)}  # two different draws
    for row in rows:
        saved = yaml.safe_load((tmp_path / "sw" / row["folder"] / "recipe.yaml").read_text())
        assert saved["training"]["learning_rate"] == pytest.approx(float(row["training.learning_rate"]))
        assert saved["model"]["config"]["dropout"] == pytest.approx(float(row["model.config.dropout"]))
        assert saved["training"]["early_stopping"] == {"patience": 3, "threshold": 0.0}
        assert saved["training"]["num_train_epochs"] == 2  # the command line's value, not the recipe's 10
