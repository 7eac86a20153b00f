"""What every benchmark script shares: its environment, the machine and code it ran on, and how it writes results.

Each script keeps only what it measures. Imported as `_common`: running `python benchmarks/x.py` puts benchmarks/
first on sys.path. torch and the Hugging Face libraries are imported inside the functions, so that a script's
`set_environment()` still comes before OpenMP starts and `--help` stays quick.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def set_environment() -> None:
    """Called before torch is imported: OpenMP reads OMP_WAIT_POLICY once, at start-up; child processes inherit it.

    PASSIVE stops idle OpenMP threads from spinning: on a 2-core box a spinning pool and a DataLoader worker (or a
    second process) fight for the same cores and a 2-thread step can slow down 10×. The offline switches: without
    them, any Hub lookup waits 20–45 s before failing on machines with no network.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        os.environ.setdefault(var, "1")


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() is the best there is
    return cpu


def machine_info(packages: Sequence[str], **extra: object) -> dict[str, Any]:
    """CPU, cores, platform, the versions of `packages` (importing them), the OpenMP policy, the date, then `extra`."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: importlib.import_module(name).__version__ for name in packages},
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def machine_lines(
    machine: dict[str, Any], packages: Sequence[str], cores_note: str = "", date_note: str = ""
) -> list[str]:
    """The results page's machine, versions and date lines for a `machine_info(packages)`."""
    versions = ", ".join(f"{name} {machine[name]}" for name in packages)
    return [
        f"- machine: {machine['cpu']}, {machine['cores']} cores{cores_note}, {machine['platform']}",
        f"- versions: python {machine['python']}, {versions}",
        f"- date: {machine['date']}; OMP_WAIT_POLICY={machine['OMP_WAIT_POLICY']}{date_note}",
    ]


def git_state() -> dict[str, Any]:
    """The commit and the package files that differ from it: other people's edits change what is measured."""

    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--", "hf_finetune")
    return {"commit": commit or None, "package_changes": changes.splitlines() if changes else []}


def describe_git(state: dict[str, Any]) -> str:
    """`git_state()` in a few words: the numbers belong to that code, edits included."""
    if state["commit"] is None:
        return "unknown (not a git checkout)"
    changed = state["package_changes"]
    return state["commit"] + (f" + {len(changed)} modified package files" if changed else "")


def weight_checksum(model: torch.nn.Module) -> float:
    """The sum of every floating-point weight: equal sums show that two runs started from the same model."""
    import torch

    with torch.no_grad():
        return float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))


def same_checksums(checksums: Iterable[float]) -> bool:
    """All equal to the first, up to float summation order."""
    values = list(checksums)
    return all(abs(c - values[0]) <= 1e-9 * max(1.0, abs(values[0])) for c in values)


def median_range(values: Sequence[float], digits: int = 1) -> str:
    """`median [min–max]`, a table cell over repeats."""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def command_line(script: str, argv: Sequence[str]) -> str:
    """How the run was started, for the results page; `script` is the file's name."""
    return f"python benchmarks/{script} {' '.join(argv)}".strip()


def write_results(stem: Path, payload: dict[str, Any], markdown: Sequence[str]) -> tuple[Path, Path]:
    """`stem`.json (every number) and `stem`.md (the page a person reads, one line per item); returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text("\n".join(markdown), encoding="utf-8")
    return json_path, md_path
