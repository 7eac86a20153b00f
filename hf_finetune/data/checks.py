"""Pre-flight checks on loaded data, run before anything is written or trained.

`datasets` decodes images lazily, so a corrupt or truncated file would otherwise fail mid-training. Each image is
opened and fully decoded here once, and every bad file is named.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from ..errors import DataError

logger = logging.getLogger(__name__)


def check_images(splits: Any, column: str = "image", max_listed: int = 10) -> None:
    """Raise DataError naming every image (up to `max_listed`) that cannot be decoded."""
    import datasets
    from PIL import Image

    bad: list[str] = []
    total = 0
    for split, ds in splits.items():
        undecoded = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        for row, item in enumerate(undecoded):
            total += 1
            value = item[column]
            where = (value or {}).get("path") or "image stored in the dataset"
            try:
                if value is None:
                    raise ValueError("no image")
                data = value.get("bytes")
                with Image.open(io.BytesIO(data) if data else value["path"]) as img:
                    img.load()
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError… for broken files
                bad.append(f"{where} ({split} split, row {row}): {type(err).__name__}: {err}")
    if bad:
        listed = "\n  ".join(bad[:max_listed])
        more = f"\n  … and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        raise DataError(
            f"{len(bad)} of {total} images cannot be decoded:\n  {listed}{more}\n"
            "Remove or replace these files (or set data.check_images: false to skip this check)."
        )
    logger.info("data: all %d images decode", total)
