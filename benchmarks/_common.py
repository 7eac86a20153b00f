"""What every benchmark script shares: its environment, the machine and code it ran on, and how it writes results.

Each script keeps only what it measures. Imported as `_common`: running `python benchmarks/x.py` puts benchmarks/
first on sys.path. torch and the Hugging Face libraries are imported inside the functions, so that a script's
`set_environment()` still comes before OpenMP starts and `--help` stays quick.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    import numpy as np
    import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def set_environment() -> None:
    """Called before torch is imported: OpenMP reads OMP_WAIT_POLICY once, at start-up; child processes inherit it.

    PASSIVE stops idle OpenMP threads from spinning: on a 2-core box a spinning pool and a DataLoader worker (or a
    second process) fight for the same cores and a 2-thread step can slow down 10×. The offline switches: without
    them, any Hub lookup waits 20–45 s before failing on machines with no network.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ.setdefault(var, "1")


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() is the best there is
    return cpu


def machine_info(packages: Sequence[str], **extra: object) -> dict[str, Any]:
    """CPU, cores, platform, the versions of `packages` (importing them), the OpenMP policy, the date, then `extra`."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: importlib.import_module(name).__version__ for name in packages},
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def machine_lines(
    machine: dict[str, Any], packages: Sequence[str], cores_note: str = "", date_note: str = ""
) -> list[str]:
    """The results page's machine, versions and date lines for a `machine_info(packages)`."""
    versions = ", ".join(f"{name} {machine[name]}" for name in packages)
    return [
        f"- machine: {machine['cpu']}, {machine['cores']} cores{cores_note}, {machine['platform']}",
        f"- versions: python {machine['python']}, {versions}",
        f"- date: {machine['date']}; OMP_WAIT_POLICY={machine['OMP_WAIT_POLICY']}{date_note}",
    ]


def git_state() -> dict[str, Any]:
    """The commit and the package files that differ from it: other people's edits change what is measured."""

    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--", "hf_finetune")
    return {"commit": commit or None, "package_changes": changes.splitlines() if changes else []}


def describe_git(state: dict[str, Any]) -> str:
    """`git_state()` in a few words: the numbers belong to that code, edits included."""
    if state["commit"] is None:
        return "unknown (not a git checkout)"
    changed = state["package_changes"]
    return state["commit"] + (f" + {len(changed)} modified package files" if changed else "")


def weight_checksum(model: torch.nn.Module) -> float:
    """The sum of every floating-point weight: equal sums show that two runs started from the same model."""
    import torch

    with torch.no_grad():
        return float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))


def same_checksums(checksums: Iterable[float]) -> bool:
    """All equal to the first, up to float summation order."""
    values = list(checksums)
    return all(abs(c - values[0]) <= 1e-9 * max(1.0, abs(values[0])) for c in values)


def median_range(values: Sequence[float], digits: int = 1) -> str:
    """`median [min–max]`, a table cell over repeats."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def command_line(script: str, argv: Sequence[str]) -> str:
    """How the run was started, for the results page; `script` is the file's name."""
    return f"python benchmarks/{script} {' '.join(argv)}".strip()


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options for the JSON results: paths as strings, the results file stem (`output`) left out."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"}


def write_results(stem: Path, payload: dict[str, Any], markdown: Sequence[str]) -> tuple[Path, Path]:
    """`stem`.json (every number) and `stem`.md (the page a person reads, one line per item); returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    return json_path, md_path


def stratified(labels: np.ndarray, per_class: Sequence[int], seed: int) -> list[list[int]]:
    """Disjoint per-class draws: for each count in `per_class`, that many row indices of every class (0..max label)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in per_class]
    for c in range(int(labels.max()) + 1):
        rows = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for part, n in zip(parts, per_class, strict=True):
            if start + n > len(rows):
                raise SystemExit(f"class {c} has {len(rows)} rows, asked for {sum(per_class)}")
            part.extend(int(i) for i in rows[start : start + n])
            start += n
    return [sorted(p) for p in parts]


def write_image_split(
    path: Path, images: np.ndarray, labels: np.ndarray, rows: Sequence[int], names: Sequence[str]
) -> None:
    """A parquet file with an `image` (PNG, grayscale as in the source) and a `label` (class name) column.

    The toolkit converts grayscale to RGB and resizes with the model's own preprocessing, as it would a user's files.
    """
    import io

    import datasets
    from PIL import Image

    def png(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array, mode="L").save(buf, format="PNG")
        return buf.getvalue()

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": png(images[i]), "path": None} for i in rows],
            "label": [names[int(labels[i])] for i in rows],
        },
        features=features,
    )
    ds.to_parquet(str(path))


def fashion_mnist_subset(folder: Path, per_class: tuple[int, int, int], seed: int) -> dict[str, Any]:
    """train / validation / test parquet files in `folder`, class-balanced: (train, validation, test) per class.

    train and validation are disjoint draws from Fashion-MNIST's official train set, test from its test set (the
    idx files of Debian's dataset-fashion-mnist, read by the toolkit's `builtin:fashion_mnist` reader).
    """
    from hf_finetune.data.builtin import FASHION_MNIST_CLASSES, read_fashion_mnist

    names = list(FASHION_MNIST_CLASSES)  # the idx files' label order; the names become the model's id2label
    train_images, train_labels = read_fashion_mnist("train")
    test_images, test_labels = read_fashion_mnist("t10k")
    train_rows, val_rows = stratified(train_labels, per_class[:2], seed)
    (test_rows,) = stratified(test_labels, per_class[2:], seed)
    files = {split: folder / f"{split}.parquet" for split in ("train", "validation", "test")}
    write_image_split(files["train"], train_images, train_labels, train_rows, names)
    write_image_split(files["validation"], train_images, train_labels, val_rows, names)
    write_image_split(files["test"], test_images, test_labels, test_rows, names)
    return {
        "files": {k: str(v) for k, v in files.items()},
        "rows": {"train": len(train_rows), "validation": len(val_rows), "test": len(test_rows)},
        # the exact rows drawn, so a rerun (or another script) can check it used the same subset
        "source_rows": {"train": train_rows, "validation": val_rows, "test (t10k)": test_rows},
    }


def fetch_once(url: str, path: Path, hint: str) -> Path:
    """`path`, downloaded from `url` the first time (a cached copy after); `hint` says how to do without the network."""
    import urllib.request

    if not path.is_file():
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
        except OSError as err:
            raise SystemExit(f"could not fetch {url} ({err}); {hint}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return path


def write_png_folders(
    root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray, Iterable[int]]], names: Sequence[str]
) -> None:
    """`root`/<split>/<class>/<row>.png for each split's (images, labels, rows): a user's image-folder layout, with
    every class folder made even where a split draws none of it. A "/" in a class name ("T-shirt/top") becomes "-"."""
    from PIL import Image

    folders = [name.replace("/", "-") for name in names]
    for split, (images, labels, rows) in parts.items():
        for name in folders:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in rows:
            Image.fromarray(images[i], mode="L").save(root / split / folders[int(labels[i])] / f"{i:05d}.png")
