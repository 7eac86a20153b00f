"""`predict` over real work: folders, globs and .txt/.csv/.jsonl inputs; JSONL or CSV out; unreadable inputs as rows
with "error" (exit 1); streamed (an endless input yields rows); refusals (exit 2) before the model loads."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_text_recipe, make_texts


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )


def _rows(proc: subprocess.CompletedProcess, code: int = 0) -> list[dict]:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _refused(proc: subprocess.CompletedProcess, *named: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for text in named:
        assert text in proc.stderr, (text, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, digits_folder: Path) -> Path:
    from hf_finetune import finetune

    out = tmp_path_factory.mktemp("predict_image") / "out"
    recipe = {
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(digits_folder)},
        "training": {"output_dir": str(out), "num_train_epochs": 1, "disable_tqdm": True},
    }
    return finetune(recipe).output_dir


@pytest.fixture
def photos(digits_folder: Path, tmp_path: Path) -> Path:
    """A nested folder of 9 images, plus a hidden image and a text file that must be skipped."""
    root = tmp_path / "my photos"
    for name in ("zero", "one", "two"):
        for i, src in enumerate(sorted((digits_folder / "test" / name).glob("*.png"))[:3]):
            dest = root / name / ("deeper" if i == 2 else "") / f"{i}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    shutil.copy(next((root / "one").glob("*.png")), root / "one" / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _expected_order(root: Path) -> list[str]:
    return [str(root / n / f) for n in ("one", "two", "zero") for f in ("0.png", "1.png", "deeper/2.png")]


def test_folders_and_globs_expand_lazily_in_a_fixed_order(photos: Path):
    from hf_finetune.errors import DataError
    from hf_finetune.prediction import expand_image_args

    assert list(expand_image_args([str(photos)])) == _expected_order(photos)
    assert list(expand_image_args([f"{photos}/**/*.png"])) == _expected_order(photos)
    assert list(expand_image_args([f"{photos}/t*/*.png"])) == [str(photos / "two" / f) for f in ("0.png", "1.png")]
    assert list(expand_image_args([f"{photos}/one/.h*.png"])) == [str(photos / "one" / ".hidden.png")]
    with pytest.raises(DataError, match=r"matches no image files"):
        expand_image_args([f"{photos}/*.jpg"])
    (photos / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: the folder holds no image files"):
        expand_image_args([str(photos / "empty")])


@pytest.mark.slow
def test_refusals_before_the_model_loads(photos: Path, tmp_path: Path):
    """No model in the folder at all: each refusal comes before anything loads, with exit 2."""
    not_a_model = tmp_path / "no model"
    not_a_model.mkdir()
    image = str(photos / "one" / "0.png")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own notes\n")
    before = hashlib.sha256(mine.read_bytes()).hexdigest()
    _refused(_cli(not_a_model, image, "--output", mine), "--output", "already exists", "--overwrite")
    assert hashlib.sha256(mine.read_bytes()).hexdigest() == before
    _refused(_cli(not_a_model, image, "--device", "cuda"), "device 'cuda' is not available", "available: cpu")
    _refused(_cli(not_a_model, f"{photos}/*.jpg"), "matches no image files")
    table = tmp_path / "list.csv"
    table.write_text("path,other\none/0.png,x\n")
    _refused(_cli(not_a_model, "--input", table), str(table), "no column 'image'", "['path', 'other']")


@pytest.mark.slow
def test_folder_glob_csv_jsonl_in_and_csv_out(image_model: Path, photos: Path, tmp_path: Path):
    order = _expected_order(photos)
    positional = _rows(_cli(image_model, *order, "--top-k", 2))
    assert [r["image"] for r in positional] == order
    for args in ([photos], [f"{photos}/**/*.png"], [photos / "one", f"{photos}/[tz]*/**/*.png"]):
        assert _rows(_cli(image_model, *args, "--top-k", 2, "--batch-size", 4)) == positional
    relative = [str(Path(p).relative_to(photos)) for p in order]  # resolved against the list file's folder
    (photos / "list.csv").write_text("image\n" + "\n".join(relative) + "\n")
    (photos / "list.jsonl").write_text("".join(json.dumps({"image": p}) + "\n" for p in relative))
    for listing in ("list.csv", "list.jsonl"):
        assert _rows(_cli(image_model, "--input", photos / listing, "--top-k", 2)) == positional

    table = tmp_path / "out" / "predictions.csv"
    assert _cli(image_model, photos, "--top-k", 2, "--output", table).returncode == 0
    got = list(csv.DictReader(io.StringIO(table.read_text(encoding="utf-8"))))
    assert list(got[0]) == ["image", "label_1", "score_1", "label_2", "score_2", "error"]
    for row, want in zip(got, positional, strict=True):
        assert row["image"] == want["image"] and row["error"] == ""
        assert [(row[f"label_{i}"], float(row[f"score_{i}"])) for i in (1, 2)] == [
            (p["label"], p["score"]) for p in want["predictions"]
        ]
        assert float(row["score_1"]) + float(row["score_2"]) <= 1 + 1e-6
    assert sorted(p.name for p in table.parent.iterdir()) == ["predictions.csv"]  # no temporary file left

    jsonl = tmp_path / "out" / "predictions.jsonl"
    assert _cli(image_model, photos, "--top-k", 2, "--output", jsonl).returncode == 0
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == positional
    stdout_csv = _cli(image_model, photos, "--top-k", 2, "--format", "csv")
    assert stdout_csv.returncode == 0 and stdout_csv.stdout == table.read_text(encoding="utf-8")


@pytest.mark.slow
def test_unreadable_inputs_are_error_rows_and_exit_1(image_model: Path, photos: Path):
    good = _expected_order(photos)[:4]
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    missing = photos / "absent.png"
    clean = _rows(_cli(image_model, *good))
    proc = _cli(image_model, good[0], broken, good[1], missing, *good[2:], "--batch-size", 8)
    rows = _rows(proc, code=1)
    assert [r["image"] for r in rows] == [good[0], str(broken), good[1], str(missing), *good[2:]]
    assert [r for r in rows if "error" not in r] == clean
    assert str(broken) in rows[1]["error"] and "cannot be read as an image" in rows[1]["error"]
    assert rows[3]["error"] == f"{missing}: no such file"
    assert "predictions" not in rows[1] and "predictions" not in rows[3]
    assert '2 of 6 inputs could not be read (rows with "error")' in proc.stderr

    listing = photos / "bad.jsonl"
    listing.write_text('{"image": "one/0.png"}\n{"image": \n{"picture": "x.png"}\n')
    rows = _rows(_cli(image_model, "--input", listing), code=1)
    assert rows[0]["image"] == good[0]
    # a batch of one may round the 6th decimal differently from a batch of four
    assert [(p["label"], pytest.approx(p["score"], abs=2e-6)) for p in clean[0]["predictions"]] == [
        (p["label"], p["score"]) for p in rows[0]["predictions"]
    ]
    assert rows[1]["image"] is None and f"{listing}, line 2: not valid JSON" in rows[1]["error"]
    assert "line 3: no key 'image'" in rows[2]["error"] and "['picture']" in rows[2]["error"]


@pytest.mark.slow
def test_progress_bar_on_stderr_only(image_model: Path, photos: Path):
    proc = _cli(image_model, photos, "--batch-size", 2, "--progress")
    rows = _rows(proc)
    assert len(rows) == 9  # stdout is only the JSON lines
    assert "9input" in proc.stderr.replace(" ", "") and "it/s" not in proc.stdout
    quiet = _cli(image_model, photos, "--batch-size", 2)  # stderr is not a terminal here: no bar by default
    assert _rows(quiet) == rows and "input/s" not in quiet.stderr


@pytest.mark.slow
def test_iter_predictions_streams_an_endless_input(image_model: Path, photos: Path):
    from hf_finetune import iter_predictions, predict

    images = _expected_order(photos)
    pulled = 0

    def endless():
        nonlocal pulled
        for path in itertools.cycle(images):
            pulled += 1
            yield path

    rows = iter_predictions(image_model, endless(), top_k=1, batch_size=4)
    assert pulled == 0  # nothing read before the first row is asked for
    first = list(itertools.islice(rows, 5))
    assert pulled <= 8  # the first two batches, no more
    assert [r["image"] for r in first] == images[:5]
    assert first == predict(image_model, images[:5], top_k=1)


@pytest.fixture(scope="module")
def text_models(tmp_path_factory, text_csv: Path, tiny_bert_dir: Path) -> dict[str, Path]:
    """A single-text model and a pair model (columns premise/hypothesis), each trained for a few seconds."""
    from hf_finetune import finetune

    root = tmp_path_factory.mktemp("predict_text")
    pairs = root / "pairs"
    pairs.mkdir()
    for name, n, seed in (("train.csv", 90, 0), ("test.csv", 15, 1)):
        with (pairs / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["premise", "hypothesis", "sentiment"])
            writer.writerows((t, t.split()[0], label) for t, label in make_texts(n, seed))
    single = finetune(make_text_recipe(text_csv, tiny_bert_dir, root / "single")).output_dir
    recipe = make_text_recipe(pairs, tiny_bert_dir, root / "pair")
    recipe["data"] |= {"text_column": "premise", "text_pair_column": "hypothesis"}
    return {"single": single, "pair": finetune(recipe).output_dir}


@pytest.mark.slow
def test_text_and_pair_models_from_files(text_models: dict[str, Path], tmp_path: Path):
    texts = ["good lovely ride", "", "bad slow car"]
    lines = tmp_path / "texts.jsonl"
    lines.write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))
    proc = _cli(text_models["single"], "--input", lines, "--top-k", 2)
    rows = _rows(proc, code=1)
    assert [r["text"] for r in rows] == texts
    assert "empty" in rows[1]["error"] and "predictions" not in rows[1]
    by_flag = _rows(_cli(text_models["single"], "--text", texts[0], "--text", texts[2], "--top-k", 2))
    assert [rows[0], rows[2]] == by_flag
    assert "1 of 3 inputs could not be read" in proc.stderr

    pairs = [("good lovely ride", "good"), ("bad slow car", "bad")]
    table = tmp_path / "pairs.csv"
    table.write_text("premise,hypothesis\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"premise": a, "hypothesis": b}) + "\n" for a, b in pairs))
    flags = [x for a, b in pairs for x in ("--text", a, "--text-pair", b)]
    want = _rows(_cli(text_models["pair"], *flags))
    assert [(r["text"], r["text_pair"]) for r in want] == pairs
    assert _rows(_cli(text_models["pair"], "--input", table)) == want
    assert _rows(_cli(text_models["pair"], "--input", jsonl)) == want
    out = tmp_path / "pairs-out.csv"
    assert _cli(text_models["pair"], "--input", jsonl, "--output", out, "--top-k", 1).returncode == 0
    got = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [(r["text"], r["text_pair"], r["label_1"]) for r in got] == [
        (r["text"], r["text_pair"], r["predictions"][0]["label"]) for r in want
    ]
