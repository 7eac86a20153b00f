"""Output folders that run anywhere (issue 11, item 1): every folder loads with plain transformers where hf_finetune is
not installed, locally and from the Hub. simple_cnn's code travels in its folder (auto_map, trust_remote_code=True);
timm and transformers models need no flag at all; hf_finetune itself keeps using its own registered classes.

The "machine without hf_finetune" is a subprocess that cannot import it: its cwd is elsewhere, PYTHONPATH is unset, no
sys.path entry holds the package, and `sys.modules["hf_finetune"] = None` stops the editable install's path hook and
site-packages' `hf_finetune/_shipped` (which would otherwise import as a namespace package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hub_emulator import HubEmulator
from test_hub import Clients

from hf_finetune import finetune

CODE_FILES = ("configuration_simple_cnn.py", "modeling_simple_cnn.py")
MODELS_DIR = Path(__file__).resolve().parents[1] / "hf_finetune" / "models"

NO_HF_FINETUNE = r"""
import os, sys
sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or os.getcwd(), "hf_finetune", "__init__.py"))]
sys.modules["hf_finetune"] = None
try:
    import hf_finetune
except ImportError:
    pass
else:
    raise SystemExit("hf_finetune is importable: the test would prove nothing")
"""

# Loads each folder or repo id as a user would, with the flag the card gives (or none), and prints what it got.
LOAD = r"""
import json
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

sources, images = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = {}
for src, flag in sources:
    kwargs = {"trust_remote_code": True} if flag else {}
    try:
        AutoModelForImageClassification.from_pretrained(src)
        refused = None
    except ValueError as err:
        refused = str(err)
    model = AutoModelForImageClassification.from_pretrained(src, **kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(src, **kwargs)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    classifier = pipeline("image-classification", model=src, **kwargs)
    results[src] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "refused_without_flag": refused,
        "logits": logits.tolist(),
        "pipeline": classifier(images, top_k=None),
    }
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "hf_finetune" and v is not None)
print("RESULT", json.dumps({"results": results, "hf_finetune_modules": loaded}))
"""


def _plain_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    # transformers copies remote code into HF_MODULES_CACHE (under HF_HOME): a fresh one per test
    env.update(HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"))
    return env


def _load_without_hf_finetune(
    sources: list[tuple[str, bool]], images: list[str], tmp_path: Path, env: dict[str, str]
) -> dict[str, Any]:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", NO_HF_FINETUNE + LOAD, json.dumps(sources), json.dumps(images)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks on stdin before refusing remote code; no one answers here
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and "RESULT " in done.stdout, (done.stdout + done.stderr)[-3000:]
    printed = json.loads(done.stdout.rsplit("RESULT ", 1)[-1])
    assert printed["hf_finetune_modules"] == []
    return printed["results"]


def _hf_finetune_view(folder: Path, images: list[str]) -> tuple[type, list[list[float]], list[Any]]:
    """The class, logits and pipeline scores hf_finetune's own loading gives for `folder`."""
    import torch
    from PIL import Image
    from transformers import pipeline

    from hf_finetune.tasks.image_classification import load_trained

    built = load_trained(folder)
    pixels = built.processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        logits = built.model.eval()(pixel_values=pixels["pixel_values"]).logits
    scores = pipeline("image-classification", model=str(folder))(images, top_k=None)
    return type(built.model), logits.tolist(), scores


def _same_outputs(got: dict[str, Any], logits: list[list[float]], scores: list[Any]) -> None:
    assert len(got["logits"]) == len(logits) and got["logits"] != []
    for remote_row, local_row in zip(got["logits"], logits, strict=True):
        assert remote_row == pytest.approx(local_row, abs=1e-5)
    for remote, local in zip(got["pipeline"], scores, strict=True):
        assert [p["label"] for p in remote] == [p["label"] for p in local]
        assert [p["score"] for p in remote] == pytest.approx([p["score"] for p in local], abs=1e-6)


def _train(digits_folder: Path, out: Path, model: dict[str, Any], **training: Any) -> Path:
    recipe = {
        "name": out.name,
        "model": model,
        "data": {"source": str(digits_folder)},
        "training": {
            "output_dir": str(out),
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "learning_rate": 3e-3,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
            **training,
        },
    }
    return finetune(recipe).output_dir


@pytest.fixture(scope="module")
def images(digits_folder: Path) -> list[str]:
    return [str(p) for p in sorted((digits_folder / "test").rglob("*.png"))[::6]]


@pytest.fixture(scope="module")
def cnn_out(digits_folder: Path, tmp_path_factory) -> Path:
    """A trained simple_cnn output folder with one checkpoint."""
    out = tmp_path_factory.mktemp("portable") / "cnn"
    model = {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}}
    return _train(digits_folder, out, model, save_strategy="epoch")


@pytest.mark.slow  # trains, then loads twice in a fresh interpreter
def test_simple_cnn_folder_carries_its_code_and_loads_without_hf_finetune(cnn_out: Path, images, tmp_path: Path):
    checkpoint = next(cnn_out.glob("checkpoint-*"))
    for folder in (cnn_out, checkpoint):  # Trainer's checkpoints are saved with save_pretrained too
        for name in CODE_FILES:
            assert (folder / name).read_bytes() == (MODELS_DIR / name).read_bytes(), folder / name
        assert json.loads((folder / "config.json").read_text())["auto_map"] == {
            "AutoConfig": "configuration_simple_cnn.SimpleCNNConfig",
            "AutoModelForImageClassification": "modeling_simple_cnn.SimpleCNNForImageClassification",
        }
    # written by the run, so recorded as its own (--overwrite removes them, and nothing of the user's)
    assert set(CODE_FILES) <= set(json.loads((cnn_out / ".hf_finetune_run.json").read_text())["entries"])

    sources = [(str(cnn_out), True), (str(checkpoint), True)]
    results = _load_without_hf_finetune(sources, images, tmp_path, _plain_env(tmp_path / "home"))
    ours, logits, scores = _hf_finetune_view(cnn_out, images)
    assert f"{ours.__module__}.{ours.__qualname__}" == (
        "hf_finetune.models.modeling_simple_cnn.SimpleCNNForImageClassification"
    )
    for src, _ in sources:
        got = results[src]
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith(
            "modeling_simple_cnn.SimpleCNNForImageClassification"
        )
        # the code runs only when asked: without the flag transformers refuses, naming it
        assert "trust_remote_code=True" in got["refused_without_flag"]
    _same_outputs(results[str(cnn_out)], logits, scores)
    _same_outputs(results[str(checkpoint)], *_hf_finetune_view(checkpoint, images)[1:])


@pytest.mark.slow  # trains a timm and a ViT model, then loads both in a fresh interpreter
def test_timm_and_transformers_folders_load_with_no_flag(digits_folder: Path, tiny_vit_dir: Path, images, tmp_path):
    outs = [
        _train(digits_folder, tmp_path / "timm", {"name": "timm:test_resnet", "pretrained": False, "image_size": 32}),
        _train(digits_folder, tmp_path / "vit", {"name": str(tiny_vit_dir)}),
    ]
    for out in outs:
        assert not list(out.glob("*.py")) and "auto_map" not in json.loads((out / "config.json").read_text())
    results = _load_without_hf_finetune([(str(o), False) for o in outs], images, tmp_path, _plain_env(tmp_path / "h"))
    for out, kind in zip(outs, ("TimmWrapperForImageClassification", "ViTForImageClassification"), strict=True):
        got = results[str(out)]
        assert got["refused_without_flag"] is None
        assert got["class"].startswith("transformers.models.") and got["class"].endswith(kind)
        _same_outputs(got, *_hf_finetune_view(out, images)[1:])


@pytest.mark.slow  # trains, pushes through the CLI, loads in a fresh interpreter
def test_pushed_simple_cnn_loads_from_the_hub_without_hf_finetune(cnn_out: Path, images, tmp_path: Path):
    repo_id = "tester/portable-cnn"
    with HubEmulator(tmp_path / "hub-store", token=f"hf_{uuid.uuid4().hex}") as hub:
        clients = Clients(hub.url, hub.token, tmp_path / "home")
        pushed = clients.cli("push", str(cnn_out), "--repo-id", repo_id)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        code = sorted(p.name for p in cnn_out.glob("*.py"))  # the model's, and a 1-channel net's processor's
        assert set(CODE_FILES) <= set(code)
        card = hub.read(repo_id, "README.md").decode()
        for name in code:
            assert hub.read(repo_id, name) == (cnn_out / name).read_bytes()
            assert name in card  # the card names the code a reader should look at before trusting it
        assert f'pipeline("image-classification", model="{repo_id}", trust_remote_code=True)' in card
        assert "import hf_finetune" not in card

        env = _plain_env(tmp_path / "reader", clients.env)
        results = _load_without_hf_finetune([(repo_id, True)], images, tmp_path, env)
    assert not hub.errors, hub.errors[0]
    got = results[repo_id]
    assert got["class"].startswith("transformers_modules.") and "trust_remote_code=True" in got["refused_without_flag"]
    _same_outputs(got, *_hf_finetune_view(cnn_out, images)[1:])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow  # trains, then predicts and evaluates through the CLI
def test_hf_finetune_runs_its_own_class_never_the_folder_copy(cnn_out: Path, images, tmp_path: Path):
    out = tmp_path / "cnn"
    shutil.copytree(cnn_out, out, ignore=shutil.ignore_patterns("checkpoint-*"))
    marker = tmp_path / "folder-code-ran"
    planted = f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('the folder copy ran')\n"
    for name in CODE_FILES:
        (out / name).write_text(planted + (out / name).read_text())
    # even where the saved recipe trusts remote code, hf_finetune's registered class wins over the copy
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["model"]["trust_remote_code"] = True
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    predicted = _cli("predict", str(out), *images[:2], cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert [json.loads(line)["predictions"][0]["label"] for line in predicted.stdout.splitlines()] == [
        p[0]["label"] for p in _hf_finetune_view(cnn_out, images[:2])[2]
    ]
    evaluated = _cli("eval", str(out), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert not marker.exists()


def test_push_refuses_a_folder_whose_model_code_is_missing_or_outside(tmp_path: Path):
    from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification

    out = tmp_path / "cnn"
    SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=2, filters=[4], dense_units=[])).save_pretrained(out)
    saved = tmp_path / "saved"
    shutil.copytree(out, saved)
    (out / "modeling_simple_cnn.py").unlink()
    missing = _cli("push", str(out), "--repo-id", "tester/x", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "modeling_simple_cnn.py (its auto_map), which is not in the folder" in missing.stderr

    elsewhere = tmp_path / "elsewhere.py"
    shutil.copy(saved / "modeling_simple_cnn.py", elsewhere)
    (out / "modeling_simple_cnn.py").symlink_to(elsewhere)
    linked = _cli("push", str(out), "--repo-id", "tester/x", cwd=tmp_path)
    assert linked.returncode == 2 and "Traceback" not in linked.stderr
    assert f"modeling_simple_cnn.py is a link to {elsewhere}, outside the output folder" in linked.stderr

    # the folder as save_pretrained left it passes these checks (and then stops only for want of a Hub)
    whole = _cli("push", str(saved), "--repo-id", "tester/x", cwd=tmp_path)
    assert whole.returncode == 2 and "HF_HUB_OFFLINE is set" in whole.stderr, whole.stderr[-2000:]


def test_folders_saved_before_the_code_travelled_still_load_in_hf_finetune(tmp_path: Path):
    import torch

    from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification
    from hf_finetune.tasks.image_classification import load_trained

    model = SimpleCNNForImageClassification(SimpleCNNConfig(num_labels=2, image_size=8, filters=[4], dense_units=[]))
    model.save_pretrained(tmp_path)
    # as an older hf_finetune wrote it: model_type simple_cnn, no code, no auto_map
    for name in CODE_FILES:
        (tmp_path / name).unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    del config["auto_map"]
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded = load_trained(tmp_path).model.eval()
    assert type(loaded) is SimpleCNNForImageClassification
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
