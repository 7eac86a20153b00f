"""Error analysis of a single-label classifier's evaluated split: where the model fails, row by row.

`write_error_analysis` takes the split's rows (`RowRef`: an id and the image path or the text), its logits [N, C]
and integer labels [N], and writes into `out_dir`, each file atomically (`hf_finetune.files.atomic_output`):

- ``predictions_<split>.jsonl``: one JSON object per row, in row order, with ``id``, ``path`` (image) or ``text``
  (text; and ``text_pair`` for sentence pairs), ``label`` (true label name), ``predicted``, ``top_k``
  (``[{"label", "probability"}]``, most probable first, ``min(top_k, C)`` entries), ``probabilities`` (label →
  probability, only when ``C <= full_probabilities_up_to``), ``loss`` (the row's cross-entropy) and ``correct``.
- ``errors_<split>.md``: the accuracy, the most-confused (true → predicted) pairs, the highest-loss rows and the
  least-confident correct rows, as Markdown tables.
- ``errors_<split>.png`` (images only): a grid of the `worst` highest-loss images, `GRID_COLUMNS` per row.

Conventions.
- The prediction is the argmax of the logits, the first class on ties (``numpy.argmax``). Probabilities are the
  softmax and the loss is ``-log softmax(z)[y]``, both from a float64 log-softmax with the row maximum subtracted,
  so no exponent is positive. ``top_k`` orders by probability, then by label order on ties.
- Orderings are deterministic: highest loss first (ties: earlier row first); least-confident correct rows by
  p(predicted) ascending (ties: earlier row first); confused pairs by count descending, then by the true label's
  index, then by the predicted label's index. The Markdown shows the first `CONFUSED_PAIRS_SHOWN` pairs;
  `ErrorAnalysis.confused_pairs` holds every off-diagonal pair with a nonzero count in that order.
- Paths are written exactly as given (a relative path stays relative); images are only opened to draw the grid:
  by `image_loader(row_index)` when given (a dataset's own decoding, which also serves images stored as bytes),
  else from the path, a relative one from `image_root` when given, else from the current directory. A row whose
  image cannot be had (no path and no loader, or unreadable) is left out of the grid and listed in the Markdown.
- In Markdown cells, ``|`` is escaped as ``\\|`` and line breaks become ``<br>``; texts longer than
  `TEXT_CELL_CHARS` characters are cut to that many, the last one an ellipsis (``…``), before escaping.
- JSON floats are plain finite numbers: non-finite logits are refused, and so are rows whose logit spread
  (max − min) overflows float64, the one way finite logits could give an infinite loss.

Memory. The caller holds the N×C logits; this module converts blocks of at most `_BLOCK_ROWS` rows to float64 at a
time, streams the JSON lines out as it goes and keeps about 41 bytes per row (label, prediction, loss, p(true),
p(predicted) as 8-byte numbers and a correct flag) plus a C×C integer confusion count: for N = 10⁶ rows, ~41 MB
beside the logits. The image grid holds at most `worst` thumbnails of at
most `THUMBNAIL_PIXELS` pixels a side.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hf_finetune.errors import MetricError, listed
from hf_finetune.files import atomic_output, write_text_atomic
from hf_finetune.names import error_analysis_files

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from PIL.Image import Image as PILImage

CONFUSED_PAIRS_SHOWN = 10
SUMMARY_PAIRS = 3
TEXT_CELL_CHARS = 120
GRID_COLUMNS = 4
GRID_CELL_INCHES = (2.5, 2.8)  # width, height of one image and its title
GRID_DPI = 100
THUMBNAIL_PIXELS = 256
_BLOCK_ROWS = 4096


@dataclass(frozen=True)
class RowRef:
    """One evaluated row: its id and where it came from (`path` for an image, `text` for a text)."""

    id: str | int
    path: str | None = None
    text: str | None = None
    text_pair: str | None = None


@dataclass(frozen=True)
class ErrorAnalysis:
    """What `write_error_analysis` wrote and found.

    `confused_pairs` is every (true label, predicted label, count) with a nonzero count off the diagonal, most
    frequent first (module docstring for ties). `image_path` is None for texts, or when no image could be drawn.
    """

    split: str
    predictions_path: Path
    markdown_path: Path
    image_path: Path | None
    confused_pairs: tuple[tuple[str, str, int], ...]
    n_rows: int
    n_errors: int

    def to_json(self) -> dict[str, object]:
        """What metrics.json keeps of the analysis (the card's "Where the model fails" is drawn from it): file
        names, counts and the most-confused pairs; no row's content."""
        return {
            "rows": self.n_rows,
            "errors": self.n_errors,
            "most_confused": [
                {"true": t, "predicted": p, "count": n} for t, p, n in self.confused_pairs[:CONFUSED_PAIRS_SHOWN]
            ],
            "files": [
                path.name for path in (self.predictions_path, self.markdown_path, self.image_path) if path is not None
            ],
        }

    @property
    def accuracy(self) -> float:
        return (self.n_rows - self.n_errors) / self.n_rows

    def summary_lines(self) -> list[str]:
        """Two or three plain-text lines for a model card's "Where the model fails" (no paths)."""
        return summary_lines(self.split, self.to_json())


def summary_lines(split: str, info: Mapping[str, Any]) -> list[str]:
    """The "Where the model fails" lines of one split from its `ErrorAnalysis.to_json()` (as metrics.json keeps it):
    accuracy, the `SUMMARY_PAIRS` most-confused pairs and the share of the errors they cover. No row's content."""
    rows, errors = int(info["rows"]), int(info["errors"])
    lines = [
        f"Accuracy on the {split} split: {(rows - errors) / rows:.4f} "
        f"({rows - errors} of {rows} rows correct, {_plural(errors, 'error')})."
    ]
    if not errors:
        lines.append("No row is misclassified, so there is no confused pair to report.")
        return lines
    top = [(p["true"], p["predicted"], int(p["count"])) for p in info["most_confused"][:SUMMARY_PAIRS]]
    lines.append("Most confused (true → predicted): " + ", ".join(f"{t} → {p} ({n})" for t, p, n in top) + ".")
    covered = sum(n for _, _, n in top)
    lines.append(
        f"{'This pair covers' if len(top) == 1 else f'These {len(top)} pairs cover'} {covered} of the "
        f"{_plural(errors, 'error')} ({100.0 * covered / errors:.1f}%)."
    )
    return lines


def write_error_analysis(
    out_dir: Path,
    split: str,
    rows: Sequence[RowRef],
    logits: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    *,
    kind: Literal["image", "text"],
    top_k: int = 5,
    full_probabilities_up_to: int = 20,
    worst: int = 16,
    image_root: Path | None = None,
    image_loader: Callable[[int], PILImage] | None = None,
) -> ErrorAnalysis:
    """Write ``predictions_<split>.jsonl``, ``errors_<split>.md`` and, for images, ``errors_<split>.png`` into
    `out_dir` (module docstring for their content and conventions) and return what was written.

    `logits` [N, C] (any real dtype) and integer `labels` [N] in ``[0, C)`` are the caller's; memory beyond them is
    bounded as the module docstring states. Raises `MetricError` on mismatched lengths, labels out of range,
    non-finite logits or bad settings.
    """
    import numpy as np

    logits, labels = _checked(split, rows, logits, labels, label_names, kind, top_k, full_probabilities_up_to, worst)
    n, c = logits.shape
    out_dir = Path(out_dir)
    k = min(top_k, c)
    with_probabilities = c <= full_probabilities_up_to

    predicted = np.empty(n, dtype=np.int64)
    losses = np.empty(n, dtype=np.float64)
    p_true = np.empty(n, dtype=np.float64)
    p_pred = np.empty(n, dtype=np.float64)

    predictions_name, markdown_name, grid_name = error_analysis_files(split)
    predictions_path = out_dir / predictions_name
    with atomic_output(predictions_path) as handle:
        for start in range(0, n, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, n)
            z = logits[start:stop].astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            prob = np.exp(log_p)
            y = labels[start:stop]
            idx = np.arange(stop - start)
            pred = np.argmax(log_p, axis=1)
            predicted[start:stop] = pred
            losses[start:stop] = -log_p[idx, y]
            p_true[start:stop] = prob[idx, y]
            p_pred[start:stop] = prob[idx, pred]
            # stable sort of -p: most probable first, label order on ties
            order = np.argsort(-prob, axis=1, kind="stable")[:, :k]
            for i in range(stop - start):
                row = rows[start + i]
                record: dict[str, object] = {"id": _json_id(row.id)}
                if kind == "image":
                    record["path"] = None if row.path is None else os.fspath(row.path)
                else:
                    record["text"] = None if row.text is None else str(row.text)
                    if row.text_pair is not None:
                        record["text_pair"] = str(row.text_pair)
                record["label"] = label_names[int(y[i])]
                record["predicted"] = label_names[int(pred[i])]
                record["top_k"] = [{"label": label_names[int(j)], "probability": float(prob[i, j])} for j in order[i]]
                if with_probabilities:
                    record["probabilities"] = {label_names[j]: float(prob[i, j]) for j in range(c)}
                record["loss"] = float(losses[start + i])
                record["correct"] = bool(pred[i] == y[i])
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")

    correct = predicted == labels
    confusion = np.bincount(labels * c + predicted, minlength=c * c).reshape(c, c)
    support = confusion.sum(axis=1)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)  # row-major: true label order, then predicted label order
    counts = off[true_idx, pred_idx]
    by_count = np.argsort(-counts, kind="stable")
    pairs = [(int(true_idx[j]), int(pred_idx[j]), int(counts[j])) for j in by_count]

    # highest loss first, earlier row first on ties; lowest p(predicted) first among correct rows
    worst_rows = np.argsort(-losses, kind="stable")[:worst]
    correct_rows = np.flatnonzero(correct)
    unsure_rows = correct_rows[np.argsort(p_pred[correct_rows], kind="stable")][:worst]

    image_path: Path | None = None
    left_out: list[str] = []
    if kind == "image" and worst_rows.size:
        image_path, left_out = _write_grid(
            out_dir / grid_name,
            [int(i) for i in worst_rows],
            rows,
            [label_names[int(labels[i])] for i in worst_rows],
            [label_names[int(predicted[i])] for i in worst_rows],
            [float(p_pred[i]) for i in worst_rows],
            image_root,
            image_loader,
        )

    n_errors = int(n - correct.sum())
    table = _RowTable(rows, labels, predicted, p_true, p_pred, losses, label_names, kind)
    lines = [
        f"# Errors on the {_cell(split)} split",
        "",
        f"Accuracy: {(n - n_errors) / n:.4f} ({n - n_errors} of {n} rows correct, {_plural(n_errors, 'error')}).",
        "",
        "## Most-confused pairs",
        "",
    ]
    if pairs:
        lines += ["| true | predicted | count | share of the true class |", "|---|---|---:|---:|"]
        for t, p, count in pairs[:CONFUSED_PAIRS_SHOWN]:
            lines.append(
                f"| {_cell(label_names[t])} | {_cell(label_names[p])} | {count} | "
                f"{100.0 * count / support[t]:.1f}% ({count} of {support[t]}) |"
            )
        if len(pairs) > CONFUSED_PAIRS_SHOWN:
            lines += ["", f"{len(pairs) - CONFUSED_PAIRS_SHOWN} more confused pairs are not shown."]
    else:
        lines.append("No row is misclassified.")
    lines += ["", "## Highest-loss examples", ""]
    lines += table.lines(worst_rows)
    if kind == "image":
        if image_path is not None:
            lines += ["", f"Images: {image_path.name}."]
        if left_out:
            lines += ["", f"Not drawn in the image grid ({len(left_out)}): " + "; ".join(left_out) + "."]
    lines += ["", "## Least-confident correct", ""]
    lines += table.lines(unsure_rows) if unsure_rows.size else ["No row is classified correctly."]
    markdown_path = out_dir / markdown_name
    write_text_atomic(markdown_path, "\n".join(lines) + "\n")

    return ErrorAnalysis(
        split=split,
        predictions_path=predictions_path,
        markdown_path=markdown_path,
        image_path=image_path,
        confused_pairs=tuple((label_names[t], label_names[p], count) for t, p, count in pairs),
        n_rows=n,
        n_errors=n_errors,
    )


@dataclass(frozen=True)
class _RowTable:
    rows: Sequence[RowRef]
    labels: np.ndarray
    predicted: np.ndarray
    p_true: np.ndarray
    p_pred: np.ndarray
    losses: np.ndarray
    label_names: list[str]
    kind: str

    def lines(self, which: np.ndarray) -> list[str]:
        source = "path" if self.kind == "image" else "text"
        out = [
            f"| # | id | {source} | true | predicted | p(true) | p(predicted) | loss |",
            "|---:|---|---|---|---|---:|---:|---:|",
        ]
        for i in which:
            i = int(i)
            row = self.rows[i]
            value = row.path if self.kind == "image" else row.text
            shown = "" if value is None else _cell(_truncate(str(value)))
            out.append(
                f"| {i} | {_cell(str(row.id))} | {shown} | {_cell(self.label_names[int(self.labels[i])])} | "
                f"{_cell(self.label_names[int(self.predicted[i])])} | {self.p_true[i]:.4f} | {self.p_pred[i]:.4f} | "
                f"{self.losses[i]:.4f} |"
            )
        return out


def _write_grid(
    target: Path,
    which: list[int],
    rows: Sequence[RowRef],
    true_names: list[str],
    pred_names: list[str],
    p_pred: list[float],
    image_root: Path | None,
    image_loader: Callable[[int], PILImage] | None,
) -> tuple[Path | None, list[str]]:
    """Draw the readable images of the rows `which` in a grid; return the PNG's path (None if none drew) and the
    rows left out, described for the Markdown."""
    from PIL import Image

    drawn = []
    left_out = []
    for index, t, p, prob in zip(which, true_names, pred_names, p_pred, strict=True):
        row = rows[index]
        if row.path is None and image_loader is None:
            left_out.append(f"id {_cell(str(row.id))} has no path")
            continue
        try:
            if image_loader is not None:
                image = image_loader(index)
            else:
                location = Path(row.path)
                if image_root is not None and not location.is_absolute():
                    location = Path(image_root) / location
                image = Image.open(location)
            with image:
                image.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
                thumb = image.convert("RGB")
                thumb.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            where = f" ({_cell(row.path)})" if row.path is not None else ""
            left_out.append(f"id {_cell(str(row.id))}{where} is unreadable: {_cell(type(error).__name__)}")
            continue
        drawn.append((thumb, f"true: {t} / pred: {p} (p={prob:.2f})"))
    if not drawn:
        return None, left_out

    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns, grid_rows = grid_shape(len(drawn))
    fig = Figure(
        figsize=(columns * GRID_CELL_INCHES[0], grid_rows * GRID_CELL_INCHES[1]), dpi=GRID_DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(grid_rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (thumb, title) in zip(axes.flat[: len(drawn)], drawn, strict=True):
        ax.imshow(thumb)
        ax.set_title(title, fontsize=7)
    with atomic_output(target, "wb") as handle:
        fig.savefig(handle, format="png", dpi=GRID_DPI)
    return target, left_out


def grid_shape(images: int) -> tuple[int, int]:
    """(columns, rows) of the image grid for `images` images: `GRID_COLUMNS` wide, fewer when fewer images."""
    columns = max(1, min(GRID_COLUMNS, images))
    return columns, max(1, math.ceil(images / columns))


def _check_settings(split: str, kind: str, top_k: int, full_probabilities_up_to: int, worst: int) -> None:
    if not isinstance(split, str) or not split or os.sep in split or "/" in split or split in {".", ".."}:
        raise MetricError(f"split must be a non-empty name usable in a file name (e.g. 'validation'), got {split!r}")
    if kind not in ("image", "text"):
        raise MetricError(f"kind must be 'image' or 'text', got {kind!r}")
    for name, value, least in (
        ("top_k", top_k, 1),
        ("full_probabilities_up_to", full_probabilities_up_to, 0),
        ("worst", worst, 0),
    ):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            raise MetricError(f"{name} must be an integer >= {least}, got {value!r}")


def _checked(
    split: str,
    rows: Sequence[RowRef],
    logits: object,
    labels: object,
    label_names: list[str],
    kind: str,
    top_k: int,
    full_probabilities_up_to: int,
    worst: int,
) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    _check_settings(split, kind, top_k, full_probabilities_up_to, worst)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2 or not np.issubdtype(logits.dtype, np.number) or np.iscomplexobj(logits):
        raise MetricError(
            f"logits must be a real array of shape [N, C] with C >= 2 classes, got shape {logits.shape} "
            f"{logits.dtype}; pass the classifier's raw scores, one row per example"
        )
    n, c = logits.shape
    if n == 0:
        raise MetricError("the split has no row: there is nothing to analyse; evaluate a non-empty split")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise MetricError(
            f"labels must be a 1-D array of integer class indices, got shape {labels.shape} {labels.dtype}; "
            "map label names to their indices first"
        )
    if len(labels) != n or len(rows) != n:
        raise MetricError(
            f"rows ({len(rows)}), logits ({n} rows) and labels ({len(labels)}) must have the same length: "
            "pass the rows of the evaluated split in the order its logits were computed"
        )
    if len(label_names) != c:
        raise MetricError(
            f"label_names has {len(label_names)} names but the logits have {c} columns: pass one name per class, "
            "in class-index order"
        )
    if len(set(label_names)) != c:
        raise MetricError(f"label_names must be distinct, got {listed(label_names)}")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        raise MetricError(
            f"labels must be class indices in [0, {c}), got {listed(labels[bad].tolist())} at rows "
            f"{listed(bad.tolist())}; check the label mapping or drop unlabeled rows"
        )
    # in blocks, so the check's boolean temporaries stay small whatever N is
    finite = np.concatenate([np.isfinite(logits[i : i + _BLOCK_ROWS]).all(axis=1) for i in range(0, n, _BLOCK_ROWS)])
    if not finite.all():
        raise MetricError(
            f"logits must be finite; rows {listed(np.flatnonzero(~finite).tolist())} hold NaN or infinity. "
            "Check the model for overflow (e.g. evaluate in float32 instead of float16)"
        )
    with np.errstate(over="ignore"):  # the overflow is what is being detected
        spread = logits.max(axis=1).astype(np.float64) - logits.min(axis=1).astype(np.float64)
    if not np.isfinite(spread).all():
        raise MetricError(
            f"logit rows {listed(np.flatnonzero(~np.isfinite(spread)).tolist())} span more than float64 can hold "
            "(max − min overflows), so their loss would be infinite; rescale the logits"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, RowRef):
            raise MetricError(f"rows must be RowRef objects, got {type(row).__name__} at row {i}")
    return logits, labels


def _json_id(value: object) -> str | int:
    # numpy integers (a dataset's index column) are not JSON serialisable; anything else is written as its text
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value if isinstance(value, str) else str(value)


def _truncate(text: str) -> str:
    return text if len(text) <= TEXT_CELL_CHARS else text[: TEXT_CELL_CHARS - 1] + "…"


def _cell(text: str) -> str:
    """`text` safe inside a Markdown table cell: pipes escaped, line breaks as <br>."""
    return text.replace("|", "\\|").replace("\r\n", "<br>").replace("\r", "<br>").replace("\n", "<br>")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


ID_COLUMNS = ("id", "idx")  # a split's own row id, when it has one (GLUE's idx); else the row's index in the split


def rows_of(ds: Dataset, kind: Literal["image", "text"]) -> list[RowRef]:
    """The `RowRef`s of a loaded split (canonical columns: ``image``, or ``text`` and ``text_pair``), in row order.

    The id is the split's ``id``/``idx`` column when it has one, else the row's index. Image paths are read without
    decoding (the ``Image`` feature cast to ``decode=False``), a block of rows at a time, so no image is decoded and
    embedded bytes are not all held at once; an image stored only as bytes has no path (None)."""
    import datasets

    id_column = next((c for c in ID_COLUMNS if c in ds.column_names), None)
    ids: list[str | int] = list(ds[id_column]) if id_column else list(range(len(ds)))
    if kind == "text":
        texts = ds["text"]
        pairs = ds["text_pair"] if "text_pair" in ds.column_names else [None] * len(ds)
        return [RowRef(id=i, text=t, text_pair=p) for i, t, p in zip(ids, texts, pairs, strict=True)]
    column = ds.select_columns(["image"])
    if isinstance(column.features["image"], datasets.Image):
        column = column.cast_column("image", datasets.Image(decode=False))
    paths: list[str | None] = []
    for batch in column.iter(batch_size=1024):
        paths += [value.get("path") if isinstance(value, dict) else None for value in batch["image"]]
    return [RowRef(id=i, path=p) for i, p in zip(ids, paths, strict=True)]


def dataset_image_loader(ds: Dataset) -> Callable[[int], PILImage]:
    """`image_loader` for `write_error_analysis`: row `i`'s image as the split decodes it (paths and bytes alike)."""
    column = ds.select_columns(["image"])

    def load(index: int) -> PILImage:
        return column[index]["image"]

    return load


def analyse_split(
    out_dir: Path, split: str, ds: Dataset, logits: np.ndarray, labels: np.ndarray, label_names: list[str]
) -> ErrorAnalysis:
    """`write_error_analysis` for one loaded split (`ds`, its rows in the order of `logits`): image or text from
    its columns, ids and paths from `rows_of`, the grid's images decoded by the split itself."""
    kind: Literal["image", "text"] = "image" if "image" in ds.column_names else "text"
    return write_error_analysis(
        out_dir,
        split,
        rows_of(ds, kind),
        logits,
        labels,
        label_names,
        kind=kind,
        image_loader=dataset_image_loader(ds) if kind == "image" else None,
    )
