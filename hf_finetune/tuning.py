"""`hf-finetune sweep`: an Optuna search over a recipe's `sweep.space`, each trial an ordinary run.

    recipe + overrides → space checked (each bound and choice applied to the recipe) → sweep folder claimed
        → study in `<folder>/sweep.db` (SQLite: an interrupted sweep resumes) → trials until N have finished
        → leaderboard.csv / leaderboard.md, and a "Sweep" section in each finished trial's card and metrics.json

A trial is `finetune()` of the recipe with the sampled values in `<folder>/trial-NNN/`, with its own recipe.yaml.
Its score is its best evaluation of the recipe's best-model metric over the whole run, not the last one (what
transformers' own `hyperparameter_search` scores), reported after every evaluation to the median pruner.
Under `accelerate launch` rank 0 alone talks to Optuna; the sampled values and each pruning decision are broadcast,
so every rank runs the same trial, with all the processes, and stops with the others.
(Named `tuning`, not `sweep`: a submodule named sweep would shadow the `hf_finetune.sweep` function.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .errors import HFFinetuneError, OutputDirError, RecipeError, TrainingInterrupted
from .files import write_json, write_text_atomic
from .names import CARD_FILE, METRIC_PREFIX, METRICS_FILE
from .recipe import Recipe, SweepSpec, best_metric, find_recipe, load_recipe

if TYPE_CHECKING:
    import optuna
    from transformers import TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger("hf_finetune")

STUDY_FILE = "sweep.db"  # Optuna's RDB storage, as SQLite
LOCK_FILE = ".hf_finetune_sweep.lock"  # held by the sweep running in the folder
SWEEP_FILE = "sweep.json"  # what the folder's sweep is (recipe and space) and which entries it wrote
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
_TRIAL_FOLDER = re.compile(r"trial-\d{3,}")
# SQLite's side files, left beside the database by a process killed mid-transaction
_STUDY_FILES = (STUDY_FILE, f"{STUDY_FILE}-journal", f"{STUDY_FILE}-wal", f"{STUDY_FILE}-shm")
_CARD_START, _CARD_END = "<!-- hf_finetune:sweep -->", "<!-- /hf_finetune:sweep -->"
MAX_FAILURES_IN_A_ROW = 3  # trials ending in an error one after another before the sweep gives up


def trial_folder(number: int) -> str:
    return f"trial-{number:03d}"


@dataclass
class SweepResult:
    """What a sweep produced: its folder, every trial's row (best first), and the best complete trial."""

    output_dir: Path
    metric: str  # the score's Trainer key, e.g. eval_accuracy
    direction: str  # maximize | minimize
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    files: list[str] = field(default_factory=list)

    @property
    def best_dir(self) -> Path | None:
        return None if self.best is None else self.output_dir / self.best["folder"]

    def __repr__(self) -> str:
        best = "none" if self.best is None else f"{self.best['folder']} ({self.metric} {self.best['score']:.4f})"
        return f"SweepResult(output_dir={str(self.output_dir)!r}, trials={len(self.rows)}, best={best})"


def sweep(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    trials: int | None = None,
    **kwargs: Any,
) -> SweepResult:
    """Search `sweep.space` with Optuna until `trials` (default `sweep.trials`) trials have finished in total.

    The sweep folder is the recipe's `training.output_dir`; running the same sweep again resumes it (finished trials
    are kept; a trial cut off by a kill runs again, with the same values). `overwrite=True` (--overwrite) starts it
    over, and is needed for a folder holding another sweep. Overrides as for `finetune`."""
    from .api import _merge_overrides, setup_logging

    setup_logging()
    optuna = require_optuna()
    base = load_recipe(recipe, _merge_overrides(overrides, kwargs))
    space = base.sweep.dimensions
    target = base.sweep.trials if trials is None else trials
    source = str(find_recipe(recipe)) if isinstance(recipe, (str, Path)) else None
    _check_sweep(base, space, target, _override_keys(overrides, kwargs), source)
    metric, greater = objective(base)
    ranks = _Ranks.of(base)
    # rank 0 alone claims the folder and opens the study; the others wait for it (and fail with it)
    with contextlib.ExitStack() as held:  # rank 0: the folder's lock, for as long as the sweep runs
        study = ranks.together(lambda: _open_study(optuna, base, space, metric, greater, target, held))
        return _run_trials(optuna, study, base, space, target, ranks)


def _run_trials(
    optuna: Any, study: optuna.Study | None, base: Recipe, space: dict[str, Any], target: int, ranks: _Ranks
) -> SweepResult:
    """Trials until `target` have finished (rank 0 asks Optuna; every rank trains), then the leaderboard."""
    metric, greater = objective(base)
    folder = base.output_dir
    failures = 0
    while True:
        trial = _ask(optuna, study, space, target) if study is not None else None
        order = ranks.share(None if trial is None else (trial.number, dict(trial.params)))
        if order is None:
            break
        number, params = order
        try:
            outcome = _run_trial(base, params, folder / trial_folder(number), metric, greater, trial, ranks)
        except TrainingInterrupted as err:
            # left RUNNING: the next `hf-finetune sweep` marks it failed and runs its values again
            raise TrainingInterrupted(
                f"sweep stopped by a signal during {trial_folder(number)}; run the same command again to resume "
                f"(finished trials are kept, {trial_folder(number)}'s values run again)",
                err.signum,
            ) from None
        except (HFFinetuneError, _out_of_memory()) as err:  # this trial's values cannot run: the next ones may
            failures += 1
            if trial is not None:
                trial.set_user_attr("error", str(err)[:2000])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            logger.warning("sweep: %s failed: %s", trial_folder(number), err)
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise HFFinetuneError(
                    f"sweep: {failures} trials in a row failed; the last one ({trial_folder(number)}): {err}"
                ) from None
            continue
        failures = 0
        if trial is not None:
            _tell(optuna, study, trial, outcome, folder)
    result = SweepResult(folder, metric, "maximize" if greater else "minimize", [], None)
    if study is not None:
        result = _finish(study, base, space, target, result)
    return result


# --------------------------------------------------------------------------------------------- checks


def _out_of_memory() -> type[BaseException]:
    """A batch size or model the device cannot hold fails that trial, not the sweep."""
    import torch

    return torch.OutOfMemoryError


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise HFFinetuneError('hf-finetune sweep needs Optuna: pip install "hf_finetune[sweep]"') from None
    return optuna


def objective(recipe: Recipe) -> tuple[str, bool]:
    """The Trainer key a trial is scored on (the metric best-model selection uses) and whether higher is better."""
    from .formats import greater_is_better

    prefix = METRIC_PREFIX["validation"]
    metric = str(recipe.training.get("metric_for_best_model") or best_metric(recipe)).removeprefix(f"{prefix}_")
    greater = recipe.training.get("greater_is_better")
    return f"{prefix}_{metric}", bool(greater_is_better(metric) if greater is None else greater)


def _override_keys(overrides: Sequence[str] | dict[str, Any] | None, kwargs: dict[str, Any]) -> set[str]:
    """The dotted keys the command line or the call set (a swept key among them would be overruled)."""
    from .api import _merge_overrides
    from .recipe import parse_override

    merged = _merge_overrides(overrides, kwargs) or {}
    items = merged.items() if isinstance(merged, dict) else (parse_override(o) for o in merged)
    keys = set()
    for key, value in items:
        if isinstance(value, dict) and "." not in key:
            keys |= {f"{key}.{k}" for k in value}
        keys.add(key)
    return keys


def _check_sweep(
    base: Recipe, space: dict[str, Any], target: int, overridden: set[str], source: str | None = None
) -> None:
    """Everything wrong with the search, at once, before any trial: each bound and each choice is applied to the
    recipe alone and the recipe loaded, so a value the recipe would refuse (or an unknown key) is reported now."""
    if not space:
        raise RecipeError(
            [
                "sweep.space: empty; name the recipe keys to search, e.g. sweep: {space: {training.learning_rate: "
                "{loguniform: [1.0e-5, 1.0e-3]}, training.per_device_train_batch_size: [16, 32]}}"
            ],
            source,
        )
    problems = []
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        problems.append(f"--trials: expected a number of trials of at least 1, got {target!r}")
    problems += [
        f"{key}: set on the command line and searched by sweep.space; remove one of them"
        for key in sorted(overridden & set(space))
    ]
    if base.hub.push:
        problems.append(
            "hub.push: a sweep does not push every trial; remove it, and push the best trial's folder afterwards "
            "(hf-finetune push OUT/trial-NNN --repo-id …)"
        )
    if base.training.get("resume_from_checkpoint"):
        problems.append(
            "training.resume_from_checkpoint: a sweep resumes when the same command runs again (a cut-off trial "
            "runs again from the start); remove it"
        )
    plain = replace(base, sweep=SweepSpec(), overwrite=False)
    for key, dimension in space.items():
        seen = set()
        for value in _probes(dimension):
            try:
                load_recipe(plain, {key: value})
            except RecipeError as err:
                for problem in err.problems:
                    if problem not in seen:
                        seen.add(problem)
                        problems.append(f"sweep.space.{key} = {value!r}: the recipe refuses it: {problem}")
    if problems:
        raise RecipeError(problems, source)


def _probes(dimension: Any) -> list[Any]:
    """The values that stand for a dimension when it is checked: its bounds, or every choice."""
    if isinstance(dimension, list):
        return list(dimension)
    (kind,) = (k for k in dimension if k != "log")
    low, high = dimension[kind]
    return [float(low), float(high)] if kind != "int" else [low, high]


def _distributions(optuna: Any, space: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    d = optuna.distributions
    out = {}
    for key, dimension in space.items():
        if isinstance(dimension, list):
            out[key] = d.CategoricalDistribution(dimension)
            continue
        kind = next(k for k in dimension if k != "log")
        low, high = dimension[kind]
        if kind == "int":
            out[key] = d.IntDistribution(low, high, log=bool(dimension.get("log", False)))
        else:
            out[key] = d.FloatDistribution(float(low), float(high), log=kind == "loguniform")
    return out


# --------------------------------------------------------------------------------------------- the folder, the study


def _identity(base: Recipe) -> dict[str, Any]:
    """What makes two sweeps the same: the recipe (overrides applied) and its search, less the number of trials
    (raising --trials extends a sweep) and the folder itself (it may be named by another path)."""
    plain = replace(base, overwrite=False, sweep=replace(base.sweep, trials=1)).to_dict()
    plain["training"] = {k: v for k, v in plain["training"].items() if k != "output_dir"}
    return json.loads(json.dumps(plain, default=str))


def _read_sweep_file(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "hf_finetune" else None


def _record_entry(folder: Path, name: str) -> None:
    """Note in sweep.json, before it is created, an entry the sweep writes (what --overwrite may later remove)."""
    meta = _read_sweep_file(folder) or {}
    entries = sorted({*meta.get("entries", []), name})
    write_json(folder / SWEEP_FILE, {**meta, "entries": entries})


def _claim_folder(folder: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """May the sweep use its folder? True: it holds this same sweep, which resumes. A folder holding another sweep
    or files that are no sweep's is refused unless `overwrite`; then only what an earlier sweep wrote is removed."""
    from .outputs import check_output_dir, listing

    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"sweep folder {str(folder)!r} is a file; point training.output_dir at a folder")
    meta = _read_sweep_file(folder)
    same = meta is not None and meta.get("identity") == identity
    if same and not overwrite:
        return True
    entries = sorted(listing(folder) - {".DS_Store", "Thumbs.db", "desktop.ini", LOCK_FILE})
    if not entries:
        return False
    if meta is None and STUDY_FILE in entries:  # no sweep.json says it is ours: neither reused nor removed
        raise OutputDirError(
            f"sweep folder {str(folder)!r} holds a {STUDY_FILE} that no hf_finetune sweep there recorded (its "
            f"{SWEEP_FILE} is missing). Nothing was changed. Move it, or choose another folder (--output-dir)."
        )
    if not overwrite:
        if meta is None:
            what = f"files that are not an hf_finetune sweep ({', '.join(entries[:5])})"
        else:
            differ = _differences(meta.get("identity") or {}, identity) or ["settings"]
            what = f"another sweep (it differs in {', '.join(differ[:5])})"
        raise OutputDirError(
            f"sweep folder {str(folder)!r} already holds {what}. Nothing was changed. Choose another folder "
            "(--output-dir), or pass --overwrite to start a new sweep there (only what hf_finetune wrote is removed)."
        )
    check_output_dir(folder, overwrite=True, resume=False)  # its refusals: the current or home folder, a .git
    for name in (meta or {}).get("entries", []):
        _remove_ours(folder / name)
    for name in _STUDY_FILES:
        if meta is not None and (folder / name).is_file():
            (folder / name).unlink()
    if meta is not None:
        (folder / SWEEP_FILE).unlink()
    logger.info("sweep: --overwrite: removed the earlier sweep's entries in %s", folder)
    return False


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (a sweep's space counts as one)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "space":
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _remove_ours(path: Path) -> None:
    """A trial folder: what its run wrote (its manifest says), then the folder if nothing else is left; a sweep
    file: itself. Anything else, the user's, stays."""
    from .outputs import check_output_dir, clear_output_dir

    if path.is_dir() and not path.is_symlink() and _TRIAL_FOLDER.fullmatch(path.name):
        clear_output_dir(path, check_output_dir(path, overwrite=True, resume=False))
        try:
            path.rmdir()
        except OSError:
            logger.info("sweep: kept %s: it holds files hf_finetune did not write", path)
    elif path.is_file() and path.name in (LEADERBOARD_CSV, LEADERBOARD_MD):
        path.unlink()


def _lock(folder: Path, stack: contextlib.ExitStack, *, create: bool) -> bool:
    """Hold `folder`'s lock file for the rest of the sweep (released by the OS if the process dies). A second sweep
    in the same folder would take the first one's running trial for a killed one: it is refused. False: there is no
    lock file (and `create` is false). POSIX only; elsewhere nothing is locked."""
    try:
        import fcntl
    except ImportError:  # Windows
        return True
    path = folder / LOCK_FILE
    if not create and not path.is_file():
        return False
    handle = stack.enter_context(path.open("a"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OutputDirError(
            f"sweep folder {str(folder)!r}: another hf-finetune sweep is running there (its lock, {LOCK_FILE}, is "
            "held). One sweep runs in a folder at a time; wait for it, or stop it and run the command again to resume."
        ) from None
    return True


def _open_study(
    optuna: Any,
    base: Recipe,
    space: dict[str, Any],
    metric: str,
    greater: bool,
    target: int,
    stack: contextlib.ExitStack,
) -> optuna.Study:
    """Claim the folder, then create or load the study; a trial a kill left RUNNING is marked failed, its folder
    (ours) removed, and its values queued to run again, so a kill does not change which values the sweep tries."""
    folder, spec = base.output_dir, base.sweep
    identity = _identity(base)
    locked = folder.is_dir() and _lock(folder, stack, create=False)  # before anything there is removed
    resuming = _claim_folder(folder, identity, base.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    if not locked:
        _lock(folder, stack, create=True)
    name = base.name or "sweep"
    if not resuming:
        write_json(folder / SWEEP_FILE, {"written_by": "hf_finetune", "study": name, "identity": identity})
        _record_entry(folder, STUDY_FILE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep logs each trial itself
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.prune_after)
        if spec.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=f"sqlite:///{(folder / STUDY_FILE).resolve()}",
        study_name=name,
        direction="maximize" if greater else "minimize",
        pruner=pruner,
        load_if_exists=True,
    )
    # seeded by the sweep's seed and how far it got: a resumed sweep must not draw its first values over again
    study.sampler = optuna.samplers.TPESampler(seed=(spec.seed + len(study.get_trials(deepcopy=False))) % 2**32)
    study.set_user_attr("metric", metric)
    study.set_user_attr("space", space)
    running = optuna.trial.TrialState.RUNNING
    for cut in study.get_trials(deepcopy=False, states=(running,)):
        study.tell(cut.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(cut.params, user_attrs={"retry_of": cut.number})
        _remove_ours(folder / trial_folder(cut.number))
        logger.warning("sweep: %s was cut off by an earlier stop; its values run again", trial_folder(cut.number))
    done = _finished(optuna, study)
    if resuming:
        logger.info("sweep: resuming %s in %s: %d trials finished, %d to go", name, folder, done, max(0, target - done))
    return study


def _finished(optuna: Any, study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _ask(optuna: Any, study: optuna.Study, space: dict[str, Any], target: int) -> optuna.Trial | None:
    """The next trial (a queued retry first), or None once `target` trials have finished."""
    if _finished(optuna, study) >= target:
        return None
    return study.ask(_distributions(optuna, space))


# --------------------------------------------------------------------------------------------- one trial


class TrialReporter(TrainerCallback):
    """A trial's evaluations during training: each reported to the Optuna trial (rank 0) at its evaluation number
    (its epoch, with the default per-epoch evaluation); `best()` is the trial's score. With pruning, the pruner's
    decision (taken on rank 0, shared with every rank) stops training there; the run then ends as any run does."""

    def __init__(
        self,
        metric: str,
        greater: bool,
        trial: optuna.Trial | None = None,
        *,
        prune: bool = False,
        share: Callable[[Any], Any] = lambda decision: decision,
    ) -> None:
        self.metric, self.greater, self.trial, self.prune, self.share = metric, greater, trial, prune, share
        self.evaluations: list[tuple[float, float]] = []  # (epoch, value)
        self.pruned = False
        self.training = False  # the final evaluations after training are the run's results, not the trial's

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        self.training = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object
    ) -> None:
        self.training = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: object,
    ) -> None:
        if not self.training or not metrics:
            return
        if self.metric not in metrics:
            shown = sorted(k for k in metrics if k.startswith(f"{METRIC_PREFIX['validation']}_"))
            raise HFFinetuneError(
                f"sweep: the evaluation reports no {self.metric} to score trials on (it has {shown}); set "
                "metrics.metric_for_best_model to one of those"
            )
        value = float(metrics[self.metric])
        self.evaluations.append((float(state.epoch or 0.0), value))
        stop = False
        if self.trial is not None:
            self.trial.report(value, len(self.evaluations))
            stop = self.prune and self.trial.should_prune()
        if self.prune and self.share(stop):
            self.pruned = True
            control.should_training_stop = True
            logger.info(
                "sweep: pruned at evaluation %d (epoch %g): %s %.4f is worse than the median of earlier trials",
                len(self.evaluations),
                state.epoch or 0.0,
                self.metric,
                value,
            )

    def best(self) -> tuple[float | None, float | None]:
        """(score, epoch): the best finite evaluation (the first of equals), or (None, None)."""
        finite = [(epoch, value) for epoch, value in self.evaluations if math.isfinite(value)]
        if not finite:
            return None, None
        pick = max if self.greater else min
        epoch, value = pick(finite, key=lambda ev: ev[1])
        return value, epoch


@dataclass
class _Outcome:
    score: float | None
    best_epoch: float | None
    pruned: bool


def _run_trial(
    base: Recipe,
    params: dict[str, Any],
    out: Path,
    metric: str,
    greater: bool,
    trial: optuna.Trial | None,
    ranks: _Ranks,
) -> _Outcome:
    """One ordinary run of the recipe with the trial's values in its own folder (its recipe.yaml re-runs it)."""
    from .api import finetune

    if ranks.main:
        _record_entry(out.parent, out.name)
        if trial is not None:
            trial.set_user_attr("folder", out.name)
    logger.info("sweep: %s: %s", out.name, ", ".join(f"{k}={v!r}" for k, v in params.items()))
    # the trial's recipe has no sweep section: its values are fixed, and running it again trains just them
    plain = replace(base, sweep=SweepSpec(), overwrite=False)
    recipe = load_recipe(plain, {**params, "training.output_dir": str(out)})
    reporter = TrialReporter(metric, greater, trial, prune=base.sweep.pruner == "median", share=ranks.share)
    result = finetune(recipe, callbacks=[reporter])
    score, epoch = reporter.best()
    if score is None and not reporter.evaluations:
        # no evaluation during training (eval_strategy no, linear_probe): the run's own final one
        final = result.metrics.get(METRIC_PREFIX["validation"], {}).get(metric.removeprefix("eval_"))
        if isinstance(final, (int, float)) and math.isfinite(final):
            score, epoch = float(final), float(recipe.training.get("num_train_epochs", 0) or 0)
    return _Outcome(score, epoch, reporter.pruned)


def _tell(optuna: Any, study: optuna.Study, trial: optuna.Trial, outcome: _Outcome, folder: Path) -> None:
    states = optuna.trial.TrialState
    trial.set_user_attr("score", outcome.score)
    trial.set_user_attr("best_epoch", outcome.best_epoch)
    name = trial_folder(trial.number)
    if outcome.pruned:
        study.tell(trial, state=states.PRUNED)
    elif outcome.score is None:
        trial.set_user_attr("error", f"no finite {study.user_attrs.get('metric')} in any evaluation")
        study.tell(trial, state=states.FAIL)
        logger.warning("sweep: %s: no finite evaluation to score it on", name)
        return
    else:
        study.tell(trial, outcome.score)
    what = "pruned" if outcome.pruned else "complete"
    logger.info("sweep: %s %s: best %.4f (epoch %g)", name, what, outcome.score, outcome.best_epoch or 0)
    _write_leaderboard(study, optuna, folder)


# --------------------------------------------------------------------------------------------- several processes


@dataclass
class _Ranks:
    """The processes of an `accelerate launch`/torchrun sweep: rank 0 drives Optuna, every rank trains."""

    index: int = 0
    world: int = 1
    device: Any = None

    @property
    def main(self) -> bool:
        return self.index == 0

    @classmethod
    def of(cls, base: Recipe) -> _Ranks:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        # the process group the trials will use, set up now (as a trial's TrainingArguments does) for the broadcasts
        from transformers import TrainingArguments

        from .tasks import get_task
        from .trainer import training_defaults

        defaults = training_defaults(base.training, get_task(base.task).training_defaults(), best_metric(base))
        try:
            args = TrainingArguments(**base.training, **defaults)
        except (ValueError, TypeError) as err:
            raise RecipeError([f"training: transformers.TrainingArguments rejected the values: {err}"]) from None
        return cls(args.process_index, args.world_size, args.device)

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a collective: every rank calls it at the same point)."""
        if self.world <= 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if dist.get_backend() == "nccl" else None)
        return box[0]

    def together(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0 (None elsewhere); when it fails, every rank fails with its message."""
        if self.world <= 1:
            return fn()
        outcome, error = None, None
        if self.main:
            try:
                outcome = fn()
            except Exception as err:  # shared with every rank, then raised again here
                error = err
        message = self.share(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise HFFinetuneError(message)
        return outcome


# --------------------------------------------------------------------------------------------- leaderboard, cards


def leaderboard_rows(optuna: Any, study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial but queued ones: complete ones by score, then pruned ones by score, then the rest by number;
    finished trials are ranked."""
    greater = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    retried = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    group = {"complete": 0, "pruned": 1}
    rows = []
    for t in trials:
        state = t.state.name.lower()
        score = t.user_attrs.get("score")
        note = ""
        if t.number in retried:
            note = f"cut off by a stop; its values ran again as {trial_folder(retried[t.number])}"
        elif "error" in t.user_attrs:
            note = str(t.user_attrs["error"]).splitlines()[0][:200]
        folder = t.user_attrs.get("folder", "")
        rows.append(
            {
                "rank": None,
                "trial": t.number,
                "state": state,
                "score": score,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "params": dict(t.params),
                "folder": folder if state in group else "",
                "note": note,
            }
        )

    def order(row: dict[str, Any]) -> tuple[int, float, int]:
        score = row["score"] if row["score"] is not None else math.inf
        return group.get(row["state"], 2), -score if greater and math.isfinite(score) else score, row["trial"]

    rows.sort(key=order)
    for rank, row in enumerate((r for r in rows if r["state"] in group), start=1):
        row["rank"] = rank
    return rows


def _write_leaderboard(study: optuna.Study, optuna: Any, folder: Path) -> list[str]:
    """leaderboard.csv and leaderboard.md in the sweep folder (rewritten after every trial)."""
    rows = leaderboard_rows(optuna, study)
    keys = list(study.user_attrs["space"])
    metric = study.user_attrs["metric"]
    for name in (LEADERBOARD_CSV, LEADERBOARD_MD):
        _record_entry(folder, name)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "trial", "state", metric, "best_epoch", *keys, "folder", "note"])
    for r in rows:
        cells = [r["rank"] or "", r["trial"], r["state"], _csv(r["score"]), _csv(r["best_epoch"])]
        writer.writerow([*cells, *(_csv(r["params"].get(k)) for k in keys), r["folder"], r["note"]])
    write_text_atomic(folder / LEADERBOARD_CSV, buffer.getvalue())
    write_text_atomic(folder / LEADERBOARD_MD, leaderboard_markdown(rows, keys, metric) + "\n")
    return [LEADERBOARD_CSV, LEADERBOARD_MD]


def leaderboard_markdown(rows: list[dict[str, Any]], keys: list[str], metric: str) -> str:
    notes = any(r["note"] for r in rows)  # why a trial failed; a column only when there is one
    header = ["rank", "trial", "state", f"{metric} (best)", "best epoch", *keys, "folder", *(["note"] * notes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["rank"] or "", trial_folder(r["trial"]), r["state"], _shown(r["score"], ".4f")]
        cells += [_shown(r["best_epoch"], "g"), *(_shown(r["params"].get(k), ".4g") for k in keys), r["folder"]]
        cells += [r["note"].replace("|", "/")] * notes
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _csv(value: Any) -> Any:
    return "" if value is None else value


def _shown(value: Any, spec: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _finish(study: optuna.Study, base: Recipe, space: dict[str, Any], target: int, result: SweepResult) -> SweepResult:
    """The leaderboard once more, and every finished trial's metrics.json (run.sweep) and card ("Sweep" section)
    told where it ranked; the best complete trial is the sweep's answer."""
    optuna = require_optuna()
    files = _write_leaderboard(study, optuna, result.output_dir)
    rows = leaderboard_rows(optuna, study)
    ranked = [r for r in rows if r["rank"] is not None]
    for row in ranked:
        info = {
            "study": study.study_name,
            "trial": row["trial"],
            "state": row["state"],
            "rank": row["rank"],
            "ranked": len(ranked),
            "trials": target,  # finished trials the sweep was run to reach
            "metric": result.metric,
            "direction": result.direction,
            "score": row["score"],
            "best_epoch": row["best_epoch"],
            "params": row["params"],
            "space": space,
            "pruner": base.sweep.pruner,
            "sampler": "TPE",
            "seed": base.sweep.seed,
            "leaderboard": LEADERBOARD_MD,
        }
        _mark_trial(result.output_dir / row["folder"], info, rows, list(space))
    best = next((r for r in rows if r["state"] == "complete"), None)
    return replace(result, rows=rows, best=best, files=files)


def _mark_trial(out: Path, info: dict[str, Any], rows: list[dict[str, Any]], keys: list[str]) -> None:
    """metrics.json's run.sweep, and the card's "Sweep" section (replacing an earlier sweep's section). The card is
    not rendered again: its facts (the run's TrainingArguments, model description) are the run's, not kept on disk."""
    metrics = out / METRICS_FILE
    if metrics.is_file():
        data = json.loads(metrics.read_text(encoding="utf-8"))
        data.setdefault("run", {})["sweep"] = info
        write_json(metrics, data)
    card = out / CARD_FILE
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        marked = re.compile(re.escape(_CARD_START) + r".*?" + re.escape(_CARD_END) + r"\n?", re.DOTALL)
        found = marked.search(text)
        before, after = (text[: found.start()], text[found.end() :]) if found else (text.rstrip("\n") + "\n\n", "")
        write_text_atomic(card, before + card_section(info, rows, keys) + after)


def card_section(info: dict[str, Any], rows: list[dict[str, Any]], keys: list[str]) -> str:
    """The card's "## Sweep": the search, this trial's values and rank, and the leaderboard's top rows."""
    better = "higher" if info["direction"] == "maximize" else "lower"
    pruning = "median pruning" if info["pruner"] == "median" else "no pruning"
    how = "complete"
    if info["state"] == "pruned":
        how = "pruned (stopped early: an evaluation fell below the median of earlier trials')"
    lines = [
        _CARD_START,
        "## Sweep",
        "",
        f"This model is {trial_folder(info['trial'])} of the hyperparameter sweep `{info['study']}` (Optuna's "
        f"{info['sampler']} sampler with seed {info['seed']}, {pruning}), {how}. Trials were scored on their best "
        f"evaluation of `{info['metric']}` ({better} is better) over the whole run; this one scored "
        f"{_shown(info['score'], '.4f')} at epoch {_shown(info['best_epoch'], 'g')} and ranked "
        f"**{info['rank']} of {info['ranked']}** finished trials.",
        "",
        "| Searched | Space | This trial |",
        "|---|---|---|",
    ]
    for key, dimension in info["space"].items():
        lines.append(f"| `{key}` | {_space_text(dimension)} | {_shown(info['params'].get(key), '.4g')} |")
    top = [r for r in rows if r["rank"] is not None][:10]
    lines += ["", f"Leaderboard (the sweep folder's `{info['leaderboard']}`, top {len(top)}):", ""]
    lines += [leaderboard_markdown(top, keys, info["metric"]), _CARD_END]
    return "\n".join(lines) + "\n"


def _space_text(dimension: Any) -> str:
    if isinstance(dimension, list):
        return "one of " + ", ".join(str(v) for v in dimension)
    kind = next(k for k in dimension if k != "log")
    low, high = dimension[kind]
    return f"{kind}{' (log)' if dimension.get('log') else ''} [{low:g}, {high:g}]"
