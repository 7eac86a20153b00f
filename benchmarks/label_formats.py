"""Strong simple baselines for the four label-format quickstarts, on exactly the splits those recipes train and test on.

For each of digits-multilabel, digits-regression, tweets-multilabel and tweets-regression the recipe's own data
section is loaded with the toolkit's `load_data` (same train/validation/test rows, same caps), then:

- multi-label: one logistic regression per label (scikit-learn, C picked on validation by mAP), each label's
  threshold tuned on validation with the toolkit's `tune_thresholds`, scored on test by the toolkit's
  `MultiLabelMetrics`; next to the constant prevalence baseline (the toolkit's `baseline` entry);
- regression: ridge regression (alpha picked on validation by RMSE) scored by the toolkit's `RegressionMetrics`, next
  to always predicting train's mean; for the digits also a multinomial logistic regression on the digit whose
  predicted class is the value (the digit is a class; regressing on it is the harder way to get it);

on features that take no training: the raw 8×8 pixels for the digits, and MiniLM's frozen mean-pooled sentence
embedding for the tweets (the model the text recipes fine-tune). `--runs DIR` adds the toolkit's own test figures
from DIR/<recipe>/metrics.json (`hf-finetune train <recipe> --output-dir DIR/<recipe>`).

    python benchmarks/label_formats.py --runs /tmp/h4runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import _common

RECIPES = ("digits-multilabel", "digits-regression", "tweets-multilabel", "tweets-regression")
MULTI_KEYS = ("f1_micro", "f1_macro", "map", "subset_accuracy", "hamming_loss")
REGRESSION_KEYS = ("mae", "rmse", "r2", "pearson", "spearman")
C_GRID = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)  # wide enough that no choice sits on an edge of the grid
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 1e4, 1e5)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=None, help="folder with one trained output folder per recipe")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--output", type=Path, default=_common.RESULTS_DIR / "label_formats")
    return parser.parse_args(argv)


def load_splits(name: str) -> tuple[Any, Any]:
    """(the recipe, the toolkit's LoadedData for its data section)."""
    from hf_finetune.data.sources import load_data
    from hf_finetune.recipe import load_recipe
    from hf_finetune.tasks import image_classification, text_classification

    recipe = load_recipe(name)
    task = image_classification if recipe.task == "image-classification" else text_classification
    return recipe, load_data(recipe.data, task.INPUTS)


def pixel_features(split: Any) -> Any:
    import numpy as np

    return np.stack([np.asarray(image, dtype=np.float32).ravel() / 255.0 for image in split["image"]])


def minilm_features(split: Any, batch_size: int = 64) -> Any:
    """MiniLM's mean-pooled last hidden states (sentence-transformers' all-MiniLM-L6-v2 embedding, unnormalised)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hf_finetune.tasks.text_classification import resolve_model_name

    path = resolve_model_name("builtin:all-MiniLM-L6-v2")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts, rows = split["text"], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            rows.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(rows).numpy()


def features(recipe: Any, data: Any) -> dict[str, Any]:
    extract = pixel_features if recipe.task == "image-classification" else minilm_features
    return {split: extract(ds) for split, ds in data.splits.items()}


def multi_label(recipe: Any, data: Any, x: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from transformers import EvalPrediction

    from hf_finetune.data.labels import multi_hot
    from hf_finetune.multilabel_metrics import MultiLabelMetrics, tune_thresholds

    names = data.label_names
    y = {split: multi_hot(ds) for split, ds in data.splits.items()}
    scaler = StandardScaler().fit(x["train"])
    xs = {split: scaler.transform(v) for split, v in x.items()}

    def logits(c: float) -> dict[str, Any]:
        out = {split: np.zeros((len(v), len(names))) for split, v in xs.items()}
        for j in range(len(names)):
            model = LogisticRegression(C=c, max_iter=2000).fit(xs["train"], y["train"][:, j])
            for split, v in xs.items():
                out[split][:, j] = model.decision_function(v)  # log-odds: the metrics apply the sigmoid
        return out

    def score(split: str, z: dict[str, Any], thresholds: Any = 0.5) -> dict[str, Any]:
        metrics = MultiLabelMetrics(names, thresholds)
        return metrics(EvalPrediction(predictions=z[split], label_ids=y[split])), metrics

    tried = {c: logits(c) for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: score("validation", tried[c])[0]["map"])
    z = tried[best_c]
    _, validation = score("validation", z)
    choice = tune_thresholds(validation)
    test, _ = score("test", z, list(choice.thresholds))
    # the prevalence baseline as the toolkit defines it: train's share of each label as the score, and the labels
    # with a share >= 0.5 predicted
    prevalence = y["train"].mean(0)
    constant = np.log(np.clip(prevalence, 1e-6, 1 - 1e-6) / np.clip(1 - prevalence, 1e-6, 1))
    base, _ = score("test", {"test": np.tile(constant, (len(y["test"]), 1))}, 0.5)
    return {
        "model": f"logistic regression per label (C={best_c}, by validation mAP), thresholds tuned on validation",
        "test": {k: float(test[k]) for k in MULTI_KEYS},
        "prevalence": {k: float(base[k]) for k in MULTI_KEYS},
        "thresholds": choice.as_dict(),
        "rows": {split: len(v) for split, v in y.items()},
    }


def regression(recipe: Any, data: Any, x: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler
    from transformers import EvalPrediction

    from hf_finetune.data.labels import targets, unstandardize
    from hf_finetune.regression_metrics import RegressionMetrics

    y = {split: targets(ds) for split, ds in data.splits.items()}
    if data.target_scaler is not None:  # the user's units
        y = {split: unstandardize(v, data.target_scaler) for split, v in y.items()}
    scaler = StandardScaler().fit(x["train"])
    xs = {split: scaler.transform(v) for split, v in x.items()}

    def score(predictions: Any, split: str = "test") -> dict[str, float]:
        result = RegressionMetrics(data.label_names)(EvalPrediction(predictions=predictions, label_ids=y[split]))
        return {k: float(result[k]) for k in REGRESSION_KEYS}

    fits = {a: Ridge(alpha=a).fit(xs["train"], y["train"]) for a in ALPHA_GRID}
    best_alpha = min(ALPHA_GRID, key=lambda a: score(fits[a].predict(xs["validation"]), "validation")["rmse"])
    out = {
        "model": f"ridge regression (alpha={best_alpha}, by validation RMSE)",
        "test": score(fits[best_alpha].predict(xs["test"])),
        "mean": score(np.full(len(y["test"]), y["train"].mean())),
        "rows": {split: len(v) for split, v in y.items()},
    }
    if recipe.data.source == "builtin:digits":
        classes = np.rint(y["train"]).astype(int)
        fits = {c: LogisticRegression(C=c, max_iter=3000).fit(xs["train"], classes) for c in C_GRID}

        def value(c: float, split: str) -> Any:
            return fits[c].classes_[fits[c].predict_proba(xs[split]).argmax(1)].astype(float)

        best_c = min(C_GRID, key=lambda c: score(value(c, "validation"), "validation")["rmse"])
        out["classifier"] = {
            "model": f"multinomial logistic regression on the digit (C={best_c}), predicted class as the value",
            "test": score(value(best_c, "test")),
        }
    return out


def toolkit_figures(runs: Path | None, name: str) -> dict[str, Any] | None:
    if runs is None or not (runs / name / "metrics.json").is_file():
        return None
    saved = json.loads((runs / name / "metrics.json").read_text())
    test = saved.get("test") or saved.get("eval")
    keys = MULTI_KEYS if "f1_micro" in test else REGRESSION_KEYS
    return {
        "test": {k: test.get(k) for k in keys},
        "baseline": {k: (test.get("baseline") or {}).get(k) for k in keys},
        "train_runtime_s": (saved.get("train") or {}).get("train_runtime"),
    }


def markdown(results: dict[str, Any], machine: dict[str, Any], argv: list[str]) -> list[str]:
    lines = [
        "# Label-format quickstarts vs simple baselines (test split)",
        "",
        f"- command: `{_common.command_line('label_formats.py', argv)}`",
        *_common.machine_lines(machine, ("torch", "transformers", "sklearn")),
        f"- code: {_common.describe_git(machine['git'])}",
        "",
    ]
    for name, r in results.items():
        keys = MULTI_KEYS if "prevalence" in r else REGRESSION_KEYS
        lines += [f"## {name}", "", f"rows: {r['rows']}", "", "| model | " + " | ".join(keys) + " |"]
        lines.append("|---" * (len(keys) + 1) + "|")

        constant = r.get("prevalence") or r.get("mean")

        def row(label: str, values: dict[str, Any] | None, keys: tuple[str, ...] = keys) -> str:
            cells = ["" if values is None or values.get(k) is None else f"{values[k]:.3f}" for k in keys]
            return f"| {label} | " + " | ".join(cells) + " |"

        lines.append(row("constant (train prevalence)" if "prevalence" in r else "constant (train mean)", constant))
        lines.append(row(r["model"], r["test"]))
        if "classifier" in r:
            lines.append(row(r["classifier"]["model"], r["classifier"]["test"]))
        if r.get("toolkit"):
            runtime = r["toolkit"].get("train_runtime_s")
            took = f", trained in {runtime:.0f} s" if runtime else ""
            lines.append(row(f"**the recipe** (hf-finetune train {name}{took})", r["toolkit"]["test"]))
        lines.append("")
    return lines


def main(argv: list[str]) -> int:
    _common.set_environment()
    args = parse_args(argv)
    results = {}
    for name in args.recipes:
        start = time.perf_counter()
        recipe, data = load_splits(name)
        x = features(recipe, data)
        baseline = multi_label if recipe.data.label_format == "multi_label" else regression
        result = baseline(recipe, data, x)
        result["toolkit"] = toolkit_figures(args.runs, name)
        result["seconds"] = time.perf_counter() - start
        results[name] = result
        print(f"{name}: {json.dumps(result['test'])} ({result['seconds']:.0f} s)", flush=True)
    machine = _common.machine_info(("torch", "transformers", "sklearn"), git=_common.git_state())
    payload = {"settings": _common.settings(args), "machine": machine, "results": results}
    json_path, md_path = _common.write_results(args.output, payload, markdown(results, machine, argv))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
