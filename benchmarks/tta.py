"""What test-time augmentation buys on Fashion-MNIST, and what it costs (issue 14 item 4).

One model — the shipped `fashion-mnist-cnn` recipe, trained with horizontal flips (Fashion-MNIST's clothes are
mirror-symmetric, so a flip is label-preserving) on a capped train split — is evaluated on the whole official test
set (10,000 images) three times, back to back in one process: without TTA, with `flip` (2 views) and with `crops`
(6 views), through `hf_finetune.evaluate(..., tta=...)`, the code `hf-finetune eval --tta` runs. Reported per setting:
accuracy, macro-F1, log loss, ECE, Brier, and the scoring pass's time per image as a ratio to one view (Trainer's
`eval_runtime`, the median of --repeats interleaved passes: the test images read and preprocessed, and the model run
on every view; loading the data and the model, which TTA does not change, is outside it).

    apt-get install -y dataset-fashion-mnist
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 python benchmarks/tta.py
    python benchmarks/tta.py --train-rows 6000 --epochs 1 --repeats 1        # a quicker look

Results: results/tta_cpu.{json,md}. About 10 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

RECIPE = _common.REPO / "recipes" / "image" / "fashion-mnist-cnn.yaml"
SETTINGS = ("none", "flip", "crops")
REPORTED = ("accuracy", "f1_macro", "log_loss", "ece", "brier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=20000, help="data.max_train_samples (default 20000)")
    parser.add_argument("--epochs", type=float, default=3, help="training.num_train_epochs (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed scoring passes per setting (default 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    parser.add_argument("--output", default="tta_cpu", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def train(folder: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    import hf_finetune as hff

    overrides = {
        "data": {"max_train_samples": args.train_rows},
        "augmentation": {"horizontal_flip": 0.5},
        "training": {"num_train_epochs": args.epochs, "output_dir": str(folder / "model"), "disable_tqdm": True},
    }
    started = time.perf_counter()
    result = hff.finetune(str(RECIPE), **overrides)
    return result.output_dir, {"seconds": time.perf_counter() - started, "overrides": overrides}


def score(out: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import hf_finetune as hff

    rows: dict[str, dict[str, Any]] = {}
    runtimes: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every setting alike
        for setting in SETTINGS:
            result = hff.evaluate(out, split="test", batch_size=args.batch_size, tta=setting)
            runtimes[setting].append(result["runtime"])
            rows[setting] = {k: result[k] for k in REPORTED} | {"rows": result["num_samples"]}
    for setting in SETTINGS:
        median = statistics.median(runtimes[setting])
        rows[setting] |= {
            "runtimes": runtimes[setting],
            "ms_per_image": 1000 * median / rows[setting]["rows"],
            "time_ratio": median / statistics.median(runtimes["none"]),
        }
    return rows


def markdown(rows: dict[str, dict[str, Any]], payload: dict[str, Any]) -> list[str]:
    n = rows["none"]["rows"]
    lines = [
        "# Test-time augmentation on Fashion-MNIST",
        "",
        f"The fashion-mnist-cnn recipe trained on {payload['train_rows']:,} rows for {payload['epochs']:g} epochs with "
        f"horizontal flips (training took {payload['training']['seconds']:.0f} s), scored on the official test set "
        f"({n:,} images) with each TTA setting. Time: the scoring pass (reading, preprocessing, the model on every "
        f"view), median over {payload['repeats']} passes, "
        "as a ratio to one view.",
        "",
        "| TTA | views | accuracy | macro-F1 | log loss | ECE | Brier | ms / image | time vs none |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    from hf_finetune.tta import VIEW_COUNTS

    for setting, r in rows.items():
        lines.append(
            f"| {setting} | {VIEW_COUNTS[setting]} | {r['accuracy']:.4f} | {r['f1_macro']:.4f} | {r['log_loss']:.4f} "
            f"| {r['ece']:.4f} | {r['brier']:.4f} | {r['ms_per_image']:.3f} | {r['time_ratio']:.2f}× |"
        )
    none = rows["none"]
    lines += [""]
    for setting in ("flip", "crops"):
        r = rows[setting]
        errors = (1 - none["accuracy"]) * n, (1 - r["accuracy"]) * n
        lines.append(
            f"- {setting}: accuracy {100 * (r['accuracy'] - none['accuracy']):+.2f} points "
            f"({errors[0]:.0f} → {errors[1]:.0f} errors), log loss {r['log_loss'] - none['log_loss']:+.4f}, "
            f"ECE {r['ece'] - none['ece']:+.4f}, at {r['time_ratio']:.2f}× the scoring time"
        )
    lines += ["", *_common.machine_lines(payload["machine"], ("torch", "transformers")), ""]
    lines.append(f"- command: `{payload['command']}`")
    lines.append(f"- code: {_common.describe_git(payload['git'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    _common.set_environment()
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out, training = train(Path(tmp), args)
        rows = score(out, args)
    payload = {
        "train_rows": args.train_rows,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "training": training,
        "results": rows,
        "settings": _common.settings(args),
        "machine": _common.machine_info(("torch", "transformers")),
        "git": _common.git_state(),
        "command": _common.command_line("tta.py", sys.argv[1:] if argv is None else argv),
    }
    page = markdown(rows, payload)
    _common.write_results(_common.RESULTS_DIR / args.output, payload, page)
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
