"""Atomic writes of small result files: the one foundation every stage that writes into a run's folder shares.

A crash (or a signal) in the middle of a write never leaves half a file: the content is written to a hidden
temporary file beside the target and moved into place once complete. No hf_finetune imports, so any stage may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file handle whose content appears at `path` only once fully written, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); results are ordinary files (0644 under umask 022)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: a NaN or infinite number (Pearson of constant predictions) is written as null, which every JSON
    reader takes, instead of Python's NaN, which most refuse."""
    write_text_atomic(path, json.dumps(finite_only(data), indent=2, default=_jsonable, allow_nan=False) + "\n")


def finite_only(data: Any) -> Any:
    """`data` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_only(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_only(v) for v in data]
    return data


def _jsonable(obj: Any) -> Any:
    # numpy arrays and scalars (metrics, confusion matrices) and paths (provenance) are what results hold
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
