"""The output folder: who may write into it, what a run wrote there (its manifest), and so what it may remove."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OutputDirError
from .files import write_json, write_text_atomic
from .names import (
    CARD_FILE,
    COMPLETE_MARKER,
    EVALUATED_PREFIXES,
    MANIFEST_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    SPLIT_OF_PREFIX,
    TENSORBOARD_DIR,
    confusion_matrix_files,
    error_analysis_files,
    regression_plot_files,
    reliability_diagram_file,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from datasets import Dataset
    from transformers import TrainingArguments

    from .recipe import Recipe

logger = logging.getLogger(__name__)

# Folders Trainer and the resume code create (`checkpoint-12`, `incomplete-checkpoint-12`, `…-12-2`).
_RUN_FOLDER = re.compile(r"(incomplete-)?checkpoint-\d+(-\d+)?")
# What a run writes at the top level whatever the model (results, the common model and tokenizer files). For a folder
# written before the manifest existed (then only if it clearly is a run: recipe.yaml plus results or checkpoints),
# and for a run killed before it could list its files.
_COMMON_NAMES = frozenset(
    {
        RECIPE_FILE,
        METRICS_FILE,
        CARD_FILE,
        *(name for prefix in EVALUATED_PREFIXES for name in confusion_matrix_files(prefix)),
        *(reliability_diagram_file(prefix) for prefix in EVALUATED_PREFIXES),
        *(name for prefix in EVALUATED_PREFIXES for name in regression_plot_files(prefix)),
        *(name for prefix in EVALUATED_PREFIXES for name in error_analysis_files(SPLIT_OF_PREFIX[prefix])),
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "processor_config.json",
        "training_args.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "generation_config.json",
    }
)
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
# Files the desktop drops into any folder it shows: neither ours nor a reason to refuse the folder.
_OS_CLUTTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Names a run writes itself whatever the model: a user's file of that name would be replaced, so it is refused.
_ALWAYS_WRITTEN = (RECIPE_FILE, METRICS_FILE, CARD_FILE, "config.json")


@dataclass
class OutputPlan:
    """What claiming the output folder will remove (only entries hf_finetune wrote) and why."""

    remove: list[str] = field(default_factory=list)
    reason: str = ""


def check_output_dir(
    path: Path, *, overwrite: bool, resume: bool, protected: dict[str, str | Path | None] | None = None
) -> OutputPlan:
    """Decide, before anything is loaded, whether this run may use the folder, and what it will remove there.

    Nothing is deleted here (`clear_output_dir` does that once every other check passed). `protected` maps a
    description (`the recipe file`, `data.source`) to a path the run reads: a folder holding one is never emptied.
    - empty or new folder: used as it is;
    - `resume`: used as it is (the run continues there);
    - only what a failed hf_finetune run wrote (no complete checkpoint, no results): those entries are removed;
    - `overwrite`: the earlier run's entries are removed, the user's files stay; refused for the current, home or
      root folder, a folder with `.git`, or one holding the recipe or the data;
    - anything else: refused, with how to go on.
    """
    _check_writable(path)
    # only what exists locally (data.source may be a Hub id or builtin:digits)
    protected = {k: Path(v).expanduser() for k, v in (protected or {}).items() if v and Path(v).expanduser().exists()}
    if overwrite and not resume:
        _refuse_dangerous(path, protected)
    if not path.is_dir() or resume:
        return OutputPlan()
    entries = sorted(listing(path))
    if not set(entries) - _OS_CLUTTER:
        return OutputPlan()
    ours, manifest = _entries_we_wrote(path, entries)
    theirs = [e for e in entries if e not in ours and e not in _OS_CLUTTER]
    if overwrite:
        plan = OutputPlan(sorted(ours), "overwrite")
    elif not theirs and manifest is not None and not _finished(path, manifest) and not _complete_checkpoints(path):
        plan = OutputPlan(sorted(ours), "an earlier run in this folder failed before it saved a checkpoint or results")
    else:
        raise OutputDirError(_occupied_message(path, manifest, ours, theirs))
    _refuse_protected_entries(path, plan, protected)
    clash = [name for name in _ALWAYS_WRITTEN if name in theirs]
    if clash:
        raise OutputDirError(
            f"training.output_dir {str(path)!r} holds {', '.join(clash)}, which hf_finetune did not write and a run "
            "would replace. Nothing was changed. Move them, or choose another folder (--output-dir)."
        )
    if theirs:
        logger.info(
            "output: keeping %d entries in %s that hf_finetune did not write: %s", len(theirs), path, _some(theirs)
        )
    return plan


def clear_output_dir(path: Path, plan: OutputPlan | None = None) -> None:
    """Remove the entries `check_output_dir` found to be an earlier run's (and nothing else)."""
    if plan is None or not plan.remove or not path.is_dir():
        return
    removed = 0
    for name in plan.remove:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
        else:
            continue
        removed += 1
    logger.info("output: removed %d entries an earlier hf_finetune run wrote in %s (%s)", removed, path, plan.reason)


def start_manifest(path: Path, *, resume: bool) -> None:
    """Record, before the run writes its first file, that this folder holds an hf_finetune run (not finished)."""
    names = sorted(listing(path))
    entries = {RECIPE_FILE}
    if resume:  # the run goes on: what the earlier part of it wrote stays listed as ours
        entries |= _entries_we_wrote(path, names)[0] - {MANIFEST_FILE}
    _write_manifest(path, {"entries": sorted(entries), "finished": False, "listing_at_start": names})


@contextlib.contextmanager
def recording(path: Path, enabled: bool = True) -> Iterator[None]:
    """Record in the manifest whatever appears in the folder inside the block (model files, whose names vary).

    The listing from before is stored first, so a run killed inside the block (while saving the model) leaves a
    manifest from which the new entries can still be told apart from the user's."""
    if not enabled:
        yield
        return
    manifest = _read_manifest(path) or {"entries": [], "finished": False}
    before = sorted(listing(path))
    _write_manifest(path, {**manifest, "listing_before_save": before})
    yield
    new = listing(path) - set(before) - {MANIFEST_FILE}
    _write_manifest(path, {**manifest, "entries": sorted(set(manifest["entries"]) | new)})


def finish_manifest(path: Path, written: Sequence[str], *, before: set[str]) -> list[str]:
    """All results are written (`written`, and whatever else appeared since the listing `before`): the folder now
    blocks a plain re-run (only overwrite or resume go on). Returns `written`."""
    manifest = _read_manifest(path) or {"entries": []}
    at_start = manifest.pop("listing_at_start", None)
    now = listing(path)
    entries = set(manifest["entries"]) | set(written) | (now - before - {MANIFEST_FILE})
    if isinstance(at_start, list):
        # what training wrote beside its checkpoints (report_to tensorboard: `runs/`), found as a killed run's is;
        # checkpoints are told by their names (and rotate)
        entries |= {e for e in now - set(at_start) if _looks_ours(e) and not _RUN_FOLDER.fullmatch(e)}
    _write_manifest(path, {**manifest, "entries": sorted(entries), "finished": True})
    return list(written)


def written_by_us(path: Path, name: str) -> bool:
    """Whether the folder's entry `name` is one an hf_finetune run (or export) wrote there."""
    return name in _entries_we_wrote(path, sorted(listing(path)))[0]


def listing(path: Path) -> set[str]:
    """The names at the top of the folder (none if it does not exist)."""
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        return None
    return data


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_json(path / MANIFEST_FILE, {"written_by": "hf_finetune", **manifest})


def _looks_ours(name: str) -> bool:
    """A name hf_finetune or Trainer writes whatever the model (a run's folders, the common model files)."""
    return (
        name in _COMMON_NAMES or name == TENSORBOARD_DIR or bool(_RUN_FOLDER.fullmatch(name) or _SHARD.fullmatch(name))
    )


def _entries_we_wrote(path: Path, entries: list[str]) -> tuple[set[str], dict[str, Any] | None]:
    """The folder's top-level entries an earlier hf_finetune run wrote, and its manifest (None: no manifest)."""
    manifest = _read_manifest(path)
    if manifest is not None:
        listed = set(manifest["entries"]) | {MANIFEST_FILE}
        if isinstance(manifest.get("listing_before_save"), list):
            # killed while saving the model: what appeared since the listing is the model's files
            listed |= set(entries) - set(manifest["listing_before_save"])
        if isinstance(manifest.get("listing_at_start"), list):
            # killed before the end: of what appeared during the run, only names a run writes (a file the user
            # dropped into the folder since then is not taken for ours)
            listed |= {e for e in set(entries) - set(manifest["listing_at_start"]) if _looks_ours(e)}
    elif (path / RECIPE_FILE).is_file() and ((path / METRICS_FILE).is_file() or _complete_checkpoints(path)):
        # written before the manifest existed
        listed = {e for e in entries if _looks_ours(e)}
    else:
        return set(), None
    ours = set()
    for name in entries:
        entry = path / name
        is_run_folder = _RUN_FOLDER.fullmatch(name) and entry.is_dir() and not entry.is_symlink()
        if name in listed or is_run_folder:
            ours.add(name)
        elif name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in listed):
            ours.add(name)  # a half-written file from `atomic_output` (the run was killed while writing it)
    return ours, manifest


def _finished(path: Path, manifest: dict[str, Any]) -> bool:
    return bool(manifest.get("finished")) or (path / METRICS_FILE).is_file()


def _complete_checkpoints(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file())


def _occupied_message(path: Path, manifest: dict[str, Any] | None, ours: set[str], theirs: list[str]) -> str:
    head = f"training.output_dir {str(path)!r} already holds"
    if not ours:
        return (
            f"{head} files that are not an hf_finetune run ({_some(theirs)}). Nothing was changed. Choose another "
            "folder (--output-dir or training.output_dir=…), or pass --overwrite to write the run into it anyway "
            "(nothing of yours is removed)."
        )
    if _finished(path, manifest or {}):
        what = "results of an earlier run"
    elif _complete_checkpoints(path):
        what = f"an earlier run that did not finish (last complete checkpoint: {_complete_checkpoints(path)[-1]})"
    else:
        what = "results of an earlier run"
    if theirs:
        what += f", and files hf_finetune did not write ({_some(theirs)})"
    return (
        f"{head} {what}. Nothing was changed. Choose another folder (--output-dir or training.output_dir=…), pass "
        "--overwrite (overwrite: true) to replace the earlier run (only what hf_finetune wrote is removed), or "
        "--resume (training.resume_from_checkpoint=latest) to continue from its newest checkpoint."
    )


def _check_writable(path: Path) -> None:
    """A path that cannot become a folder fails now, by name, not after the data and model are loaded."""
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"training.output_dir {str(path)!r} is a file; point it at a folder")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputDirError(
                    f"training.output_dir {str(path)!r}: {str(parent)!r} is a file, so no folder can be made under "
                    "it; choose another output folder"
                )
            return


def _refuse_dangerous(path: Path, protected: dict[str, Path]) -> None:
    """--overwrite removes an earlier run: never in a folder where that could take the user's own work with it."""
    target = path.resolve()
    why = None
    if target == Path(target.anchor):
        why = "is a filesystem root"
    elif target == Path.cwd().resolve():
        why = "is the current folder"
    elif _within(Path.cwd(), target):
        why = "holds the current folder"
    elif _within(Path.home(), target):
        why = "is your home folder" if target == Path.home().resolve() else "holds your home folder"
    elif (target / ".git").exists():
        why = "holds a .git repository"
    else:
        inside = [f"{what} ({str(p)!r})" for what, p in protected.items() if _within(p, target)]
        if inside:
            why = f"holds {' and '.join(inside)}, which the run reads"
    if why:
        raise OutputDirError(
            f"training.output_dir {str(path)!r} {why}; --overwrite is refused there. Nothing was changed. "
            "Choose a folder of its own for the run's outputs (--output-dir outputs/NAME), or move what the run "
            "reads out of that folder first."
        )


def _refuse_protected_entries(path: Path, plan: OutputPlan, protected: dict[str, Path]) -> None:
    """The file being run (e.g. OUT/recipe.yaml, edited after a failed run) is never among what gets removed."""
    for what, p in protected.items():
        hit = next((name for name in plan.remove if _within(p, (path / name).resolve())), None)
        if hit:
            raise OutputDirError(
                f"training.output_dir {str(path)!r}: {what} {str(p)!r} is in {hit!r}, which an earlier run wrote "
                "there and this run would remove. Nothing was changed. Copy it out of the folder and use the copy "
                f"(e.g. cp {shlex.quote(str(p))} my_recipe.yaml), or choose another output folder (--output-dir)."
            )


def _within(child: Path, parent: Path) -> bool:
    try:
        return Path(child).expanduser().resolve().is_relative_to(parent)
    except OSError:
        return False


def _some(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_eval_output(trained: Path, target: Path, names: Sequence[str], overwrite: bool) -> None:
    """May `hf-finetune eval --output` write `names` into `target`? Never into the trained folder (or a folder
    inside it: eval leaves what training wrote as it was), never over a file already there unless `overwrite`, and
    nothing else in `target` is touched. Only checks: the caller creates the folder when it writes."""
    target = Path(target).expanduser()
    trained_real = Path(trained).expanduser().resolve()
    if _within(target, trained_real):
        raise OutputDirError(
            f"--output {str(target)!r} is inside the trained folder {str(trained)!r}, which eval never modifies; "
            "name a folder outside it (e.g. eval_new_data)"
        )
    if target.exists() and not target.is_dir():
        raise OutputDirError(f"--output {str(target)!r} is a file; name a folder (it is created if missing)")
    taken = [name for name in names if (target / name).exists() or (target / name).is_symlink()]
    if taken and not overwrite:
        raise OutputDirError(
            f"--output {str(target)!r} already holds {_some(taken)}; add --overwrite to replace those files "
            "(nothing else in the folder is touched), or name another folder"
        )
    blocking = next((p for p in target.absolute().parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputDirError(f"--output {str(target)!r}: {str(blocking)!r} is a file, so no folder can be made there")


# --------------------------------------------------------------------------------------------- the run's results

# The packages whose versions a run records (provenance for metrics.json and the card).
_RECORDED_PACKAGES = ("hf_finetune", "transformers", "torch", "datasets", "accelerate", "timm", "evaluate")


def write_recipe(path: Path, recipe: Recipe) -> str:
    """The resolved recipe as `recipe.yaml`, the file `--resume` and a re-run start from. Returns its name."""
    write_text_atomic(path / RECIPE_FILE, recipe.to_saved_yaml())
    return RECIPE_FILE


def write_metrics(path: Path, label_names: list[str], results: dict[str, Any], run: dict[str, Any]) -> str:
    """`metrics.json`: the label names, each split's metrics, and the run's provenance. Returns its name."""
    payload = {"label_names": label_names, **results, "run": run}
    if run["best_checkpoint"]:
        payload["best_checkpoint"] = run["best_checkpoint"]
    write_json(path / METRICS_FILE, payload)
    return METRICS_FILE


def run_info(
    splits: Mapping[str, Dataset],
    label_names: list[str],
    description: str,
    args: TrainingArguments,
    best: str | None,
    seconds: float,
    label_format: str = "single",
    target_scaler: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Provenance for metrics.json and the model card: data splits and their class counts (positives per label for
    multi_label, the target's summary in its own units for regression), hardware, versions, time."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from .formats import label_counts
    from .fsdp import parallelism

    rows = {}
    for name, ds in splits.items():
        rows[name] = {"rows": len(ds), **label_counts(label_format, ds, label_names, target_scaler)}
    if torch.cuda.is_available() and not args.use_cpu:
        device = f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = {}
    for package in _RECORDED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    # what Trainer hands accelerate: the recipe's bf16/fp16, else accelerate launch's (ACCELERATE_MIXED_PRECISION)
    precision = {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision)
    return {
        "data": description,
        "label_format": label_format,
        "splits": rows,
        "hardware": {
            "device": device,
            "processes": args.world_size,
            "parallelism": parallelism(args.world_size, args.fsdp, dict(os.environ)),
            "precision": precision,
        },
        "versions": versions,
        "wall_time_s": round(seconds, 1),
        "best_checkpoint": best,
    }
