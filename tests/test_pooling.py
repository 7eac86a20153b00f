"""Mean-pooled text classifiers for sentence-embedding checkpoints (issue 12, item 1, text part): the head reads the
mean of the encoder's last hidden state over the attention mask, chosen by `model.pooling: auto` where the checkpoint
says so (sentence-transformers' 1_Pooling/config.json); its folders load with plain transformers and
`trust_remote_code=True`, and refuse to load without it rather than silently building a [CLS] classifier."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_text_recipe
from test_export import _check_verified, _export
from test_portable import NO_HF_FINETUNE, _plain_env

from hf_finetune.errors import ModelError
from hf_finetune.recipe import ModelSpec, load_recipe
from hf_finetune.tasks.text_classification import build_model, load_trained

TEXTS = ["the car ride was great", "awful", "a trip and it felt really very slow today and the car was broken"]
CODE_FILES = ("configuration_mean_pooling.py", "modeling_mean_pooling.py")


def _with_pooling_file(src: Path, dst: Path, **modes: bool) -> Path:
    shutil.copytree(src, dst)
    (dst / "1_Pooling").mkdir()
    settings = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False}
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({**settings, **modes}))
    return dst


def test_pooled_features_are_the_mean_over_the_mask_and_padding_changes_nothing(tiny_bert_dir: Path):
    import torch

    built = build_model(ModelSpec(name=str(tiny_bert_dir), pooling="mean"), ["a", "b", "c"])
    model, tokenizer = built.model.eval(), built.processor
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # some rows are padded
    with torch.no_grad():
        pooled = model.pooled_features(**batch)
        hidden = model.encoder(**batch).last_hidden_state
        logits = model(**batch).logits
        for i, text in enumerate(TEXTS):
            alone = tokenizer([text], return_tensors="pt")
            n = int(alone["attention_mask"].sum())
            # computed independently: the plain average of the unpadded token states
            assert torch.allclose(pooled[i], hidden[i, :n].mean(0), atol=1e-6)
            assert torch.allclose(model(**alone).logits[0], logits[i], atol=1e-5)
        # the head is one Linear on exactly those features (dropout is off in eval)
        assert torch.allclose(model.classifier(pooled), logits, atol=1e-6)
    # the encoder's pretrained weights were loaded, not re-initialised
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(tiny_bert_dir))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name


def test_auto_pooling_follows_the_checkpoints_pooling_file(tiny_bert_dir: Path, tmp_path: Path):
    from transformers import BertForSequenceClassification

    from hf_finetune.models import MeanPoolingForSequenceClassification
    from hf_finetune.models.structure import head_parameter_names

    mean_dir = _with_pooling_file(tiny_bert_dir, tmp_path / "mean", pooling_mode_mean_tokens=True)
    cls_dir = _with_pooling_file(tiny_bert_dir, tmp_path / "cls", pooling_mode_cls_token=True)
    labels = ["a", "b"]
    mean = build_model(ModelSpec(name=str(mean_dir)), labels)
    assert type(mean.model) is MeanPoolingForSequenceClassification
    assert "mean pooling" in mean.description
    assert head_parameter_names(mean.model) == ["classifier.weight", "classifier.bias"]
    # what auto chose is settled into the recipe saved with the run, so a re-run builds the same model
    assert mean.settled == {"model": ModelSpec(name=str(mean_dir), pooling="mean")}
    for folder in (tiny_bert_dir, cls_dir):  # no pooling file, or one that says [CLS]
        built = build_model(ModelSpec(name=str(folder)), labels)
        assert type(built.model) is BertForSequenceClassification and "cls pooling" in built.description
        assert built.settled == {"model": ModelSpec(name=str(folder), pooling="cls")}
    assert build_model(ModelSpec(name=str(mean_dir), pooling="mean"), labels).settled == {}
    # what the recipe says wins over the file, either way
    assert type(build_model(ModelSpec(name=str(mean_dir), pooling="cls"), labels).model).__name__ == (
        "BertForSequenceClassification"
    )
    assert type(build_model(ModelSpec(name=str(tiny_bert_dir), pooling="mean"), labels).model) is (
        MeanPoolingForSequenceClassification
    )


def test_pooling_values_are_checked_and_refused_for_images(tiny_bert_dir: Path, tmp_path: Path):
    base = {"model": {"name": "simple_cnn"}, "data": {"source": "builtin:digits"}}
    with pytest.raises(Exception, match=r"model.pooling.*'auto', 'cls' or 'mean'"):
        load_recipe({**base, "model": {"name": "x", "pooling": "max"}})
    with pytest.raises(Exception, match=r"model\.pooling: 'mean' applies to text-classification only"):
        load_recipe({**base, "model": {"name": "simple_cnn", "pooling": "mean"}})
    folder = tmp_path / "saved"
    build_model(ModelSpec(name=str(tiny_bert_dir), pooling="mean"), ["a", "b"]).model.save_pretrained(folder)
    shutil.copy(tiny_bert_dir / "tokenizer.json", folder)
    with pytest.raises(ModelError, match="mean-pooled classifier saved by hf_finetune"):
        build_model(ModelSpec(name=str(folder), pooling="cls"), ["a", "b"])


# Loads the folder as a user without hf_finetune would; prints logits, pipeline scores and the no-flag refusal.
LOAD = r"""
import json
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

folder, texts = sys.argv[1], json.loads(sys.argv[2])
try:
    AutoModelForSequenceClassification.from_pretrained(folder)
    refused = None
except ValueError as err:
    refused = str(err)
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
scores = pipeline("text-classification", model=folder, trust_remote_code=True)(texts, top_k=None)
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "hf_finetune" and v is not None)
print("RESULT", json.dumps({"class": type(model).__module__ + "." + type(model).__qualname__, "refused": refused,
                            "logits": logits.tolist(), "pipeline": scores, "hf_finetune_modules": loaded}))
"""


@pytest.mark.slow  # trains through the CLI, loads in a fresh interpreter, exports to ONNX
def test_trained_mean_pooled_folder_loads_without_hf_finetune_and_exports(text_csv, tiny_bert_dir, tmp_path: Path):
    import torch

    out = tmp_path / "out"
    recipe = make_text_recipe(text_csv, tiny_bert_dir, out, model={"pooling": "mean"})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    trained = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "train", str(tmp_path / "recipe.yaml")], capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mean_pooling" and config["encoder_config"]["model_type"] == "bert"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == (
        "modeling_mean_pooling.MeanPoolingForSequenceClassification"
    )
    models_dir = Path(__file__).resolve().parents[1] / "hf_finetune" / "models"
    for name in CODE_FILES:
        assert (out / name).read_bytes() == (models_dir / name).read_bytes()
    assert set(CODE_FILES) <= set(json.loads((out / ".hf_finetune_run.json").read_text())["entries"])
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True)" in card and "mean pooling" in card and all(n in card for n in CODE_FILES)

    done = subprocess.run(
        [sys.executable, "-c", NO_HF_FINETUNE + LOAD, str(out), json.dumps(TEXTS)],
        cwd=tmp_path,
        env=_plain_env(tmp_path / "home"),
        stdin=subprocess.DEVNULL,  # transformers asks before running remote code; no one answers here
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "RESULT " in done.stdout, (done.stdout + done.stderr)[-3000:]
    got = json.loads(done.stdout.rsplit("RESULT ", 1)[-1])
    assert got["hf_finetune_modules"] == []
    assert got["class"].startswith("transformers_modules.")
    assert got["class"].endswith("modeling_mean_pooling.MeanPoolingForSequenceClassification")
    # without the flag: refused, naming it (never a silent BertForSequenceClassification reading [CLS])
    assert got["refused"] and "trust_remote_code=True" in got["refused"]

    built = load_trained(out)  # hf_finetune's own class, with nothing set by the user
    assert type(built.model).__module__ == "hf_finetune.models.modeling_mean_pooling"
    batch = built.processor(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ours = built.model.eval()(**batch).logits
    assert torch.allclose(torch.tensor(got["logits"]), ours, atol=1e-5)
    predicted = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "predict", str(out), *(a for t in TEXTS for a in ("--text", t))],
        capture_output=True,
        text=True,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    for line, remote in zip(predicted.stdout.splitlines(), got["pipeline"], strict=True):
        local = json.loads(line)["predictions"]
        assert [p["label"] for p in local] == [p["label"] for p in remote]
        assert [p["score"] for p in local] == pytest.approx([p["score"] for p in remote], abs=1e-5)

    result = _export(out, "--batch-size", "4")
    _check_verified(result, out, ["input_ids", "token_type_ids", "attention_mask"])


@pytest.mark.slow  # the real all-MiniLM-L6-v2 on a few hundred real tweets
def test_real_minilm_mean_pooling_is_sentence_transformers_recipe():
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from hf_finetune.data.builtin import load_tweets
    from hf_finetune.models import MeanPoolingForSequenceClassification

    splits = load_tweets()
    train, test = splits["train"].shuffle(seed=0).select(range(400)), splits["test"].shuffle(seed=0).select(range(200))
    labels = splits["train"].features["label"].names
    mean = build_model(ModelSpec(name="builtin:all-MiniLM-L6-v2"), labels)  # auto → mean (its 1_Pooling says so)
    cls = build_model(ModelSpec(name="builtin:all-MiniLM-L6-v2", pooling="cls"), labels)
    assert type(mean.model) is MeanPoolingForSequenceClassification and "cls pooling" in cls.description
    tokenizer = mean.processor

    def features(model, texts, pooled) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, return_tensors="pt")
                rows.append(pooled(model.eval(), batch))
        return torch.cat(rows).numpy()

    def reference(model, batch):  # sentence-transformers' Pooling(mean): mask-weighted mean of the token embeddings
        hidden = model.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    texts = train["text"][:64]
    ours = features(mean.model, texts, lambda m, b: m.pooled_features(**b))
    np.testing.assert_allclose(ours, features(mean.model, texts, reference), atol=1e-5)

    def accuracy(model, pooled) -> float:
        fit = LogisticRegression(max_iter=2000).fit(features(model, train["text"], pooled), train["label"])
        return float(fit.score(features(model, test["text"], pooled), test["label"]))

    mean_acc = accuracy(mean.model, lambda m, b: m.pooled_features(**b))
    cls_acc = accuracy(cls.model, lambda m, b: m.bert(**b).pooler_output)  # what BertForSequenceClassification reads
    print(f"frozen-feature logistic regression on 400/200 tweets: mean {mean_acc:.3f}, cls {cls_acc:.3f}")
