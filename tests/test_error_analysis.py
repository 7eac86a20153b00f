"""write_error_analysis: a case built so every answer is known, checked against scipy/scikit-learn, plus the image
grid, Markdown escaping, the class cap, refusals, relative paths and atomic writes."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.special import log_softmax, softmax
from sklearn.metrics import confusion_matrix, log_loss

from hf_finetune import error_analysis as ea
from hf_finetune.error_analysis import ErrorAnalysis, RowRef, grid_shape, write_error_analysis
from hf_finetune.errors import MetricError

NAMES = ["cat", "dog", "fox"]
# Built so the answer is known: rows 1, 2 (cat → dog) and 5 (dog → fox) are wrong, cat → dog is the most
# confused pair, row 2 has the highest loss, row 7 is the least confident correct row and row 3 the next.
LOGITS = np.array(
    [
        [3.0, 0.0, 0.0],  # cat, right
        [0.0, 2.0, 0.0],  # cat, predicted dog
        [0.0, 4.0, 0.0],  # cat, predicted dog (worst)
        [0.0, 1.0, 0.5],  # dog, right but unsure
        [0.0, 5.0, 0.0],  # dog, right
        [0.0, 0.0, 1.0],  # dog, predicted fox
        [0.0, 0.0, 2.0],  # fox, right
        [0.2, 0.0, 0.3],  # fox, right, least sure
    ]
)
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
WRONG = {1, 2, 5}


def _text_rows(n: int) -> list[RowRef]:
    return [RowRef(id=f"r{i}", text=f"text {i}") for i in range(n)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _section(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading`, cells split on unescaped pipes and unescaped back."""
    lines = md.split("\n")
    start = lines.index(f"## {heading}")
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            table.append([cell.strip().replace("\\|", "|") for cell in cells])
    assert len(table) >= 2 and set(table[1][0]) <= set("-:"), f"no table under {heading}"
    return table[2:]


def _known(tmp_path: Path, **kwargs) -> ErrorAnalysis:
    return write_error_analysis(
        tmp_path, "validation", _text_rows(len(LABELS)), LOGITS, LABELS, NAMES, kind="text", **kwargs
    )


def test_known_case_predictions_jsonl_row_by_row(tmp_path):
    result = _known(tmp_path, top_k=2)
    records = _jsonl(result.predictions_path)
    assert result.predictions_path == tmp_path / "predictions_validation.jsonl"
    assert len(records) == len(LABELS)
    probs = softmax(LOGITS, axis=1)
    for i, record in enumerate(records):
        assert record["id"] == f"r{i}" and record["text"] == f"text {i}" and "path" not in record
        assert record["label"] == NAMES[LABELS[i]]
        assert record["predicted"] == NAMES[int(np.argmax(LOGITS[i]))]
        assert record["correct"] is (i not in WRONG)
        expected_loss = log_loss([LABELS[i]], probs[i : i + 1], labels=[0, 1, 2])
        assert record["loss"] == pytest.approx(expected_loss, rel=0, abs=1e-9)
        assert record["loss"] == pytest.approx(-math.log(probs[i, LABELS[i]]), rel=0, abs=1e-12)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, rel=0, abs=1e-12)
        assert list(record["probabilities"]) == NAMES
        for name, p in record["probabilities"].items():
            assert p == pytest.approx(probs[i, NAMES.index(name)], rel=0, abs=1e-12)
        # top_k: the two most probable, highest first, label order on ties (rows 1, 2, 4: cat and fox tie)
        order = sorted(range(3), key=lambda j: (-probs[i, j], j))[:2]
        assert [entry["label"] for entry in record["top_k"]] == [NAMES[j] for j in order]
        assert [entry["probability"] for entry in record["top_k"]] == pytest.approx(probs[i, order], rel=0, abs=1e-12)
    assert [e["label"] for e in records[2]["top_k"]] == ["dog", "cat"]  # tie cat/fox broken by label order
    assert result.n_errors == 3 and result.accuracy == pytest.approx(5 / 8)


def test_known_case_markdown_tables(tmp_path):
    result = _known(tmp_path, worst=3)
    md = result.markdown_path.read_text(encoding="utf-8")
    assert "Accuracy: 0.6250 (5 of 8 rows correct, 3 errors)." in md
    pairs = _section(md, "Most-confused pairs")
    assert pairs == [["cat", "dog", "2", "66.7% (2 of 3)"], ["dog", "fox", "1", "33.3% (1 of 3)"]]

    probs = softmax(LOGITS, axis=1)
    losses = -log_softmax(LOGITS, axis=1)[np.arange(8), LABELS]
    worst = _section(md, "Highest-loss examples")
    assert [int(row[0]) for row in worst] == list(np.argsort(-losses, kind="stable")[:3])
    assert worst[0][:5] == ["2", "r2", "text 2", "cat", "dog"]  # by construction
    for row in worst:
        i = int(row[0])
        pred = int(np.argmax(LOGITS[i]))
        assert float(row[5]) == pytest.approx(probs[i, LABELS[i]], rel=0, abs=5e-5)
        assert float(row[6]) == pytest.approx(probs[i, pred], rel=0, abs=5e-5)
        assert float(row[7]) == pytest.approx(losses[i], rel=0, abs=5e-5)

    unsure = _section(md, "Least-confident correct")
    correct = [i for i in range(8) if i not in WRONG]
    expected = sorted(correct, key=lambda i: (probs[i].max(), i))[:3]
    assert [int(row[0]) for row in unsure] == expected
    assert expected[:2] == [7, 3]  # by construction
    assert all(row[3] == row[4] for row in unsure)
    assert not (tmp_path / "errors_validation.png").exists() and result.image_path is None


def test_confused_pairs_and_summary_lines(tmp_path):
    result = _known(tmp_path)
    assert list(result.confused_pairs) == [("cat", "dog", 2), ("dog", "fox", 1)]
    lines = result.summary_lines()
    assert 2 <= len(lines) <= 4
    assert lines[1] == "Most confused (true → predicted): cat → dog (2), dog → fox (1)."
    assert lines[2] == "These 2 pairs cover 3 of the 3 errors (100.0%)."
    assert not any(str(tmp_path) in line or "/" in line for line in lines)


def test_random_case_matches_sklearn_and_orders_ties_by_label(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 600, 6
    labels = rng.integers(0, c, n)
    logits = (rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]).astype(np.float32)  # as a model returns them
    assert logits.dtype == np.float32
    names = [f"class{j}" for j in range(c)]
    result = write_error_analysis(tmp_path, "test", _text_rows(n), logits, labels, names, kind="text", worst=5)
    cm = confusion_matrix(labels, logits.argmax(1), labels=list(range(c)))
    expected = sorted(
        ((names[t], names[p], int(cm[t, p])) for t in range(c) for p in range(c) if t != p and cm[t, p]),
        key=lambda pair: (-pair[2], names.index(pair[0]), names.index(pair[1])),
    )
    assert list(result.confused_pairs) == expected
    assert any(a[2] == b[2] for a, b in itertools.pairwise(expected))  # the case does exercise ties
    records = _jsonl(result.predictions_path)
    expected_losses = -log_softmax(logits.astype(np.float64), axis=1)[np.arange(n), labels]
    assert [r["loss"] for r in records] == pytest.approx(expected_losses, rel=0, abs=1e-9)
    assert result.n_errors == int((logits.argmax(1) != labels).sum())
    md = result.markdown_path.read_text(encoding="utf-8")
    shown = _section(md, "Most-confused pairs")
    assert [(r[0], r[1], int(r[2])) for r in shown] == expected[: ea.CONFUSED_PAIRS_SHOWN]
    top = expected[: ea.SUMMARY_PAIRS]
    covered = sum(p[2] for p in top)
    assert result.summary_lines()[2] == (
        f"These 3 pairs cover {covered} of the {result.n_errors} errors ({100 * covered / result.n_errors:.1f}%)."
    )


def test_image_grid_size_unreadable_noted_and_paths_stay_relative(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(len(LABELS)):
        Image.new("RGB", (20 + i, 16), (30 * i, 100, 200)).save(images / f"{i}.png")
        rows.append(RowRef(id=np.int64(i), path=f"images/{i}.png"))  # a numpy id, as a dataset index gives
    (images / "2.png").write_bytes(b"not an image")  # the worst row: unreadable
    rows[1] = RowRef(id=1, path=None)  # second worst: no path
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # relative paths open from the current directory
    result = write_error_analysis(out, "test", rows, LOGITS, LABELS, NAMES, kind="image", worst=7)

    assert result.image_path == out / "errors_test.png"
    with Image.open(result.image_path) as grid:
        grid.verify()
    with Image.open(result.image_path) as grid:
        columns, grid_rows = grid_shape(5)  # 7 worst rows, two not drawable
        assert (columns, grid_rows) == (4, 2)
        assert grid.size == (
            round(columns * ea.GRID_CELL_INCHES[0] * ea.GRID_DPI),
            round(grid_rows * ea.GRID_CELL_INCHES[1] * ea.GRID_DPI),
        )
    md = result.markdown_path.read_text(encoding="utf-8")
    assert "Not drawn in the image grid (2):" in md
    assert "id 2 (images/2.png) is unreadable" in md and "id 1 has no path" in md
    records = _jsonl(result.predictions_path)
    assert [r["path"] for r in records] == [row.path for row in rows]
    assert [r["id"] for r in records] == list(range(len(LABELS)))
    assert all("text" not in r for r in records)
    assert str(tmp_path) not in md and str(tmp_path) not in result.predictions_path.read_text(encoding="utf-8")

    # image_root resolves relative paths for loading only; the written paths stay as given
    monkeypatch.chdir(out)
    again = write_error_analysis(out, "other", rows, LOGITS, LABELS, NAMES, kind="image", worst=1, image_root=tmp_path)
    assert again.image_path is None  # the single worst image is the unreadable one
    assert [r["path"] for r in _jsonl(again.predictions_path)] == [row.path for row in rows]
    again = write_error_analysis(out, "third", rows, LOGITS, LABELS, NAMES, kind="image", worst=3, image_root=tmp_path)
    with Image.open(again.image_path) as grid:
        assert grid.size == (round(1 * ea.GRID_CELL_INCHES[0] * 100), round(1 * ea.GRID_CELL_INCHES[1] * 100))


def test_text_cells_escaped_and_truncated(tmp_path):
    long_text = "a|b\nc" + "x" * 200
    rows = _text_rows(len(LABELS))
    rows[2] = RowRef(id="pipe|id", text=long_text)  # the worst row
    result = write_error_analysis(tmp_path, "val", rows, LOGITS, LABELS, NAMES, kind="text", worst=2)
    md = result.markdown_path.read_text(encoding="utf-8")
    raw_line = next(line for line in md.split("\n") if line.startswith("| 2 |"))
    assert "pipe\\|id" in raw_line and "a\\|b<br>c" in raw_line and "\n" not in raw_line
    row = _section(md, "Highest-loss examples")[0]
    assert row[1] == "pipe|id"
    shown = row[2].replace("<br>", "\n")
    assert len(shown) == ea.TEXT_CELL_CHARS and shown.endswith("…") and shown[:-1] == long_text[:119]
    assert _jsonl(result.predictions_path)[2]["text"] == long_text  # the jsonl keeps the full text


def test_probabilities_omitted_above_class_cap(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10, 4))
    labels = rng.integers(0, 4, 10)
    names = list("abcd")
    capped = write_error_analysis(
        tmp_path, "capped", _text_rows(10), logits, labels, names, kind="text", full_probabilities_up_to=3
    )
    for record, p in zip(_jsonl(capped.predictions_path), softmax(logits, axis=1), strict=True):
        assert "probabilities" not in record
        assert len(record["top_k"]) == 4  # min(top_k=5, C=4)
        assert sum(e["probability"] for e in record["top_k"]) == pytest.approx(1.0, rel=0, abs=1e-12)
        assert [e["probability"] for e in record["top_k"]] == pytest.approx(np.sort(p)[::-1], rel=0, abs=1e-12)
    full = write_error_analysis(
        tmp_path, "full", _text_rows(10), logits, labels, names, kind="text", full_probabilities_up_to=4
    )
    assert all(len(r["probabilities"]) == 4 for r in _jsonl(full.predictions_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": _text_rows(7)}, "same length"),
        ({"labels": LABELS[:-1]}, "same length"),
        ({"labels": np.array([0, 0, 0, 1, 1, 1, 2, 3])}, r"class indices in \[0, 3\)"),
        ({"labels": np.array([0, 0, 0, 1, 1, 1, 2, -1])}, r"class indices in \[0, 3\)"),
        ({"labels": LABELS.astype(float)}, "integer class indices"),
        ({"logits": np.where(np.eye(8, 3, dtype=bool), np.nan, LOGITS)}, "must be finite; rows 0, 1, 2"),
        ({"logits": np.where(np.eye(8, 3, dtype=bool), np.inf, LOGITS)}, "must be finite"),
        ({"logits": np.full((8, 3), 1e308) * np.array([1, -1, 0])}, "overflows"),
        ({"logits": LOGITS[:, :1]}, r"shape \[N, C\] with C >= 2"),
        ({"label_names": ["cat", "dog"]}, "one name per class"),
        ({"label_names": ["cat", "cat", "fox"]}, "distinct"),
        ({"kind": "audio"}, "'image' or 'text'"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"split": "a/b"}, "split must be"),
        ({"rows": [], "logits": np.zeros((0, 3)), "labels": np.zeros(0, int)}, "no row"),
    ],
)
def test_refusals(tmp_path, change, message):
    kwargs = {
        "rows": _text_rows(8),
        "logits": LOGITS,
        "labels": LABELS,
        "label_names": NAMES,
        "split": "val",
        "kind": "text",
    } | change
    with pytest.raises(MetricError, match=message):
        write_error_analysis(
            tmp_path,
            kwargs["split"],
            kwargs["rows"],
            kwargs["logits"],
            kwargs["labels"],
            kwargs["label_names"],
            kind=kwargs["kind"],
            top_k=kwargs.get("top_k", 5),
        )
    assert os.listdir(tmp_path) == []


def test_atomic_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    _known(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["errors_validation.md", "predictions_validation.jsonl"]

    # a failure mid-stream leaves neither a half file nor a temporary file, and the earlier result intact
    before = (tmp_path / "predictions_validation.jsonl").read_bytes()
    real_dumps = json.dumps
    calls = []

    def failing_dumps(obj, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("crash mid-write")
        return real_dumps(obj, **kwargs)

    monkeypatch.setattr(ea.json, "dumps", failing_dumps)
    with pytest.raises(RuntimeError, match="crash mid-write"):
        _known(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["errors_validation.md", "predictions_validation.jsonl"]
    assert (tmp_path / "predictions_validation.jsonl").read_bytes() == before
