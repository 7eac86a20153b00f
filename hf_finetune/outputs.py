"""The output folder: who may write into it, and atomic writes of the small result files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputDirError

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"


def check_output_dir(path: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless the user asked to overwrite it or resume in it (nothing is deleted here)."""
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"training.output_dir {str(path)!r} is a file; point it at a folder")
    if not path.is_dir() or not any(path.iterdir()) or overwrite or resume:
        return
    what = "results of an earlier run" if (path / RECIPE_FILE).exists() or _has_checkpoints(path) else "files"
    raise OutputDirError(
        f"training.output_dir {str(path)!r} already holds {what}. Nothing was changed. Choose another folder "
        "(training.output_dir=…), pass --overwrite (overwrite: true) to replace it, or set "
        "training.resume_from_checkpoint to continue from a checkpoint."
    )


def clear_output_dir(path: Path) -> None:
    """Empty the folder for an explicit overwrite, so no stale checkpoint or metric from the old run survives."""
    if not path.is_dir():
        return
    entries = list(path.iterdir())
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if entries:
        logger.info("output: removed %d entries of the earlier run in %s (overwrite)", len(entries), path)


def _has_checkpoints(path: Path) -> bool:
    return any(p.name.startswith("checkpoint-") for p in path.iterdir())


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
    write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
