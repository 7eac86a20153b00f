"""Checkpoints a run can trust: completion markers, rotation only behind a complete checkpoint, resume, stopping on
signals, and errors that end every process of a distributed run together.

A checkpoint folder is complete once it holds `COMPLETE_MARKER`, written after every process has saved its part.
A complete checkpoint is never written into again, never resumed from unless complete, and the older complete ones
are deleted (as `save_total_limit` asks) only once a newer one is complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

# imported by api.py only (the CLI imports that lazily), so `hf-finetune --help` stays free of torch
from transformers import TrainerCallback

from .errors import HFFinetuneError, TrainingInterrupted
from .models.weights import sync_with_checkpoint
from .names import COMPLETE_MARKER, RECIPE_FILE

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

LAUNCHER_ECHO_S = 5.0  # a repeated signal this soon after the first, under a launcher, is the launcher's echo


# --------------------------------------------------------------------------------------------- completion markers


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _never_save_into_a_complete_checkpoint(
    args: TrainingArguments, state: TrainerState, control: TrainerControl
) -> None:
    """Cancel a save asked for a step whose checkpoint is already complete (a step save, then an epoch-end save at
    the same step; a stop on the epoch's last step), so a complete checkpoint is never written into. Decided
    alike on every process: complete if the marker is seen on any."""
    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    if control.should_save and _any_process((folder / COMPLETE_MARKER).is_file(), args.device):
        control.should_save = False
        logger.info("checkpoints: %s is already complete; not saving it again", folder.name)


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once every process has written its part, then rotates the older ones.

    Trainer deletes checkpoints beyond `save_total_limit` inside its save, before `on_save` callbacks run: a run
    killed between the two would leave no complete checkpoint at all (with `save_total_limit: 1`, the only one is
    gone). So the callback takes the limit over for the length of `train()` and applies it itself, with
    transformers' own `rotate_checkpoints` (newest and best kept), right after the marker is written.
    """

    def __init__(self) -> None:
        self.limit: int | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        self.limit = args.save_total_limit
        if self.limit is not None and self.limit > 0:
            args.save_total_limit = None  # handed back in on_train_end
            logger.info(
                "checkpoints: keeping the newest %d (training.save_total_limit%s); an older one is deleted only "
                "once the newer one is complete",
                self.limit,
                ", plus the best" if args.load_best_model_at_end else "",
            )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        _barrier()
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        from transformers.trainer_utils import rotate_checkpoints

        from .files import write_json

        write_json(folder / COMPLETE_MARKER, {"global_step": state.global_step, "epoch": state.epoch})
        # as Trainer does it (mtime order, newest and best protected), only later
        rotate_checkpoints(
            output_dir=args.output_dir,
            save_total_limit=self.limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=True,
        )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        args.save_total_limit = self.limit
        best = state.best_model_checkpoint
        # Trainer's own end-of-training step for save_total_limit 1 (it saw no limit): keep only the best. Not
        # after a stop on a signal: the checkpoint just saved is the one to resume from.
        if self.limit == 1 and best and args.should_save and state.global_step >= state.max_steps:
            for path in Path(args.output_dir).glob("checkpoint-*"):
                if path.is_dir() and not os.path.samefile(path, best):
                    logger.info("checkpoints: deleting %s (save_total_limit 1 keeps the best)", path.name)
                    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------- resume


def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file() and _step(p) >= 0]
    return max(complete, key=_step, default=None)


def set_aside_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Rename checkpoints without the completion marker, so neither resume nor Trainer's rotation (which would
    count them against save_total_limit and delete a good one instead) takes them for real."""
    moved = []
    for path in sorted(Path(output_dir).glob("checkpoint-*")):
        if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
            target = path.with_name(f"incomplete-{path.name}")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"incomplete-{path.name}-{n}")
            path.rename(target)
            logger.warning("resume: %s was not saved completely; moved it to %s", path.name, target.name)
            moved.append(target)
    return moved


def resolve_resume(value: str | bool | None, output_dir: Path, *, set_aside: bool = True) -> str | None:
    """`latest` (or true) → the newest complete checkpoint in output_dir; a path is checked; None stays None.

    `set_aside`: whether this process renames the incomplete checkpoints it finds. Under several processes only
    the one that saves checkpoints (`args.should_save`) may, and the others must look only after it did.
    """
    if value in (None, False, "", "false", "False"):
        return None
    if value in (True, "latest", "true", "True"):
        if set_aside and Path(output_dir).is_dir():
            set_aside_incomplete_checkpoints(output_dir)
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            raise HFFinetuneError(
                f"resume: no complete checkpoint in {output_dir}; run without --resume "
                "(or training.resume_from_checkpoint) to start from scratch"
            )
        logger.info("resume: continuing from %s", found)
        return str(found)
    path = Path(str(value)).expanduser()
    if not (path / "trainer_state.json").is_file():
        raise HFFinetuneError(f"training.resume_from_checkpoint {str(value)!r}: not a checkpoint folder")
    return str(path)


class ResumeWeightsCheck(TrainerCallback):
    """After Trainer restored `checkpoint` (before the first step), check the weights and repair what it missed."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: object,
    ) -> None:
        wrong = sync_with_checkpoint(model, self.checkpoint)
        if wrong:
            logger.warning(
                "resume: Trainer left %d tensors different from %s (e.g. %s); restored them with from_pretrained",
                len(wrong),
                Path(self.checkpoint).name,
                wrong[0],
            )
        logger.info("resume: weights verified against %s", Path(self.checkpoint).name)


# --------------------------------------------------------------------------------------------- stopping on signals


class StopOnSignal(TrainerCallback):
    """Stops training at the next step boundary once a signal came (to any process), after one save and no
    evaluation; also cancels any save into a checkpoint that is already complete. `signum`: the signal, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _stopping(self, args: TrainingArguments) -> bool:
        if not _any_process(self.signum is not None, args.device):
            return False
        self.signum = self.signum or signal.SIGTERM  # the rank that got no signal stops as the others do
        return True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        if self._stopping(args):
            control.should_training_stop = True
            control.should_evaluate = False
            control.should_save = True
        _never_save_into_a_complete_checkpoint(args, state, control)

    on_epoch_end = on_step_end

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        # the signal came during an evaluation: it is done; save this step (unless complete) and stop
        if self._stopping(args):
            control.should_training_stop = True
            control.should_save = True
            _never_save_into_a_complete_checkpoint(args, state, control)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        # the signal came while this checkpoint was being written: it is the one save
        if self._stopping(args):
            control.should_training_stop = True


class _SignalHandler:
    """The SIGINT/SIGTERM handler of one process: the first signal asks `callback` to stop after this step, a second
    one (not a launcher's echo of the first) stops at once."""

    def __init__(self, callback: StopOnSignal) -> None:
        self.callback = callback
        self.owner = os.getpid()
        # torchrun/accelerate pass the terminal's Ctrl-C on to processes that already got it from the terminal
        self.launched = "TORCHELASTIC_RUN_ID" in os.environ
        self.first: float | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            return  # a forked DataLoader worker (Ctrl-C reaches the whole process group): the trainer decides
        if self.first is not None:
            if self.launched and time.monotonic() - self.first < LAUNCHER_ECHO_S:
                return  # the launcher's copy of the same request
            raise KeyboardInterrupt  # a second signal: stop now, without waiting for the step
        # this process's first signal, even when another rank's signal already has it stopping after this step
        self.first = time.monotonic()
        self.callback.signum = self.callback.signum or signum
        logger.warning(
            "received %s: saving a checkpoint at the end of this step, then stopping", signal.Signals(signum).name
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopOnSignal]:
    """SIGINT/SIGTERM during training: one checkpoint at the next step boundary, no evaluation, then a clean stop.

    Launchers (torchrun, accelerate) allow 30 s between SIGTERM and SIGKILL, so nothing else may run after the
    signal: the rest of the current step, one save, and out. Trainer's epoch-end flow would otherwise evaluate and
    save again at the same step. Yields the callback to give Trainer; add it last: it also cancels any save, asked
    by whichever callback, into a checkpoint that is already complete. After `train()` returns, `callback.signum`
    tells whether a signal came.
    """
    callback = StopOnSignal()
    handler = _SignalHandler(callback)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield callback
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted(signum: int, step: int, output_dir: Path) -> TrainingInterrupted:
    """The error that ends a run stopped by a signal, naming the checkpoint `--resume` will continue from."""
    found = latest_complete_checkpoint(output_dir)
    saved = f"{found.name} in {output_dir} is complete" if found else f"no complete checkpoint in {output_dir}"
    how = f"Resume with: hf-finetune train {output_dir / RECIPE_FILE} --resume" if found else "Start again."
    return TrainingInterrupted(
        f"training stopped by {signal.Signals(signum).name} at step {step}; {saved}. {how}", signum
    )


# --------------------------------------------------------------------------------------------- several processes


def _any_process(flag: bool, device: torch.device | str) -> bool:
    """True on every rank when any rank got the signal, so all stop at the same step (no collective hangs)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@contextlib.contextmanager
def main_process_first(args: TrainingArguments, desc: str, *, local: bool = True) -> Iterator[None]:
    """`TrainingArguments.main_process_first`, except that an error on any process ends every process with it.

    With transformers' version, an error on the main process (say, a corrupt image that only it checks) releases
    the others into the rest of the run, where they wait at the next collective until the launcher kills them. Here
    each phase (the main processes, then the others) ends with an exchange of outcomes: if one process failed,
    every process raises — the failing one its own error, the others an `HFFinetuneError` with the same message.
    """
    import torch.distributed as dist

    if args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        yield
        return
    state = args.distributed_state
    first = state.is_local_main_process if local else state.is_main_process
    failure: BaseException | None = None
    if first:
        failure = yield from _run_body()
    _raise_if_any_failed(failure, desc)
    if not first:
        failure = yield from _run_body()
    _raise_if_any_failed(failure, desc)


def _run_body() -> Iterator[None]:
    """Run the `with` body (one `yield`), returning the exception it raised instead of raising it."""
    try:
        yield
    except Exception as err:  # handed to every process, then raised again
        return err
    return None


def _raise_if_any_failed(failure: BaseException | None, desc: str) -> None:
    import torch.distributed as dist

    if failure is None:
        outcome = None
    elif isinstance(failure, HFFinetuneError):
        outcome = str(failure)
    else:
        outcome = f"process {dist.get_rank()} failed during {desc}: {type(failure).__name__}: {failure}"
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome)
    message = next((o for o in outcomes if o is not None), None)
    if message is None:
        return
    if failure is None or isinstance(failure, HFFinetuneError):
        _ignore_launcher_sigterm()
    if failure is not None:
        raise failure
    raise HFFinetuneError(message)


def _ignore_launcher_sigterm() -> None:
    """Every process is now on its way out with the same error. The launcher SIGTERMs whichever are still tearing
    down when the first one exits; ignoring it lets them end with the error's own status (not -15) moments later.
    (A Python handler would not do: the interpreter's shutdown restores the default action, but keeps "ignore".)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
