"""Pre-flight checks on loaded data, run before anything is written or trained.

`datasets` decodes images lazily, so a corrupt or truncated file would otherwise fail mid-training. Each image is
opened and fully decoded here once, and every bad file is named. Empty or missing texts are counted, then dropped
with a warning or reported, as the recipe's `data.empty_text` says. Multi-label and regression labels are checked
as labels.py reads them: each check below returns its problems (naming split, rows and a fix), so that every problem
of every split is reported in one error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DataError, listed

if TYPE_CHECKING:
    import numpy as np
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
    (and so training) saturates at 255.

    The decoding is the duplicate check's (duplicates.keys_of): one pass serves both, in worker processes on large
    data, cached by each split's fingerprint so that a re-run reads the result instead of decoding again."""
    from .duplicates import decode_workers, keys_of

    bad: list[str] = []
    saturated: list[str] = []
    total = 0
    for split, ds in splits.items():
        keys = keys_of(ds, "image", column, decode_workers(len(ds)))
        if not any(keys["error"]) and not any(keys["saturated"]):
            total += len(keys["error"])
            continue
        values = ds.select_columns([column]).with_format("arrow")[column].to_pylist()
        for row, (err, lost) in enumerate(zip(keys["error"], keys["saturated"], strict=True)):
            total += 1
            where = (values[row] or {}).get("path") or "image stored in the dataset"
            if err:
                bad.append(f"{where} ({split} split, row {row}): {err}")
            elif lost:
                saturated.append(f"{where} ({split} split, row {row})")
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
            shown = listed(i + 1 for i in bad)
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


# --------------------------------------------------------------------------------------------- multi-label, regression


def shown_rows(rows: Sequence[int], limit: int = 10) -> str:
    """`row 3` or `rows 3, 7, 12 …`: the first of a list of row numbers."""
    return f"row{'s' if len(rows) > 1 else ''} {listed(rows, limit)}"


def never_positive_in_train(matrix: np.ndarray, names: Sequence[str], by_column: bool = False) -> list[str]:
    """Labels no train row has: the model would have an output it never saw a positive example of."""
    never = [name for name, count in zip(names, matrix.sum(0), strict=True) if count == 0]
    if not never:
        return []
    what = "columns" if by_column else "labels"
    drop = "drop those columns from data.label_columns" if by_column else "remove them from the other splits"
    return [
        f"split 'train': {what} {never} are positive in none of its {len(matrix)} rows, so the model cannot learn "
        f"them. Add train rows that have them, or {drop}"
    ]


def rows_without_labels(empty: np.ndarray, rows: Sequence[int], split: str) -> list[str]:
    """The rows `empty` marks, which have no label at all (refused unless `data.allow_empty_labels`)."""
    listed = [rows[i] for i in empty.nonzero()[0]]
    if not listed:
        return []
    return [
        f"split {split!r}: {len(listed)} of {len(empty)} rows have no label at all ({shown_rows(listed)}). "
        "Label or remove them, or set data.allow_empty_labels: true if 'none of the labels' is a real answer"
    ]


def unknown_labels(unknown: Mapping[str, Sequence[int]], names: Sequence[str], split: str, whose: str) -> list[str]:
    """Labels outside `names` (train's, or a trained model's), one problem per label with its rows."""
    known = f"{list(names)[:20]}{'…' if len(names) > 20 else ''}"
    out = [
        f"split {split!r}: label {tag!r} ({shown_rows(rows)}) is not one of {whose}'s labels {known}; every "
        "label must appear in train. Fix the spelling, add train rows with it, or remove it"
        for tag, rows in sorted(unknown.items())[:10]
    ]
    if len(unknown) > 10:
        out.append(f"split {split!r}: … and {len(unknown) - 10} more labels that {whose} does not have")
    return out


def bad_indicators(bad: Sequence[tuple[int, Any]], column: str, split: str) -> list[str]:
    """Cells of a `data.label_columns` column that are not 0/1 (nor true/false, "0"/"1")."""
    if not bad:
        return []
    cells = listed(f"row {row}: {value!r}" for row, value in bad)
    return [
        f"split {split!r}, column {column!r}: {len(bad)} value{'s' if len(bad) > 1 else ''} not 0 or 1 ({cells}); "
        'each label column takes 0 or 1 (true/false and "0"/"1" are read too). Fix those cells'
    ]


# what each kind of unusable regression target is called, and how to fix it
_TARGET_PROBLEMS = {
    "missing": ("a missing target", "Fill them in or remove those rows"),
    "non-numeric": ("a target that is not a number", "Fix them, or check that data.label_column is the target"),
    "nan": ("a NaN target", "Replace them with numbers or remove those rows"),
    "inf": ("an infinite target", "Replace them with finite numbers or remove those rows"),
}


def bad_targets(values: Sequence[Any], kinds: Sequence[str], rows: Sequence[int], split: str) -> list[str]:
    """Regression targets that are missing, not numbers, NaN or infinite: one problem per kind, with its rows
    (and, for non-numbers, the values)."""
    out = []
    for kind, (what, fix) in _TARGET_PROBLEMS.items():
        found = [i for i, k in enumerate(kinds) if k == kind]
        if not found:
            continue
        shown = shown_rows([rows[i] for i in found])
        if kind == "non-numeric":
            shown = listed(f"row {rows[i]}: {values[i]!r}" for i in found)
        out.append(f"split {split!r}: {len(found)} of {len(kinds)} rows have {what} ({shown}). {fix}")
    return out


def constant_targets(values: np.ndarray) -> list[str]:
    """A train split whose targets are all equal: there is nothing to learn (and no spread to standardise by)."""
    import numpy as np

    distinct = np.unique(values)
    if len(distinct) >= 2:
        return []
    shown = f"equal ({distinct[0]:g})" if len(distinct) else "absent"
    return [
        f"split 'train': all {len(values)} targets are {shown}; regression needs targets that vary. Check "
        "data.label_column and the data"
    ]
