"""The image data path at the limit, and how cost grows with work: simple_cnn on a Fashion-MNIST PNG folder.

Side by side, in alternating runs (one fresh child process per run, so each run's peak memory is its own):
  toolkit   `hf_finetune.finetune` on the PNG folder (datasets imagefolder → decode → the toolkit's train transform
            with the recipe's augmentation → collate → Trainer), one epoch
  folder    what a user writes by hand: `torchvision.datasets.ImageFolder` + `DataLoader` + a ~10-line loop, with the
            same augmentation, network (same initial weights), optimizer, batch size and workers
  memory    the same network on decoded, normalised float tensors already in memory, flips done on the batch: no
            decode, no per-image transform, no collate (the limit of any data path)
Then, toolkit only: one epoch at each `--sizes` (1k, 10k, 60k training images) with its peak memory, and evaluation
of the 1k-trained model on a test folder of `--eval-size` images and on one 10x larger, with evaluation's peak memory.

    python benchmarks/datapath.py --sizes 1000 --repeats 1        # quick smoke run (about a minute)
    python benchmarks/datapath.py                                 # full: compare at 10k, sizes 1k/10k/60k, eval 1k/10k

The PNG folders are written once from the Debian package dataset-fashion-mnist into ~/.cache/hf_finetune-bench
(`--cache-dir`) and reused; the script writes them when missing. Timed span on every side: the start of the training
loop (Trainer: `on_train_begin`) → the end of the last optimizer step, DataLoader worker start-up included. Peak
memory: the largest sum of the proportional set sizes (PSS: shared pages split between the processes sharing them,
so a forked worker's copy-on-write pages count once) of the run's process and its DataLoader workers, sampled every
100 ms (reading PSS takes a few ms, so not more often). Results: results/datapath_cpu.md and .json, with the 1-minute
load average before every run.
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
import threading
import time
from pathlib import Path
from typing import Any

import _common

_common.set_environment()

PACKAGES = ("torch", "torchvision", "transformers", "datasets")
SIDES = ("toolkit", "folder", "memory")
BATCH = 64
LEARNING_RATE = 2e-3
# the network of recipes/image/fashion-mnist-cnn.yaml
CNN = {
    "filters": [64, 128],
    "kernel_sizes": 3,
    "batch_norm": True,
    "pooling": "max",
    "activation": "relu",
    "dense_units": [256],
    "dropout": 0.25,
}
FLIP = 0.5  # the augmentation on every side: a random horizontal flip (label-preserving for clothes)
SMALL_EVAL = 500  # test images in the throughput runs' folders; their final evaluation is not timed


# --------------------------------------------------------------------------------------------- the PNG folders


def class_folder(name: str) -> str:
    return name.replace("/", "-")  # "T-shirt/top"


def png_folder(cache: Path, n_train: int, n_test: int) -> Path:
    """`cache`/fashion-png-<train>-<test>/{train,validation,test}/<class>/<row>.png, written when missing.

    train: the first `n_train` official training images (the file order is already shuffled); validation: the last
    200 official test images (so nothing is carved out of train and every side trains on the same images; unused by
    the timed loop); test: the first `n_test` official test images.
    """
    from hf_finetune.data.builtin import FASHION_MNIST_CLASSES, read_fashion_mnist

    root = cache / f"fashion-png-{n_train}-{n_test}"
    done = root / ".complete"
    if done.is_file():
        return root
    started = time.perf_counter()
    train_images, train_labels = read_fashion_mnist("train")
    test_images, test_labels = read_fashion_mnist("t10k")
    if n_train > len(train_labels) or n_test > len(test_labels):
        raise SystemExit(f"Fashion-MNIST has {len(train_labels)} train and {len(test_labels)} test images")
    val_rows = range(len(test_labels) - 200, len(test_labels))
    parts = {
        "train": (train_images, train_labels, range(n_train)),
        "validation": (test_images, test_labels, val_rows),
        "test": (test_images, test_labels, range(n_test)),
    }
    _common.write_png_folders(root, parts, FASHION_MNIST_CLASSES)
    done.write_text("")
    print(f"wrote {root} in {time.perf_counter() - started:.1f} s", flush=True)
    return root


# --------------------------------------------------------------------------------------------- measuring a run


class PeakMemory:
    """Largest memory of this process plus its children (DataLoader workers), per named phase, sampled in a thread:
    the sum of their proportional set sizes (PSS; RSS where the platform has no PSS). Beside it, at each phase's
    peak, how that sum splits (Linux `smaps_rollup`): anonymous pages (the heap: what the process itself holds) and
    file-backed pages (shared libraries, and the memory-mapped Arrow files of the dataset, which the kernel can drop
    and re-read at any time, so they are page cache rather than memory the run needs), and the main process's own
    share against its workers'."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process()
        self.phase = "setup"
        self.peaks: dict[str, float] = {}
        self.splits: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        """The tree's PSS in MB, with its anonymous / file-backed / main-process parts where Linux says them."""
        import psutil

        total = {"pss": 0.0, "anon": 0.0, "file": 0.0, "main": 0.0}
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):  # a worker that just exited
                parts = _smaps_rollup(p.pid)
                if parts is None:
                    # PSS: pages the forked workers share with the main process counted once, not once per process
                    info = p.memory_full_info()
                    parts = {"pss": getattr(info, "pss", info.rss) / 2**20}
                for key, mb in parts.items():
                    total[key] += mb
                if p.pid == self._proc.pid:
                    total["main"] += parts["pss"]
        return total

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            now = self.sample()
            if now["pss"] > self.peaks.get(self.phase, 0.0):
                self.peaks[self.phase] = now["pss"]
                self.splits[self.phase] = now
            time.sleep(interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}

    def split_at_peaks(self) -> dict[str, dict[str, float]]:
        return {phase: {k: round(v, 1) for k, v in parts.items()} for phase, parts in self.splits.items()}


def _smaps_rollup(pid: int) -> dict[str, float] | None:
    """PSS and its anonymous and file-backed parts in MB from /proc/PID/smaps_rollup (None off Linux)."""
    path = Path(f"/proc/{pid}/smaps_rollup")
    if not path.exists():
        return None
    fields = {}
    for line in path.read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) / 1024  # kB
    if "Pss_Anon" not in fields:  # kernels before 5.7
        return None
    return {"pss": fields["Pss"], "anon": fields["Pss_Anon"], "file": fields["Pss_File"] + fields.get("Pss_Shmem", 0)}


def reference_model(seed: int = 0) -> Any:
    """simple_cnn as the toolkit builds it, from a fixed seed: every side starts from these weights."""
    import torch

    from hf_finetune.data.builtin import FASHION_MNIST_CLASSES
    from hf_finetune.recipe import ModelSpec
    from hf_finetune.tasks import image_classification as task

    torch.manual_seed(seed)
    names = sorted(class_folder(n) for n in FASHION_MNIST_CLASSES)  # imagefolder and ImageFolder: sorted folders
    spec = ModelSpec(name="simple_cnn", pretrained=False, image_size=28, config=dict(CNN))
    return task.build_model(spec, names).model


def optimizer_for(model: Any, workers: int) -> Any:
    """Trainer's own optimizer choice for these arguments (AdamW, its kwargs), on one parameter group: the same
    on the hand-written sides (weight decay 0, so Trainer's two groups do the same work as one)."""
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(output_dir=tempfile.gettempdir(), learning_rate=LEARNING_RATE, weight_decay=0.0)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    return cls(model.parameters(), **kwargs)


def toolkit_recipe(folder: Path, out: str, workers: int, epochs: int = 1, cache: str = "off") -> dict[str, Any]:
    return {
        "name": "bench-datapath",
        "model": {"name": "simple_cnn", "pretrained": False, "image_size": 28, "config": dict(CNN)},
        # the pre-flight checks read every file once before training; not what is measured here (nor is data.cache's
        # decoding pass, which runs before the training loop)
        "data": {"source": str(folder), "check_images": False, "duplicates": "off", "cache": cache},
        "augmentation": {"horizontal_flip": FLIP},
        "training": {
            "output_dir": out,
            "num_train_epochs": epochs,
            "per_device_train_batch_size": BATCH,
            "per_device_eval_batch_size": 256,
            "learning_rate": LEARNING_RATE,
            "weight_decay": 0.0,
            "lr_scheduler_type": "constant",
            "eval_strategy": "no",
            "save_strategy": "no",
            "dataloader_num_workers": workers,
            "seed": 0,
        },
        "overwrite": True,
    }


def run_toolkit(
    folder: Path, workers: int, memory: PeakMemory, keep: Path | None, cache: str = "off"
) -> dict[str, Any]:
    from transformers import TrainerCallback

    import hf_finetune

    reference = reference_model().state_dict()
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            model.load_state_dict(reference)  # in place: Trainer's optimizer keeps these parameters
            memory.phase = "train"
            marks["begin"] = marks["end"] = time.perf_counter()
            marks["step_s"] = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["step_begin"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["end"] = time.perf_counter()
            marks["step_s"] += marks["end"] - marks["step_begin"]

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            memory.phase = "final evaluation and saving"

    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        out = str(keep) if keep else tmp
        result = hf_finetune.finetune(toolkit_recipe(folder, out, workers, cache=cache), callbacks=[Timer()])
    return {
        "loop_s": marks["end"] - marks["begin"],
        "step_s": marks["step_s"],
        "train_loss": result.metrics["train"]["train_loss"],
        "test_accuracy": next(v for k, v in result.metrics["test"].items() if k.endswith("accuracy")),
    }


def hand_transform() -> Any:
    """What a user writes for this net: the toolkit's preprocessing (resize to 28, mean/std 0.5), plus the flip."""
    import torch
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.Resize((28, 28)),
            T.RandomHorizontalFlip(FLIP),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )


def train_loop(model: Any, batches: Any, workers: int, memory: PeakMemory) -> dict[str, Any]:
    """The plain loop both hand-written sides share; `batches()` gives one epoch's (pixels, labels) batches."""
    import torch

    optimizer = optimizer_for(model, workers)
    model.train()
    loss_sum, steps, step_s = torch.zeros(()), 0, 0.0
    memory.phase = "train"
    begin = time.perf_counter()
    for pixels, labels in batches():
        step_begin = time.perf_counter()
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # Trainer's max_grad_norm default
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        steps += 1
        step_s += time.perf_counter() - step_begin
    loop_s = time.perf_counter() - begin
    return {"loop_s": loop_s, "step_s": step_s, "train_loss": float(loss_sum) / steps}


def run_folder(folder: Path, workers: int, memory: PeakMemory) -> dict[str, Any]:
    import torch
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(folder / "train"), transform=hand_transform())  # its loader converts to RGB
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    torch.manual_seed(0)
    return train_loop(reference_model(), lambda: iter(loader), workers, memory)


def run_memory(folder: Path, workers: int, memory: PeakMemory) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    files = sorted((folder / "train").glob("*/*.png"))
    classes = sorted({f.parent.name for f in files})
    # decoded, converted and normalised once, before the timed loop
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    pixels = (pixels.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    labels = torch.tensor([classes.index(f.parent.name) for f in files])

    def batches() -> Any:
        order = torch.randperm(len(labels))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            x = pixels[rows]
            flip = torch.rand(len(rows)) < FLIP
            yield torch.where(flip[:, None, None, None], x.flip(-1), x), labels[rows]

    torch.manual_seed(0)
    return train_loop(reference_model(), batches, workers, memory)


def run_eval(model_dir: Path, folder: Path, memory: PeakMemory) -> dict[str, Any]:
    import hf_finetune

    memory.phase = "eval"
    begin = time.perf_counter()
    metrics = hf_finetune.evaluate(model_dir, data=str(folder), batch_size=256)
    return {"eval_s": time.perf_counter() - begin, "metrics": {k: v for k, v in metrics.items() if k != "per_class"}}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One run, in this (fresh) process: its timings and peak memory."""
    import torch

    torch.set_num_threads(spec["threads"])
    memory = PeakMemory()
    memory.phase = "setup"
    folder = Path(spec["folder"])
    if spec["side"] == "toolkit":
        keep = Path(spec["keep"]) if spec.get("keep") else None
        out = run_toolkit(folder, spec["workers"], memory, keep, spec.get("data_cache", "off"))
    elif spec["side"] == "folder":
        out = run_folder(folder, spec["workers"], memory)
    elif spec["side"] == "memory":
        out = run_memory(folder, spec["workers"], memory)
    else:
        out = run_eval(Path(spec["model_dir"]), folder, memory)
    out["peak_memory_mb"] = memory.stop()
    out["peak_memory_split_mb"] = memory.split_at_peaks()
    if "loop_s" in out:
        out["images_per_s"] = spec["n_train"] / out["loop_s"]
    return out


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"run {spec} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**spec, **result, "load_avg_1m": load}


# --------------------------------------------------------------------------------------------- where time goes


def stage_costs(folder: Path, n: int = 2000) -> dict[str, float]:
    """Microseconds per image of each data-path stage, one process, one thread, on `n` training images."""
    import datasets
    import torch
    from PIL import Image
    from torchvision.transforms import v2 as T

    from hf_finetune.tasks import image_classification as task

    torch.set_num_threads(1)
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder))["train"]
    ds = ds.select(range(min(n, len(ds))))
    n = len(ds)
    model = reference_model()
    pre = task.preprocess_from_model(model, None)
    from hf_finetune.recipe import AugmentationSpec

    train_fn = task.build_train_transform(pre, AugmentationSpec(horizontal_flip=FLIP))
    flip_only = T.RandomHorizontalFlip(FLIP)
    to_tensor = T.Compose(
        [T.Resize((28, 28)), T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    )

    def per_image(fn: Any) -> tuple[Any, float]:
        begin = time.perf_counter()
        out = fn()
        return out, 1e6 * (time.perf_counter() - begin) / n

    raw = ds.cast_column("image", datasets.Image(decode=False))
    paths = [raw[i]["image"]["path"] for i in range(n)]
    _, decode = per_image(lambda: [Image.open(p).load() for p in paths])
    images, row_access = per_image(lambda: [ds[i]["image"] for i in range(n)])
    rgb, convert = per_image(lambda: [task.to_model_mode(im, 3) for im in images])
    _, flip = per_image(lambda: [flip_only(im) for im in rgb])
    _, tensor = per_image(lambda: [to_tensor(im) for im in rgb])
    seeded = task.BatchTransform(train_fn, 3, seed=0)
    batch = {"image": images, "label": [0] * n, task.ROW_ID: list(range(n))}
    rows, transform = per_image(lambda: seeded(batch))
    items = [{"pixel_values": p, "labels": 0} for p in rows["pixel_values"]]
    _, collate = per_image(lambda: [task.collate(items[i : i + BATCH]) for i in range(0, n, BATCH)])
    x, y = torch.stack(rows["pixel_values"][:BATCH]), torch.zeros(BATCH, dtype=torch.long)
    optimizer = optimizer_for(model, 0)
    model.train()
    for _ in range(3):  # warm-up
        model(pixel_values=x, labels=y).loss.backward()
    steps = 10
    begin = time.perf_counter()
    for _ in range(steps):
        model(pixel_values=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    step = 1e6 * (time.perf_counter() - begin) / (steps * BATCH)
    return {
        "png open + decode (PIL, from the path)": decode,
        "datasets row access + decode (imagefolder)": row_access,
        "to_model_mode (grayscale → RGB)": convert,
        "augmentation (random horizontal flip, PIL)": flip,
        "resize + to tensor + normalise": tensor,
        "toolkit train transform, seeded (flip + tensor + normalise)": transform,
        "collate (torch.stack)": collate,
        "training step, 1 thread (forward + backward + AdamW)": step,
    }


# --------------------------------------------------------------------------------------------- reporting


def median_of(runs: list[dict[str, Any]], side: str, key: str = "images_per_s") -> float:
    return statistics.median(r[key] for r in runs if r["side"] == side)


def compare_lines(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    rates = {side: median_of(runs, side) for side in SIDES}
    ratios = {
        "toolkit / folder (target >= 1.0)": rates["toolkit"] / rates["folder"],
        "memory / toolkit (target <= 1.3)": rates["memory"] / rates["toolkit"],
    }
    lines = [
        "| side | images/s, median [min–max] | step µs / image | fetch + loop µs / image | train loss "
        "| peak PSS in training (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        step = statistics.median(1e6 * r["step_s"] / r["n_train"] for r in mine)
        rest = statistics.median(1e6 * (r["loop_s"] - r["step_s"]) / r["n_train"] for r in mine)
        lines.append(
            f"| {side} | {_common.median_range([r['images_per_s'] for r in mine])} | {step:.0f} | {rest:.0f} | "
            f"{statistics.median(r['train_loss'] for r in mine):.3f} | "
            f"{statistics.median(r['peak_memory_mb'].get('train', 0) for r in mine):.0f} |"
        )
    lines += ["", *(f"- {name}: **{value:.3f}**" for name, value in ratios.items())]
    return lines, ratios


def runs_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| run | side | train images | loop (s) | of which steps (s) | images/s | peak PSS train (MB) | load 1m |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['side']} | {r['n_train']} | {r['loop_s']:.2f} | {r['step_s']:.2f} | {r['images_per_s']:.0f} | "
            f"{r['peak_memory_mb'].get('train', 0):.0f} | {r['load_avg_1m']:.2f} |"
        )
    return lines


def _anon(run: dict[str, Any], phase: str) -> float:
    """The anonymous part of a phase's peak (the heap), or nan where the platform does not say it."""
    return run.get("peak_memory_split_mb", {}).get(phase, {}).get("anon", float("nan"))


def scaling_lines(runs: list[dict[str, Any]]) -> list[str]:
    base = runs[0]
    lines = [
        "| train images | epoch (s) | s per 1k images | images/s | peak PSS in training (MB) | of which anonymous "
        "| test accuracy | load 1m |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['n_train']} | {r['loop_s']:.1f} | {1000 * r['loop_s'] / r['n_train']:.2f} | "
            f"{r['images_per_s']:.0f} | {r['peak_memory_mb'].get('train', 0):.0f} | {_anon(r, 'train'):.0f} | "
            f"{r['test_accuracy']:.3f} | {r['load_avg_1m']:.2f} |"
        )
    last = runs[-1]
    growth = (last["loop_s"] / base["loop_s"]) / (last["n_train"] / base["n_train"])
    memory = last["peak_memory_mb"].get("train", 0) / base["peak_memory_mb"].get("train", 1)
    heap = _anon(last, "train") / _anon(base, "train")
    lines += [
        "",
        f"- time per image at {last['n_train']} / at {base['n_train']}: **{growth:.2f}** (1.0 = linear)",
        f"- peak training memory at {last['n_train']} / at {base['n_train']}: **{memory:.2f}** (1.0 = flat); its "
        f"anonymous part (the heap, without the page cache of mapped files): **{heap:.2f}**",
    ]
    return lines


def eval_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| eval images | eval (s) | accuracy | peak PSS in evaluation (MB) | of which anonymous | load 1m |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        accuracy = next((v for k, v in r["metrics"].items() if k.endswith("accuracy")), float("nan"))
        lines.append(
            f"| {r['n_test']} | {r['eval_s']:.1f} | {accuracy:.3f} | {r['peak_memory_mb'].get('eval', 0):.0f} | "
            f"{_anon(r, 'eval'):.0f} | {r['load_avg_1m']:.2f} |"
        )
    small, large = runs[0], runs[-1]
    ratio = large["peak_memory_mb"].get("eval", 0) / small["peak_memory_mb"].get("eval", 1)
    heap = _anon(large, "eval") / _anon(small, "eval")
    lines += [
        "",
        f"- peak evaluation memory, {large['n_test']} / {small['n_test']} images: **{ratio:.2f}** (1.0 = flat); its "
        f"anonymous part: **{heap:.2f}**",
        "- the file-backed part of a peak is mostly shared libraries' pages, and PSS divides a shared page among "
        "every process on the machine that maps it: it moves with what else runs, not with the data",
    ]
    return lines


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 60000], help="training images per run")
    parser.add_argument(
        "--compare-size",
        type=int,
        default=None,
        help="training images of the side-by-side runs (default: 10000, or the largest --sizes below it)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="side-by-side runs per side (default: 2)")
    parser.add_argument("--eval-size", type=int, default=1000, help="the small evaluation set; the large is 10x")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (every side)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers; default: the toolkit's")
    parser.add_argument(
        "--data-cache",
        choices=("off", "decoded"),
        default="off",
        help="the toolkit side's data.cache (default: off, each image decoded every epoch)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "hf_finetune-bench")
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/datapath_cpu)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_size is None:
        below = [s for s in args.sizes if s <= 10000]
        args.compare_size = max(below) if below else min(args.sizes)
    if args.num_workers is None:
        from hf_finetune.tasks import image_classification

        args.num_workers = image_classification.training_defaults()["dataloader_num_workers"]
    if args.eval_size * 10 > 10000:
        parser.error("--eval-size: at most 1000 (the large set is 10x, and Fashion-MNIST has 10,000 test images)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    common = {"threads": args.threads, "workers": args.num_workers, "data_cache": args.data_cache}
    print(f"{args.threads} torch threads, {args.num_workers} DataLoader workers, batch {BATCH}", flush=True)

    compare_folder = png_folder(args.cache_dir, args.compare_size, SMALL_EVAL)
    costs = stage_costs(compare_folder)
    compare: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for side in SIDES:
            spec = {**common, "side": side, "folder": str(compare_folder), "n_train": args.compare_size}
            compare.append({**spawn(spec), "repeat": repeat})
            print(f"compare {side} #{repeat}: {compare[-1]['images_per_s']:.0f} images/s", flush=True)

    scaling: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-datapath-model-") as model_dir:
        for i, n in enumerate(sorted(args.sizes)):
            folder = png_folder(args.cache_dir, n, SMALL_EVAL)
            keep = {"keep": model_dir} if i == 0 else {}
            scaling.append(spawn({**common, **keep, "side": "toolkit", "folder": str(folder), "n_train": n}))
            print(f"scaling {n}: {scaling[-1]['loop_s']:.1f} s, {scaling[-1]['peak_memory_mb']}", flush=True)
        evals = []
        for n_test in (args.eval_size, 10 * args.eval_size):
            folder = png_folder(args.cache_dir, 0, n_test)
            evals.append(
                spawn(
                    {**common, "side": "eval", "folder": str(folder / "test"), "model_dir": model_dir, "n_test": n_test}
                )
            )
            print(f"eval {n_test}: {evals[-1]['eval_s']:.1f} s, {evals[-1]['peak_memory_mb']}", flush=True)

    machine = _common.machine_info(PACKAGES, threads=args.threads, workers=args.num_workers)
    compare_md, ratios = compare_lines(compare)
    markdown = [
        "# Image data path: toolkit vs ImageFolder loop vs in-memory tensors; cost vs work",
        "",
        f"Command: `{_common.command_line('datapath.py', argv if argv is not None else sys.argv[1:])}`",
        *_common.machine_lines(machine, PACKAGES),
        f"- code: {_common.describe_git(_common.git_state())}",
        f"- {args.threads} torch threads, {args.num_workers} DataLoader workers, batch {BATCH}, simple_cnn "
        f"{CNN['filters']} at 28 px, random horizontal flip {FLIP}, toolkit data.cache: {args.data_cache}",
        "",
        f"## Side by side: one epoch of {args.compare_size} PNG images ({args.repeats} alternating runs per side)",
        "",
        *compare_md,
        "",
        *runs_lines(compare),
        "",
        "## Where the time goes: microseconds per image, one process, one thread",
        "",
        "| stage | µs / image |",
        "|---|---:|",
        *(f"| {name} | {us:.1f} |" for name, us in costs.items()),
        "",
        "## Toolkit: one epoch at each size",
        "",
        *scaling_lines(scaling),
        "",
        f"## Evaluation of the {min(args.sizes)}-image model: {args.eval_size} vs {10 * args.eval_size} test images",
        "",
        *eval_lines(evals),
        "",
    ]
    payload = {
        "machine": machine,
        "git": _common.git_state(),
        "settings": _common.settings(args),
        "ratios": ratios,
        "stage_costs_us": costs,
        "compare": compare,
        "scaling": scaling,
        "eval": evals,
    }
    stem = args.output or _common.RESULTS_DIR / "datapath_cpu"
    json_path, md_path = _common.write_results(stem, payload, markdown)
    print("\n".join(markdown))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
