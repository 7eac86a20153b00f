"""Experiment trackers (`training.report_to`): what TensorBoard gets beyond Trainer's own logging.

Trainer's `TensorBoardCallback` writes the training's logs (train loss, learning rate, each epoch's eval metrics)
into `OUT/runs/<date>_<host>/` (transformers' `default_logdir()` under the output folder; the environment variable
`TENSORBOARD_LOGGING_DIR` moves it). hf_finetune narrows it to the training (`TrainingTensorBoard`): the evaluations
after training (every split, once, with the model that is saved) would otherwise add a second point at the last step
of each `eval/` curve. Those final results are logged once, by `log_final_results`, in the same run under `final/`:
each split's scalars (`final/test/accuracy`), the PNGs the run wrote (confusion matrices, reliability diagrams,
regression plots) as images, and the per-class table as Markdown text. All at the run's last global step.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.integrations.integration_utils import TensorBoardCallback, default_logdir

from .formats import finite
from .names import EVALUATED_PREFIXES, METRICS_FILE, confusion_matrix_files

if TYPE_CHECKING:
    from collections.abc import Mapping

    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

# Per-split entries of metrics.json that say how fast the pass ran, not how good the model is.
_NOT_RESULTS = frozenset({"runtime", "samples_per_second", "steps_per_second", "epoch"})


class TrainingTensorBoard(TensorBoardCallback):
    """Trainer's TensorBoard logger, listening only between `on_train_begin` and `on_train_end`.

    The evaluations hf_finetune runs after training reach `on_log` too; `log_final_results` logs them instead, under
    `final/`, so that each `eval/` curve holds one point per evaluation during training."""

    training = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.training = True
        return super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.training = False
        return super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        if self.training:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        return None


def use_training_tensorboard(trainer: Trainer) -> None:
    """Swap the `TensorBoardCallback` Trainer made from `report_to` (if any) for `TrainingTensorBoard`."""
    if trainer.pop_callback(TensorBoardCallback) is not None:
        trainer.add_callback(TrainingTensorBoard())


def log_final_results(trainer: Trainer, out: Path) -> Path | None:
    """With `tensorboard` in `report_to`: log the finished run's results (read back from metrics.json and the PNGs
    in `out`) into the training's TensorBoard run; returns its folder (None: TensorBoard is not a tracker here).

    Call on the main process, after the results are written. With no training (linear_probe) the run's folder is
    made as Trainer would have made it."""
    callback = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None)
    if callback is None:
        return None
    log_dir = Path(callback.logging_dir or os.path.join(trainer.args.output_dir, default_logdir())).resolve()
    metrics = json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))
    step = trainer.state.global_step
    # the writer class Trainer's callback chose: torch's, or tensorboardX's where only that is installed
    summary_writer = getattr(callback, "_SummaryWriter", None)
    if summary_writer is None:
        from torch.utils.tensorboard import SummaryWriter as summary_writer
    writer = summary_writer(log_dir=str(log_dir))
    try:
        for prefix in EVALUATED_PREFIXES:
            if isinstance(metrics.get(prefix), dict):
                _log_split(writer, out, prefix, metrics[prefix], step)
    finally:
        writer.close()
    logger.info("tensorboard: final results logged in %s (tensorboard --logdir %s)", log_dir, log_dir.parent)
    return log_dir


def _log_split(writer: Any, out: Path, prefix: str, m: Mapping[str, Any], step: int) -> None:
    for key, value in m.items():
        if key not in _NOT_RESULTS and finite(value):
            writer.add_scalar(f"final/{prefix}/{key}", float(value), step)
    plots = m.get("plots") if isinstance(m.get("plots"), dict) else {}
    for name in [confusion_matrix_files(prefix)[1], *plots.values()]:
        if (out / name).is_file():  # tagged by the file's name without its split: final/test/confusion_matrix
            kind = Path(name).stem.removesuffix(f"_{prefix}")
            writer.add_image(f"final/{prefix}/{kind}", _rgb(out / name), step, dataformats="HWC")
    if m.get("per_class"):
        writer.add_text(f"final/{prefix}/per_class", per_class_markdown(m["per_class"]), step)


def per_class_markdown(rows: list[Mapping[str, Any]]) -> str:
    """metrics.json's per-class rows as a Markdown table: the label, then each row's fields in their order (floats
    to 4 decimals; a missing value, e.g. a label without positives' average precision, as an empty cell)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")  # a label holding `|` would split its row


def _rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
