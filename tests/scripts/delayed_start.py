"""`python -m hf_finetune ARGS`, except that with DELAY_S set the process sleeps that long right after it joined
the process group, so a test can let another process reach the next step first."""

import os
import sys
import time

import hf_finetune.trainer
from hf_finetune.cli import main

original = hf_finetune.trainer.build_training_args


def delayed(*args, **kwargs):
    built = original(*args, **kwargs)  # also sets up the processes under accelerate/torchrun
    time.sleep(float(os.environ.get("DELAY_S", "0")))
    return built


hf_finetune.trainer.build_training_args = delayed

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
