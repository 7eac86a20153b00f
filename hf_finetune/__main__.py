"""`python -m hf_finetune …` is the CLI, so `accelerate launch -m hf_finetune train RECIPE` works."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
