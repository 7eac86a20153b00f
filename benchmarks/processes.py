"""Training throughput on a CPU-only machine: one process with all the cores against one process per core (gloo DDP).

Every configuration trains the same recipe (model, data, seed, optimizer, LR schedule) for the same number of
optimizer steps at the same global batch, through the toolkit's own `hf_finetune.finetune`:

  1x2  one process, per-device batch 32, OMP_NUM_THREADS=2           (plain `python`, no launcher)
  2x1  two processes, per-device batch 16, OMP_NUM_THREADS=1 each    (`accelerate launch --multi_gpu
                                                                      --num_processes 2`: gloo all-reduce)
  2x2  two processes, per-device batch 16, OMP_NUM_THREADS=2 each    (oversubscribed: 4 compute threads, 2 cores)
  1x1  diagnostic, not the same global batch: one process, per-device batch 16, OMP_NUM_THREADS=1. This is one rank's
       share of a 2x1 step done alone on an otherwise idle core; twice its images/s is about what 2x1 would reach with
       free communication and no contention, and what 1x2 would reach with perfect thread scaling.

Runs alternate 1x2, 2x1, 2x2, 1x1, then the reverse order, and so on (`--repeats` rounds), so that a slow drift of
the machine's load hits every configuration about equally. Every number in the summary is a median over rounds.

    python benchmarks/processes.py                      # defaults: resnet18, 64 px, global batch 32, 40 steps, 2 rounds
    python benchmarks/processes.py --configs 1x2,2x1 --repeats 3 --steps 80
    python benchmarks/processes.py --quiet-wait 30      # on a shared box: wait (≤ 30 s) for a quiet machine per run

Two measurements per run, both on rank 0 and both excluding process start-up, data loading, model building, DDP set-up,
the final evaluation and writing the output folder:

  Trainer   `train_samples_per_second` from the run's own metrics.json (`train` section): max_steps × global batch /
            `train_runtime`, Trainer's wall clock from just before `on_train_begin` to the end of the last step. It
            includes the first steps (DataLoader worker start-up, allocator warm-up). This is the headline.
  steady    from a step-timing callback: (steps − `--warmup`) × global batch / seconds from the end of step
            `--warmup` to the end of the last step. It leaves out the start-up cost of the loop.

Both runs must do the same work, and the script checks it: every rank counts the images its model received in
training forward passes (a forward pre-hook, which also proves the ranks saw a batch of 16 each), the number of
optimizer steps must equal `--steps`, and the sum of the initial weights must be the same in every run.

To explain the result, every run also records (rank 0 unless said otherwise): the wall and CPU time of each part of a
step (batch fetch, forward + backward with DDP's all-reduce, optimizer step, the rest) from Trainer's callback hooks;
CPU milliseconds per image over the training loop, summed over the ranks (every thread of a rank; DataLoader worker
processes not included); the time of one gloo all-reduce of a gradient-sized buffer, timed after training; and how
many cores other processes on the machine kept busy during the run (from /proc/stat), because on a shared 2-core box
another engineer's test run changes the answer completely. The script also asks each of three launchers to start two
processes (`--cpu`, `--multi_gpu`, torchrun) and records how many it really starts and with how many threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
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

# all torch imports below are inside functions, so this still comes first; the launched ranks inherit it
_common.set_environment()

SCRIPT = Path(__file__).resolve()
PACKAGES = ("torch", "transformers", "accelerate", "timm")
EVAL_SAMPLES = 32  # rows kept per evaluation split; the final evaluation is never timed
# the launcher exactly as tests/test_distributed.py runs it; `--main_process_port 0` lets torch pick a free port
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    processes: int
    threads: int  # OMP_NUM_THREADS of every process
    per_device_batch: int
    diagnostic: bool = False  # not the same global batch: shown, never part of a ratio


def configs_for(global_batch: int) -> dict[str, Config]:
    half = global_batch // 2
    return {
        c.key: c
        for c in (
            Config("1x2", "1 process × 2 threads", 1, 2, global_batch),
            Config("2x1", "2 processes × 1 thread (gloo)", 2, 1, half),
            Config("2x2", "2 processes × 2 threads (oversubscribed)", 2, 2, half),
            Config("1x1", f"diagnostic: 1 process × 1 thread, batch {half} (one rank alone)", 1, 1, half, True),
        )
    }


@dataclass
class RunResult:
    config: str
    repeat: int
    processes: int
    threads_env: int
    per_device_batch: int
    world_size: int  # what the processes reported, not what was asked for
    threads_seen: list[int]  # torch.get_num_threads() inside the training loop, per rank
    global_step: int
    images_trained: int  # summed over ranks, counted by the forward pre-hook
    images_per_rank: list[int]
    trainer_images_per_s: float  # metrics.json train.train_samples_per_second
    train_runtime_s: float
    steady_images_per_s: float
    step_ms_median: float  # rank 0, end of one step → end of the next, warm-up steps left out
    cpu_s_per_image: float  # CPU seconds of all ranks (every thread) over the training span / images trained
    train_loss: float
    init_checksum: float
    allreduce_ms: float | None  # multi-process only: one gloo all-reduce of a gradient-sized fp32 buffer, median
    command_s: float  # the whole command, start-up and final evaluation included (context only)
    load_avg_1m: float
    # average number of cores other processes kept busy during the run (machine-wide busy time from /proc/stat
    # minus this run's own CPU time, over the run's wall time); None off Linux
    other_load_cores: float | None
    quiet_wait_s: float  # how long the run waited for the machine to go quiet (`--quiet-wait`)
    # rank 0, medians over the steps after the warm-up: wall and CPU milliseconds of each part of a step
    phases_ms: dict[str, float]
    phases_cpu_ms: dict[str, float]
    distribution_log: str  # the toolkit's own "distributed: …" line
    step_end_s: list[float] = field(default_factory=list)  # rank 0, seconds since on_train_begin, every step


# --------------------------------------------------------------------------------------------- worker (one rank)


def worker(recipe_path: str, record_dir: str) -> int:
    """Runs inside every launched process: `finetune` with a timing callback; each rank writes rank<N>.json."""
    import hf_finetune

    record: dict[str, Any] = {
        "step_end": [],
        "images": 0,
        **{k: [] for k in ("step_begin", "pre_optimizer", "optimizer_done", "step_end_cpu")},
    }
    hf_finetune.finetune(recipe_path, callbacks=[make_recorder(record)])
    record["allreduce_ms"] = _time_allreduce(record["grad_numel"])
    Path(record_dir, f"rank{record['rank']}.json").write_text(json.dumps(record), encoding="utf-8")
    _close_process_group()
    return 0


def make_recorder(record: dict[str, Any]) -> TrainerCallback:
    """A TrainerCallback that fills `record`: images seen, threads, initial weights, each step's phase times."""
    import torch
    from transformers import TrainerCallback

    def count_images(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, torch.Tensor]) -> None:
        if module.training:  # the final evaluation runs the same model in eval mode
            pixels = kwargs.get("pixel_values", args[0] if args else None)
            record["images"] += int(pixels.shape[0])

    class Recorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            # the model Trainer hands callbacks is the inner one; DDP's forward still goes through its hooks
            model.register_forward_pre_hook(count_images, with_kwargs=True)
            record["init_checksum"] = weight_checksum(model)
            record["grad_numel"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            record["rank"], record["world_size"] = args.process_index, args.world_size
            record["threads"] = torch.get_num_threads()  # after accelerate/Trainer set-up: what the steps use
            record["cpu_start"] = time.process_time()  # this process, all its threads (gloo's included)
            record["t0"] = time.perf_counter()

        def mark(self, name: str) -> None:
            # (wall, CPU) seconds since on_train_begin; CPU counts every thread of this process
            record[name].append((time.perf_counter() - record["t0"], time.process_time() - record["cpu_start"]))

        # Trainer's order inside a step: fetch the batch, on_step_begin, forward + backward (DDP's all-reduce
        # finishes inside backward), gradient clipping, on_pre_optimizer_step, optimizer.step(), on_optimizer_step,
        # scheduler step + zero_grad, on_step_end
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.mark("step_begin")

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.mark("pre_optimizer")

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.mark("optimizer_done")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.mark("step_end_cpu")
            record["step_end"].append(record["step_end_cpu"][-1][0])
            record["cpu_s"] = record["step_end_cpu"][-1][1]
            record["global_step"] = state.global_step

    return Recorder()


def _close_process_group() -> None:
    """Leave the gloo group on purpose before exiting. Before this was added, one of the first 2-process runs had a
    rank abort at exit ("terminate called without an active exception", SIGABRT) after all its work was done, which
    failed the whole launch; no run has aborted since."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _time_allreduce(numel: int, repeats: int = 7) -> float | None:
    """After training: the median time of one gloo all-reduce of every gradient at once (DDP splits it in ~25 MB
    buckets and starts them during backward, so this is the communication a step pays, not how it overlaps)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    buffer = torch.ones(numel)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])  # the first one sets up gloo's buffers


def probe() -> int:
    """What a launcher started: one JSON line per process (for the `--cpu` vs `--multi_gpu` vs torchrun check)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=True)  # as the toolkit's `use_cpu: true` does on a CPU-only machine
    line = {
        "pid": os.getpid(),
        "RANK": os.environ.get("RANK"),
        "WORLD_SIZE": os.environ.get("WORLD_SIZE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "accelerate_num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
    }
    print("PROBE " + json.dumps(line), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- driver


def write_recipe(args: argparse.Namespace, config: Config, folder: Path) -> Path:
    import yaml

    recipe = {
        "name": f"bench-processes-{config.key}",
        "model": {"name": args.model, "pretrained": False, "image_size": args.image_size},
        "data": {
            "source": "builtin:digits",
            # pre-flight image checks and the final evaluation are not timed; keep them short
            "check_images": False,
            "max_eval_samples": EVAL_SAMPLES,
        },
        "training": {
            "output_dir": str(folder / "out"),
            # max_steps, not epochs: Trainer then counts max_steps × global batch samples in both cases
            "max_steps": args.steps,
            "per_device_train_batch_size": config.per_device_batch,
            "per_device_eval_batch_size": EVAL_SAMPLES,
            "learning_rate": 1e-3,
            "weight_decay": 0.01,
            "lr_scheduler_type": "constant",
            # evaluation and checkpoints inside the loop would land in train_runtime
            "eval_strategy": "no",
            "save_strategy": "no",
            # written out so every configuration reads one value (the toolkit's default depends on os.cpu_count)
            "dataloader_num_workers": args.num_workers,
            # every step sees a full batch in both set-ups (1,293 rows: 40 batches of 32, or 40 of 16 per rank)
            "dataloader_drop_last": True,
            "seed": 0,
        },
        "overwrite": True,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def command_for(config: Config, recipe: Path, record_dir: Path) -> list[str]:
    script = str(SCRIPT.relative_to(Path.cwd())) if SCRIPT.is_relative_to(Path.cwd()) else str(SCRIPT)
    tail = [script, "--worker", str(recipe), "--record", str(record_dir)]
    if config.processes == 1:
        return [sys.executable, *tail]  # what a user runs on one machine: no launcher at all
    return [*LAUNCH, "--num_processes", str(config.processes), *tail]


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        # accelerate launch --multi_gpu passes OMP_NUM_THREADS on unchanged (it only fills in 1 when it is unset)
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_one(args: argparse.Namespace, config: Config, repeat: int, log_dir: Path) -> RunResult:
    with tempfile.TemporaryDirectory(prefix=f"bench-processes-{config.key}-") as tmp:
        folder = Path(tmp)
        record_dir = folder / "record"
        record_dir.mkdir()
        recipe = write_recipe(args, config, folder)
        command = command_for(config, recipe, record_dir)
        waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else 0.0
        load = os.getloadavg()[0]
        before = machine_busy_s(), children_cpu_s()
        started = time.perf_counter()
        proc = subprocess.run(
            command, env=child_env(config.threads), capture_output=True, text=True, timeout=args.timeout
        )
        command_s = time.perf_counter() - started
        other = other_load_cores(before, (machine_busy_s(), children_cpu_s()), command_s)
        log = log_dir / f"{config.key}-{repeat}.log"
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            tail = proc.stderr[-3000:]
            raise RuntimeError(f"{config.key} run {repeat} failed (exit {proc.returncode}); see {log}\n{tail}")
        metrics = json.loads((folder / "out" / "metrics.json").read_text())["train"]
        ranks = [json.loads(p.read_text()) for p in sorted(record_dir.glob("rank*.json"))]
    ranks.sort(key=lambda r: r["rank"])
    rank0 = ranks[0]
    ends = rank0["step_end"]
    global_batch = config.per_device_batch * rank0["world_size"]
    steady_images_per_s, step_ms_median = steady(ends, args.warmup, global_batch)
    phases_ms, phases_cpu_ms = phases(rank0, args.warmup)
    images = sum(r["images"] for r in ranks)
    match = re.search(r"distributed: [^\n]*", proc.stderr)
    return RunResult(
        config=config.key,
        repeat=repeat,
        processes=config.processes,
        threads_env=config.threads,
        per_device_batch=config.per_device_batch,
        world_size=rank0["world_size"],
        threads_seen=[r["threads"] for r in ranks],
        global_step=rank0["global_step"],
        images_trained=images,
        images_per_rank=[r["images"] for r in ranks],
        trainer_images_per_s=float(metrics["train_samples_per_second"]),
        train_runtime_s=float(metrics["train_runtime"]),
        steady_images_per_s=steady_images_per_s,
        step_ms_median=step_ms_median,
        cpu_s_per_image=sum(r["cpu_s"] for r in ranks) / max(images, 1),
        train_loss=float(metrics["train_loss"]),
        init_checksum=rank0["init_checksum"],
        allreduce_ms=rank0["allreduce_ms"],
        command_s=command_s,
        load_avg_1m=load,
        other_load_cores=other,
        quiet_wait_s=waited,
        phases_ms=phases_ms,
        phases_cpu_ms=phases_cpu_ms,
        distribution_log=match.group(0) if match else "",
        step_end_s=[round(t, 4) for t in ends],
    )


def steady(ends: list[float], warmup: int, global_batch: int) -> tuple[float, float]:
    """(images/s, median ms per step) over the steps after the first `warmup`, from rank 0's step-end times."""
    warm = min(warmup, len(ends) - 1)
    starts = [0.0, *ends[:-1]]  # step i runs from the end of step i-1 (or on_train_begin) to its own end
    span = ends[-1] - starts[warm]
    step_ms = 1000 * statistics.median(b - a for a, b in zip(starts[warm:], ends[warm:], strict=True))
    return (len(ends) - warm) * global_batch / span, step_ms


PHASES = {
    # name: (from mark, to mark); "step_end_prev" is the end of the previous step (on_train_begin for the first)
    "data": ("step_end_prev", "step_begin"),  # fetch the next batch + Trainer's between-step bookkeeping
    "fwd+bwd": ("step_begin", "pre_optimizer"),  # forward, backward with DDP's all-reduce, gradient clipping
    "optimizer": ("pre_optimizer", "optimizer_done"),  # AdamW step: every rank updates all the weights
    "rest": ("optimizer_done", "step_end_cpu"),  # scheduler step, zero_grad
}


def phases(record: dict[str, Any], warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU milliseconds per part of a step, warm-up steps left out."""
    marks = {k: record[k] for k in ("step_begin", "pre_optimizer", "optimizer_done", "step_end_cpu")}
    marks["step_end_prev"] = [(0.0, 0.0), *record["step_end_cpu"][:-1]]
    warm = min(warmup, len(record["step_end_cpu"]) - 1)
    wall, cpu = {}, {}
    for name, (start, end) in PHASES.items():
        pairs = list(zip(marks[start], marks[end], strict=True))[warm:]
        wall[name] = 1000 * statistics.median(b[0] - a[0] for a, b in pairs)
        cpu[name] = 1000 * statistics.median(b[1] - a[1] for a, b in pairs)
    return wall, cpu


def machine_busy_s() -> float | None:
    """Seconds of CPU time the whole machine has spent busy since boot (all cores), from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux
    # user nice system idle iowait irq softirq [steal guest guest_nice]: busy = all but idle and iowait; steal (time
    # the hypervisor gave to other VMs) is left out, and guest time is already inside user time
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3, window_s: float = 2.0) -> float:
    """Wait until the rest of the machine uses fewer than `threshold_cores` over a `window_s` window, for at most
    `max_wait_s`; returns the seconds waited. Another engineer's test run on a 2-core box halves a run's speed."""
    waited = 0.0
    while waited < max_wait_s:
        before = machine_busy_s()
        time.sleep(window_s)
        after = machine_busy_s()
        waited += window_s
        if before is None or after is None or (after - before) / window_s < threshold_cores:
            break
    return waited


def other_load_cores(
    before: tuple[float | None, float], after: tuple[float | None, float], seconds: float
) -> float | None:
    """How many cores other processes kept busy: the machine's busy CPU seconds less ours (`machine_busy_s()`,
    `children_cpu_s()` before and after), per second; None where the machine's figure is unknown."""
    (busy0, ours0), (busy1, ours1) = before, after
    if busy0 is None or busy1 is None:
        return None
    return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / seconds


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished descendant the launcher waited for
    return usage.ru_utime + usage.ru_stime


def launcher_check() -> dict[str, Any]:
    """How many processes each launcher really starts on this CPU-only machine, with OMP_NUM_THREADS unset."""
    common = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launchers = {
        "accelerate launch --cpu --num_processes 2": [
            sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", *common,
        ],
        "accelerate launch --multi_gpu --num_processes 2": [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *common,
            "--main_process_port", "0",
        ],
        "torchrun --standalone --nproc_per_node 2": [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        ],
    }  # fmt: skip
    seen: dict[str, Any] = {}
    for name, launcher in launchers.items():
        proc = subprocess.run(
            [*launcher, str(SCRIPT), "--probe"], env=child_env(None), capture_output=True, text=True, timeout=180
        )
        lines = [json.loads(x[len("PROBE ") :]) for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
        seen[name] = {"returncode": proc.returncode, "processes_started": len(lines), "processes": lines}
        if proc.returncode != 0:
            seen[name]["stderr_tail"] = proc.stderr[-1500:]
        print(
            f"[launcher check] {name}: {len(lines)} process(es) started, "
            f"{[(p['RANK'], p['accelerate_num_processes'], p['torch_threads']) for p in lines]} "
            "(RANK, accelerate num_processes, torch threads)",
            flush=True,
        )
    return seen


# --------------------------------------------------------------------------------------------- reporting


def median_of(runs: list[RunResult], key: str, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs if r.config == key)


def cell(runs: list[RunResult], key: str, attr: str, digits: int = 1) -> str:
    values = [getattr(r, attr) for r in runs if r.config == key and getattr(r, attr) is not None]
    return _common.median_range(values, digits) if values else "—"


def summary_table(runs: list[RunResult], configs: list[Config]) -> str:
    base = "1x2" if any(c.key == "1x2" for c in configs) else None
    lines = [
        "| configuration | images/s (Trainer) | ratio to 1x2 | images/s (steady) | ratio to 1x2 | step (ms) "
        "| CPU ms/image | all-reduce (ms) | train loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in configs:
        ratios = []
        for attr in ("trainer_images_per_s", "steady_images_per_s"):
            ok = base is not None and not c.diagnostic
            ratios.append(f"{median_of(runs, c.key, attr) / median_of(runs, base, attr):.3f}" if ok else "—")
        cpu = [1000 * r.cpu_s_per_image for r in runs if r.config == c.key]
        lines.append(
            f"| {c.key}: {c.label} | {cell(runs, c.key, 'trainer_images_per_s')} | {ratios[0]} "
            f"| {cell(runs, c.key, 'steady_images_per_s')} | {ratios[1]} | {cell(runs, c.key, 'step_ms_median')} "
            f"| {statistics.median(cpu):.1f} | {cell(runs, c.key, 'allreduce_ms')} "
            f"| {cell(runs, c.key, 'train_loss', 3)} |"
        )
    return "\n".join(lines)


def phases_table(runs: list[RunResult], configs: list[Config]) -> str:
    """Where a step's time goes on rank 0: medians over rounds of the per-run medians, wall ms (CPU ms)."""
    names = list(PHASES)
    lines = [
        "| configuration | " + " | ".join(f"{n} wall (CPU) ms" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for c in configs:
        mine = [r for r in runs if r.config == c.key]
        cells = [
            f"{statistics.median(r.phases_ms[n] for r in mine):.1f} "
            f"({statistics.median(r.phases_cpu_ms[n] for r in mine):.1f})"
            for n in names
        ]
        lines.append(f"| {c.key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_table(runs: list[RunResult]) -> str:
    lines = [
        "| run | config | world size | torch threads | steps | images | per rank | images/s Trainer | images/s steady "
        "| step ms | train loss | whole command (s) | load 1m | other load (cores) |",
        "|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r.config} | {r.world_size} | {r.threads_seen} | {r.global_step} | {r.images_trained} "
            f"| {r.images_per_rank} | {r.trainer_images_per_s:.1f} | {r.steady_images_per_s:.1f} "
            f"| {r.step_ms_median:.1f} | {r.train_loss:.4f} | {r.command_s:.1f} | {r.load_avg_1m:.2f} "
            f"| {'—' if r.other_load_cores is None else f'{r.other_load_cores:.2f}'} |"
        )
    return "\n".join(lines)


def checks(runs: list[RunResult], configs: dict[str, Config], args: argparse.Namespace) -> dict[str, Any]:
    """Did every run do the work it was meant to? Same initial weights everywhere, the asked-for steps, processes,
    threads and images; losses close (not equal: other data order per rank, and BatchNorm sees 16 images, not 32)."""
    problems = []
    for r in runs:
        c = configs[r.config]
        expected_images = args.steps * c.per_device_batch * c.processes
        if r.global_step != args.steps:
            problems.append(f"{r.config}#{r.repeat}: {r.global_step} optimizer steps, expected {args.steps}")
        if r.world_size != c.processes:
            problems.append(f"{r.config}#{r.repeat}: world size {r.world_size}, expected {c.processes}")
        if r.images_trained != expected_images or len(set(r.images_per_rank)) != 1:
            problems.append(f"{r.config}#{r.repeat}: {r.images_per_rank} images per rank, expected {expected_images}")
        if any(t != c.threads for t in r.threads_seen):
            problems.append(f"{r.config}#{r.repeat}: torch threads {r.threads_seen}, expected {c.threads}")
    checksums = {round(r.init_checksum, 6) for r in runs}
    if len(checksums) != 1:
        problems.append(f"initial weights differ between runs: checksums {sorted(checksums)}")
    same_batch = [r.train_loss for r in runs if not configs[r.config].diagnostic]
    return {
        "problems": problems,
        "same_initial_weights": len(checksums) == 1,
        "train_loss_range_same_global_batch": [min(same_batch), max(same_batch)] if same_batch else None,
    }


def ratios_and_efficiency(
    runs: list[RunResult], configs: list[Config]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each configuration's medians over 1x2's, and its steady images/s as a fraction of twice 1x1's."""
    keys = {c.key for c in configs}
    ratios: dict[str, dict[str, float]] = {}
    if "1x2" in keys:
        for c in configs:
            if c.key != "1x2" and not c.diagnostic:
                ratios[f"{c.key}/1x2"] = {
                    attr: median_of(runs, c.key, attr) / median_of(runs, "1x2", attr)
                    for attr in ("trainer_images_per_s", "steady_images_per_s")
                }
    efficiency = {}
    if "1x1" in keys:
        # twice one rank's images/s alone on an idle core: the ceiling for both ways of using two cores
        ideal = 2 * median_of(runs, "1x1", "steady_images_per_s")
        efficiency = {c.key: median_of(runs, c.key, "steady_images_per_s") / ideal for c in configs if not c.diagnostic}
    return ratios, efficiency


def write_results(
    args: argparse.Namespace,
    argv: list[str],
    configs: list[Config],
    runs: list[RunResult],
    check: dict[str, Any],
    launchers: dict[str, Any] | None,
) -> tuple[Path, Path]:
    ratios, efficiency = ratios_and_efficiency(runs, configs)
    payload = {
        "benchmark": "processes",
        "command": _common.command_line("processes.py", argv),
        "machine": _common.machine_info(PACKAGES, gloo=gloo_available()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker", "record", "probe")},
        "configs": [asdict(c) for c in configs],
        "child_commands": {
            c.key: " ".join(
                [f"OMP_NUM_THREADS={c.threads}", *command_for(c, Path("RECIPE.yaml"), Path("RECORD_DIR"))]
            ).replace(sys.executable, "python")
            for c in configs
        },
        "checks": check,
        "ratios": ratios,
        "efficiency_vs_twice_one_rank_alone": efficiency,
        "launcher_check": launchers,
        "runs": [asdict(r) for r in runs],
    }
    stem = args.output or _common.RESULTS_DIR / "processes_cpu"
    return _common.write_results(stem, payload, results_markdown(args, payload, runs, configs))


def gloo_available() -> bool:
    import torch

    return torch.distributed.is_gloo_available()


def launcher_lines(launchers: dict[str, Any] | None) -> list[str]:
    """One line per launcher: how many processes it started, and each one's rank and threads."""
    lines = []
    for name, seen in (launchers or {}).items():
        lines.append(
            f"- `{name}`: {seen['processes_started']} process(es); per process (RANK, accelerate num_processes, "
            f"OMP_NUM_THREADS, torch threads): "
            + ", ".join(
                f"({p['RANK']}, {p['accelerate_num_processes']}, {p['OMP_NUM_THREADS']}, {p['torch_threads']})"
                for p in seen["processes"]
            )
        )
    return lines


def results_markdown(
    args: argparse.Namespace, payload: dict[str, Any], runs: list[RunResult], configs: list[Config]
) -> list[str]:
    """The results page: machine and settings, the checks, the commands, the ratios, then the tables."""
    settings, check = payload["settings"], payload["checks"]
    return [
        "# processes — one process vs two on a CPU-only machine, same global batch",
        "",
        f"`{payload['command']}`",
        "",
        *_common.machine_lines(payload["machine"], PACKAGES),
        f"- settings: {json.dumps(settings)}",
        f"- checks: same initial weights {check['same_initial_weights']}; problems: "
        f"{check['problems'] or 'none'}; train loss range (same global batch) "
        f"{check['train_loss_range_same_global_batch']}",
        "",
        "Commands each run executes (RECIPE.yaml written by the script; `--worker` calls `hf_finetune.finetune` "
        "with a step-timing callback, otherwise what `python -m hf_finetune train RECIPE.yaml` does):",
        "",
        *[f"- {k}: `{v}`" for k, v in payload["child_commands"].items()],
        "",
        "Ratios of the medians (above 1 means faster than one process with 2 threads):",
        "",
        *ratio_lines(payload["ratios"], payload["efficiency_vs_twice_one_rank_alone"]),
        "Medians over rounds, [min–max] across rounds. images/s (Trainer): metrics.json "
        "`train.train_samples_per_second`; images/s (steady): step-timing callback, first "
        f"{args.warmup} steps left out; step: median wall time per optimizer step on rank 0; CPU ms/image: CPU "
        "time of every rank (all threads) over the training loop per image; all-reduce: one gloo all-reduce of a "
        "buffer the size of all gradients, timed after training:",
        "",
        summary_table(runs, configs),
        "",
        "Where a step's time goes on rank 0 (medians; wall ms with the process's CPU ms, all its threads, in "
        "brackets). data: previous step's end → `on_step_begin` (next batch + Trainer bookkeeping); fwd+bwd: "
        "`on_step_begin` → `on_pre_optimizer_step` (forward, backward including DDP's gloo all-reduce, gradient "
        "clipping); optimizer: the AdamW step; rest: scheduler step and zero_grad:",
        "",
        phases_table(runs, configs),
        "",
        "Every run, in the order it ran (load 1m: the machine's 1-minute load average just before the run; above "
        "the core count means other processes were competing for the CPU):",
        "",
        runs_table(runs),
        "",
        "What each launcher starts on this machine (OMP_NUM_THREADS unset):",
        "",
        *launcher_lines(payload["launcher_check"]),
        "",
    ]


def ratio_lines(ratios: dict[str, dict[str, float]], efficiency: dict[str, float]) -> list[str]:
    """The ratio list, then (with a 1x1 run) the efficiency list, each followed by a blank line."""
    lines = [
        f"- **{name}: {v['trainer_images_per_s']:.3f}** (Trainer images/s), {v['steady_images_per_s']:.3f} (steady)"
        for name, v in ratios.items()
    ]
    lines.append("")
    if efficiency:
        lines += [
            "Steady images/s as a fraction of twice the 1x1 diagnostic (one rank's share alone on an idle "
            "core, i.e. perfect use of both cores):",
            "",
            *[f"- {k}: {v:.2f}" for k, v in efficiency.items()],
            "",
        ]
    return lines


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 40 steps = one epoch of the digits training split (1,293 rows) at global batch 32 with drop_last
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default: 40, one epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the steady numbers")
    parser.add_argument("--global-batch", type=int, default=32, help="global batch; must be even (default: 32)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="timm:resnet18", help="a toolkit model.name (default: timm:resnet18)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all configurations (default: 2)")
    parser.add_argument(
        "--configs", default="1x2,2x1,2x2,1x1", help="comma-separated, from 1x2,2x1,2x2,1x1 (default: all four)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers per process; default: the toolkit's default"
    )
    parser.add_argument("--skip-launcher-check", action="store_true", help="do not probe the three launchers")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for other processes to use < 0.3 cores (default: 0)",
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds one run may take")
    parser.add_argument("--output", type=Path, default=None, help="results file stem (default: results/processes_cpu)")
    # internal: what the launched processes run
    parser.add_argument("--worker", metavar="RECIPE", help=argparse.SUPPRESS)
    parser.add_argument("--record", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.probe:
        return args
    if args.global_batch % 2:
        parser.error("--global-batch must be even: two processes split it")
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    known = configs_for(args.global_batch)
    args.configs = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = [k for k in args.configs if k not in known]
    if unknown or not args.configs:
        parser.error(f"--configs: unknown {unknown}; choose from {list(known)}")
    if args.num_workers is None:
        from hf_finetune.tasks import get_task

        args.num_workers = get_task("image-classification").training_defaults()["dataloader_num_workers"]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.probe:
        return probe()
    if args.worker:
        return worker(args.worker, args.record)

    known = configs_for(args.global_batch)
    configs = [known[k] for k in args.configs]
    print(
        f"model {args.model}, {args.image_size} px, global batch {args.global_batch}, {args.steps} steps, "
        f"warm-up {args.warmup}, {args.repeats} rounds of {[c.key for c in configs]}, "
        f"{args.num_workers} DataLoader worker(s) per process",
        flush=True,
    )
    launchers = None if args.skip_launcher_check else launcher_check()

    log_dir = Path(tempfile.mkdtemp(prefix="bench-processes-logs-"))
    runs: list[RunResult] = []
    for repeat in range(1, args.repeats + 1):
        # odd rounds in the given order, even rounds reversed: a steady drift of the machine's load then hits the
        # first and the last configuration equally
        for config in configs if repeat % 2 else configs[::-1]:
            run = run_one(args, config, repeat, log_dir)
            runs.append(run)
            print(
                f"[{config.key} #{repeat}] world {run.world_size}, threads {run.threads_seen}, "
                f"{run.trainer_images_per_s:.1f} images/s (Trainer), {run.steady_images_per_s:.1f} (steady), "
                f"step {run.step_ms_median:.0f} ms, loss {run.train_loss:.4f}, "
                f"all-reduce {run.allreduce_ms}, command {run.command_s:.1f} s (waited {run.quiet_wait_s:.0f} s), "
                f"load {run.load_avg_1m:.2f}, other processes {run.other_load_cores} cores",
                flush=True,
            )

    check = checks(runs, known, args)
    if check["problems"]:
        print("WARNING: the runs did not all do the work they were meant to:\n  " + "\n  ".join(check["problems"]))
    print("\n" + summary_table(runs, configs) + "\n\n" + phases_table(runs, configs) + "\n\n" + runs_table(runs))
    json_path, md_path = write_results(args, argv, configs, runs, check, launchers)
    print(f"\nlogs in {log_dir}\nwrote {json_path} and {md_path}")
    return 1 if check["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
