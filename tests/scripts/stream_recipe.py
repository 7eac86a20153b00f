"""Run `hf_finetune.finetune` on a streaming text recipe in a child process, recording the train texts the stream
delivered to this rank's tokenizer (in order), optionally killed with SIGKILL at the end of a step.

    python stream_recipe.py RECIPE.yaml --record DIR [--kill-at STEP] [--resume] [KEY=VALUE ...]
"""

import argparse
import json
import os
import signal
import sys

from run_recipe import SignalAt
from transformers import TrainerCallback

import hf_finetune
from hf_finetune.errors import HFFinetuneError
from hf_finetune.tasks import text_classification


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--record", required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    seen: list[str] = []
    original = text_classification.EncodeStream.__call__

    def recording(self, batch):
        seen.extend(batch["text"])
        return original(self, batch)

    text_classification.EncodeStream.__call__ = recording

    class Save(TrainerCallback):  # written at every step: a SIGKILL leaves what was seen so far
        def on_step_end(self, args_, state, control, **kwargs):
            with open(os.path.join(args.record, f"rank{rank}.json"), "w") as fh:
                json.dump({"seen": seen, "step": state.global_step}, fh)

    callbacks = [Save(), *([SignalAt(args.kill_at, signal.SIGKILL)] if args.kill_at else [])]
    overrides = list(args.overrides) + (["training.resume_from_checkpoint=latest"] if args.resume else [])
    try:
        hf_finetune.finetune(args.recipe, overrides, callbacks=callbacks)
    except HFFinetuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(os.path.join(args.record, f"rank{rank}.json"), "w") as fh:
        json.dump({"seen": seen, "step": -1}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
