"""Text length is never lost silently: the truncation report, `tokenization.max_length: auto`, the warning."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_text_recipe, make_texts

from hf_finetune.data import sources
from hf_finetune.errors import RecipeError
from hf_finetune.recipe import load_recipe
from hf_finetune.tasks import PrepareSettings
from hf_finetune.tasks import text_classification as tc


@pytest.fixture(scope="module")
def length_csvs(tmp_path_factory) -> Path:
    """train (60 rows), validation (20) and test (10) CSVs of 3–42 words, laid out like `text_csv`."""
    folder = tmp_path_factory.mktemp("lengths")
    for name, n, seed in (("train.csv", 60, 3), ("validation.csv", 20, 4), ("test.csv", 10, 5)):
        with (folder / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "sentiment"])
            writer.writerows(make_texts(n, seed))
    return folder


def _recipe(folder: Path, model_dir: Path, out: Path, **tokenization) -> dict:
    recipe = make_text_recipe(folder, model_dir, out, training={"num_train_epochs": 1}, tokenization=tokenization)
    recipe["data"]["files"]["validation"] = str(folder / "validation.csv")
    return recipe


def _train(recipe: dict, path: Path, *options: str) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(recipe))
    return _cli("train", str(path), *options)


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_finetune", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _lengths(model_dir: Path, folder: Path) -> dict[str, list[int]]:
    """Each split's token counts, counted here with the tokenizer itself (special tokens included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    split = {"train.csv": "train", "validation.csv": "validation", "test.csv": "test"}
    out = {}
    for file, name in split.items():
        with (folder / file).open(encoding="utf-8") as fh:
            out[name] = [len(tokenizer(row["review"])["input_ids"]) for row in csv.DictReader(fh)]
    return out


def _expected(lengths: list[int], max_length: int) -> dict:
    over = [n for n in lengths if n > max_length]
    return {
        "texts": len(lengths),
        "truncated": len(over),
        "median": float(np.median(over)),
        "max": max(over),
        "dropped": sum(n - max_length for n in over),
    }


@pytest.mark.slow
def test_truncation_report_counts_each_split(length_csvs: Path, tiny_bert_dir: Path, tmp_path: Path):
    lengths = _lengths(tiny_bert_dir, length_csvs)
    max_length = 32
    proc = _train(_recipe(length_csvs, tiny_bert_dir, tmp_path / "out", max_length=max_length), tmp_path / "r.yaml")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["run"]["truncation"]
    assert saved["max_length"] == max_length and saved["chosen_by"] == "tokenization.max_length"
    for split, counts in lengths.items():
        want = _expected(counts, max_length)
        assert 0 < want["truncated"] < want["texts"]  # the data has texts on both sides of the limit
        line = re.search(
            rf"tokenization: {split}: (\d+) of (\d+) texts \(([\d.]+)%\) are longer than {max_length} tokens.*",
            proc.stderr,
        )
        assert line, proc.stderr[-3000:]
        assert (int(line[1]), int(line[2])) == (want["truncated"], want["texts"])
        assert f"longest {want['max']}, {want['dropped']} tokens dropped" in line[0]
        figures = saved["splits"][split]
        assert (figures["texts"], figures["truncated"]) == (want["texts"], want["truncated"])
        assert figures["median_length_truncated"] == want["median"]
        assert (figures["max_length_truncated"], figures["tokens_dropped"]) == (want["max"], want["dropped"])
    train = _expected(lengths["train"], max_length)
    assert train["truncated"] <= train["texts"] / 2
    assert "truncates" not in proc.stderr  # fewer than half cut: no warning
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"train {train['truncated']} of {train['texts']}" in card


@pytest.mark.slow
def test_a_length_that_cuts_most_texts_is_warned_about_once(length_csvs: Path, tiny_bert_dir: Path, tmp_path: Path):
    train = _expected(_lengths(tiny_bert_dir, length_csvs)["train"], 8)
    assert train["truncated"] > train["texts"] / 2
    proc = _train(_recipe(length_csvs, tiny_bert_dir, tmp_path / "out", max_length=8), tmp_path / "r.yaml")
    warnings = [line for line in proc.stderr.splitlines() if "truncates" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert (
        f"max_length 8 (tokenization.max_length) truncates {train['truncated']} of the {train['texts']}" in warnings[0]
    )
    assert f"{train['median']:g} tokens long at the median and {train['max']} at most" in warnings[0]
    assert "raise tokenization.max_length or set it to auto" in warnings[0]


def _auto(lengths: list[int], cap: int) -> int:
    """The documented rule, computed another way: numpy's nearest-rank (inverted CDF) percentile."""
    p99 = int(np.percentile(lengths, 99, method="inverted_cdf"))
    return min(cap, max(8, int(np.ceil(p99 / 8)) * 8))


@pytest.mark.slow
def test_auto_is_the_default_saved_and_rerun(length_csvs: Path, tiny_bert_dir: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    lengths = _lengths(tiny_bert_dir, length_csvs)
    want = _auto(lengths["train"], 128)  # from the training split only
    assert want != _auto(lengths["train"] + lengths["validation"] * 100, 128)  # validation would change the choice
    recipe = _recipe(length_csvs, tiny_bert_dir, tmp_path / "out")
    del recipe["tokenization"]  # the default
    proc = _train(recipe, tmp_path / "r.yaml")
    assert f"truncate to {want} tokens (auto: the 99th percentile of the 60 training texts" in proc.stderr
    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert saved["tokenization"]["max_length"] == want
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out")).model_max_length == want
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"truncation to {want} tokens (auto: the 99th percentile" in card

    again = _cli("train", str(tmp_path / "out" / "recipe.yaml"), "--output-dir", str(tmp_path / "again"))
    assert f"truncate to {want} tokens (tokenization.max_length;" in again.stderr
    assert yaml.safe_load((tmp_path / "again" / "recipe.yaml").read_text())["tokenization"]["max_length"] == want

    # predict cuts where training did, not at the model's 128 positions
    built = tc.load_trained(tmp_path / "out")
    long_text = " ".join(["great ride and the car felt really very lovely today"] * 20)
    assert len(built.processor(long_text, max_length=None)["input_ids"]) > 128
    seen = []
    built.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    assert tc.predict(built, [long_text, "a great ride"], top_k=1)[0]["predictions"]
    assert seen == [(2, want)]


def _prepared(folder: Path, model_dir: Path, **tokenization):
    recipe = load_recipe(_recipe(folder, model_dir, folder / "unused", **tokenization))
    data = sources.load_data(recipe.data, tc.INPUTS)
    built = tc.build_model(recipe.model, data.label_names)
    settings = PrepareSettings(recipe.augmentation, recipe.tokenization, 42)
    return built, tc.prepare(built, data.splits, settings)


def test_auto_with_padding_to_max_length(length_csvs: Path, tiny_bert_dir: Path):
    lengths = _lengths(tiny_bert_dir, length_csvs)
    want = _auto(lengths["train"], 128)
    _, prepared = _prepared(length_csvs, tiny_bert_dir, max_length="auto", padding="max_length")
    assert prepared.settled["tokenization"].max_length == want
    for name, ds in prepared.splits.items():
        assert {len(ids) for ids in ds["input_ids"]} == {want}  # auto resolved to a number before padding
        assert [sum(mask) for mask in ds["attention_mask"]] == [min(n, want) for n in lengths[name]]


def test_null_means_auto_and_bad_values_are_refused(length_csvs: Path, tiny_bert_dir: Path):
    _, prepared = _prepared(length_csvs, tiny_bert_dir, max_length=None)
    assert prepared.run_info["truncation"]["chosen_by"].startswith("auto")
    base = _recipe(length_csvs, tiny_bert_dir, length_csvs / "unused")
    for bad in ("longest", 1):
        with pytest.raises(RecipeError, match=r"tokenization\.max_length"):
            load_recipe(base | {"tokenization": {"max_length": bad}})


def test_auto_length_rule():
    assert tc.auto_length(list(range(1, 101)), 512) == 104  # 99th of 1..100 is 99 → 104
    assert tc.auto_length([3] * 50, 512) == 8  # at least 8
    assert tc.auto_length([900] * 10, 128) == 128  # capped at the model's limit
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, size=1000).tolist()
    assert tc.auto_length(lengths, 512) == _auto(lengths, 512)


def test_check_reports_what_training_would_cut_in_each_split(length_csvs: Path, tiny_bert_dir: Path, tmp_path: Path):
    lengths = _lengths(tiny_bert_dir, length_csvs)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(length_csvs, tiny_bert_dir, tmp_path / "out", max_length=32)))
    proc = _cli("check", str(path))
    assert "text lengths: truncation to 32 tokens (tokenization.max_length)" in proc.stdout
    for split, counts in lengths.items():
        want = _expected(counts, 32)
        share = want["truncated"] / want["texts"]
        assert (
            f"text lengths: {split}: {want['truncated']} of {want['texts']} texts ({share:.1%}) are longer "
            f"(median {want['median']:g} tokens, longest {want['max']})"
        ) in proc.stdout
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written

    too_long = _recipe(length_csvs, tiny_bert_dir, tmp_path / "out", max_length=4096)
    path.write_text(yaml.safe_dump(too_long))
    refused = subprocess.run([sys.executable, "-m", "hf_finetune", "check", str(path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "tokenization.max_length 4096 is longer than the model's 128 positions" in refused.stderr
    assert "text lengths: not measured" in refused.stdout


def test_check_lengths_equal_the_ones_training_reports(length_csvs: Path, tiny_bert_dir: Path):
    _, prepared = _prepared(length_csvs, tiny_bert_dir, max_length="auto")
    recipe = load_recipe(_recipe(length_csvs, tiny_bert_dir, length_csvs / "unused"))
    data = sources.load_data(recipe.data, tc.INPUTS)
    found = tc.text_lengths(recipe.model, data.splits, recipe.tokenization.fixed_length)
    trained = prepared.run_info["truncation"]
    assert found["max_length"] == trained["max_length"] == _auto(_lengths(tiny_bert_dir, length_csvs)["train"], 128)
    assert found["splits"] == trained["splits"] and found["chosen_by"] == trained["chosen_by"]
