"""`eval` and `predict` as a user runs them, through the CLI: datasets with hidden test labels (GLUE's -1), new data
evaluated whole and named for what it is, the training numbers reproduced, sentence pairs, models whose code ships in
their folder, and bad input refused with exit 2 and no traceback."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import make_text_recipe, make_texts

# the shipped recipes' own documented commands, with only the source swapped for a local copy of that shape
SST2 = ["bert-base-uncased", "data.config=sst2", "data.text_column=sentence"]
MRPC = ["roberta-base", "data.config=mrpc", "data.text_column=sentence1", "data.text_pair_column=sentence2"]
NO_LABELS = "has no labels"


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ,
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _refused(proc: subprocess.CompletedProcess, *named: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-4000:])
    assert "Traceback" not in proc.stderr
    for text in named:
        assert text in proc.stderr, (text, proc.stderr[-2000:])
    return proc.stderr


def _main_refused(capsys, args: list, *named: str) -> str:
    """The CLI in this process (the libraries are already imported, so it is quick): exit 2, the named parts."""
    from hf_finetune.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err, (text, err[-2000:])
    return err


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.strip().splitlines()]


def _shrink(bert: Path, out: Path, *overrides: str) -> list[str]:
    return [
        *overrides,
        f"model.name={bert}",
        "training.max_steps=3",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        "tokenization.max_length=64",  # the tiny BERT has 128 positions
        "--output-dir",
        str(out),
    ]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _glue_rows(n: int, seed: int, hidden: bool) -> dict[str, list]:
    """Two-class rows (positive/negative cue words); `hidden`: every label -1, as GLUE publishes its test sets."""
    rows: dict[str, list] = {"sentence": [], "label": []}
    for text, label in make_texts(n * 3 // 2, seed):
        if label != "neutral":
            rows["sentence"].append(text)
            rows["label"].append(-1 if hidden else int(label == "positive"))
    return rows


@pytest.fixture(scope="module")
def glue_copy(tmp_path_factory) -> Path:
    """A local dataset folder shaped like the Hub's nyu-mll/glue: a README configs section mapping sst2 and mrpc to
    parquet files per split; test labels -1. sst2's label is a ClassLabel (as datasets writes it), mrpc's plain
    integers (as a parquet written by pandas or pyarrow)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("glue copy")
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )
    for folder in ("sst2", "mrpc"):
        (root / folder).mkdir()
    for split, n, seed in (("train", 60, 0), ("validation", 20, 1), ("test", 24, 2)):
        rows = _glue_rows(n, seed, hidden=split == "test")
        rows["idx"] = list(range(len(rows["label"])))
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "sst2" / f"{split}-00000.parquet"))
        rng = random.Random(seed)
        second = [t if rng.random() < 0.5 else " ".join(reversed(t.split())) for t in rows["sentence"]]
        table = pa.table(
            {"sentence1": rows["sentence"], "sentence2": second, "label": rows["label"], "idx": rows["idx"]}
        )
        pq.write_table(table, root / "mrpc" / f"{split}-00000.parquet")
    configs = [
        {
            "config_name": name,
            "data_files": [{"split": s, "path": f"{name}/{s}-*"} for s in ("train", "validation", "test")],
        }
        for name in ("sst2", "mrpc")
    ]
    (root / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': configs})}---\n# GLUE, local copy\n")
    return root


# --------------------------------------------------------------------------------------------- hidden test labels


@pytest.mark.slow
def test_glue_sst2_command_trains_and_scores_only_labelled_splits(
    glue_copy: Path, tiny_bert_dir: Path, tmp_path, capsys
):
    out = tmp_path / "sst2"
    proc = _cli("train", *SST2, f"data.source={glue_copy}", *_shrink(tiny_bert_dir, out))
    _ok(proc)
    log = proc.stdout + proc.stderr
    assert log.count(NO_LABELS) == 1, log[-3000:]  # said once, naming the split
    assert "split test has no labels" in log
    saved = json.loads((out / "metrics.json").read_text())
    assert "eval" in saved and "test" not in saved
    assert set(saved["run"]["splits"]) == {"train", "validation"}
    assert saved["label_names"] == ["negative", "positive"]  # -1 is never a class

    # eval picks the labelled split and reproduces training's numbers; the hidden split is refused by name
    evaluated = _last_json(_ok(_cli("eval", out)))
    assert evaluated["split"] == "validation" and evaluated["num_samples"] == saved["eval"]["num_samples"] == 20
    for key in ("accuracy", "f1_macro", "loss"):
        assert evaluated[key] == pytest.approx(saved["eval"][key], abs=1e-6), key
    _main_refused(capsys, ["eval", out, "--split", "test"], "'test'", "no labels")


def test_test_split_none_drops_the_split_and_validation_none_carves(glue_copy: Path, caplog):
    from hf_finetune.data.sources import load_data
    from hf_finetune.recipe import DataSpec
    from hf_finetune.tasks.text_classification import INPUTS

    caplog.set_level(logging.INFO, logger="hf_finetune")
    spec = DataSpec(source=str(glue_copy), config="sst2", text_column="sentence")
    default = load_data(spec, INPUTS)
    assert list(default.splits) == ["train", "validation"] and default.unlabelled == ("test",)
    assert caplog.text.count(NO_LABELS) == 1
    caplog.clear()

    dropped = load_data(replace(spec, test_split="none"), INPUTS)
    assert list(dropped.splits) == ["train", "validation"] and dropped.unlabelled == ()
    assert NO_LABELS not in caplog.text and "no test split is used" in caplog.text

    carved = load_data(replace(spec, test_split="none", validation_split="none"), INPUTS)
    assert {k: len(v) for k, v in carved.splits.items()} == {"train": 54, "validation": 6}  # 10% of train's 60


def test_an_unlabelled_validation_split_is_replaced_by_one_carved_from_train(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_finetune.data.sources import load_data
    from hf_finetune.errors import DataError
    from hf_finetune.recipe import DataSpec
    from hf_finetune.tasks.text_classification import INPUTS

    caplog.set_level(logging.INFO, logger="hf_finetune")
    for split, hidden in (("train", False), ("validation", True)):
        pq.write_table(pa.table(_glue_rows(40, 5, hidden)), tmp_path / f"{split}.parquet")
    data = load_data(DataSpec(source=str(tmp_path), text_column="sentence"), INPUTS)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 36, "validation": 4}
    assert data.unlabelled == ("validation",) and "carved from train instead" in caplog.text
    assert data.label_names == ["0", "1"]

    # a train split with no label at all cannot be trained on: said so, not "only 0 classes"
    with pytest.raises(DataError, match=r"split train \(the data's 'validation'\): none of its 40 rows has a label"):
        load_data(DataSpec(source=str(tmp_path), text_column="sentence", train_split="validation"), INPUTS)


def test_a_partly_unlabelled_split_is_refused_with_its_rows(glue_copy: Path, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_finetune.data.sources import load_data
    from hf_finetune.errors import DataError
    from hf_finetune.recipe import DataSpec
    from hf_finetune.tasks.text_classification import INPUTS

    rows = _glue_rows(20, 3, hidden=False)
    rows["label"][4] = -1
    pq.write_table(pa.table(rows), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"split 'train': 1 of 20 rows have no label .*-1.*rows 5\b"):
        load_data(DataSpec(source=str(tmp_path / "train.parquet"), text_column="sentence"), INPUTS)


@pytest.mark.slow
def test_glue_mrpc_pairs_train_predict_and_eval(glue_copy: Path, tiny_bert_dir: Path, tmp_path, capsys):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "mrpc"
    proc = _cli("train", *MRPC, f"data.source={glue_copy}", "data.test_split=none", *_shrink(tiny_bert_dir, out))
    _ok(proc)
    assert NO_LABELS not in proc.stdout + proc.stderr  # dropped on purpose: nothing to report
    saved = json.loads((out / "metrics.json").read_text())
    assert "test" not in saved and saved["label_names"] == ["0", "1"]

    pairs = [("a good and lovely ride", "the ride was slow"), ("it felt bad", "it felt really bad today")]
    by_flag = _lines(
        _ok(_cli("predict", out, *[a for p in pairs for a in ("--text", p[0], "--text-pair", p[1])], "--top-k", 2))
    )
    table = tmp_path / "pairs.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["id", "sentence1", "sentence2"])
        writer.writeheader()
        writer.writerows({"id": i, "sentence1": a, "sentence2": b} for i, (a, b) in enumerate(pairs))
    by_file = _lines(_ok(_cli("predict", out, "--file", table, "--top-k", 2)))
    assert by_flag == by_file
    assert [(r["text"], r["text_pair"]) for r in by_flag] == pairs

    # the scores are the model's on the pair, encoded as in training (second text in segment 1)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
        probs = model(**batch).logits.softmax(-1)
        alone = model(**tokenizer([a for a, _ in pairs], padding=True, return_tensors="pt")).logits.softmax(-1)
    for row, p, single in zip(by_flag, probs, alone, strict=True):
        got = {x["label"]: x["score"] for x in row["predictions"]}
        assert got == pytest.approx({"0": float(p[0]), "1": float(p[1])}, abs=1e-5)
        assert got != pytest.approx({"0": float(single[0]), "1": float(single[1])}, abs=1e-5)

    evaluated = _last_json(_ok(_cli("eval", out)))
    assert evaluated["split"] == "validation"
    for key in ("accuracy", "f1_macro", "loss"):
        assert evaluated[key] == pytest.approx(saved["eval"][key], abs=1e-6), key

    # a pair model given single texts, or a .txt, is told how to give pairs; nothing in the folder changes
    before = _hashes(out)
    _main_refused(capsys, ["predict", out, "--text", "only one"], "--text-pair", "pairs")
    lines = tmp_path / "texts.txt"
    lines.write_text("one\ntwo\n")
    _main_refused(capsys, ["predict", out, "--file", lines], "'sentence1'", "'sentence2'", ".csv")
    assert _hashes(out) == before


# ------------------------------------------------------------------------------------ eval = training's numbers


METRIC_MODULE = """import datasets
import evaluate
import numpy as np


class WrongRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="share of wrong predictions",
            citation="",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"wrong_rate": float(np.mean(np.asarray(predictions) != np.asarray(references)))}
"""


@pytest.fixture(scope="module")
def weighted_text_model(tmp_path_factory, text_csv: Path, tiny_bert_dir: Path) -> Path:
    """A text model trained with every setting that changes eval's numbers: balanced class weights, label
    smoothing, top-k and an extra metric; test capped to 12 of its 30 rows."""
    from hf_finetune import finetune

    root = tmp_path_factory.mktemp("weighted")
    metric = root / "wrong_rate"
    metric.mkdir()
    (metric / "wrong_rate.py").write_text(METRIC_MODULE)
    recipe = make_text_recipe(
        text_csv,
        tiny_bert_dir,
        root / "out",
        data={"max_eval_samples": 12},
        loss={"class_weights": "balanced"},
        metrics={"top_k": [2], "extra": [str(metric)]},
        training={"per_device_eval_batch_size": 5, "label_smoothing_factor": 0.2},
    )
    del recipe["name"]  # this model was always trained under the default name
    return finetune(recipe).output_dir


@pytest.mark.slow
def test_eval_reproduces_training_metrics_with_its_loss_top_k_and_extra(weighted_text_model: Path):
    saved = json.loads((weighted_text_model / "metrics.json").read_text())["test"]
    evaluated = _last_json(_ok(_cli("eval", weighted_text_model)))
    assert evaluated["split"] == "test" and evaluated["num_samples"] == saved["num_samples"] == 12
    for key in ("accuracy", "f1_macro", "precision_macro", "loss", "top2_accuracy", "wrong_rate"):
        assert evaluated[key] == pytest.approx(saved[key], abs=1e-6), key
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]


@pytest.mark.slow
def test_eval_on_new_data_takes_every_row_and_names_it(weighted_text_model: Path, text_csv: Path, tmp_path):
    # a file: its 30 rows (training capped test at 12), reported by the file's name rather than as "train"
    result = _last_json(_ok(_cli("eval", weighted_text_model, "--data", text_csv / "test.csv")))
    assert result["num_samples"] == 30 and result["split"] == "test.csv"

    # a folder of split files (a space and non-ASCII in its name): the folder and the split
    folder = tmp_path / "new data ü"
    folder.mkdir()
    shutil.copy(text_csv / "train.csv", folder / "train.csv")
    shutil.copy(text_csv / "test.csv", folder / "test.csv")
    proc = _cli("eval", weighted_text_model, "--data", folder, "--split", "train")
    result = _last_json(_ok(proc))
    assert result["num_samples"] == 120 and result["split"] == "new data ü:train"
    assert "new data ü:train: accuracy" in proc.stderr


# --------------------------------------------------------------------------------------------- trust_remote_code


CUSTOM_MODEL = '''"""A bag-of-embeddings text classifier whose code ships with its folder."""

import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class TinyBagConfig(PreTrainedConfig):
    model_type = "tiny-bag"

    def __init__(self, vocab_size=200, hidden_size=16, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class TinyBagForSequenceClassification(PreTrainedModel):
    config_class = TinyBagConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(config.hidden_size, config.hidden_size)])
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        for layer in self.layers:
            pooled = torch.tanh(layer(pooled))
        logits = self.classifier(pooled)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''

SAVE_CUSTOM = """
import sys
sys.path.insert(0, sys.argv[1])
import tiny_bag
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
tiny_bag.TinyBagConfig.register_for_auto_class()
tiny_bag.TinyBagForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
config = tiny_bag.TinyBagConfig(vocab_size=len(tokenizer), num_labels=2)
tiny_bag.TinyBagForSequenceClassification(config).save_pretrained(sys.argv[3])
tokenizer.save_pretrained(sys.argv[3])
"""


@pytest.mark.slow
def test_a_model_with_its_own_code_trains_predicts_and_evaluates(glue_copy, tiny_bert_dir: Path, tmp_path, capsys):
    code = tmp_path / "code"
    code.mkdir()
    (code / "tiny_bag.py").write_text(CUSTOM_MODEL)
    model_dir = tmp_path / "tiny bag"
    # saved in another process, so this one never imports the class: loading it must go through the folder's code
    subprocess.run([sys.executable, "-c", SAVE_CUSTOM, code, tiny_bert_dir, model_dir], check=True, env=os.environ)
    assert (model_dir / "tiny_bag.py").is_file()

    out = tmp_path / "out"
    base = [*SST2, f"data.source={glue_copy}"]
    _refused(_cli("train", *base, *_shrink(model_dir, out)), "trust_remote_code: true", "tiny_bag.TinyBagConfig")
    assert not out.exists()
    _ok(_cli("train", *base, *_shrink(model_dir, out, "model.trust_remote_code=true")))
    assert (out / "tiny_bag.py").is_file()

    rows = _lines(_ok(_cli("predict", out, "--text", "good lovely ride", "--text", "bad slow car")))
    assert [r["text"] for r in rows] == ["good lovely ride", "bad slow car"]
    assert {p["label"] for r in rows for p in r["predictions"]} == {"negative", "positive"}
    saved = json.loads((out / "metrics.json").read_text())["eval"]
    evaluated = _last_json(_ok(_cli("eval", out)))
    assert evaluated["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(saved["loss"], abs=1e-6)

    # the folder's code runs only because its recipe says so: without that, it is refused and named
    recipe = out / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("trust_remote_code: true", "trust_remote_code: false"))
    before = _hashes(out)
    _refused(_cli("predict", out, "--text", "good"), "model.trust_remote_code: true", str(recipe))
    _main_refused(capsys, ["eval", out], "model.trust_remote_code: true")
    assert _hashes(out) == before


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def image_model(tmp_path_factory, digits_folder: Path) -> Path:
    from hf_finetune import finetune

    out = tmp_path_factory.mktemp("image") / "out"
    recipe = {
        "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
        "data": {"source": str(digits_folder)},
        "training": {"output_dir": str(out), "num_train_epochs": 1, "disable_tqdm": True},
    }
    return finetune(recipe).output_dir


def test_image_test_class_missing_from_train_is_refused(digits_folder: Path, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(digits_folder, data)
    extra = data / "test" / "three"
    extra.mkdir()
    shutil.copy(next((data / "test" / "one").glob("*.png")), extra / "1.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"model": {"name": "simple_cnn", "image_size": 16}, "data": {"source": str(data)}})
    )
    before = _hashes(data)
    err = _refused(_cli("train", recipe, "--output-dir", tmp_path / "out"), "split 'test'", "['three']", "train")
    assert "known labels: ['one', 'two', 'zero']" in err
    assert _hashes(data) == before and not (tmp_path / "out").exists()


def test_text_task_given_an_image_model_folder_is_told_so(text_csv: Path, tmp_path):
    from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification

    folder = tmp_path / "cnn"
    SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=3)).save_pretrained(folder)
    err = _refused(
        _cli("train", "minilm", f"model.name={folder}", f"data.source={text_csv / 'train.csv'}",
             "data.text_column=review", "data.label_column=sentiment", "--output-dir", tmp_path / "out"),
        "SimpleCNN", "sequence classification",
    )  # fmt: skip
    assert "out of date" not in err


@pytest.mark.slow
def test_eval_data_with_a_truncated_image_names_it(image_model: Path, digits_folder: Path, tmp_path):
    data = tmp_path / "new digits"
    shutil.copytree(digits_folder / "test", data)
    victim = sorted((data / "two").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])
    _refused(_cli("eval", image_model, "--data", data), victim.name, "cannot be decoded")


@pytest.mark.slow
def test_top_k_and_batch_size_below_one_are_refused(image_model: Path, digits_folder: Path, capsys):
    from hf_finetune import predict
    from hf_finetune.cli import main
    from hf_finetune.errors import HFFinetuneError

    image = next((digits_folder / "test" / "one").glob("*.png"))
    _refused(_cli("predict", image_model, image, "--top-k", "0"), "--top-k", "got 0")
    for argv, named in (
        (["predict", str(image_model), str(image), "--top-k", "-2"], "got -2"),
        (["eval", str(image_model), "--batch-size", "0"], "--batch-size"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and named in capsys.readouterr().err
    with pytest.raises(HFFinetuneError, match="top_k 0"):
        predict(image_model, [image], top_k=0)
    assert main(["predict", str(image_model), str(image), "--top-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
