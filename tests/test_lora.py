"""LoRA via peft (recipe section `peft:`, hf_finetune/lora.py) on tiny models built from configs.

The run trains adapters + the whole head, saves the merged model and `adapter/`, and checks both reload to the trained
model's logits; these tests check the same things again from outside, plus the refusals, resume and the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_bad_inputs import _env

REPO = Path(__file__).resolve().parents[1]


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def bert_lora_run(tmp_path_factory, text_csv: Path, tiny_bert_dir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One CLI run: tiny BERT, LoRA r 4, no learning rate in the recipe (LoRA's default), best model kept."""
    from tests.conftest import make_text_recipe

    root = tmp_path_factory.mktemp("bert_lora")
    recipe = make_text_recipe(text_csv, tiny_bert_dir, root / "out", peft=LORA)
    del recipe["training"]["learning_rate"]
    recipe["training"].update(num_train_epochs=2, load_best_model_at_end=True, save_total_limit=2)
    done = cli(["train", str(write_recipe(root / "r.yaml", recipe))], root)
    assert done.returncode == 0, done.stderr[-4000:]
    return root / "out", done


def _batch(tiny_bert_dir: Path, texts: list[str]):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    return tok(texts, padding=True, return_tensors="pt")


TEXTS = ["the ride was great and lovely", "awful slow car today", "a trip"]


def test_lora_run_saves_merged_model_and_adapter_that_predict_the_same(bert_lora_run, tiny_bert_dir: Path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    out, done = bert_lora_run
    assert "training: learning_rate = 0.002 (peft.method lora default" in done.stderr
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None  # a local folder: no path of this machine in the adapter
    assert config["modules_to_save"] == ["classifier"] and config["r"] == 4
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(saved)
    assert any("lora_A" in k for k in saved) and not any("original_module" in k for k in saved)

    merged = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=3, ignore_mismatched_sizes=True
    )
    adapter = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    batch = _batch(tiny_bert_dir, TEXTS)
    with torch.no_grad():
        a, b = merged(**batch).logits, adapter(**batch).logits
        plain = AutoModelForSequenceClassification.from_pretrained(
            str(tiny_bert_dir), num_labels=3, ignore_mismatched_sizes=True
        ).eval()(**batch)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain.logits, atol=1e-2)  # the adapters and head did train
    # the trained head is the adapter's, not the base's fresh one
    assert torch.equal(adapter.base_model.model.classifier.modules_to_save["default"].weight, merged.classifier.weight)

    metrics = json.loads((out / "metrics.json").read_text())
    peft = metrics["run"]["peft"]
    assert peft["method"] == "lora" and peft["r"] == 4 and peft["adapted_layers"] == 12
    assert peft["adapted_names"] == ["dense", "key", "query", "value"]
    assert 0 < peft["trainable_parameters"] < peft["total_parameters"] / 5
    assert max(peft["verified"].values()) <= 1e-3
    card = (out / "README.md").read_text()
    assert "LoRA (peft): rank 4, alpha 8" in card and "trainable parameters: " in card
    manifest = json.loads((out / ".hf_finetune_run.json").read_text())
    assert {"adapter", "model.safetensors"} <= set(manifest["entries"])
    assert "best model: weights verified" in done.stderr


def test_merged_folder_loads_with_pipeline_where_hf_finetune_is_not_importable(bert_lora_run, tmp_path: Path):
    from transformers import pipeline

    from tests.test_portable import NO_HF_FINETUNE, _plain_env

    out, _ = bert_lora_run
    code = NO_HF_FINETUNE + (
        "import json, sys\nfrom transformers import pipeline\n"
        "p = pipeline('text-classification', model=sys.argv[1])\n"
        "print('RESULT', json.dumps(p(json.loads(sys.argv[2]), top_k=None)))\n"
    )
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), json.dumps(TEXTS)],
        cwd=tmp_path / "elsewhere",
        env=_plain_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.rsplit("RESULT ", 1)[-1])
    local = pipeline("text-classification", model=str(out))(TEXTS, top_k=None)
    for r, mine in zip(remote, local, strict=True):
        assert [x["label"] for x in r] == [x["label"] for x in mine]
        assert [x["score"] for x in r] == pytest.approx([x["score"] for x in mine], abs=1e-6)
