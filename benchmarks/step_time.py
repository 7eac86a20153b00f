"""Training-step time: hf_finetune (transformers Trainer) against a hand-written PyTorch loop, in one process.

Both sides train the same model (same architecture and the same initial weights), on the same training split,
with the same train transform, collate function, DataLoader settings, optimizer (class, hyper-parameters, weight-decay
groups), gradient clipping, LR scheduler and batch size. What differs is only the loop around them: Trainer +
accelerate + callbacks against ~15 lines of plain PyTorch. Runs alternate (toolkit, plain, toolkit, plain, …) so that
a load change on the machine hits both sides, and every number is a median.

    python benchmarks/step_time.py                       # defaults: resnet18, 64 px, batch 32, 40 steps, 3 repeats
    python benchmarks/step_time.py --steps 60 --repeats 3 --batch-size 64

Timed spans, identical on both sides:
  step only        start of the step → end of the optimizer step: forward, backward, clipping, optimizer and
                   scheduler step, zero_grad (Trainer: `on_step_begin` → `on_step_end`). Data fetch excluded.
  step incl. data  end of the previous step → end of this step: the above plus fetching the next batch from the
                   DataLoader (Trainer: also its between-step bookkeeping and log/save/eval checks).
  loop             start of the training loop (just before the first DataLoader iterator is created; Trainer:
                   `on_train_begin`) → end of the last step, every step counted, worker start-up and warm-up included.
Per-step numbers skip the first `--warmup` steps of every run. Data loading, model building, the toolkit's final
evaluation and output writing happen outside every span and are never counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _common
from _common import weight_checksum

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from hf_finetune.recipe import Recipe

# all torch imports below are inside functions, so this still comes first
_common.set_environment()

PACKAGES = ("torch", "transformers", "accelerate", "timm")
TOOLKIT, PLAIN = "toolkit", "plain"
EVAL_SAMPLES = 32  # rows kept per evaluation split; the toolkit's final evaluation is never timed
# Weight-decay exclusions of transformers' `Trainer.get_decay_parameter_names` (5.x): the plain loop builds the same
# two parameter groups, so both optimizers do identical work per step. Verified at run time (`optimizer_signature`).
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


@dataclass
class Timings:
    """What one run measured; the same fields are filled by the Trainer callback and by the plain loop."""

    step_only: list[float] = field(default_factory=list)  # seconds per step, data fetch excluded
    incl_data: list[float] = field(default_factory=list)  # seconds from the previous step's end to this step's end
    loop_start: float = 0.0
    loop_end: float = 0.0
    threads: int = 0  # torch.get_num_threads() seen inside the loop (Trainer/accelerate must not change it)
    optimizer: dict[str, Any] = field(default_factory=dict)
    init_checksum: float = 0.0  # sum of all initial weights, to show both sides started from the same model

    def begin_loop(self) -> None:
        import torch

        self.threads = torch.get_num_threads()
        self.loop_start = self.last_end = time.perf_counter()

    def begin_step(self) -> None:
        self._step_begin = time.perf_counter()

    def end_step(self) -> None:
        now = time.perf_counter()
        self.step_only.append(now - self._step_begin)
        self.incl_data.append(now - self.last_end)
        self.last_end = self.loop_end = now


@dataclass
class RunResult:
    side: str
    repeat: int
    steps: int
    measured_steps: int
    step_only_ms: float  # median over the measured steps
    incl_data_ms: float
    loop_s: float
    images_per_s: float  # end to end: every image of every step / loop seconds
    threads: int
    train_loss: float
    load_avg_1m: float  # the machine's 1-minute load average just before this run
    call_s: float | None = None  # toolkit only: the whole finetune() call (setup, final eval, writing outputs)
    # every step's seconds, warm-up included, so a reader can see outliers and drift the medians hide
    step_only_s: list[float] = field(default_factory=list)
    incl_data_s: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- shared setup


def build_recipe(args: argparse.Namespace, output_dir: str) -> Recipe:
    """The recipe both sides use; the plain loop reads its data, model and optimizer settings from it."""
    from hf_finetune.recipe import load_recipe

    return load_recipe(
        {
            "name": "bench-step-time",
            "model": {"name": args.model, "pretrained": False, "image_size": args.image_size},
            "data": {
                "source": "builtin:digits",
                # pre-flight image checks and the final evaluation are not timed; keep them short
                "check_images": False,
                "max_eval_samples": EVAL_SAMPLES,
            },
            "training": {
                "output_dir": output_dir,
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch_size,
                # one full eval batch: Trainer applies dataloader_drop_last to evaluation too, and an eval split
                # smaller than one batch would then be skipped entirely (no metrics; finetune() fails at the card)
                "per_device_eval_batch_size": EVAL_SAMPLES,
                "learning_rate": 1e-3,
                "weight_decay": 0.01,
                "lr_scheduler_type": "constant",
                # evaluation and checkpoints inside the loop would be timed on the toolkit side only
                "eval_strategy": "no",
                "save_strategy": "no",
                # written out so that both sides read one value, not the toolkit's default on one side only
                "dataloader_num_workers": args.num_workers,
                # every timed step sees a full batch, so per-step medians and images/s compare like with like
                "dataloader_drop_last": True,
                "seed": 0,
            },
            "overwrite": True,
        }
    )


def optimizer_signature(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Class, per-group hyper-parameters and parameter counts: equal on both sides means equal optimizer work."""
    # Trainer's optimizer is wrapped by accelerate (AcceleratedOptimizer); what steps is the one inside.
    optimizer = getattr(optimizer, "optimizer", optimizer)
    groups = [
        {
            "params": sum(p.numel() for p in g["params"]),
            **{k: g.get(k) for k in ("lr", "weight_decay", "betas", "eps", "fused", "foreach", "amsgrad")},
        }
        for g in optimizer.param_groups
    ]
    return {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", "groups": groups}


def set_threads(threads: int) -> None:
    import torch

    # Re-applied before every run: one side must not inherit a thread setting the other side changed.
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------- the two sides


def make_timer_callback(timings: Timings, reference_state: dict[str, torch.Tensor]) -> TrainerCallback:
    """A TrainerCallback that gives Trainer's model the reference weights and times its steps."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            # In-place copy: the optimizer Trainer already built keeps pointing at these parameters.
            model.load_state_dict(reference_state)
            timings.init_checksum = weight_checksum(model)
            timings.optimizer = optimizer_signature(kwargs["optimizer"])
            timings.begin_loop()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timings.begin_step()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            timings.end_step()

    return StepTimer()


def run_toolkit(args: argparse.Namespace, reference_state: dict[str, torch.Tensor]) -> tuple[Timings, float, float]:
    """One `hf_finetune.finetune` call; returns its timings, the mean train loss and the whole call's seconds."""
    import hf_finetune

    timings = Timings()
    with tempfile.TemporaryDirectory(prefix="bench-step-time-") as out:
        started = time.perf_counter()
        result = hf_finetune.finetune(
            build_recipe(args, out), callbacks=[make_timer_callback(timings, reference_state)]
        )
        call_s = time.perf_counter() - started
    return timings, float(result.metrics["train"]["train_loss"]), call_s


@dataclass
class PlainSetup:
    """Everything the plain loop needs, built once with the toolkit's own functions (not timed)."""

    model_factory: Callable[[], torch.nn.Module]
    train_dataset: datasets.Dataset
    training_args: TrainingArguments  # resolved exactly as finetune() resolves them
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]


def prepare_plain(args: argparse.Namespace) -> tuple[PlainSetup, dict[str, torch.Tensor], int]:
    """Data, transforms and model exactly as `hf_finetune.api.finetune` builds them (same calls, same order).

    Returns the setup, the reference initial weights both sides start from, and the training-set size.
    """
    import copy

    import torch

    from hf_finetune.data import sources
    from hf_finetune.tasks import image_classification as task
    from hf_finetune.trainer import build_training_args, training_defaults

    recipe = build_recipe(args, tempfile.gettempdir())
    data = sources.load_data(recipe.data, task.INPUTS)
    torch.manual_seed(0)
    built = task.build_model(recipe.model, data.label_names)
    reference_state = copy.deepcopy(built.model.state_dict())
    train_transform = task.build_train_transform(built.preprocess, recipe.augmentation)
    channels = built.preprocess.channels
    train_ds = data.splits["train"].with_transform(task.make_batch_transform(train_transform, channels))
    training_args = build_training_args(
        recipe.training,
        training_defaults(recipe.training, task.training_defaults(), recipe.metrics.metric_for_best_model),
    )

    def model_factory() -> torch.nn.Module:
        model = task.build_model(recipe.model, data.label_names).model
        model.load_state_dict(reference_state)
        return model

    setup = PlainSetup(model_factory, train_ds, training_args, task.collate)
    return setup, reference_state, len(data.splits["train"])


def run_plain(setup: PlainSetup, steps: int) -> tuple[Timings, float]:
    """The hand-written loop: same model, data, optimizer, clipping and scheduler as Trainer; nothing else."""
    import torch
    from transformers import Trainer, get_scheduler
    from transformers.trainer_pt_utils import get_parameter_names

    targs = setup.training_args
    torch.manual_seed(targs.seed)
    model = setup.model_factory()
    loader = torch.utils.data.DataLoader(
        setup.train_dataset,
        batch_size=targs.per_device_train_batch_size,
        shuffle=True,
        collate_fn=setup.collate,
        num_workers=targs.dataloader_num_workers,
        pin_memory=targs.dataloader_pin_memory,
        drop_last=targs.dataloader_drop_last,
        persistent_workers=targs.dataloader_persistent_workers,
        prefetch_factor=targs.dataloader_prefetch_factor,
    )
    # as the toolkit's Trainer: transformers' exclusions, plus no decay on any 1-D tensor (biases, norm scales)
    shapes = {n: p.ndim for n, p in model.named_parameters()}
    decay = {n for n in get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY_PATTERNS) if shapes.get(n, 2) > 1}
    params = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": targs.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    # Trainer's own choice of optimizer class and kwargs for these arguments (AdamW, fused, lr, betas, eps).
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    optimizer = optimizer_cls(params, **optimizer_kwargs)
    scheduler = get_scheduler(targs.lr_scheduler_type, optimizer=optimizer)

    timings = Timings(optimizer=optimizer_signature(optimizer), init_checksum=weight_checksum(model))
    loss_sum = torch.zeros(())
    model.train()
    timings.begin_loop()
    done = 0
    while done < steps:  # like Trainer with max_steps: a new iterator (new worker) per epoch
        for batch in loader:
            timings.begin_step()
            loss = model(**batch).loss
            loss.backward()
            if targs.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), targs.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # kept as a tensor and added inside the step, as Trainer does: no per-step .item()
            loss_sum += loss.detach()
            timings.end_step()
            done += 1
            if done == steps:
                break
    return timings, float(loss_sum) / steps


# --------------------------------------------------------------------------------------------- reporting


def summarize(
    side: str, repeat: int, timings: Timings, args: argparse.Namespace, loss: float, load: float
) -> RunResult:
    steps = len(timings.step_only)
    if steps != args.steps:
        raise RuntimeError(f"{side}: expected {args.steps} timed steps, got {steps}")
    measured = slice(args.warmup, None)
    loop_s = timings.loop_end - timings.loop_start
    return RunResult(
        side=side,
        repeat=repeat,
        steps=steps,
        measured_steps=len(timings.step_only[measured]),
        step_only_ms=1000 * statistics.median(timings.step_only[measured]),
        incl_data_ms=1000 * statistics.median(timings.incl_data[measured]),
        loop_s=loop_s,
        images_per_s=steps * args.batch_size / loop_s,
        threads=timings.threads,
        train_loss=loss,
        load_avg_1m=load,
        step_only_s=[round(t, 5) for t in timings.step_only],
        incl_data_s=[round(t, 5) for t in timings.incl_data],
    )


ROWS: list[tuple[str, str, bool]] = [
    # (label, RunResult field, lower is better → ratio toolkit/plain is printed)
    ("step only, median (ms)", "step_only_ms", True),
    ("step incl. data, median (ms)", "incl_data_ms", True),
    ("loop, all steps (s)", "loop_s", True),
    ("images/s (loop)", "images_per_s", False),
]


def table(runs: list[RunResult]) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown table of the medians over repeats (min–max in brackets) and the toolkit/plain ratios."""
    lines = [
        "| metric | toolkit | plain | ratio toolkit/plain |",
        "|---|---:|---:|---:|",
    ]
    medians: dict[str, dict[str, float]] = {}
    for label, key, timed in ROWS:
        cells, med = [], {}
        for side in (TOOLKIT, PLAIN):
            values = [getattr(r, key) for r in runs if r.side == side]
            med[side] = statistics.median(values)
            cells.append(_common.median_range(values))
        ratio = med[TOOLKIT] / med[PLAIN] if timed else None
        medians[key] = {**med, **({"ratio": ratio} if ratio is not None else {})}
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {f'{ratio:.3f}' if ratio is not None else '—'} |")
    return "\n".join(lines), medians


def runs_table(runs: list[RunResult]) -> str:
    lines = [
        "| run | side | step only (ms) | incl. data (ms) | loop (s) | images/s | threads | train loss | load 1m |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r.side} | {r.step_only_ms:.1f} | {r.incl_data_ms:.1f} | {r.loop_s:.2f} | "
            f"{r.images_per_s:.1f} | {r.threads} | {r.train_loss:.3f} | {r.load_avg_1m:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 40 steps = one epoch of the digits training split (1,293 rows) at batch 32 with drop_last, so "loop" is an epoch
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default: 40)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each run left out of the medians")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating toolkit/plain (default: 3)")
    parser.add_argument("--model", default="timm:resnet18", help="a toolkit model.name (default: timm:resnet18)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (both sides)")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (both sides); default: the toolkit's default"
    )
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/step_time_cpu)")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.num_workers is None:
        from hf_finetune.tasks import image_classification

        args.num_workers = image_classification.training_defaults()["dataloader_num_workers"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    setup, reference_state, n_train = prepare_plain(args)
    steps_per_epoch = n_train // args.batch_size
    print(
        f"model {args.model}, {args.image_size} px, batch {args.batch_size}, {args.steps} steps "
        f"({args.steps / steps_per_epoch:.2f} epochs of {n_train} images), warm-up {args.warmup}, "
        f"{args.repeats} repeats, {args.threads} torch threads, {args.num_workers} DataLoader workers",
        flush=True,
    )

    runs: list[RunResult] = []
    signatures: dict[str, list[dict[str, Any]]] = {TOOLKIT: [], PLAIN: []}
    checksums: dict[str, list[float]] = {TOOLKIT: [], PLAIN: []}
    for repeat in range(1, args.repeats + 1):
        for side in (TOOLKIT, PLAIN):
            set_threads(args.threads)
            load = os.getloadavg()[0]
            call_s = None
            if side == TOOLKIT:
                timings, loss, call_s = run_toolkit(args, reference_state)
            else:
                timings, loss = run_plain(setup, args.steps)
            run = summarize(side, repeat, timings, args, loss, load)
            run.call_s = call_s
            runs.append(run)
            signatures[side].append(timings.optimizer)
            checksums[side].append(timings.init_checksum)
            print(
                f"[{side} #{repeat}] step {run.step_only_ms:.1f} ms, incl. data {run.incl_data_ms:.1f} ms, "
                f"loop {run.loop_s:.2f} s, {run.images_per_s:.1f} images/s, loss {loss:.3f}",
                flush=True,
            )

    # The comparison only means something if both sides did the same work.
    reference_sig = signatures[PLAIN][0]
    check = {
        "same_optimizer": all(sig == reference_sig for sigs in signatures.values() for sig in sigs),
        "same_initial_weights": _common.same_checksums([*checksums[PLAIN], *checksums[TOOLKIT]]),
        "optimizer": reference_sig,
    }
    print(
        f"\nchecks: same optimizer (class, groups, hyper-parameters) {check['same_optimizer']}; "
        f"same initial weights {check['same_initial_weights']}"
    )
    if not (check["same_optimizer"] and check["same_initial_weights"]):
        print("WARNING: the two sides did not do the same work; the ratio is not a fair comparison")
        print(json.dumps(signatures, indent=1, default=str))
    report(args, argv if argv is not None else sys.argv[1:], runs, n_train, check)
    return 0


def report(
    args: argparse.Namespace, argv: list[str], runs: list[RunResult], n_train: int, check: dict[str, Any]
) -> None:
    """Prints the tables and the headline ratio, and writes them with every run's numbers to the results files."""
    summary, medians = table(runs)
    per_run = runs_table(runs)
    ratio, ratio_step_only = medians["incl_data_ms"]["ratio"], medians["step_only_ms"]["ratio"]
    print("\n" + summary + "\n\n" + per_run)
    print(
        f"\nratio toolkit/plain (step incl. data, median): {ratio:.3f}  "
        f"(step only: {ratio_step_only:.3f}; < 1 means the toolkit is faster)"
    )
    toolkit_calls = [r.call_s for r in runs if r.call_s is not None]
    print(f"whole finetune() call incl. setup, final eval and writing outputs (not compared): {toolkit_calls}")

    machine = _common.machine_info(PACKAGES)
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    payload = {
        "benchmark": "step_time",
        "command": _common.command_line("step_time.py", argv),
        "machine": machine,
        "settings": settings,
        "train_images": n_train,
        "checks": check,
        "medians": medians,
        "ratio_step_incl_data": ratio,
        "ratio_step_only": ratio_step_only,
        "runs": [asdict(r) for r in runs],
    }
    markdown = [
        "# step_time — toolkit (Trainer) vs plain PyTorch loop",
        "",
        f"`{payload['command']}`",
        "",
        *_common.machine_lines(machine, PACKAGES),
        f"- settings: {json.dumps(settings)}",
        f"- same optimizer: {check['same_optimizer']}; same initial weights: {check['same_initial_weights']}",
        "",
        f"**ratio toolkit/plain, step incl. data (median): {ratio:.3f}** "
        f"(step only: {ratio_step_only:.3f}; < 1 means the toolkit is faster)",
        "",
        "Medians over repeats, [min–max] across repeats:",
        "",
        summary,
        "",
        "Every run, in the order it ran (load 1m: the machine's 1-minute load average just before the run; above "
        "the core count means other processes were competing for the CPU during the benchmark):",
        "",
        per_run,
        "",
    ]
    json_path, md_path = _common.write_results(args.output or _common.RESULTS_DIR / "step_time_cpu", payload, markdown)
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    raise SystemExit(main())
