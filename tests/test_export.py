"""`hf-finetune export OUTPUT --format onnx` as a user runs it: every model family the toolkit trains exports with
dynamic axes, is verified by onnxruntime against PyTorch on the run's validation rows, refused beyond the tolerance,
reported in the card and export.json, and served by `predict --onnx` with the same answers as `predict`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_text_recipe, make_texts

from hf_finetune import finetune
from hf_finetune.api import evaluate, predict

EXPORT_HEADING = "## Export"


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *map(str, args)], capture_output=True, text=True, env=os.environ
    )


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _refused(proc: subprocess.CompletedProcess, *named: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-4000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    for text in named:
        assert text in proc.stderr, (text, proc.stderr[-2000:])
    return proc.stderr


def _export(out: Path, *options: object) -> dict:
    return json.loads(_ok(_cli("export", out, *options)))


def _validation_rows(out: Path) -> int:
    return json.loads((out / "metrics.json").read_text())["run"]["splits"]["validation"]["rows"]


def _check_verified(result: dict, out: Path, inputs: list[str]) -> None:
    """What every family's export must show: all validation rows, same top-1, logits within the tolerance, the
    accuracy `hf-finetune eval` gives for those rows, and the files with the labels and inputs beside the model."""
    assert result["rows"] == _validation_rows(out)
    assert result["onnx"]["top1_agreement"] == 1.0
    assert 0 <= result["onnx"]["max_abs_logit_diff"] <= result["onnx"]["tolerance"] == 1e-3
    assert result["pytorch_accuracy"] == pytest.approx(evaluate(out, split="validation")["accuracy"])
    saved = json.loads((out / "onnx" / "export.json").read_text())
    labels = json.loads((out / "metrics.json").read_text())["label_names"]
    assert saved["id2label"] == {str(i): name for i, name in enumerate(labels)}
    assert list(saved["inputs"]) == inputs
    assert saved["verification"]["onnx"] == result["onnx"]
    assert "onnx" in json.loads((out / ".hf_finetune_run.json").read_text())["entries"]


def _image(path: Path, seed: int, size: int = 20) -> Path:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_simple_cnn_export_verify_quantize_card_predict_reexport_and_overwrite(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    out = finetune(recipe).output_dir
    images = [_image(tmp_path / f"in{i}.png", i) for i in range(3)]
    # before any export: --onnx says what to run first
    _refused(_cli("predict", out, images[0], "--onnx"), "no ONNX export", f"run hf-finetune export {out} first")

    result = _export(out, "--quantize", "int8", "--batch-size", "4")  # batches of 4 and the rest: dynamic batch axis
    _check_verified(result, out, ["pixel_values"])
    int8 = result["int8"]
    assert int8["accuracy_change"] == pytest.approx(int8["accuracy"] - result["pytorch_accuracy"])
    assert (out / "onnx" / "model_quantized.onnx").is_file()
    card = (out / "README.md").read_text()
    assert card.count(EXPORT_HEADING) == 1
    assert f"top-1 agreement {result['onnx']['top1_agreement']:.2%}" in card
    assert f"{int8['accuracy_change']:+.4f}" in card
    assert "## " in card.split(EXPORT_HEADING)[0]  # added to the card training wrote, not a new one

    by_onnx = [json.loads(line) for line in _ok(_cli("predict", out, *images, "--onnx")).splitlines()]
    by_torch = predict(out, images)
    assert [r["image"] for r in by_onnx] == [r["image"] for r in by_torch]
    for got, want in zip(by_onnx, by_torch, strict=True):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
        for g, w in zip(got["predictions"], want["predictions"], strict=True):
            assert g["score"] == pytest.approx(w["score"], abs=1e-5)
    # test-time augmentation runs the export on every view, as it runs the PyTorch model
    tta_onnx = [
        json.loads(line) for line in _ok(_cli("predict", out, *images, "--onnx", "--tta", "crops")).splitlines()
    ]
    tta_torch = predict(out, images, tta="crops")
    assert tta_torch != by_torch
    for got, want in zip(tta_onnx, tta_torch, strict=True):
        assert {p["label"]: p["score"] for p in got["predictions"]} == pytest.approx(
            {p["label"]: p["score"] for p in want["predictions"]}, abs=1e-5
        )

    # a second export replaces the first whole: no stale int8 model, one Export section, now without int8
    again = _export(out)
    assert "int8" not in again and not (out / "onnx" / "model_quantized.onnx").exists()
    card = (out / "README.md").read_text()
    assert card.count(EXPORT_HEADING) == 1 and "int8" not in card.split(EXPORT_HEADING)[1]

    # --overwrite removes what the export wrote too, and nothing of the user's
    (out / "notes.txt").write_text("mine")
    recipe["overwrite"] = True
    recipe["training"]["num_train_epochs"] = 1
    finetune(recipe)
    assert not (out / "onnx").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert EXPORT_HEADING not in (out / "README.md").read_text()


@pytest.mark.slow
def test_beyond_the_tolerance_the_export_is_refused_and_nothing_is_written(tiny_recipe):
    out = finetune(tiny_recipe(training={"num_train_epochs": 1})).output_dir
    card = (out / "README.md").read_text()
    err = _refused(_cli("export", out, "--tolerance", "1e-12"), "beyond the tolerance 1e-12", "--tolerance")
    assert "max |Δlogit|" in err and "Nothing was written" in err
    assert not (out / "onnx").exists()
    assert (out / "README.md").read_text() == card
    # and a user's own onnx/ folder is never replaced (refused before anything is loaded)
    (out / "onnx").mkdir()
    (out / "onnx" / "mine.onnx").write_text("x")
    _refused(_cli("export", out), "hf_finetune did not write it", "Nothing was changed")
    assert (out / "onnx" / "mine.onnx").read_text() == "x"


@pytest.mark.slow
def test_timm_and_vit_export_verified(tiny_recipe, tiny_vit_dir, tmp_path):
    for name, model, pretrained in (("timm", "timm:resnet18", False), ("vit", str(tiny_vit_dir), True)):
        recipe = tiny_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / name)})
        recipe["model"] = {"name": model, "pretrained": pretrained, "image_size": 16}
        out = finetune(recipe).output_dir
        result = _export(out, "--batch-size", "4")
        _check_verified(result, out, ["pixel_values"])
        image = _image(tmp_path / f"{name}.png", 7, size=24)
        got = json.loads(_ok(_cli("predict", out, image, "--onnx")))
        want = predict(out, [image])[0]
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]


@pytest.mark.slow
def test_bert_sentence_pairs_export_with_segment_ids_and_dynamic_sequence(tiny_bert_dir, tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, n, seed in (("train.csv", 60, 0), ("test.csv", 12, 1)):
        with (folder / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "context", "sentiment"])
            for (text, label), (other, _) in zip(make_texts(n, seed), make_texts(n, seed + 5), strict=True):
                writer.writerow([text, other, label])
    recipe = make_text_recipe(
        folder, tiny_bert_dir, tmp_path / "out", data={"text_pair_column": "context"}, tokenization={"max_length": 12}
    )
    recipe["training"]["num_train_epochs"] = 1
    out = finetune(recipe).output_dir
    result = _export(out, "--quantize", "int8", "--batch-size", "5")
    preprocessing = json.loads((out / "onnx" / "export.json").read_text())["preprocessing"]
    assert preprocessing["max_length"] == 12  # what training truncated to, not the model's limit
    _check_verified(result, out, ["input_ids", "token_type_ids", "attention_mask"])
    assert result["axes"] == "batch and sequence axes"
    assert "int8" in result
    pairs = [("good", "bad slow car today"), ("a very lovely calm ride and a superb trip", "sad")]
    args = [a for p in pairs for a in ("--text", p[0], "--text-pair", p[1])]
    got = [json.loads(line) for line in _ok(_cli("predict", out, *args, "--onnx")).splitlines()]
    want = predict(out, pairs)
    for g, w in zip(got, want, strict=True):
        assert (g["text"], g["text_pair"]) == (w["text"], w["text_pair"])
        for a, b in zip(g["predictions"], w["predictions"], strict=True):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_export_in_process_then_predict_onnx_and_the_refusals(tiny_recipe, tmp_path, capsys):
    """The quick path (the CLI in this process): export on 8 rows, predict --onnx, and bad options refused."""
    import hf_finetune
    from hf_finetune import api
    from hf_finetune.cli import main

    out = finetune(tiny_recipe(training={"num_train_epochs": 1})).output_dir
    image = _image(tmp_path / "x.png", 3)
    capsys.readouterr()
    assert main(["predict", str(out), str(image), "--onnx"]) == 2
    assert "run hf-finetune export" in capsys.readouterr().err
    assert main(["export", str(out), "--samples", "8", "--batch-size", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 8 and result["onnx"]["top1_agreement"] == 1.0
    assert result["onnx"]["max_abs_logit_diff"] <= 1e-3
    assert hf_finetune.export is api.export  # still the API function once the export stage is imported
    assert main(["predict", str(out), str(image), "--onnx", "--top-k", "2"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = predict(out, [image], top_k=2)[0]
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
    # new weights in the folder (a run resumed there): the export no longer answers for the model
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    save_file({k: v + 0.5 if v.is_floating_point() else v for k, v in weights.items()}, out / "model.safetensors")
    assert main(["predict", str(out), str(image), "--onnx"]) == 2
    assert "was not exported from the model now in" in capsys.readouterr().err
    for bad in (["--tolerance", "0"], ["--tolerance", "nan"], ["--samples", "0"], ["--format", "tflite"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(out), *bad])
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err


def test_the_card_section_is_added_once_and_replaced(tmp_path):
    from hf_finetune.onnx_export import card_section, write_card_section

    readme = tmp_path / "README.md"
    readme.write_text("# model\n\ntrained facts\n\n## Usage\n\ntext after\n")
    figures = {
        "opset": 20,
        "axes": "batch axis",
        "onnxruntime": "1.32.0",
        "rows": 10,
        "split": "validation",
        "data": "digits",
        "pytorch_accuracy": 0.9,
        "onnx": {"top1_agreement": 1.0, "max_abs_logit_diff": 2e-6, "tolerance": 1e-3},
        "int8": {"accuracy": 0.8, "accuracy_change": -0.1, "top1_agreement": 0.9},
    }
    assert write_card_section(readme, card_section(figures, tmp_path, "IMAGE.png"))
    first = readme.read_text()
    assert first.startswith("# model\n\ntrained facts\n\n## Usage\n\ntext after\n")
    assert first.count(EXPORT_HEADING) == 1 and "-0.1000" in first and "10 rows" in first
    del figures["int8"]
    figures["rows"] = 20
    assert write_card_section(readme, card_section(figures, tmp_path, "IMAGE.png"))
    second = readme.read_text()
    assert second.count(EXPORT_HEADING) == 1 and "20 rows" in second and "int8" not in second
    assert second.split(EXPORT_HEADING)[0] == first.split(EXPORT_HEADING)[0]
    assert not write_card_section(tmp_path / "missing.md", "x")
