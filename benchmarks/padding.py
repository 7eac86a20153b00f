"""Epoch time of a text classifier: padding every batch to 128 tokens against dynamic padding (± length grouping).

Three configurations of one recipe, each trained for one epoch through the toolkit's own `hf_finetune.finetune`,
in one process, with the same model (`builtin:all-MiniLM-L6-v2`, pretrained), the same training rows
(`builtin:tweets`, a fixed seeded subset), the same seed, batch size, optimizer and LR schedule:

  a  max_length        `tokenization.padding: max_length`, `max_length: 128`: every batch is 32 × 128 tokens
  b  dynamic           `tokenization.padding: dynamic` (the default), `max_length: 128`: each batch is padded to
                       its longest row (`DataCollatorWithPadding`)
  c  dynamic+grouped   b plus `training.train_sampling_strategy: group_by_length`: rows of similar length share a
                       batch (transformers' `LengthGroupedSampler`), so there is less to pad

Runs go a, b, c, a, b, c, … (`--repeats` rounds) so that a load change on the machine hits every configuration, and
every number in the summary is a median over the rounds.

    python benchmarks/padding.py                  # defaults: 768 training rows (24 steps of 32), 3 rounds
    python benchmarks/padding.py --train-samples 1500 --repeats 2

Timed span: one training epoch, Trainer's `on_epoch_begin` → `on_epoch_end`: every step (batch fetch and collation,
forward, backward, clipping, optimizer and scheduler step) plus Trainer's per-step bookkeeping. The headline is wall
time; the CPU seconds the process used over the same span (`time.process_time`, all threads) are reported next to
it, because on a shared 2-core box another process's load stretches wall time far more than CPU time. In-loop evaluation
and checkpointing are off (`eval_strategy: no`, `save_strategy: no`). Data loading, tokenization, model loading,
building the sampler (group_by_length computes every row's length there), the final evaluation and writing the
output folder all happen outside the span; the whole `finetune()` call is recorded too, but not compared.

Tokens are counted from what the model actually received: a forward pre-hook adds `input_ids.numel()` (padded
tokens) and `attention_mask.sum()` (real tokens) for every training forward. Real tokens must be equal in all runs
(same rows), which the script checks, together with equal initial weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _common
from _common import weight_checksum

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

# all torch imports below are inside functions, so this still comes first
_common.set_environment()

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers")
BASE_RECIPE = "quickstart-text"  # the shipped text quickstart: MiniLM on tweets, lr 1e-4, linear schedule, warm-up
MODEL = "builtin:all-MiniLM-L6-v2"
DATA = "builtin:tweets"

# (key, label, recipe overrides). Every configuration sets max_length explicitly, so only padding/sampling differ.
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("a", "max_length (pad to 128)", {"tokenization.padding": "max_length"}),
    ("b", "dynamic", {"tokenization.padding": "dynamic"}),
    (
        "c",
        "dynamic + group_by_length",
        {"tokenization.padding": "dynamic", "training.train_sampling_strategy": "group_by_length"},
    ),
]
BASELINE = "a"


@dataclass
class Counts:
    """What one run measured; filled by the Trainer callback and the forward hook it installs."""

    epoch_start: float = 0.0
    epoch_end: float = 0.0
    epoch_cpu_start: float = 0.0  # time.process_time(): CPU seconds of all this process's threads
    epoch_cpu_end: float = 0.0
    step_s: list[float] = field(default_factory=list)  # previous step's end (or epoch start) → this step's end
    batch_lengths: list[int] = field(default_factory=list)  # padded sequence length of each training batch
    samples: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    threads: int = 0  # torch.get_num_threads() inside the loop (Trainer/accelerate must not change it)
    init_checksum: float = 0.0  # sum of all initial weights, to show every run started from the same model


@dataclass
class RunResult:
    config: str
    label: str
    repeat: int
    steps: int
    epoch_s: float
    epoch_cpu_s: float  # CPU seconds the process used during the epoch; less sensitive to other processes
    samples: int
    samples_per_s: float
    padded_tokens: int
    real_tokens: int
    padding_fraction: float
    mean_batch_length: float
    train_loss: float
    threads: int
    load_avg_1m: float  # the machine's 1-minute load average just before this run
    load_avg_1m_after: float  # … and just after it: a rise means other processes competed during the run
    call_s: float  # the whole finetune() call: data, tokenization, model, sampler, epoch, final eval, outputs
    init_checksum: float
    step_s: list[float] = field(default_factory=list)
    batch_lengths: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- one run


def make_callback(counts: Counts) -> TrainerCallback:
    """A TrainerCallback that times the epoch and counts the tokens of every training batch."""
    from transformers import TrainerCallback

    def count_tokens(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, torch.Tensor]) -> None:
        # Trainer calls model(**batch), so the batch is in kwargs. On CPU these are two cheap reads per step (no
        # device sync), paid equally by all three configurations.
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        counts.batch_lengths.append(int(ids.shape[1]))
        counts.samples += int(ids.shape[0])
        counts.padded_tokens += int(ids.numel())
        counts.real_tokens += int(mask.sum())

    class EpochTimer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            import torch

            counts.threads = torch.get_num_threads()
            counts.init_checksum = weight_checksum(model)
            # Removed at train end, so the toolkit's final evaluation after training is not counted.
            self._hook = model.register_forward_pre_hook(count_tokens, with_kwargs=True)

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counts.epoch_cpu_start = time.process_time()
            counts.epoch_start = self._last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            counts.step_s.append(now - self._last)
            self._last = now

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counts.epoch_end = time.perf_counter()
            counts.epoch_cpu_end = time.process_time()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._hook.remove()

    return EpochTimer()


def overrides_for(config: dict[str, Any], args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """The base recipe's values plus what every configuration shares, then the configuration's own keys."""
    return {
        "model.name": MODEL,
        "data.source": DATA,
        "data.max_train_samples": args.train_samples,
        # the final evaluation is not timed; keep it short
        "data.max_eval_samples": args.eval_samples,
        "tokenization.max_length": args.max_length,
        "training.output_dir": output_dir,
        "training.num_train_epochs": 1,
        "training.per_device_train_batch_size": args.batch_size,
        "training.seed": args.seed,
        # evaluation and checkpoints inside the loop would land in the timed epoch
        "training.eval_strategy": "no",
        "training.save_strategy": "no",
        "overwrite": True,
        **config,
    }


def run_one(key: str, args: argparse.Namespace, workdir: Path, repeat: int) -> tuple[Counts, float, float]:
    """One `hf_finetune.finetune` call; returns its counts, the train loss and the whole call's seconds."""
    import torch

    import hf_finetune

    config = dict(next(c for k, _, c in CONFIGS if k == key))
    counts = Counts()
    # The classifier head is new, drawn from torch's global RNG when finetune() builds the model. Toolkit versions
    # that seed only when Trainer starts would draw it from whatever the previous run left in the RNG; seeding here
    # gives every run the same initial weights either way (checked through init_checksum).
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    result = hf_finetune.finetune(
        BASE_RECIPE,
        overrides_for(config, args, str(workdir / f"{key}-{repeat}")),
        callbacks=[make_callback(counts)],
    )
    call_s = time.perf_counter() - started
    return counts, float(result.metrics["train"]["train_loss"]), call_s


def summarize(
    key: str, label: str, repeat: int, counts: Counts, loss: float, call_s: float, loads: tuple[float, float]
) -> RunResult:
    epoch_s = counts.epoch_end - counts.epoch_start
    if len(counts.batch_lengths) != len(counts.step_s):
        # one forward per optimizer step is assumed (gradient_accumulation_steps 1); anything else means the
        # hook saw forwards it should not have (or missed some)
        raise RuntimeError(f"{key}: {len(counts.batch_lengths)} forwards but {len(counts.step_s)} steps")
    return RunResult(
        config=key,
        label=label,
        repeat=repeat,
        steps=len(counts.step_s),
        epoch_s=epoch_s,
        epoch_cpu_s=counts.epoch_cpu_end - counts.epoch_cpu_start,
        samples=counts.samples,
        samples_per_s=counts.samples / epoch_s,
        padded_tokens=counts.padded_tokens,
        real_tokens=counts.real_tokens,
        padding_fraction=1 - counts.real_tokens / counts.padded_tokens,
        mean_batch_length=statistics.fmean(counts.batch_lengths),
        train_loss=loss,
        threads=counts.threads,
        load_avg_1m=loads[0],
        load_avg_1m_after=loads[1],
        call_s=call_s,
        init_checksum=counts.init_checksum,
        step_s=[round(t, 4) for t in counts.step_s],
        batch_lengths=counts.batch_lengths,
    )


# --------------------------------------------------------------------------------------------- reporting


def medians(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians over repeats (and min/max of the epoch time), plus the ratios against (a)."""
    out: dict[str, dict[str, Any]] = {}
    for key, label, _ in CONFIGS:
        mine = [r for r in runs if r.config == key]
        epochs = [r.epoch_s for r in mine]
        out[key] = {
            "label": label,
            "epoch_s": statistics.median(epochs),
            "epoch_s_min": min(epochs),
            "epoch_s_max": max(epochs),
            "epoch_cpu_s": statistics.median(r.epoch_cpu_s for r in mine),
            "samples_per_s": statistics.median(r.samples_per_s for r in mine),
            "padded_tokens": statistics.median(r.padded_tokens for r in mine),
            "real_tokens": statistics.median(r.real_tokens for r in mine),
            "padding_fraction": statistics.median(r.padding_fraction for r in mine),
            "mean_batch_length": statistics.median(r.mean_batch_length for r in mine),
            "train_loss": statistics.median(r.train_loss for r in mine),
            "call_s": statistics.median(r.call_s for r in mine),
        }
    base = out[BASELINE]
    for row in out.values():
        row["ratio_epoch_time"] = row["epoch_s"] / base["epoch_s"]
        row["ratio_epoch_cpu"] = row["epoch_cpu_s"] / base["epoch_cpu_s"]
        row["ratio_padded_tokens"] = row["padded_tokens"] / base["padded_tokens"]
    return out


def table(med: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| config | epoch (s) | samples/s | padded tokens | real tokens | padding fraction | mean batch length "
        "| train loss | epoch time ratio vs a | epoch CPU s | CPU time ratio vs a | padded tokens ratio vs a |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in med.items():
        lines.append(
            f"| {key}: {row['label']} | {row['epoch_s']:.1f} [{row['epoch_s_min']:.1f}–{row['epoch_s_max']:.1f}] | "
            f"{row['samples_per_s']:.1f} | {row['padded_tokens']:,.0f} | {row['real_tokens']:,.0f} | "
            f"{row['padding_fraction']:.1%} | {row['mean_batch_length']:.1f} | {row['train_loss']:.4f} | "
            f"{row['ratio_epoch_time']:.3f} | {row['epoch_cpu_s']:.1f} | {row['ratio_epoch_cpu']:.3f} | "
            f"{row['ratio_padded_tokens']:.3f} |"
        )
    return "\n".join(lines)


def runs_table(runs: list[RunResult]) -> str:
    lines = [
        "| run | config | epoch (s) | epoch CPU s | samples/s | steps | padded tokens | padding fraction | train loss "
        "| threads | whole call (s) | load 1m before → after |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r.config} | {r.epoch_s:.2f} | {r.epoch_cpu_s:.1f} | {r.samples_per_s:.1f} | {r.steps} | "
            f"{r.padded_tokens:,} | {r.padding_fraction:.1%} | {r.train_loss:.4f} | {r.threads} | {r.call_s:.1f} | "
            f"{r.load_avg_1m:.2f} → {r.load_avg_1m_after:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 768 rows = 24 full batches of 32, so every configuration sees the same number of equally sized batches, and
    # three rounds of a, b, c (nine finetune() calls, each with ~10 s of untimed set-up and output writing) fit in
    # about 8 minutes on a quiet 2-core CPU
    parser.add_argument("--train-samples", type=int, default=768, help="training rows (default: 768)")
    parser.add_argument("--eval-samples", type=int, default=32, help="rows per evaluation split (not timed)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="truncation length, and (a)'s padded length")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of a, b, c (default: 3)")
    parser.add_argument("--seed", type=int, default=42, help="training.seed, and torch's seed before each run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (all runs)")
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/padding_cpu)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    print(
        f"{MODEL} on {DATA}: {args.train_samples} training rows, batch {args.batch_size}, max_length "
        f"{args.max_length}, 1 epoch per run, {args.repeats} rounds of a, b, c, {args.threads} torch threads",
        flush=True,
    )

    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-padding-") as tmp:
        for repeat in range(1, args.repeats + 1):
            for key, label, _ in CONFIGS:
                # Re-applied before every run: no run inherits a thread setting an earlier one changed.
                torch.set_num_threads(args.threads)
                load = os.getloadavg()[0]
                counts, loss, call_s = run_one(key, args, Path(tmp), repeat)
                loads = (load, os.getloadavg()[0])
                run = summarize(key, label, repeat, counts, loss, call_s, loads)
                runs.append(run)
                print(
                    f"[{key} #{repeat}] epoch {run.epoch_s:.2f} s ({run.epoch_cpu_s:.1f} CPU s), "
                    f"{run.samples_per_s:.1f} samples/s, "
                    f"{run.padded_tokens:,} padded tokens ({run.padding_fraction:.1%} padding), loss {loss:.4f}",
                    flush=True,
                )

    # The comparison only means something if every run trained on the same rows from the same starting weights.
    check = {
        "same_samples_and_real_tokens": len({(r.samples, r.real_tokens) for r in runs}) == 1,
        "same_initial_weights": _common.same_checksums(r.init_checksum for r in runs),
    }
    print(
        f"\nchecks: same samples and real tokens in every run {check['same_samples_and_real_tokens']}; "
        f"same initial weights {check['same_initial_weights']}"
    )
    if not all(check.values()):
        print("WARNING: the runs did not do the same work; the ratios are not a fair comparison")
    report(args, argv if argv is not None else sys.argv[1:], runs, check)
    return 0


def report(args: argparse.Namespace, argv: list[str], runs: list[RunResult], check: dict[str, bool]) -> None:
    """Prints the tables and the headline ratios, and writes them with every run's numbers to the results files."""
    med = medians(runs)
    summary, per_run = table(med), runs_table(runs)
    ratio_b, ratio_c = med["b"]["ratio_epoch_time"], med["c"]["ratio_epoch_time"]
    headline = (
        f"epoch time ratio b/a (dynamic / pad to {args.max_length}): {ratio_b:.3f}; "
        f"c/a (dynamic + group_by_length / pad to {args.max_length}): {ratio_c:.3f}  (< 1: faster than a; "
        f"CPU-time ratios {med['b']['ratio_epoch_cpu']:.3f} and {med['c']['ratio_epoch_cpu']:.3f})"
    )
    print("\n" + summary + "\n\n" + per_run + "\n\n" + headline)

    machine = _common.machine_info(PACKAGES, git=_common.describe_git(_common.git_state()))
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    payload = {
        "benchmark": "padding",
        "command": _common.command_line("padding.py", argv),
        "machine": machine,
        "settings": settings,
        "base_recipe": BASE_RECIPE,
        "model": MODEL,
        "data": DATA,
        "configs": {key: {"label": label, "overrides": config} for key, label, config in CONFIGS},
        "checks": check,
        "ratio_b_over_a": ratio_b,
        "ratio_c_over_a": ratio_c,
        "cpu_ratio_b_over_a": med["b"]["ratio_epoch_cpu"],
        "cpu_ratio_c_over_a": med["c"]["ratio_epoch_cpu"],
        "medians": med,
        "runs": [asdict(r) for r in runs],
    }
    markdown = [
        f"# padding — pad every batch to {args.max_length} tokens vs dynamic padding (± group_by_length)",
        "",
        f"`{payload['command']}`",
        "",
        *_common.machine_lines(machine, PACKAGES, date_note=f"; code: {machine['git']}"),
        f"- model {MODEL} (pretrained), data {DATA}, base recipe `{BASE_RECIPE}`, one epoch per run",
        f"- settings: {json.dumps(settings)}",
        f"- same samples and real tokens in every run: {check['same_samples_and_real_tokens']}; same initial "
        f"weights: {check['same_initial_weights']}",
        "",
        f"**{headline}**",
        "",
        "Medians over rounds; epoch time shows [min–max] across rounds. Epoch CPU s: CPU seconds the process "
        "used during the epoch (all threads), a cross-check that is less sensitive to other processes. Padded "
        "tokens: what the model received (batch × padded length, summed over the epoch); padding fraction: the "
        "share of those that are padding.",
        "",
        summary,
        "",
        "Every run, in the order it ran (whole call: the full finetune() including data, tokenization, model "
        "loading, the final evaluation and writing outputs, not compared; load 1m: the machine's 1-minute load "
        "average just before the run, above the core count means other processes were competing for the CPU):",
        "",
        per_run,
        "",
    ]
    json_path, md_path = _common.write_results(args.output or _common.RESULTS_DIR / "padding_cpu", payload, markdown)
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    raise SystemExit(main())
