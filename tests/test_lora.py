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

from tests.test_bad_inputs import cli

REPO = Path(__file__).resolve().parents[1]


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
    assert max(peft["verified"][k] for k in ("merged", "reloaded", "adapter")) <= 1e-3
    card = (out / "README.md").read_text()
    assert "LoRA (peft): rank 4, alpha 8" in card and "trainable parameters: " in card
    assert "low-rank adapters in every block and the new head train" in card
    assert "full fine-tuning: every parameter trains" not in card
    manifest = json.loads((out / ".hf_finetune_run.json").read_text())
    assert {"adapter", "model.safetensors"} <= set(manifest["entries"])
    assert "best model: weights verified" in done.stderr


def test_eval_of_a_lora_folder_gives_the_numbers_training_wrote(bert_lora_run, tmp_path: Path):
    out, _ = bert_lora_run
    done = cli(["eval", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((out / "metrics.json").read_text())["test"]
    scored = json.loads(done.stdout.strip().splitlines()[-1])
    assert scored["accuracy"] == pytest.approx(written["accuracy"]) and scored["split"] == "test"


def test_missing_peft_is_one_clear_error(text_recipe, monkeypatch):
    import builtins

    from hf_finetune import finetune
    from hf_finetune.errors import HFFinetuneError
    from hf_finetune.recipe import load_recipe

    real = builtins.__import__

    def without_peft(name, *args, **kwargs):  # as if peft were not installed
        if name == "peft" or name.startswith("peft."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    recipe = load_recipe(text_recipe(peft=LORA))  # transformers (already imported here) is not what is tested
    monkeypatch.setattr(builtins, "__import__", without_peft)
    with pytest.raises(HFFinetuneError, match=r'pip install "hf_finetune\[peft\]"'):
        finetune(recipe)
    assert not recipe.output_dir.exists()


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


def test_push_stages_the_adapter_and_the_merged_model_but_no_checkpoint(bert_lora_run, tmp_path: Path):
    from hf_finetune.hub import stage_folder

    out, _ = bert_lora_run
    staged = stage_folder(out, tmp_path / "stage", "me/model")
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "model.safetensors"} <= set(staged)
    assert not [n for n in staged if n.startswith("checkpoint-") or n.endswith((".bin", ".pt", ".pth"))]
    assert str(out) not in (tmp_path / "stage" / "adapter" / "adapter_config.json").read_text()


# --------------------------------------------------------------------------------------------- recipe refusals


def _problems(recipe: dict) -> str:
    from hf_finetune.errors import RecipeError
    from hf_finetune.recipe import load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    return str(err.value)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"peft": {"method": "lora", "r": 0}}, "peft.r: a rank of at least 1, got 0"),
        ({"peft": {"method": "lora", "dropout": 1.0}}, "peft.dropout: between 0 and 1 (1 exclusive), got 1.0"),
        ({"peft": {"method": "lora", "alpha": 0}}, "peft.alpha: must be > 0, got 0.0"),
        ({"peft": {"method": "lora", "target_modules": []}}, "peft.target_modules: an empty list adapts nothing"),
        ({"peft": {"method": "lora", "target_modules": "query"}}, "peft.target_modules: 'auto' or a list of module"),
        ({"peft": {"method": "adalora"}}, "peft.method: 'adalora' is not one of ['none', 'lora']"),
        ({"peft": {"r": 16}}, "peft.r: applies to peft.method lora, and peft.method is none"),
        (
            {"peft": {"method": "lora"}, "transfer": {"strategy": "linear_probe"}},
            "peft.method lora: transfer.strategy linear_probe trains only the head",
        ),
        (
            {"peft": {"method": "lora"}, "transfer": {"strategy": "head_only"}},
            "peft.method lora: transfer.strategy head_only trains only the head",
        ),
        (
            {"peft": {"method": "lora"}, "transfer": {"layer_decay": 0.8}},
            "transfer.layer_decay: not available with peft.method lora",
        ),
        (
            {"peft": {"method": "lora"}, "transfer": {"head_lr": 1e-3}},
            "transfer.head_lr: not available with peft.method lora",
        ),
        (
            {"peft": {"method": "lora"}, "transfer": {"strategy": "lp_ft", "probe_epochs": 1}},
            "transfer.probe_epochs: not available with peft.method lora",
        ),
        (
            {"peft": {"method": "lora"}, "model": {"name": "timm:resnet18", "pretrained": False}},
            "peft.method lora: with model.pretrained false the model starts from random weights",
        ),
        (
            {"peft": {"method": "lora"}, "model": {"name": "simple_cnn"}},
            "peft.method lora: simple_cnn starts from random weights",
        ),
    ],
)
def test_recipe_refuses_what_lora_cannot_do(sections: dict, expected: str, tmp_path: Path):
    recipe = {"name": "x", **BASE, "training": {"output_dir": str(tmp_path)}, **sections}
    if "linear_probe" in str(sections):
        recipe["training"] = {"output_dir": str(tmp_path)}
    assert expected in _problems(recipe)


BASE = {"model": {"name": "timm:resnet18"}, "data": {"source": "builtin:digits"}}


def test_lora_recipe_with_its_defaults_loads(tmp_path: Path):
    from hf_finetune.recipe import load_recipe

    recipe = load_recipe({**BASE, "peft": {"method": "lora"}, "training": {"output_dir": str(tmp_path)}})
    assert (recipe.peft.r, recipe.peft.alpha, recipe.peft.dropout, recipe.peft.target_modules) == (8, 16.0, 0.1, "auto")
    assert load_recipe({**BASE, "training": {"output_dir": str(tmp_path)}}).peft.enabled is False


def test_learning_rate_default_is_loras_and_a_written_one_is_kept(tmp_path: Path):
    from hf_finetune.lora import DEFAULT_LEARNING_RATE, with_peft_defaults
    from hf_finetune.recipe import load_recipe

    base = {**BASE, "peft": {"method": "lora"}, "training": {"output_dir": str(tmp_path)}}
    assert with_peft_defaults(load_recipe(base)).training["learning_rate"] == DEFAULT_LEARNING_RATE == 2e-3
    written = {**base, "training": {"output_dir": str(tmp_path), "learning_rate": 1e-4}}
    assert with_peft_defaults(load_recipe(written)).training["learning_rate"] == 1e-4
    plain = load_recipe({**BASE, "training": {"output_dir": str(tmp_path)}})
    assert "learning_rate" not in with_peft_defaults(plain).training


def test_cli_refusal_is_one_message_and_exit_2(text_recipe, tmp_path: Path):
    recipe = text_recipe(peft={"method": "lora", "r": 0}, transfer={"strategy": "linear_probe"})
    del recipe["training"]["learning_rate"], recipe["training"]["num_train_epochs"]
    del recipe["training"]["per_device_train_batch_size"]
    done = cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "2 problems in the recipe" in done.stderr and "peft.r: a rank of at least 1" in done.stderr
    assert not (tmp_path / "text-out").exists()


def test_adapter_config_names_the_hub_base_never_a_local_path(tmp_path: Path):
    from types import SimpleNamespace

    from hf_finetune.lora import hub_id

    assert hub_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_id("google/vit-base-patch16-224-in21k") == "google/vit-base-patch16-224-in21k"
    assert hub_id(str(tmp_path)) is None and hub_id("./model") is None and hub_id("builtin:all-MiniLM-L6-v2") is None
    timm_config = SimpleNamespace(pretrained_cfg={"hf_hub_id": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"})
    assert hub_id("timm:vit_base_patch16_224", timm_config) == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"


def test_lora_under_fsdp_is_refused_before_anything_is_loaded(text_recipe, monkeypatch):
    from hf_finetune import finetune
    from hf_finetune.errors import RecipeError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    recipe = text_recipe(peft=LORA)
    with pytest.raises(RecipeError, match=r"peft\.method lora: FSDP"):
        finetune(recipe)
    assert not Path(recipe["training"]["output_dir"]).exists()


# --------------------------------------------------------------------------------------------- what LoRA adapts


def _bert(tiny_bert_dir: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir))


def _targets(model, unfreeze_last: int | None = None, **peft) -> list[str]:
    from hf_finetune.lora import target_modules
    from hf_finetune.recipe import PeftSpec
    from hf_finetune.transfer import map_layers

    return target_modules(model, PeftSpec(method="lora", **peft), map_layers(model), unfreeze_last)


def test_auto_targets_are_the_blocks_linear_layers_never_the_head_or_pooler(tiny_bert_dir: Path):
    targets = _targets(_bert(tiny_bert_dir))
    assert len(targets) == 12  # 2 blocks × query, key, value, attention output, intermediate, output
    assert all(t.startswith("bert.encoder.layer.") for t in targets)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"query", "key", "value", "dense"}
    # partial with unfreeze_last 1: the last block only
    assert _targets(_bert(tiny_bert_dir), unfreeze_last=1) == [t for t in targets if ".layer.1." in t]


def test_auto_targets_of_a_timm_vit_and_a_timm_cnn():
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    vit = TimmWrapperForImageClassification(
        TimmWrapperConfig(
            architecture="vit_tiny_patch16_224",
            num_labels=3,
            model_args={"img_size": 32, "depth": 2, "embed_dim": 48, "num_heads": 2},
        )
    )
    targets = _targets(vit)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"qkv", "proj", "fc1", "fc2"} and len(targets) == 8
    assert not any("head" in t for t in targets)
    cnn = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=3))
    convs = _targets(cnn)
    assert convs and all(".layer" in t and ("conv" in t or "downsample" in t) for t in convs)
    assert "timm_model.conv1" not in convs and "timm_model.fc" not in convs  # stem and head


def test_named_targets_are_checked_against_the_model(tiny_bert_dir: Path):
    from hf_finetune.errors import ModelError

    assert sorted(_targets(_bert(tiny_bert_dir), target_modules=["query", "value"])) == [
        f"bert.encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "value")
    ]
    with pytest.raises(ModelError) as err:
        _targets(_bert(tiny_bert_dir), target_modules=["querry", "classifier"])
    message = str(err.value)
    assert "'querry' names no Linear or Conv2d layer of BertForSequenceClassification" in message
    assert "'classifier' is the classification head, which trains whole" in message
    assert "named: dense, key, query, value" in message


# --------------------------------------------------------------------------------------------- saving is verified


@pytest.mark.parametrize("how", ["tensors dropped", "not in modules_to_save"])
def test_an_adapter_saved_without_its_head_fails_the_run(how: str, text_recipe, monkeypatch, tmp_path: Path):
    """The classic trap (peft #310, #577, #876): an adapter without the trained head loads with a random one (or not
    at all). The run's own reload check must catch it, not a user weeks later."""
    from safetensors.torch import load_file, save_file

    import hf_finetune.lora as lora
    from hf_finetune import finetune
    from hf_finetune.errors import HFFinetuneError

    real = lora.save_adapter

    def without_head(model, folder: Path, base_model):
        real(model, folder, base_model)
        path = folder / "adapter_model.safetensors"
        save_file({k: v for k, v in load_file(str(path)).items() if "classifier" not in k}, str(path))
        if how == "not in modules_to_save":
            config = json.loads((folder / "adapter_config.json").read_text())
            config["modules_to_save"] = None
            (folder / "adapter_config.json").write_text(json.dumps(config))

    monkeypatch.setattr(lora, "save_adapter", without_head)
    recipe = text_recipe(peft=LORA, training={"num_train_epochs": 1, "save_strategy": "no"})
    with pytest.raises(HFFinetuneError) as err:
        finetune(recipe)
    message = str(err.value)
    assert "peft: what was saved does not reproduce the trained model" in message
    assert "adapter on the base model: max |Δlogit|" in message and "base_model.model.classifier.weight" in message


def test_resume_from_an_adapter_checkpoint_continues_to_the_same_model(bert_lora_run, tmp_path: Path):
    """A checkpoint of a LoRA run holds the adapter (and the head): resuming from the first epoch's checkpoint of
    the fixture's run must end where the uninterrupted run ended."""
    import shutil

    import torch
    from safetensors.torch import load_file

    out, _ = bert_lora_run
    first = min(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    again = tmp_path / "again"
    shutil.copytree(first, again / first.name)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["training"]["output_dir"] = str(again)
    done = cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe)), "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume: continuing from {again / first.name}" in done.stderr
    assert "Trainer left" not in done.stderr  # ResumeWeightsCheck found the adapter restored as saved
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    ta = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    tb = load_file(str(again / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)


def test_resume_check_restores_an_adapter_trainer_left_wrong(bert_lora_run, tiny_bert_dir: Path):
    """sync_with_checkpoint on a peft model compares (and restores) the adapter tensors, head included."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict

    from hf_finetune.models.weights import sync_with_checkpoint

    out, _ = bert_lora_run
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    base = _bert(tiny_bert_dir)
    base.classifier = torch.nn.Linear(32, 3)
    model = PeftModel.from_pretrained(base, str(checkpoint), is_trainable=True)
    assert sync_with_checkpoint(model, checkpoint) == []
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)
    assert sync_with_checkpoint(model, checkpoint) == ["base_model.model.classifier.weight"]
    assert sync_with_checkpoint(model, checkpoint) == []
    saved = get_peft_model_state_dict(model)["base_model.model.classifier.weight"]
    assert torch.equal(saved, model.base_model.model.classifier.modules_to_save["default"].weight)


# --------------------------------------------------------------------------------------------- strategies, images


@pytest.mark.slow
def test_partial_adapts_only_the_last_blocks_and_lp_ft_starts_from_the_fitted_probe(text_recipe, tmp_path: Path):
    from safetensors.torch import load_file

    recipe = text_recipe(
        peft=LORA,
        transfer={"strategy": "partial", "unfreeze_last": 1},
        training={"num_train_epochs": 1, "save_strategy": "no"},
    )
    done = cli(["train", str(write_recipe(tmp_path / "p.yaml", recipe))], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(recipe["training"]["output_dir"])
    keys = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_keys = [k for k in keys if "lora_" in k]
    assert lora_keys and all(".layer.1." in k for k in lora_keys)
    assert json.loads((out / "metrics.json").read_text())["run"]["peft"]["adapted_layers"] == 6
    assert "low-rank adapters in the last 1 blocks" in (out / "README.md").read_text()

    recipe = text_recipe(
        peft=LORA,
        transfer={"strategy": "lp_ft"},
        training={"num_train_epochs": 1, "save_strategy": "no", "output_dir": str(tmp_path / "lpft")},
    )
    done = cli(["train", str(write_recipe(tmp_path / "l.yaml", recipe))], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "lpft" / "metrics.json").read_text())["run"]
    assert run["probe"]["fitted_on"] and run["peft"]["adapted_layers"] == 12
    verified = run["peft"]["verified"]  # the fitted probe (C up to 1000) makes large logits: a relative tolerance
    assert verified["adapter"] <= 1e-3 * max(1.0, verified["largest_logit"])
    assert verified["merged"] <= 1e-3 * max(1.0, verified["largest_logit"])


def test_vision_transformer_with_lora_trains_and_predicts_the_same_from_both_outputs(
    digits_folder: Path, tiny_vit_dir: Path, tmp_path: Path
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    out = tmp_path / "vit"
    recipe = {
        "name": "vit-lora",
        "model": {"name": str(tiny_vit_dir), "image_size": 16},
        "data": {"source": str(digits_folder)},
        "peft": {"method": "lora", "r": 4},
        # the temperature is folded into the trained head copy: the adapter carries it as the merged model does
        "metrics": {"calibration": "temperature"},
        "training": {"output_dir": str(out), "num_train_epochs": 1, "save_strategy": "no", "disable_tqdm": True},
    }
    done = cli(["train", str(write_recipe(tmp_path / "v.yaml", recipe))], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "metrics.json").read_text())["run"]
    peft = run["peft"]
    assert peft["modules_to_save"] == ["classifier"] and peft["adapted_layers"] == 12
    assert (
        run["calibration"]["temperature"] != 1.0
        and max(peft["verified"][k] for k in ("merged", "reloaded", "adapter")) <= 1e-3
    )
    pixels = torch.randn(2, 3, 16, 16)
    merged = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    base = AutoModelForImageClassification.from_pretrained(
        str(tiny_vit_dir), num_labels=3, ignore_mismatched_sizes=True
    )
    adapter = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(pixel_values=pixels).logits, adapter(pixel_values=pixels).logits, atol=1e-4)


@pytest.mark.slow
def test_two_ranks_train_lora_and_one_writes_both_outputs(text_recipe, tmp_path: Path):
    from tests.test_distributed import _launch

    out = tmp_path / "ddp"
    recipe = text_recipe(peft=LORA, training={"num_train_epochs": 2, "output_dir": str(out)})
    proc = _launch(["-m", "hf_finetune", "train", str(write_recipe(tmp_path / "d.yaml", recipe))])
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["hardware"]["processes"] == 2
    assert max(metrics["run"]["peft"]["verified"][k] for k in ("merged", "adapter")) <= 1e-3
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert metrics["test"]["num_samples"] == 30
