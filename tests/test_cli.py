"""The CLI: commands, exit status 2 with one clear message on bad input, lazy imports, accelerate launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_finetune.cli import main
from hf_finetune.recipe import list_recipes

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], capture_output=True, text=True, timeout=timeout, env=os.environ
    )


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train_one_epoch(tiny_recipe, tmp_path: Path) -> Path:
    out = tmp_path / "o"
    recipe = _write(tiny_recipe(training={"num_train_epochs": 1}), tmp_path / "r.yaml")
    assert main(["train", str(recipe), "--output-dir", str(out)]) == 0
    return out


def test_help_does_not_import_heavy_libraries():
    heavy = "{'torch', 'transformers', 'datasets'}"
    code = f"import sys, hf_finetune.cli as c; c.build_parser(); print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    helped = _run("--help")
    assert helped.returncode == 0 and "train" in helped.stdout and "predict" in helped.stdout


def test_recipe_errors_exit_2_without_traceback():
    proc = _run("train", "quickstart", "training.learning_rat=0.1", "model.pretrianed=false", "data.seed=x")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: 3 problems in the recipe")
    assert "did you mean 'learning_rate'" in proc.stderr and "did you mean 'pretrained'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_model_exit_2(tiny_recipe, tmp_path: Path, capsys):
    path = _write(tiny_recipe(model={"name": "./no-such-model"}), tmp_path / "r.yaml")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.name './no-such-model'" in err and "local folder" in err
    unknown_timm = _write(tiny_recipe(model={"name": "timm:resnet181", "pretrained": False}), tmp_path / "t.yaml")
    assert main(["train", str(unknown_timm)]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_train_predict_eval_round_trip(tiny_recipe, digits_folder: Path, tmp_path: Path, capsys):
    path = _write(tiny_recipe(training={"num_train_epochs": 1}), tmp_path / "tiny.yaml")
    out = tmp_path / "cli-out"
    assert main(["train", str(path), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"outputs: {out.resolve()}" in printed and "test: accuracy" in printed

    images = sorted((digits_folder / "test" / "zero").glob("*.png"))[:2]
    assert main(["predict", str(out), *map(str, images), "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert all(len(r["predictions"]) == 2 for r in rows)
    assert all(p["label"] in {"zero", "one", "two"} for r in rows for p in r["predictions"])

    assert main(["eval", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert evaluated["split"] == "test"
    assert evaluated["accuracy"] == pytest.approx(saved["accuracy"])
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]

    # the same output folder again: refused, exit 2, and the message says how to go on
    assert main(["train", str(path), "--output-dir", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_eval_on_other_data_maps_labels_by_name(tiny_recipe, digits_folder: Path, tmp_path: Path, capsys):
    out = _train_one_epoch(tiny_recipe, tmp_path)
    capsys.readouterr()
    # a folder holding only two of the three classes: evaluated as a whole, ids follow the model's labels
    subset = tmp_path / "subset"
    for name in ("two", "zero"):
        (subset / name).mkdir(parents=True)
        for p in sorted((digits_folder / "test" / name).glob("*.png"))[:3]:
            (subset / name / p.name).write_bytes(p.read_bytes())
    assert main(["eval", str(out), "--data", str(subset)]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["num_samples"] == 6
    support = {row["label"]: row["support"] for row in result["per_class"]}
    assert support == {"one": 0, "two": 3, "zero": 3}


def test_corrupt_image_is_named_and_nothing_is_written(tiny_recipe, digits_folder: Path, tmp_path: Path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    broken = data / "train" / "one" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    recipe = tiny_recipe(data={"source": str(data)})
    assert main(["train", str(_write(recipe, tmp_path / "r.yaml"))]) == 2
    err = capsys.readouterr().err
    message = err[err.index("error:") :]
    assert message.startswith("error: 1 of 121 images cannot be decoded") and str(broken) in message
    assert not Path(recipe["training"]["output_dir"]).exists()


def test_predict_unreadable_image_is_an_error_row_exit_1(tiny_recipe, tmp_path: Path, capsys):
    out = _train_one_epoch(tiny_recipe, tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    capsys.readouterr()
    assert main(["predict", str(out), str(bad)]) == 1
    printed = capsys.readouterr()
    [row] = [json.loads(line) for line in printed.out.splitlines()]
    assert row["image"] == str(bad) and str(bad) in row["error"] and "predictions" not in row
    assert "1 of 1 inputs could not be read" in printed.err


def test_recipes_ls_show_cp(tmp_path: Path, capsys):
    assert main(["recipes", "ls"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split() == ["NAME", "TASK", "MODEL", "STRATEGY", "FILE"]
    rows = [line.split() for line in listing.splitlines()[1:]]
    assert ["quickstart", "image-classification", "simple_cnn", "full", "image/quickstart.yaml"] in rows
    assert ["resnet18-linear-probe", "image-classification", "timm:resnet18", "linear_probe"] in [r[:4] for r in rows]
    assert len(rows) == len(list_recipes())
    assert main(["recipes", "show", "quickstart"]) == 0
    assert "builtin:digits" in capsys.readouterr().out
    assert main(["recipes", "cp", "quickstart", str(tmp_path)]) == 0
    copied = tmp_path / "quickstart.yaml"
    assert copied.read_text() == (REPO / "recipes" / "image" / "quickstart.yaml").read_text()
    copied.write_text("# mine\n")
    assert main(["recipes", "cp", "quickstart", str(copied)]) == 2
    assert copied.read_text() == "# mine\n"
    assert main(["recipes", "show", "nope"]) == 2


def test_validate_prints_resolved_recipe(capsys):
    assert main(["validate", "quickstart", "training.num_train_epochs=1"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["training"]["num_train_epochs"] == 1
    assert resolved["data"]["validation_size"] == 0.1  # defaults are filled in


@pytest.mark.slow
def test_accelerate_launch_runs_the_cli(tiny_recipe, tmp_path: Path):
    path = _write(tiny_recipe(training={"num_train_epochs": 1}), tmp_path / "r.yaml")
    out = tmp_path / "acc"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "hf_finetune",
            "train",
            str(path),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
