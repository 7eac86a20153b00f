"""data.streaming: the train split read as a stream (local Parquet/JSONL/CSV shards, WebDataset tar shards), through
the CLI: labels from the features or data.labels, max_steps derived or required, the check sample logged, two
ranks reading different shards, and --resume after a kill not reading the consumed rows again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_texts
from test_bad_inputs import cli

SCRIPT = Path(__file__).parent / "scripts" / "stream_recipe.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"})
    return env


def _parquet_shards(folder: Path, shards: int = 4, per_shard: int = 24, class_label: bool = False) -> Path:
    """train-0000N.parquet shards (every text unique: it ends with its shard and row) and validation-00000.parquet."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    names = ["negative", "neutral", "positive"]
    features = datasets.Features(
        {"review": datasets.Value("string"), "sentiment": datasets.ClassLabel(names=names)}
        if class_label
        else {"review": datasets.Value("string"), "sentiment": datasets.Value("string")}
    )

    def table(rows: list[tuple[str, str]]) -> datasets.Dataset:
        labels = [names.index(label) for _, label in rows] if class_label else [label for _, label in rows]
        return datasets.Dataset.from_dict({"review": [t for t, _ in rows], "sentiment": labels}, features=features)

    rows = make_texts(shards * per_shard, 0)
    for s in range(shards):
        part = [(f"{t} s{s}r{i}", label) for i, (t, label) in enumerate(rows[s * per_shard : (s + 1) * per_shard])]
        table(part).to_parquet(folder / f"train-{s:05d}.parquet")
    table(make_texts(30, 1)).to_parquet(folder / "validation-00000.parquet")
    return folder


def _recipe(tmp_path: Path, model: Path, data: dict, **training) -> Path:
    recipe = {
        "name": "tiny-stream",
        "task": "text-classification",
        "model": {"name": str(model)},
        "data": {"streaming": True, "text_column": "review", "label_column": "sentiment", **data},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "eval_strategy": "no",
            "save_strategy": "no",
            **training,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


LABELS = ["negative", "neutral", "positive"]


def test_parquet_stream_trains_with_derived_max_steps_and_logs_the_check_sample(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards")
    recipe = _recipe(tmp_path, tiny_bert_dir, {"source": str(data), "labels": LABELS, "check_sample": 10})
    proc = cli(["train", str(recipe)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stderr
    # 96 rows in the footers, 8 per step: 12 steps for one epoch
    assert "training.max_steps = 12 (derived: 1 epochs × ceil(96 examples, by the Parquet footers / 8 per step))" in log
    assert "read the first 10 train rows (data.check_sample: 10)" in log
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["streaming"]["train_rows"] == 96
    assert metrics["run"]["streaming"]["shards"] == 4
    print(json.dumps(metrics, indent=1)[:3000])
    print(log[-3000:])
