"""Tests for hf_finetune.metrics and the shipped classification_report evaluate module."""

from __future__ import annotations

import os

# Before evaluate / huggingface_hub are imported: they read these once, at import time.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[_var] = "1"

import csv  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import evaluate  # noqa: E402
import evaluate.config  # noqa: E402
import huggingface_hub.constants  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import f1_score, precision_score  # noqa: E402
from transformers import EvalPrediction  # noqa: E402

from hf_finetune import metrics  # noqa: E402
from hf_finetune.metrics import (  # noqa: E402
    CLASSIFICATION_REPORT_PATH,
    ClassificationMetrics,
    MetricError,
    load_classification_report,
    make_preprocess_logits,
    per_class_table,
    write_confusion_matrix,
)

NAMES = ["cat", "dog", "bird", "fish"]
# True bird (2) is predicted dog (1) twice and never the other way round: a transposed matrix would show it.
# bird is never predicted (precision 0 by zero_division); fish (3) occurs nowhere; supports are 4/2/2/0.
REFS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 0, 1, 1]
EXPECTED_MATRIX = [
    [3, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 2, 0, 0],
    [0, 0, 0, 0],
]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Fail any socket connection or DNS lookup, and record the attempt."""
    attempts: list[tuple] = []

    def deny(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", deny)
    monkeypatch.setattr(socket, "create_connection", deny)
    monkeypatch.setattr(socket, "getaddrinfo", deny)
    return attempts


def _set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    # The libraries cached these at import; patch both the env and the cached flags.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        if offline:
            monkeypatch.setenv(var, "1")
        else:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", offline)


def _write_metric_module(folder: Path, name: str, body: str) -> Path:
    module_dir = folder / name
    module_dir.mkdir(parents=True)
    (module_dir / f"{name}.py").write_text(
        "import datasets\n"
        "import evaluate\n"
        "import numpy as np\n\n\n"
        f"class {name.title().replace('_', '')}(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(\n"
        "            description='test metric',\n"
        "            citation='',\n"
        "            features=datasets.Features(\n"
        "                {'predictions': datasets.Value('int64'), 'references': datasets.Value('int64')}\n"
        "            ),\n"
        "        )\n\n"
        "    def _compute(self, predictions, references):\n"
        f"{body}"
    )
    return module_dir


# --- the evaluate module -------------------------------------------------------------------------------------------


def test_report_module_loads_by_path_offline(monkeypatch, no_network):
    _set_offline(monkeypatch, True)
    load_classification_report.cache_clear()
    module = load_classification_report()
    assert module.name == "classification_report"
    assert module.info.description and module.info.citation
    assert set(module.info.features) == {"predictions", "references"}
    out = module.compute(predictions=[0, 1], references=[0, 1], num_labels=2)
    assert out["accuracy"] == 1.0
    assert no_network == []


def test_report_module_loads_by_path_without_offline_vars(monkeypatch, no_network):
    _set_offline(monkeypatch, False)
    load_classification_report.cache_clear()
    module = load_classification_report()
    assert module.compute(predictions=[1, 1], references=[0, 1], num_labels=2)["accuracy"] == 0.5
    assert no_network == [], "loading a metric by filesystem path must not contact the Hub"


def test_report_module_is_cached():
    assert load_classification_report() is load_classification_report()
    assert CLASSIFICATION_REPORT_PATH.is_absolute()
    assert (CLASSIFICATION_REPORT_PATH / "classification_report.py").is_file()
    # Inside the package dir, so the wheel ships it.
    assert Path(metrics.__file__).resolve().parent in CLASSIFICATION_REPORT_PATH.parents


def test_report_values_match_hand_computed():
    out = load_classification_report().compute(predictions=PREDS, references=REFS, num_labels=4, label_names=NAMES)
    assert out["accuracy"] == pytest.approx(4 / 8)

    rows = {row["label"]: row for row in out["per_class"]}
    assert [row["label"] for row in out["per_class"]] == NAMES
    assert rows["cat"] == pytest.approx({"label": "cat", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert rows["dog"]["precision"] == pytest.approx(1 / 4)
    assert rows["dog"]["recall"] == pytest.approx(1 / 2)
    assert rows["dog"]["f1"] == pytest.approx(1 / 3)
    # Never predicted: precision is 0/0, reported as 0 (zero_division=0), not NaN.
    assert rows["bird"] == {"label": "bird", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert rows["fish"] == {"label": "fish", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    # Macro: mean over the classes present in refs or preds (cat, dog, bird); fish is in neither.
    assert out["precision_macro"] == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    assert out["recall_macro"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert out["f1_macro"] == pytest.approx(13 / 36)
    # Weighted by support 4/2/2/0.
    assert out["precision_weighted"] == pytest.approx((4 * 0.75 + 2 * 0.25) / 8)
    assert out["recall_weighted"] == pytest.approx(0.5)
    assert out["f1_weighted"] == pytest.approx(11 / 24)
    assert out["precision_weighted"] != pytest.approx(out["precision_macro"])
    assert out["f1_weighted"] != pytest.approx(out["f1_macro"])
    # Same conventions as scikit-learn's own macro average.
    assert out["f1_macro"] == pytest.approx(f1_score(REFS, PREDS, average="macro", zero_division=0))
    assert out["precision_macro"] == pytest.approx(precision_score(REFS, PREDS, average="macro", zero_division=0))


def test_confusion_matrix_rows_are_true_columns_predicted():
    out = load_classification_report().compute(predictions=PREDS, references=REFS, num_labels=4)
    matrix = out["confusion_matrix"]
    assert matrix == EXPECTED_MATRIX
    assert matrix[2][1] == 2 and matrix[1][2] == 0  # true bird -> predicted dog
    assert all(type(v) is int for row in matrix for v in row)
    assert [sum(row) for row in matrix] == [row["support"] for row in out["per_class"]]


def test_unseen_classes_still_get_rows_and_columns():
    out = load_classification_report().compute(predictions=[0, 0], references=[0, 0], num_labels=5)
    assert len(out["per_class"]) == 5
    assert [row["label"] for row in out["per_class"]] == ["0", "1", "2", "3", "4"]
    assert out["confusion_matrix"] == [[2, 0, 0, 0, 0]] + [[0] * 5 for _ in range(4)]
    # Unseen classes do not drag the averages down.
    assert out["f1_macro"] == 1.0 and out["f1_weighted"] == 1.0


def test_report_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside range"):
        load_classification_report().compute(predictions=[0, 3], references=[0, 1], num_labels=3)
    with pytest.raises(ValueError, match="num_labels"):
        load_classification_report().compute(predictions=[0], references=[0])


# --- make_preprocess_logits ------------------------------------------------------------------------------------------


def test_preprocess_logits_topk_indices():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    labels = torch.zeros(6, dtype=torch.long)
    out = make_preprocess_logits(3)(logits, labels)
    assert out.shape == (6, 3)
    assert out.dtype == torch.int64
    assert torch.equal(out[:, 0], logits.argmax(dim=-1))
    picked = logits.gather(1, out)
    assert torch.all(picked[:, :-1] >= picked[:, 1:])  # best first

    clipped = make_preprocess_logits(10)((logits, torch.zeros(6, 7)), labels)  # tuple output: logits first
    assert clipped.shape == (6, 5)
    assert torch.equal(clipped[:, 0], logits.argmax(dim=-1))

    with pytest.raises(ValueError):
        make_preprocess_logits(0)


# --- ClassificationMetrics -------------------------------------------------------------------------------------------


def test_classification_metrics_with_eval_prediction():
    # -100 rows (padding) are dropped and counted.
    preds = np.array([*PREDS, 3], dtype=np.int64)
    labels = np.array([*REFS, -100], dtype=np.int64)
    cm = ClassificationMetrics(NAMES)
    out = cm(EvalPrediction(predictions=preds, label_ids=labels))

    assert list(out) == [
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
    ]
    assert all(type(v) is float for v in out.values())
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["f1_macro"] == pytest.approx(13 / 36)

    report = cm.last_report
    assert report is not None
    assert report["confusion_matrix"] == EXPECTED_MATRIX
    assert [row["label"] for row in report["per_class"]] == NAMES
    assert report["num_samples"] == 8
    assert report["num_ignored"] == 1


def test_classification_metrics_top_k_from_index_matrix():
    labels = np.array([0, 1, 2, 3])
    preds = np.array([[0, 1, 2], [2, 1, 0], [3, 4, 2], [4, 0, 1]])
    cm = ClassificationMetrics(["a", "b", "c", "d", "e"], top_k=(1, 2, 3))
    out = cm(EvalPrediction(predictions=preds, label_ids=labels))
    assert out["accuracy"] == pytest.approx(1 / 4)
    assert out["top2_accuracy"] == pytest.approx(2 / 4)
    assert out["top3_accuracy"] == pytest.approx(3 / 4)
    assert "top1_accuracy" not in out
    assert cm.last_report["top3_accuracy"] == pytest.approx(3 / 4)

    # Asking for more columns than the hook kept is a setup mistake, reported as such.
    with pytest.raises(MetricError, match=r"make_preprocess_logits\(4\)"):
        ClassificationMetrics(["a", "b", "c", "d", "e"], top_k=(4,))(EvalPrediction(preds, labels))
    # k >= number of classes: every label is in the top k.
    out = ClassificationMetrics(["a", "b", "c", "d", "e"], top_k=(5,))(EvalPrediction(preds, labels))
    assert out["top5_accuracy"] == 1.0


def test_classification_metrics_end_to_end_with_hook_and_raw_logits():
    torch.manual_seed(1)
    logits = torch.randn(20, 4)
    labels = torch.randint(0, 4, (20,))
    topk = make_preprocess_logits(2)(logits, labels).numpy()
    cm = ClassificationMetrics(NAMES, top_k=(2,))
    from_hook = cm(EvalPrediction(predictions=topk, label_ids=labels.numpy()))
    from_logits = cm(EvalPrediction(predictions=(logits.numpy(),), label_ids=labels.numpy()))
    assert from_hook == pytest.approx(from_logits)
    assert from_hook["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    in_top2 = (logits.topk(2, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    assert from_hook["top2_accuracy"] == pytest.approx(in_top2)


def test_label_beyond_label_names_is_an_error():
    with pytest.raises(MetricError, match="label names"):
        ClassificationMetrics(["a", "b"])(EvalPrediction(predictions=np.array([0, 1]), label_ids=np.array([0, 2])))


def test_unknown_extra_metric_fails_fast_offline(monkeypatch):
    _set_offline(monkeypatch, True)
    cm = ClassificationMetrics(["a", "b"], extra=["no_such_metric_hf_finetune_test"])
    start = time.monotonic()
    with pytest.raises(MetricError) as info:
        cm(EvalPrediction(predictions=np.array([0, 1]), label_ids=np.array([0, 1])))
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "no_such_metric_hf_finetune_test" in message
    assert "network" in message


def test_evaluate_honours_hub_offline_alone(monkeypatch, no_network):
    # evaluate 0.4.6 ignores HF_HUB_OFFLINE; metrics.py makes a Hub-name load respect it anyway.
    _set_offline(monkeypatch, False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MetricError, match="HF_HUB_OFFLINE"):
        ClassificationMetrics(["a", "b"], extra=["no_such_metric_hf_finetune_test"]).load()
    assert no_network == []
    assert evaluate.config.HF_EVALUATE_OFFLINE is False  # restored


def test_extra_local_metric_scalars_are_merged_and_prefixed(tmp_path):
    body = (
        "        hits = np.asarray(predictions) == np.asarray(references)\n"
        "        return {'accuracy': float(hits.mean()), 'hits': int(hits.sum()), 'per_sample': hits.tolist()}\n"
    )
    module_dir = _write_metric_module(tmp_path, "my_acc", body)
    cm = ClassificationMetrics(["a", "b", "c"], extra=[str(module_dir)])
    out = cm(EvalPrediction(predictions=np.array([0, 1, 1, 2]), label_ids=np.array([0, 1, 2, 2])))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["my_acc_accuracy"] == pytest.approx(0.75)  # collided with the built-in key
    assert out["hits"] == 3.0
    assert "per_sample" not in out
    assert all(type(v) is float for v in out.values())
    assert cm.last_report["extra"]["my_acc"]["per_sample"] == [True, True, False, True]


# --- reporting -------------------------------------------------------------------------------------------------------


def test_per_class_table_is_aligned():
    report = load_classification_report().compute(predictions=PREDS, references=REFS, num_labels=4, label_names=NAMES)
    text = per_class_table(report)
    lines = text.splitlines()
    assert lines[0].split() == ["label", "precision", "recall", "f1", "support"]
    assert lines[2].split() == ["cat", "0.7500", "0.7500", "0.7500", "4"]
    assert lines[3].split() == ["dog", "0.2500", "0.5000", "0.3333", "2"]
    assert lines[5].split() == ["fish", "0.0000", "0.0000", "0.0000", "0"]
    assert "macro avg" in text and "weighted avg" in text
    # Right-aligned numeric columns end at the same offset on every class row.
    class_rows = lines[2:6]
    assert len({len(line) for line in class_rows}) == 1
    assert len({line.index("0.") for line in class_rows}) == 1


def test_write_confusion_matrix_csv_and_png(tmp_path):
    csv_path = tmp_path / "out" / "confusion_matrix.csv"
    png_path = tmp_path / "out" / "confusion_matrix.png"
    labels = ["cat", "dog", "bird, small", "fish"]
    write_confusion_matrix(EXPECTED_MATRIX, labels, csv_path, png_path, title="eval")

    assert csv_path.read_text(encoding="utf-8") == (
        'true\\pred,cat,dog,"bird, small",fish\ncat,3,1,0,0\ndog,1,1,0,0\n"bird, small",0,2,0,0\nfish,0,0,0,0\n'
    )
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\pred", *labels]
    assert rows[3] == ["bird, small", "0", "2", "0", "0"]

    with Image.open(png_path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 0 and image.size[1] > 0
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["confusion_matrix.csv", "confusion_matrix.png"]


def test_write_confusion_matrix_many_classes_and_backend_untouched(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    n = 40
    matrix = [[(i * 7 + j) % 5 for j in range(n)] for i in range(n)]
    write_confusion_matrix(matrix, [f"class_{i}" for i in range(n)], tmp_path / "m.csv", tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as image:
        image.verify()
    assert len((tmp_path / "m.csv").read_text().splitlines()) == n + 1
    assert matplotlib.get_backend() == backend
    with pytest.raises(ValueError):
        write_confusion_matrix([[1, 2]], ["a", "b"], tmp_path / "x.csv", tmp_path / "x.png")
