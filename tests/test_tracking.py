"""training.report_to: tensorboard, end to end: the shipped quickstart through the CLI, its event files read back with
TensorBoard's own reader and compared with what the run wrote (trainer_state.json, metrics.json, the PNGs)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from hf_finetune.cli import main

# the writer stores scalars as float32: a value read back equals the float32 of what was logged, exactly
f32 = np.float32


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def _events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = (out / "runs").iterdir()  # one TensorBoard run per training
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """The quickstart as a user runs it with TensorBoard on, two epochs; (output folder, working folder)."""
    cwd = tmp_path_factory.mktemp("cwd")
    out = cwd / "out"
    proc = _cli(
        "train", "quickstart", "training.report_to=tensorboard", "training.num_train_epochs=2", "--output-dir", "out",
        cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"tensorboard --logdir {out.resolve() / 'runs'}" in proc.stderr
    return out, cwd


def _log_history(out: Path) -> tuple[list[dict], int]:
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    return state["log_history"], state["global_step"]


def test_each_epoch_s_metrics_are_the_trainer_s_and_nothing_lands_outside_the_output_folder(run):
    out, cwd = run
    events = _events(out)
    history, _ = _log_history(out)
    evals = [h for h in history if "eval_accuracy" in h]
    assert [h["epoch"] for h in evals] == [1.0, 2.0]
    for key in ("eval_accuracy", "eval_f1_macro", "eval_loss", "eval_log_loss", "eval_ece", "eval_roc_auc_macro"):
        tag = "eval/" + key.removeprefix("eval_")
        # one point per epoch: the evaluations after training are not appended to the curves
        assert _scalars(events, tag) == [(h["step"], f32(h[key])) for h in evals], tag
    losses = [(h["step"], f32(h["loss"])) for h in history if "loss" in h]
    assert _scalars(events, "train/loss") == losses and len(losses) == 2
    # the run's, so --overwrite removes it; and Trainer's default place, not the working folder
    assert "runs" in json.loads((out / ".hf_finetune_run.json").read_text())["entries"]
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]


def test_final_scalars_are_metrics_json_at_the_last_step(run):
    out, _ = run
    events = _events(out)
    metrics = json.loads((out / "metrics.json").read_text())
    _, last_step = _log_history(out)
    for prefix in ("eval", "test"):
        m = metrics[prefix]
        for key in ("accuracy", "f1_macro", "precision_weighted", "recall_macro", "top3_accuracy", "log_loss", "ece"):
            assert _scalars(events, f"final/{prefix}/{key}") == [(last_step, f32(m[key]))], (prefix, key)
        expected = {
            f"final/{prefix}/{k}"
            for k, v in m.items()
            if isinstance(v, (int, float)) and k not in ("runtime", "samples_per_second", "steps_per_second", "epoch")
        }
        logged = {t for t in events.Tags()["scalars"] if t.startswith(f"final/{prefix}/")}
        assert logged == expected
    # validation's final figures are the saved (best) model's, beside the per-epoch curve, not on it
    assert metrics["eval"]["accuracy"] == pytest.approx(max(v for _, v in _scalars(events, "eval/accuracy")), abs=1e-6)


def test_confusion_matrices_and_reliability_diagrams_are_the_run_s_pngs(run):
    out, _ = run
    events = _events(out)
    _, last_step = _log_history(out)
    for prefix in ("eval", "test"):
        for kind in ("confusion_matrix", "reliability_diagram"):
            png = Image.open(out / f"{kind}_{prefix}.png").convert("RGB")
            (logged,) = events.Images(f"final/{prefix}/{kind}")
            assert (logged.step, logged.width, logged.height) == (last_step, *png.size)
            decoded = Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB")
            assert np.array_equal(np.asarray(decoded), np.asarray(png))


def test_the_per_class_table_has_every_label_s_figures(run):
    out, _ = run
    events = _events(out)
    metrics = json.loads((out / "metrics.json").read_text())
    for prefix in ("eval", "test"):
        (logged,) = events.Tensors(f"final/{prefix}/per_class/text_summary")
        lines = logged.tensor_proto.string_val[0].decode().splitlines()
        assert lines[0] == "| label | precision | recall | f1 | support |"
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
        table = {row[0]: row[1:] for row in cells}
        assert sorted(table) == sorted(metrics["label_names"]) and len(cells) == 10
        for row in metrics[prefix]["per_class"]:
            precision, recall, f1, support = table[row["label"]]
            assert float(f1) == pytest.approx(row["f1"], abs=5e-5) and int(support) == row["support"]
            assert float(precision) == pytest.approx(row["precision"], abs=5e-5)
            assert float(recall) == pytest.approx(row["recall"], abs=5e-5)


def test_a_push_leaves_the_event_files_out_unless_included(run, tmp_path: Path):
    from hf_finetune.hub import stage_folder

    out, _ = run
    event_files = sorted(str(p.relative_to(out)) for p in (out / "runs").rglob("*") if p.is_file())
    assert len(event_files) == 2  # training's writer, then the final results' one
    (tmp_path / "a").mkdir()
    staged = stage_folder(out, tmp_path / "a", "me/model")
    assert "metrics.json" in staged and not [n for n in staged if n.startswith("runs")]
    (tmp_path / "b").mkdir()
    staged = stage_folder(out, tmp_path / "b", "me/model", include=["runs/*"])
    assert sorted(n for n in staged if n.startswith("runs")) == event_files


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_s_event_files(run, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    (out / "notes.txt").write_text("mine")
    old = {p.name for p in (out / "runs").rglob("events.out.tfevents.*")}
    proc = _cli(
        "train", "quickstart", "training.report_to=tensorboard", "training.num_train_epochs=1", "--output-dir",
        str(out), "--overwrite", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = {p.name for p in (out / "runs").rglob("events.out.tfevents.*")}
    assert len(old) == 2 and len(new) == 2 and not old & new
    events = _events(out)  # one run folder: the earlier one is gone
    assert [step for step, _ in _scalars(events, "eval/accuracy")] == [_log_history(out)[1]]
    assert (out / "notes.txt").read_text() == "mine"


def test_linear_probe_logs_its_results_in_the_output_folder(digits_folder: Path, tmp_path: Path):
    # no training: Trainer's callback never starts, and left to itself would write runs/ into the working folder
    recipe = {
        "task": "image-classification",
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(digits_folder)},
        "transfer": {"strategy": "linear_probe"},
        "training": {"output_dir": "out", "report_to": "tensorboard", "dataloader_num_workers": 0},
    }
    (tmp_path / "lp.yaml").write_text(yaml.safe_dump(recipe))
    proc = _cli("train", "lp.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lp.yaml", "out"]
    assert "runs" in json.loads((out / ".hf_finetune_run.json").read_text())["entries"]
    events = _events(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert _scalars(events, "final/test/accuracy") == [(0, f32(metrics["test"]["accuracy"]))]
    assert not [t for t in events.Tags()["scalars"] if t.startswith("eval/")]


def test_tensorboard_missing_is_refused_with_the_install_command(monkeypatch, capsys):
    from transformers.integrations import integration_utils

    assert main(["validate", "quickstart", "training.report_to=tensorboard"]) == 0  # installed here
    installed = integration_utils.get_available_reporting_integrations()
    monkeypatch.setattr(
        integration_utils,
        "get_available_reporting_integrations",
        lambda: [name for name in installed if name != "tensorboard"],
    )
    capsys.readouterr()
    assert main(["validate", "quickstart", "training.report_to=[tensorboard]"]) == 2
    err = capsys.readouterr().err
    assert "training.report_to: 'tensorboard' is not installed" in err
    assert 'pip install "hf_finetune[tensorboard]"' in err
