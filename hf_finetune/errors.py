"""Errors a user can fix. The CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations

from collections.abc import Iterable


def listed(items: Iterable[object], limit: int = 10) -> str:
    """The first `limit` items, comma-separated, and ` …` when there are more: how a message shows many rows."""
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (" …" if len(items) > limit else "")


class HFFinetuneError(Exception):
    """Base class: bad input, described well enough to fix without reading a traceback."""


class RecipeError(HFFinetuneError):
    """One or more problems in a recipe, collected so the user sees all of them at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        head = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} in the recipe{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class DataError(HFFinetuneError):
    """The data cannot be used as given (missing column, unreadable image, unknown label, empty split…)."""


class ModelError(HFFinetuneError):
    """The model cannot be built or loaded as asked."""


class OutputDirError(HFFinetuneError):
    """The output folder holds another run's results and no overwrite or resume was asked for."""


class MetricError(HFFinetuneError):
    """A metric cannot be loaded or computed as asked (unknown name, no network for a Hub metric, bad inputs)."""


class HubError(HFFinetuneError):
    """The push did not happen (or did not finish). The local output folder is unchanged."""


class ExportError(HFFinetuneError):
    """An export was refused: the exported model does not reproduce the PyTorch model within the tolerance."""


class TrainingInterrupted(HFFinetuneError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
