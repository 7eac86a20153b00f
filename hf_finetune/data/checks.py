"""Pre-flight checks on loaded data, run before anything is written or trained.

`datasets` decodes images lazily, so a corrupt or truncated file would otherwise fail mid-training. Each image is
opened and fully decoded here once, and every bad file is named. Empty or missing texts are counted, then dropped
with a warning or reported, as the recipe's `data.empty_text` says.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from ..recipe import DataSpec

logger = logging.getLogger(__name__)


def check_inputs(splits: Mapping[str, Dataset], inputs: Mapping[str, str], spec: DataSpec) -> None:
    """The pre-flight checks a task's input columns (`Task.INPUTS`) call for, once the data is loaded: every image
    decodes (unless `data.check_images: false`). Texts need none here: `load_data` already handled empty ones."""
    if "image" in inputs and spec.check_images:
        check_images(splits)


def check_images(splits: Mapping[str, Dataset], column: str = "image", max_listed: int = 10) -> None:
    """Raise DataError naming every image (up to `max_listed`) that cannot be decoded, or cannot be converted to RGB
    the way `pipeline()`'s loader converts it (the mode is named); warn about 16-bit images whose values `pipeline()`
    (and so training) saturates at 255."""
    import datasets

    bad: list[str] = []
    saturated: list[str] = []
    total = 0
    for split, ds in splits.items():
        undecoded = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        for row, item in enumerate(undecoded):
            total += 1
            value = item[column]
            where = (value or {}).get("path") or "image stored in the dataset"
            try:
                if _saturates(value):
                    saturated.append(f"{where} ({split} split, row {row})")
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError… for broken files
                bad.append(f"{where} ({split} split, row {row}): {type(err).__name__}: {err}")
    if bad:
        listed = "\n  ".join(bad[:max_listed])
        more = f"\n  … and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        raise DataError(
            f"{len(bad)} of {total} images cannot be decoded:\n  {listed}{more}\n"
            "Remove or replace these files (or set data.check_images: false to skip this check)."
        )
    if saturated:
        logger.warning(
            "data: %d image(s) hold values above 255 (16-bit or 32-bit): pipeline()'s loader (PIL convert('RGB')) "
            "saturates them at 255, and training does the same so the metrics hold; scale them to 8 bits first if "
            "their range matters: %s",
            len(saturated),
            ", ".join(saturated[:max_listed]),
        )
    logger.info("data: all %d images decode", total)


def _saturates(value: dict | None) -> bool:
    """Decode one stored image fully and convert it as pipeline() does (raising if either fails); whether values
    above 255 are lost in that conversion."""
    from PIL import Image

    if value is None:
        raise ValueError("no image")
    data = value.get("bytes")
    with Image.open(io.BytesIO(data) if data else value["path"]) as img:
        img.load()
        mode = img.mode
        try:
            img.convert("RGB")
        except ValueError as err:
            raise ValueError(
                f"image mode {mode!r} cannot be converted to RGB as pipeline() reads images ({err}); "
                "save it as an 8-bit RGB or grayscale PNG/JPEG"
            ) from None
        return (mode.startswith("I") or mode == "F") and img.getextrema()[1] > 255


def check_texts(
    splits: Mapping[str, Dataset],
    columns: Sequence[str] = ("text", "text_pair"),
    policy: str = "error",
    shown_as: dict[str, str] | None = None,
) -> DatasetDict:
    """Rows whose text is null or blank: DataError naming split, column and rows (`error`), or dropped (`skip`).

    `shown_as` maps a column to the name the user knows it by (the data's own column) for the messages.
    """
    import datasets

    out = {}
    for split, ds in splits.items():
        present = [c for c in columns if c in ds.column_names]
        bad_rows: list[int] = []
        per_column: dict[str, int] = {}
        for column in present:
            # read through Arrow: iterating `ds[column]` decodes row by row, ~10x slower on big splits
            texts = ds.with_format("arrow")[column].to_pylist()
            empty = [i for i, t in enumerate(texts) if t is None or not t.strip()]
            if empty:
                per_column[column] = len(empty)
                bad_rows.extend(empty)
        bad = sorted(set(bad_rows))
        if bad and policy == "error":
            counts = ", ".join(f"{n} in column {(shown_as or {}).get(c, c)!r}" for c, n in per_column.items())
            shown = ", ".join(str(i + 1) for i in bad[:10]) + (" …" if len(bad) > 10 else "")
            raise DataError(
                f"split {split!r}: {len(bad)} of {len(ds)} rows have an empty or missing text ({counts}; rows "
                f"{shown}, counting data rows from 1 in the split's own order). Fix them, or set "
                "data.empty_text: skip to drop them with a warning."
            )
        if bad:
            logger.warning(
                "data: dropped %d of %d rows of split %r with an empty or missing text", len(bad), len(ds), split
            )
            keep = sorted(set(range(len(ds))) - set(bad))
            ds = ds.select(keep)
            if len(ds) == 0:
                raise DataError(f"split {split!r}: every row has an empty text; nothing is left to train or test on")
        out[split] = ds
    return datasets.DatasetDict(out)
