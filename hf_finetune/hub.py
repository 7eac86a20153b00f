"""Pushing an output folder to the Hugging Face Hub: the only module that talks to the network on purpose.

huggingface_hub does all the talking (`create_repo`, `create_branch`, `upload_folder`: Xet storage when hf_xet is
installed, Git LFS otherwise), and it finds the token where it always does — `HF_TOKEN`, or the token saved by
`hf auth login`. This module never reads the token's value, prints it, logs it or writes it anywhere.

What is uploaded is a staging folder of links to the output folder's files, so the local folder is never modified,
even though the pushed README.md, metrics.json and recipe.yaml differ from the local ones (the card's usage snippet
loads the repo id, and no absolute local path is published). Pickles, links out of the folder and, unless asked,
checkpoints stay local; files added to the repo by other means stay on the Hub unless `delete_missing`.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import HubError
from .names import (
    CARD_FILE,
    EVALUATED_PREFIXES,
    METRICS_FILE,
    PUSH_MANIFEST_FILE,
    RECIPE_FILE,
    ROW_LEVEL_PATTERNS,
    TENSORBOARD_DIR,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger("hf_finetune.hub")

T = TypeVar("T")

# Status codes worth another try: the server or something in between is busy or briefly down.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Pickles stay local unless named with --include (hub.include): loading one can run code, so the Hub's scanner flags
# them, and none is needed to use the model (weights are safetensors). Trainer writes optimizer.pt, scheduler.pt,
# rng_state*.pth, scaler.pt and training_args.bin (which can hold `hub_token`; recipe.yaml has its settings as text).
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
# The files of a model: a push without them would publish a repo nothing can load.
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json")
# Written with every push (PUSH_MANIFEST_FILE): the files it brought, so that the next push replaces exactly those
# and leaves the files someone added on the Hub alone.
# On a branch without a manifest (pushed by hand or by an older hf_finetune), what an earlier push of a model left:
# weights (shard counts change between models), checkpoints and this toolkit's own result files.
EARLIER_PUSH = re.compile(
    r"(checkpoint-\d+/.*|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin"
    rf"|pytorch_model\.bin\.index\.json|training_args\.bin|{re.escape(RECIPE_FILE)}|{re.escape(METRICS_FILE)}"
    rf"|(confusion_matrix|reliability_diagram|regression_scatter|regression_residuals)_"
    rf"({'|'.join(EVALUATED_PREFIXES)})\.\w+)"
)
# Files whose absolute local paths (data source, model folder, output folder) are rewritten in the pushed copy.
PROVENANCE_FILES = re.compile(
    rf"({re.escape(CARD_FILE)}|{re.escape(METRICS_FILE)}|{re.escape(RECIPE_FILE)}"
    r"|checkpoint-\d+/(trainer_state|hf_finetune_\w+)\.json)"
)


def push_folder(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    include_checkpoints: bool = False,
    include: Sequence[str] = (),
    delete_missing: bool = False,
    attempts: int = 3,
    backoff_s: float = 2.0,
) -> str:
    """Upload `output_dir` to the model repo `repo_id` (created if needed); returns the commit URL.

    `revision` is a branch (created from main if missing). `checkpoint-*` folders stay local unless
    `include_checkpoints`; pickles (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.pickle`, `*.ckpt`: optimizer and scheduler
    state, `training_args.bin`), the error analysis (`predictions_*.jsonl`, `errors_*.md`, `errors_*.png`: the
    evaluated data's rows), the duplicate report (`duplicates.json`: the data's files) and TensorBoard's event
    files (`runs/`) stay local unless a pattern of `include` names them; links that lead out of the folder are
    never followed. Absolute local paths in the pushed card, metrics and recipe are rewritten (the output folder by
    its name, other folders as `.../NAME`, the home folder as `~`); the local files are only read.

    Files an earlier push of this toolkit left on the branch (named in its manifest, `.hf_finetune_push.json`, or on
    a branch without one: weights, checkpoints and result files) are deleted in the same commit when this push does
    not bring them back (git history keeps them), so a model never sits next to another run's weight shards. Files
    someone added on the Hub stay, unless `delete_missing`: then the branch holds exactly the pushed files.

    Network failures and busy-server answers are retried `attempts` times, waiting `backoff_s`, then twice that, …;
    then, or at once for errors a retry cannot fix (bad token, no write access), a `HubError` says what went wrong.
    """
    out = Path(output_dir)
    _check_output_dir(out)
    _check_repo_id(repo_id)
    from huggingface_hub import HfApi

    target = f"{repo_id}{f' (branch {revision})' if revision else ''}"
    with tempfile.TemporaryDirectory(prefix="hf_finetune_push_") as tmp:
        staging = Path(tmp) / "upload"
        staging.mkdir()
        # staged before anything else: every problem with what would be published is found without the network
        files = stage_folder(
            out, staging, repo_id, revision=revision, include_checkpoints=include_checkpoints, include=include
        )
        _check_can_talk(out, repo_id)
        pushed = _write_push_manifest(staging, files)
        api = HfApi()  # no token argument: huggingface_hub reads it from HF_TOKEN or its token file on each call
        logger.info("hub: pushing %d files from %s to %s at %s", len(files), out, target, api.endpoint)
        upload = functools.partial(
            _upload,
            api,
            repo_id,
            out,
            staging,
            pushed,
            private=private,
            revision=revision,
            delete_missing=delete_missing,
        )
        url = with_retries(upload, attempts=attempts, backoff_s=backoff_s, what=f"pushing {out} to {target}")
    logger.info("hub: pushed %s to %s", out, url)
    return url


def _check_can_talk(out: Path, repo_id: str) -> None:
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push {out} to {repo_id}: HF_HUB_OFFLINE is set; unset it to talk to the Hub")
    if get_token() is None:  # only whether there is one; its value stays inside huggingface_hub
        raise HubError(
            f"cannot push {out} to {repo_id}: no Hugging Face token found. Set HF_TOKEN or run `hf auth login` "
            "with a token that has write access."
        )


def _write_push_manifest(staging: Path, files: list[str]) -> set[str]:
    """Stage the push's manifest (the files it brings, itself included); returns those names."""
    manifest = {"pushed_by": "hf_finetune", "files": sorted([*files, PUSH_MANIFEST_FILE])}
    (staging / PUSH_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return set(manifest["files"])


def _upload(
    api: HfApi,
    repo_id: str,
    out: Path,
    staging: Path,
    pushed: set[str],
    *,
    private: bool,
    revision: str | None,
    delete_missing: bool,
) -> str:
    """One attempt at pushing `staging` (the staged copy of `out`): the repo and branch made ready, then one commit
    that also deletes what an earlier push left; returns its URL."""
    from huggingface_hub import constants

    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id).private:
        # create_repo leaves an existing repo's visibility alone: uploading would publish what was meant
        # to stay private
        raise HubError(
            f"{repo_id} already exists and is public; --private (hub.private) only applies to a new repo. "
            "Nothing was uploaded: make the repo private on the Hub first, or push to another name."
        )
    if revision and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    stale = _stale_files(api, repo_id, revision, pushed, delete_missing, staging.parent / "prev")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(staging),
        revision=revision,
        commit_message=f"Upload {out.name} with hf_finetune",
        # exact names, not patterns: a file added on the Hub between listing and committing stays
        delete_patterns=[_literal(f) for f in stale] or None,
    )
    return str(info.commit_url)


def stage_folder(
    out: Path,
    staging: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    include_checkpoints: bool = False,
    include: Sequence[str] = (),
) -> list[str]:
    """Fill `staging` with what the repo should hold: links to `out`'s files, plus the Hub's own README.md, and
    copies of metrics.json and recipe.yaml without absolute local paths; returns their paths in the repo.

    Links, not copies, so pushing a model of several GB costs no disk space; `out` itself is only read. What is
    left out (hidden files, checkpoints, pickles, TensorBoard's `runs/`, links out of the folder) is said in the log;
    an `include` pattern that names nothing, or names a link out of the folder, is a `HubError`.
    """
    out = Path(out)
    found, outside = _walk(out)
    _check_include(out, include, found, outside, include_checkpoints)
    _refuse_outside_model_files(out, outside)
    paths = _LocalPaths(out)
    staged, pickles, checkpoints, row_level, tracker = [], [], set(), [], []
    for name, path in found:
        if name.startswith("checkpoint-") and not include_checkpoints:
            checkpoints.add(name.split("/")[0])
            continue
        if name.startswith(f"{TENSORBOARD_DIR}/") and not _named(name, include):
            tracker.append(name)
            continue
        if Path(name).suffix.lower() in PICKLE_SUFFIXES and not _named(name, include):
            pickles.append(name)
            continue
        if "/" not in name and _named(name, ROW_LEVEL_PATTERNS) and not _named(name, include):
            row_level.append(name)
            continue
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = _pushed_text(name, path, paths, repo_id, revision)
        if text is not None:
            dest.write_text(text, encoding="utf-8")
        else:
            _link(path, dest)
        staged.append(name)
    if checkpoints:
        logger.info("hub: left out %s (add --include-checkpoints to push them)", ", ".join(sorted(checkpoints)))
    if pickles:
        logger.info(
            "hub: left out %d pickle file(s), which can run code when loaded: %s. Name one with --include PATTERN "
            "(hub.include) to push it anyway",
            len(pickles),
            _listing(pickles),
        )
    if row_level:
        logger.info(
            "hub: left out the row-level files (%s): they hold the data's rows (texts, image paths and "
            "thumbnails). Name it with --include PATTERN (hub.include) to publish it",
            _listing(row_level),
        )
    if tracker:
        logger.info(
            "hub: left out %s/ (%d TensorBoard file(s): binary, so this machine's paths and host name in them cannot "
            "be rewritten). Add --include '%s/*' (hub.include) to push them",
            TENSORBOARD_DIR,
            len(tracker),
            TENSORBOARD_DIR,
        )
    for name, target in outside:
        logger.warning("hub: not pushed: %s is a link to %s, outside %s", name, target, out)
    if CARD_FILE not in staged:
        logger.warning("hub: %s has no %s; the repo will have no model card", out, CARD_FILE)
    return staged


def _walk(out: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(repo path, file to read) for each file of `out`, and (repo path, target) for each link that leads out of it.

    Links are resolved, never followed blindly: one to a file inside the folder pushes that file, one to a folder is
    not entered (it would push its files twice, or loop), one that leads outside is left out. Hidden files and
    folders (temporary files, caches) are skipped.
    """
    root = out.resolve()
    found: list[tuple[str, Path]] = []
    outside: list[tuple[str, Path]] = []

    def visit(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            name, path = prefix + entry.name, Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    outside.append((name, target))
                elif target.is_file():
                    found.append((name, target))
                elif target.is_dir():
                    logger.info(
                        "hub: not pushed: %s is a link to the folder %s (links to folders are not followed)",
                        name,
                        target,
                    )
            elif entry.is_dir(follow_symlinks=False):
                visit(path, f"{name}/")
            elif entry.is_file(follow_symlinks=False):
                found.append((name, path))

    visit(out, "")
    return found, outside


def _named(name: str, patterns: Sequence[str]) -> bool:
    """Whether an --include pattern names this file: a pattern with a `/` is matched against the path in the folder,
    one without against the file's name, wherever it is (`optimizer.pt` names every checkpoint's)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name if "/" in p else base, p) for p in patterns)


def _check_include(
    out: Path,
    include: Sequence[str],
    found: list[tuple[str, Path]],
    outside: list[tuple[str, Path]],
    include_checkpoints: bool,
) -> None:
    names = [n for n, _ in found]
    for pattern in include:
        if not isinstance(pattern, str) or not pattern.strip():
            raise HubError(f"--include {pattern!r}: give a file name or a glob pattern, e.g. --include optimizer.pt")
        linked = [n for n, _ in outside if _named(n, [pattern])]
        if linked:
            raise HubError(
                f"--include {pattern}: {linked[0]} is a link to a place outside {out}; push uploads only what is "
                "inside the output folder. Copy the file into the folder instead of linking it, or drop the pattern."
            )
        matched = [n for n in names if _named(n, [pattern])]
        if matched and not include_checkpoints and all(n.startswith("checkpoint-") for n in matched):
            raise HubError(
                f"--include {pattern}: only {_listing(matched)} match, inside checkpoint folders, which stay local; "
                "add --include-checkpoints to push the checkpoints too."
            )
        if not matched:
            pickles = sorted({n.rsplit("/", 1)[-1] for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES})
            close = difflib.get_close_matches(pattern, pickles + names, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            left_out = f" The pickles left out by default are: {', '.join(pickles)}." if pickles else ""
            raise HubError(f"--include {pattern}: no file in {out} matches it.{hint}{left_out}")


def _refuse_outside_model_files(out: Path, outside: list[tuple[str, Path]]) -> None:
    from .card import shipped_code_files

    code = set(shipped_code_files(out))  # a custom architecture's code is as much the model as its weights
    for name, target in outside:
        if "/" not in name and (name in code or any(fnmatch.fnmatchcase(name, p) for p in MODEL_FILES)):
            raise HubError(
                f"{out / name} is a link to {target}, outside the output folder: push uploads only what is inside "
                "it, and the repo would have no usable model without this file. Replace the link with the file "
                f"(cp --remove-destination '{target}' '{out / name}') and push again."
            )


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _pushed_text(name: str, path: Path, paths: _LocalPaths, repo_id: str, revision: str | None) -> str | None:
    """The text to push instead of a link to `path`, or None to push the file as it is."""
    import yaml

    from .card import card_for_repo

    if not PROVENANCE_FILES.fullmatch(name):
        return None
    try:
        text = path.read_text(encoding="utf-8")
        if name == CARD_FILE:
            return paths.text(card_for_repo(text, repo_id, revision))
        if name == RECIPE_FILE:
            return _redacted_recipe(path, paths)
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        # hf_finetune wrote this file as UTF-8 JSON/YAML: something else changed it, and it may hold anything
        raise HubError(
            f"{path}: not the file hf_finetune wrote ({type(err).__name__}: {str(err).splitlines()[0]}); nothing was "
            "uploaded. Restore it (or delete it) and push again."
        ) from None
    cleaned = paths.value(data)
    return None if cleaned == data else json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n"


class _LocalPaths:
    """Rewrites absolute paths of this machine: the output folder by its name (so `OUT/checkpoint-6` reads
    `NAME/checkpoint-6`), the folders the recipe names (data, model, template) as `.../NAME`, the home folder as `~`,
    and any other absolute path under a top-level folder of this machine as `.../NAME`."""

    def __init__(self, out: Path) -> None:
        import yaml

        from .recipe import read_saved_recipe

        known: dict[str, str] = {}
        try:
            recipe: Any = read_saved_recipe(out)
        except (yaml.YAMLError, UnicodeDecodeError):
            recipe = None
        for value in _strings(recipe):
            if not value or "\n" in value or len(value) > 4096 or value.startswith(("builtin:", "timm:")):
                continue
            path = Path(value).expanduser()
            if path.is_absolute() or path.exists():  # relative ones too: data descriptions name them resolved
                for form in _forms(path):
                    known.setdefault(form, f".../{path.name}")
        for form in _forms(Path.home()):
            known[form] = "~"
        for form in _forms(out):
            known[form] = out.resolve().name
        self.pairs: list[tuple[str, str]] = []
        for path, replacement in known.items():
            if len(path) > 1:  # "/" itself is not a folder to hide
                for encode in (_as_is, _json_inner, _yaml_double_inner, _yaml_single_inner):
                    self.pairs.append((encode(path), encode(replacement)))
        self.pairs.sort(key=lambda pair: len(pair[0]), reverse=True)  # the output folder before the home folder
        # a known path ends where a name cannot go on: `digits.` ends a sentence, `digits.csv` is another file
        pattern = "|".join(re.escape(p) for p, _ in dict.fromkeys(self.pairs))
        self.known = re.compile(rf"(?<![\w.\-/\\])({pattern})(?![\w\-]|\.[\w\-])") if pattern else None
        self.lookup = dict(self.pairs)
        self.roots = _top_level_folders()

    def text(self, text: str) -> str:
        if self.known is not None:
            text = self.known.sub(lambda m: self.lookup[m.group(1)], text)
        return ABSOLUTE.sub(self._other, text)

    def value(self, data: Any) -> Any:
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {k: self.value(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.value(v) for v in data]
        return data

    def _other(self, m: re.Match) -> str:
        if m.group("first") not in self.roots:
            return m.group(0)  # "/m/01g317" (an Open Images label) and the like are not paths of this machine
        return f".../{m.group(0).rstrip('/').rsplit('/', 1)[-1]}"


# An absolute POSIX path in free text: starts after a space, quote, bracket or `=`, ends before one.
ABSOLUTE = re.compile(r"(?<![\w.~\-/\\:])/(?P<first>[^\s/\"'`<>|()\[\]{},;:]+)(?:/[^\s/\"'`<>|()\[\]{},;:]*)*")


def _top_level_folders() -> frozenset[str]:
    try:
        return frozenset(e.name for e in os.scandir("/") if e.is_dir())
    except OSError:
        return frozenset()


def _strings(data: Any) -> Iterable[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _forms(path: Path) -> set[str]:
    """The ways an absolute path to `path` can be written: as given (when absolute) and with links resolved. A
    relative path tells nothing about the machine: it stays as written."""
    forms = {str(path)} if path.is_absolute() else set()
    with contextlib.suppress(OSError, RuntimeError):  # a path that cannot be resolved is kept as written
        forms |= {str(path.absolute()), str(path.resolve())}
    return {f.rstrip("/\\") or f for f in forms}


def _as_is(text: str) -> str:
    return text


def _json_inner(text: str) -> str:
    return json.dumps(text)[1:-1]


def _yaml_double_inner(text: str) -> str:
    import yaml

    dumped = yaml.safe_dump(text, default_style='"', width=float("inf"), allow_unicode=False)
    return dumped.strip().removesuffix("...").strip()[1:-1]


def _yaml_single_inner(text: str) -> str:
    return text.replace("'", "''")


def _literal(name: str) -> str:
    """A delete pattern that matches exactly `name` (huggingface_hub matches delete_patterns with fnmatch)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _stale_files(
    api: HfApi, repo_id: str, revision: str | None, pushed: set[str], delete_missing: bool, scratch: Path
) -> list[str]:
    """Files on the branch that this push does not bring and that an earlier push of this toolkit left (all of
    them with `delete_missing`), as the commit will delete them."""
    remote = api.list_repo_files(repo_id, revision=revision)
    missing = [f for f in remote if f not in pushed and f != ".gitattributes"]
    if delete_missing:
        if missing:
            logger.info(
                "hub: --delete-missing: removing %d file(s) from the branch: %s", len(missing), _listing(missing)
            )
        return missing
    earlier: set[str] | None = None
    if PUSH_MANIFEST_FILE in remote:
        try:
            saved = api.hf_hub_download(repo_id, PUSH_MANIFEST_FILE, revision=revision, local_dir=scratch)
            earlier = set(json.loads(Path(saved).read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError, OSError):
            earlier = None  # an unreadable manifest: fall back to the names a model push leaves
    ours = [f for f in missing if (f in earlier if earlier is not None else EARLIER_PUSH.fullmatch(f))]
    kept = [f for f in missing if f not in ours]
    if ours:
        logger.info("hub: removing %d file(s) an earlier push left on the branch: %s", len(ours), _listing(ours))
    if kept:
        logger.info(
            "hub: keeping %d file(s) on the branch that hf_finetune did not push: %s (--delete-missing removes them)",
            len(kept),
            _listing(kept),
        )
    return ours


def with_retries(fn: Callable[[], T], *, attempts: int, backoff_s: float, what: str) -> T:
    """`fn()`, retried with exponential backoff while it fails for reasons a retry can fix."""
    from huggingface_hub.errors import HfHubHTTPError

    # Everything huggingface_hub and hf_xet raise for a failed transfer; anything else is a bug and propagates.
    failures = (HfHubHTTPError, *_http_errors("HTTPError"), OSError, ValueError, RuntimeError)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except failures as err:
            reason = describe_error(err)
            if not is_transient(err):
                raise HubError(
                    f"{what} failed: {reason.rstrip('.')}{_hint(err)}. The local folder is unchanged."
                ) from None
            if attempt == attempts:
                raise HubError(
                    f"{what} failed after {attempts} attempts: {reason.rstrip('.')}. The local folder is unchanged; "
                    "run `hf-finetune push OUTPUT_DIR --repo-id USER/NAME` to try again."
                ) from None
            wait = backoff_s * 2 ** (attempt - 1)
            logger.warning("hub: attempt %d of %d failed (%s); retrying in %.0f s", attempt, attempts, reason, wait)
            time.sleep(wait)
    raise HubError(f"{what}: attempts must be at least 1, got {attempts}")


def is_transient(err: BaseException) -> bool:
    """Connection trouble, timeouts and 408/429/5xx answers — looked for along the exception's whole chain."""
    from huggingface_hub.errors import HfHubHTTPError

    network = (*_http_errors("TransportError"), ConnectionError, TimeoutError)
    for cause in _chain(err):
        if isinstance(cause, HfHubHTTPError):
            status = _status(cause)
            return status is None or status in TRANSIENT_STATUS
        if isinstance(cause, network):
            return True
        if isinstance(cause, json.JSONDecodeError):
            return True  # huggingface_hub parsed a proxy's error page as JSON (it does so before checking status)
    return False


def describe_error(err: BaseException) -> str:
    """One line about what failed: the HTTP status and URL, or the exception's type and first line."""
    from huggingface_hub.errors import HfHubHTTPError

    for cause in _chain(err):
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            response = cause.response
            request = response.request
            said = f": {cause.server_message.strip()}" if getattr(cause, "server_message", None) else ""
            return f"HTTP {response.status_code} for {request.method} {request.url}{said}".splitlines()[0]
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _hint(err: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    for cause in _chain(err):
        if isinstance(cause, HfHubHTTPError) and _status(cause) in (401, 403, 404):
            return (
                ". Check the token (HF_TOKEN, or `hf auth login`): it needs write access to the repo's namespace, "
                "and the namespace must be your user name or an organisation you belong to"
            )
    return ""


def _http_errors(name: str) -> tuple[type[BaseException], ...]:
    """An exception class of huggingface_hub's HTTP library: httpx2 under huggingface_hub 2.x, httpx under 1.x."""
    import importlib

    for module_name in ("httpx2", "httpx"):
        try:
            return (getattr(importlib.import_module(module_name), name),)
        except (ImportError, AttributeError):
            continue
    return ()


def _status(err: Any) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _check_output_dir(out: Path) -> None:
    if out.is_file():
        raise HubError(f"{out} is a file; give the output folder of a run (training.output_dir)")
    if not out.is_dir():
        raise HubError(f"{out}: no such folder; give the output folder of a run (training.output_dir)")
    if not (out / "config.json").is_file() and not (out / "config.json").is_symlink():
        raise HubError(f"{out} holds no model (config.json is missing); push a folder written by `hf-finetune train`")
    _refuse_missing_code(out)
    weights = [p for p in out.iterdir() if any(fnmatch.fnmatchcase(p.name, w) for w in MODEL_FILES[1:])]
    pickled = sorted(p.name for p in out.glob("pytorch_model*.bin"))
    if not weights and pickled:
        raise HubError(
            f"{out} holds its weights only as {pickled[0]}, a pickle (loading one can run code), which push leaves "
            "out: save them as safetensors (model.save_pretrained(folder), the default) and push again."
        )
    if not weights:
        raise HubError(
            f"{out} holds no model weights (no *.safetensors file next to config.json): a run that stopped before "
            "the end leaves its weights in checkpoint-* folders. Finish it (hf-finetune train "
            f"{out / RECIPE_FILE} --resume) and push again."
        )


def _refuse_missing_code(out: Path) -> None:
    from .card import shipped_code_files

    missing = [f for f in shipped_code_files(out) if not (out / f).is_file()]
    if missing:
        raise HubError(
            f"{out}: its config.json or preprocessor_config.json names model code in {', '.join(missing)} (its "
            "auto_map), which is not in the folder: the pushed repo would not load. Put the file back, or save the "
            "model again with save_pretrained (it copies the code), and push again."
        )


def _check_repo_id(repo_id: str | None) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise HubError(f"repo id: expected USER/NAME or ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"repo id {repo_id!r}: {err}") from None


def _redacted_recipe(path: Path, paths: _LocalPaths | None = None) -> str | None:
    """recipe.yaml with credentials blanked and absolute local paths rewritten, or None when it holds neither (then
    the file is pushed as it is)."""
    from .card import redact_recipe
    from .recipe import dump_yaml, read_yaml

    raw = read_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        return None
    redacted = redact_recipe(raw)
    if redacted.get("training") != (raw.get("training") or {}):
        logger.warning("hub: %s holds a token under training:; the pushed copy has it blanked", RECIPE_FILE)
    elif paths is None or paths.value(raw) == raw:
        return None
    if paths is not None:
        redacted = paths.value(redacted)
    return dump_yaml(redacted)


def _link(src: Path, dest: Path) -> None:
    """A symbolic link where the OS allows one (Windows may not), else a hard link, else a copy."""
    try:
        os.symlink(src.resolve(), dest)
    except OSError:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
