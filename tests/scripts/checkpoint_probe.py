"""Run `hf_finetune.finetune` in a child process and record, as JSON lines, what Trainer did around a stop.

    python checkpoint_probe.py RECIPE.yaml EVENTS.jsonl [--term-at STEP | --term-at-epoch-end EPOCH]
                               [--kill-after-rotation STEP] [--save-at-epoch-end] [KEY=VALUE ...]

Events: `signal` (sent to this process), `save` (on_save), `eval_batch` (the first evaluation batch of a step),
`step` (on_step_end). --term-at sends SIGTERM at the end of that optimizer step; --term-at-epoch-end at the end of
the epoch's last step (before Trainer's epoch-end evaluation and save). --kill-after-rotation SIGKILLs the process
right after Trainer's own checkpoint rotation for that step, before any `on_save` callback (the completion marker).
--save-at-epoch-end adds a user callback that asks for a save at every epoch end (on top of the save strategy).
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import transformers.trainer
from transformers import TrainerCallback

import hf_finetune
from hf_finetune.errors import HFFinetuneError


class Probe(TrainerCallback):
    def __init__(self, events: Path, term_at: int | None, term_at_epoch: float | None):
        self.events, self.term_at, self.term_at_epoch = events, term_at, term_at_epoch
        self.evaluated_at: set[int] = set()

    def record(self, kind: str, step: int) -> None:
        with self.events.open("a") as fh:
            fh.write(json.dumps({"event": kind, "step": step}) + "\n")

    def on_step_end(self, args, state, control, **kwargs):
        self.record("step", state.global_step)
        at_epoch_end = self.term_at_epoch is not None and state.epoch == self.term_at_epoch
        if state.global_step == self.term_at or at_epoch_end:
            self.record("signal", state.global_step)
            os.kill(os.getpid(), signal.SIGTERM)

    def on_prediction_step(self, args, state, control, **kwargs):
        if state.global_step not in self.evaluated_at:
            self.evaluated_at.add(state.global_step)
            self.record("eval_batch", state.global_step)

    def on_save(self, args, state, control, **kwargs):
        self.record("save", state.global_step)


class SaveAtEpochEnd(TrainerCallback):
    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True


def kill_after_rotation(step: int) -> None:
    original = transformers.trainer.rotate_checkpoints

    def rotate(output_dir, *args, **kwargs):
        original(output_dir, *args, **kwargs)
        if (Path(output_dir) / f"checkpoint-{step}").is_dir():
            os.kill(os.getpid(), signal.SIGKILL)

    transformers.trainer.rotate_checkpoints = rotate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("events", type=Path)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--term-at", type=int)
    parser.add_argument("--term-at-epoch-end", type=float)
    parser.add_argument("--kill-after-rotation", type=int)
    parser.add_argument("--save-at-epoch-end", action="store_true")
    args = parser.parse_args()
    if args.kill_after_rotation:
        kill_after_rotation(args.kill_after_rotation)
    probe = Probe(args.events, args.term_at, args.term_at_epoch_end)
    try:
        extra = [SaveAtEpochEnd()] if args.save_at_epoch_end else []
        hf_finetune.finetune(args.recipe, args.overrides, callbacks=[*extra, probe])
    except HFFinetuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 128 + err.signum if getattr(err, "signum", None) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
