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


@pytest.mark.slow
def test_parquet_stream_trains_with_derived_max_steps_and_labels_from_the_features(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards", class_label=True)
    recipe = _recipe(tmp_path, tiny_bert_dir, {"source": str(data), "check_sample": 10}, num_train_epochs=2)
    settings = yaml.safe_load(recipe.read_text())
    del settings["training"]["eval_strategy"], settings["training"]["save_strategy"]
    recipe.write_text(yaml.safe_dump(settings))
    proc = cli(["train", str(recipe)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stderr
    # 96 rows in the footers, 8 per step: 12 steps a pass
    assert "training.max_steps = 24 (derived: 2 epochs × ceil(96 examples, by the Parquet footers / 8 per step))" in log
    # per pass, not per epoch: evaluated and saved at steps 12 and 24
    assert "eval_strategy = steps, eval_steps = 0.5 of max_steps" in log
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-24"]
    assert "read the first 10 train rows (data.check_sample: 10)" in log
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["streaming"]["train_rows"] == 96
    assert metrics["run"]["streaming"]["shards"] == 4
    assert metrics["run"]["splits"]["train"] == {"rows": 96, "streamed": True}
    assert sum(metrics["run"]["streaming"]["check_sample_class_counts"].values()) == 10
    card = (out / "README.md").read_text()
    assert "- train: streamed, 96 rows (the Parquet footers), 4 shards; the pre-flight checks read its first 10" in card
    assert "| class | validation |" in card  # no train column of zeros: a stream's classes were not counted
    assert metrics["eval"]["num_samples"] == 30  # validation-00000.parquet, read whole
    # the names came from the Parquet files' ClassLabel, in its order
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): n for i, n in enumerate(LABELS)}


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(SCRIPT), *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())


def _seen(folder: Path, rank: int) -> list[str]:
    return json.loads((folder / f"rank{rank}.json").read_text())["seen"]


@pytest.mark.slow
def test_two_ranks_read_different_shards(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards")
    recipe = _recipe(tmp_path, tiny_bert_dir, {"source": str(data), "labels": LABELS})
    record = tmp_path / "seen"
    record.mkdir()
    proc = _launch([str(recipe), "--record", str(record)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = _seen(record, 0), _seen(record, 1)
    shard_of = lambda text: text.rsplit(" ", 1)[1].split("r")[0]  # noqa: E731  ("s2r7" → shard "s2")
    # 96 rows over 2 ranks at 8 per step: 6 steps, and each rank reads only its own 2 of the 4 shards
    assert "training.max_steps = 6" in proc.stderr
    assert {shard_of(t) for t in rank0} & {shard_of(t) for t in rank1} == set()
    assert len({shard_of(t) for t in rank0}) == len({shard_of(t) for t in rank1}) == 2
    assert set(rank0).isdisjoint(rank1) and len(set(rank0)) >= 48 and len(set(rank1)) >= 48


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=_env())


@pytest.mark.slow
def test_resume_after_a_kill_skips_the_consumed_rows_without_reading_them_again(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards")
    training = {"save_strategy": "steps", "save_steps": 4, "seed": 3}
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight_dir, killed_dir):
        folder.mkdir()
        _recipe(folder, tiny_bert_dir, {"source": str(data), "labels": LABELS, "shuffle_buffer": 16}, **training)
    straight = _run([str(straight_dir / "recipe.yaml"), "--record", str(straight_dir)])
    assert straight.returncode == 0, straight.stderr[-4000:]
    order = _seen(straight_dir, 0)  # the shuffled stream's order (seeded), 12 steps of 8
    killed = _run([str(killed_dir / "recipe.yaml"), "--record", str(killed_dir), "--kill-at", "6"])
    assert killed.returncode == -9
    assert _seen(killed_dir, 0)[:48] == order[:48]  # the same order until the kill
    (killed_dir / "first").mkdir()
    resumed = _run([str(killed_dir / "out" / "recipe.yaml"), "--record", str(killed_dir / "first"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "checkpoint-4" in resumed.stderr and "32 consumed rows skipped" in resumed.stderr
    after = _seen(killed_dir / "first", 0)
    # checkpoint-4 consumed 4 steps × 8 rows: the resumed stream starts at row 32 of the same order, and the 32
    # consumed rows never reach the tokenizer again
    assert after[:64] == order[32:96]
    assert set(after).isdisjoint(order[:32])
    metrics = json.loads((killed_dir / "out" / "metrics.json").read_text())
    assert metrics["run"]["streaming"]["skipped_on_resume"] == 32


def _webdataset_shards(folder: Path, shards: int = 2, per_shard: int = 12) -> Path:
    """train-N.tar shards of NNN.png + NNN.cls entries (the class id as text), and validation-0.tar."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    def write(path: Path, rows: int, offset: int) -> None:
        with tarfile.open(path, "w") as tar:
            for i in range(rows):
                label = i % 2
                image = io.BytesIO()
                Image.new("RGB", (16, 16), (200 * label, 30 + i, 100)).save(image, "PNG")
                for ext, payload in (("png", image.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{offset + i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))

    for s in range(shards):
        write(folder / f"train-{s}.tar", per_shard, 1000 * s)
    write(folder / "validation-0.tar", 8, 9000)
    return folder


@pytest.mark.slow
def test_webdataset_tar_shards_train_an_image_model(tiny_recipe, tmp_path: Path):
    data = _webdataset_shards(tmp_path / "wds")
    recipe = tiny_recipe(
        data={
            "source": str(data),
            "streaming": True,
            "image_column": "png",
            "label_column": "cls",
            "labels": ["dark", "red"],
            "check_sample": 5,
        },
        training={"max_steps": 3, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no",
                  "output_dir": str(tmp_path / "out"), "dataloader_num_workers": 0},
    )  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = cli(["train", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "training.max_steps = 3 (the recipe's)" in proc.stderr
    assert "read the first 5 train rows (data.check_sample: 5)" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["streaming"]["train_rows"] is None  # tar shards carry no row count
    assert metrics["run"]["streaming"]["shards"] == 2
    assert metrics["run"]["splits"]["validation"]["rows"] == 8
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "dark", "1": "red"}


def _text_files(folder: Path, suffix: str) -> Path:
    """train-0/train-1 and validation-0 files (JSONL or CSV) of review,sentiment rows with string labels."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train-0": make_texts(20, 0), "train-1": make_texts(20, 2), "validation-0": make_texts(12, 1)}
    for name, rows in parts.items():
        path = folder / f"{name}.{suffix}"
        if suffix == "jsonl":
            path.write_text("".join(json.dumps({"review": t, "sentiment": label}) + "\n" for t, label in rows))
        else:
            with path.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([("review", "sentiment"), *rows])
    return folder


def test_jsonl_stream_of_unknown_length_requires_max_steps(tiny_bert_dir: Path, tmp_path: Path):
    data = _text_files(tmp_path / "jsonl", "jsonl")
    recipe = _recipe(tmp_path, tiny_bert_dir, {"source": str(data), "labels": LABELS})
    proc = cli(["train", str(recipe)], tmp_path)
    assert proc.returncode == 2
    assert "training.max_steps: required under data.streaming when the number of train examples is unknown" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_csv_stream_trains_with_the_recipes_max_steps(tiny_bert_dir: Path, tmp_path: Path):
    data = _text_files(tmp_path / "csv", "csv")
    files = {"train": str(data / "train-*.csv"), "validation": str(data / "validation-0.csv")}  # a glob of shards
    recipe = _recipe(tmp_path, tiny_bert_dir, {"files": files, "labels": LABELS}, max_steps=3)
    proc = cli(["train", str(recipe)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "training.max_steps = 3 (the recipe's)" in proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["streaming"]["counted_by"] == "unknown (no split info, not Parquet)"
    assert metrics["run"]["streaming"]["shards"] == 2
    assert metrics["eval"]["num_samples"] == 12
    # the trained folder is scored again from its saved (streaming) recipe: the same validation numbers
    again = cli(["eval", str(tmp_path / "out")], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    scored = json.loads(next(line for line in again.stdout.splitlines() if line.startswith("{")))
    assert scored["num_samples"] == 12
    assert scored["accuracy"] == metrics["eval"]["accuracy"]
    assert scored["loss"] == pytest.approx(metrics["eval"]["loss"], rel=1e-5)


def test_labels_neither_in_the_features_nor_given_is_one_clear_error(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards", shards=2, per_shard=6)
    proc = cli(["train", str(_recipe(tmp_path, tiny_bert_dir, {"source": str(data)}))], tmp_path)
    assert proc.returncode == 2
    assert "data.labels: required under data.streaming" in proc.stderr
    assert "data.labels=[cat,dog]" in proc.stderr and "Traceback" not in proc.stderr


def test_labels_that_contradict_the_features_are_refused(tmp_path: Path):
    import datasets

    from hf_finetune.data.streaming import label_names
    from hf_finetune.errors import DataError
    from hf_finetune.recipe import DataSpec

    data = _parquet_shards(tmp_path / "shards", shards=1, per_shard=3, class_label=True)
    files = str(data / "train-00000.parquet")
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    stream = stream.rename_column("sentiment", "label")
    spec = DataSpec(source=str(data), streaming=True, label_column="sentiment")
    assert label_names(stream, spec) == LABELS
    assert label_names(stream, DataSpec(source="x", streaming=True, labels=LABELS)) == LABELS
    with pytest.raises(DataError, match=r"data.labels \['positive', 'negative'\] differs from the class names"):
        label_names(stream, DataSpec(source="x", streaming=True, labels=["positive", "negative"]))


def test_what_a_stream_cannot_do_is_refused_with_the_keys_named():
    from hf_finetune.errors import RecipeError
    from hf_finetune.recipe import load_recipe

    base = {"task": "text-classification", "model": {"name": "m"}}
    with pytest.raises(RecipeError) as err:
        load_recipe(
            {
                **base,
                "data": {"source": "d", "streaming": True, "duplicates": "drop", "group_column": "g", "test_size": 0.1},
                "transfer": {"strategy": "linear_probe"},
            }
        )
    text = str(err.value)
    for key in ("data.duplicates: drop", "data.group_column", "data.test_size", "transfer.strategy linear_probe"):
        assert key in text
    with pytest.raises(RecipeError, match=r"data\.labels: applies with data\.streaming: true only"):
        load_recipe({**base, "data": {"source": "d", "labels": ["a", "b"]}})
    with pytest.raises(RecipeError, match=r"data\.labels: \['a'\]; list at least two distinct"):
        load_recipe({**base, "data": {"source": "d", "streaming": True, "labels": ["a"]}})


def test_check_command_reads_the_sample_of_a_stream(tiny_bert_dir: Path, tmp_path: Path):
    data = _parquet_shards(tmp_path / "shards", shards=2, per_shard=6)
    recipe = _recipe(tmp_path, tiny_bert_dir, {"source": str(data), "labels": LABELS, "check_sample": 7})
    proc = cli(["check", str(recipe)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "read the first 7 train rows (data.check_sample: 7)" in proc.stderr
    assert "train 7 rows, validation 30 rows" in proc.stdout + proc.stderr


def test_an_edited_validation_file_is_read_again_not_served_from_the_cache(tmp_path: Path):
    import datasets

    from hf_finetune.data.streaming import materialise

    path, other = tmp_path / "validation-0.jsonl", tmp_path / "validation-1.jsonl"
    path.write_text('{"t": "a"}\n{"t": "b"}\n')
    other.write_text('{"t": "z"}\n')
    files = [str(path), str(other)]  # two files: each row is still read once
    stream = lambda: datasets.load_dataset("json", data_files=files, split="train", streaming=True)  # noqa: E731
    assert materialise(stream(), None)["t"] == ["a", "b", "z"]
    path.write_text('{"t": "a"}\n{"t": "b"}\n{"t": "c"}\n')
    assert materialise(stream(), None)["t"] == ["a", "b", "c", "z"]
    assert materialise(stream(), 1)["t"] == ["a"]  # data.max_eval_samples: the first rows
