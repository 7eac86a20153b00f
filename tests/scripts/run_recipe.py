"""Run `hf_finetune.finetune` from a recipe file in a child process, optionally with test hooks.

    python run_recipe.py RECIPE.yaml [--kill-at STEP] [--term-at STEP] [--record-shards DIR] [KEY=VALUE ...]

--kill-at / --term-at send SIGKILL / SIGTERM to this process at the end of that optimizer step;
--record-shards writes, per rank, a checksum of every training image the rank's collator saw.
"""

import argparse
import hashlib
import json
import os
import signal
import sys

from transformers import TrainerCallback

import hf_finetune
from hf_finetune.cli import main as cli_main
from hf_finetune.errors import HFFinetuneError
from hf_finetune.tasks import image_classification


class SignalAt(TrainerCallback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == 0:
            os.kill(os.getpid(), self.signum)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--term-at", type=int)
    parser.add_argument("--record-shards")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    callbacks = []
    if args.kill_at:
        callbacks.append(SignalAt(args.kill_at, signal.SIGKILL))
    if args.term_at:
        callbacks.append(SignalAt(args.term_at, signal.SIGTERM))
    seen: list[str] = []
    if args.record_shards:
        original = image_classification.collate
        training = {"on": True}

        class StopRecording(TrainerCallback):
            def on_train_end(self, args, state, control, **kwargs):
                training["on"] = False  # the final evaluation uses the same collator

        def recording(rows):
            if training["on"]:
                seen.extend(hashlib.sha1(r["pixel_values"].numpy().tobytes()).hexdigest() for r in rows)
            return original(rows)

        image_classification.collate = recording
        callbacks.append(StopRecording())
    overrides = list(args.overrides) + (["training.resume_from_checkpoint=latest"] if args.resume else [])
    if not callbacks and not args.record_shards:
        return cli_main(["train", args.recipe, *overrides])
    try:
        hf_finetune.finetune(args.recipe, overrides, callbacks=callbacks)
    except HFFinetuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 128 + err.signum if getattr(err, "signum", None) else 2
    finally:
        if args.record_shards:
            rank = int(os.environ.get("RANK", "0"))
            with open(os.path.join(args.record_shards, f"rank{rank}.json"), "w") as fh:
                json.dump(seen, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
