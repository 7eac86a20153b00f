"""The duplicate check's cost on Fashion-MNIST (issue 15 item 5), and what it finds.

The 70,000 official images (60,000 train + 10,000 test, stored as PNG bytes by `builtin:fashion_mnist`) go through
`hf_finetune.data.duplicates.find_duplicates` with 1 and with 2 processes (`num_proc`), back to back; then one epoch
of the shipped fashion-mnist-cnn recipe on the same 60,000 train images (validation carved as the recipe does)
gives the yardstick: the check's time as a fraction of one training epoch. Reported: seconds, the speed-up of 2
processes over 1, the comparisons the near search made against n²/2, and the groups found.

    apt-get install -y dataset-fashion-mnist
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 python benchmarks/duplicates.py
    python benchmarks/duplicates.py --no-epoch        # the check only

Results: results/duplicates_cpu.{json,md}. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

RECIPE = _common.REPO / "recipes" / "image" / "fashion-mnist-cnn.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="num_proc values (default 1 2)")
    parser.add_argument("--no-epoch", action="store_true", help="skip the training epoch the cost is compared with")
    parser.add_argument("--output", default="duplicates_cpu", help="results file stem under benchmarks/results/")
    return parser.parse_args(argv)


def check(processes: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from hf_finetune.data.builtin import load_fashion_mnist
    from hf_finetune.data.duplicates import find_duplicates

    splits = dict(load_fashion_mnist())
    runs, report = [], None
    for n in processes:
        started = time.perf_counter()
        report = find_duplicates(splits, "image", num_proc=n if n > 1 else None)
        runs.append({"num_proc": n, "seconds": time.perf_counter() - started})
    assert report is not None
    rows = sum(report.rows.values())
    found = {
        "rows": report.rows,
        "counts": report.counts,
        "comparisons": report.comparisons,
        "all_pairs": rows * (rows - 1) // 2,
        "examples": report.lines(limit=5),
    }
    return runs, found


def one_epoch(folder: Path) -> float:
    import hf_finetune as hff

    training = {"num_train_epochs": 1, "output_dir": str(folder / "model"), "disable_tqdm": True}
    started = time.perf_counter()
    # the check itself off: the epoch is the yardstick, not a second measurement of the check
    result = hff.finetune(str(RECIPE), data={"duplicates": "off"}, training=training)
    return float(result.metrics["train"].get("train_runtime") or time.perf_counter() - started)


def markdown(payload: dict[str, Any]) -> list[str]:
    runs, found = payload["runs"], payload["found"]
    base = runs[0]["seconds"]
    lines = [
        "# The duplicate check on Fashion-MNIST",
        "",
        f"{sum(found['rows'].values()):,} images (train {found['rows']['train']:,}, test {found['rows']['test']:,}), "
        "exact (decoded pixels) and near (dHash within 2 bits, 16×16 thumbnails within 3 grey levels) duplicates "
        "within and across the splits.",
        "",
        "| processes | seconds | speed-up | vs one training epoch |",
        "|---|---|---|---|",
    ]
    epoch = payload.get("epoch_seconds")
    for r in runs:
        share = f"{r['seconds'] / epoch:.2f}×" if epoch else "n/a"
        lines.append(f"| {r['num_proc']} | {r['seconds']:.1f} | {base / r['seconds']:.2f}× | {share} |")
    c = found["counts"]
    lines += [
        "",
        f"- one epoch of the fashion-mnist-cnn recipe: {epoch:.1f} s" if epoch else "- epoch not measured",
        f"- near search: {found['comparisons']:,} comparisons of distinct hashes, against {found['all_pairs']:,} "
        "pairs of rows",
        f"- found: {c['exact_cross']} exact and {c['near_cross']} near groups across train/test, {c['exact_within']} "
        f"exact and {c['near_within']} near within a split, {c['conflicting']} with conflicting labels "
        f"({c['rows_in_groups']:,} rows)",
        *[f"  - {line}" for line in found["examples"][1:]],
        "",
        *_common.machine_lines(payload["machine"], ("torch", "datasets")),
        f"- command: `{payload['command']}`",
        f"- code: {_common.describe_git(payload['git'])}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    _common.set_environment()
    args = parse_args(argv)
    runs, found = check(args.processes)
    payload: dict[str, Any] = {"runs": runs, "found": found}
    if not args.no_epoch:
        with tempfile.TemporaryDirectory() as tmp:
            payload["epoch_seconds"] = one_epoch(Path(tmp))
    payload |= {
        "settings": _common.settings(args),
        "machine": _common.machine_info(("torch", "datasets")),
        "git": _common.git_state(),
        "command": _common.command_line("duplicates.py", sys.argv[1:] if argv is None else argv),
    }
    page = markdown(payload)
    _common.write_results(_common.RESULTS_DIR / args.output, payload, page)
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
