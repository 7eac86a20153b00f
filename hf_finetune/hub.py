"""Pushing an output folder to the Hugging Face Hub: the only module that talks to the network on purpose.

huggingface_hub does all the talking (`create_repo`, `create_branch`, `upload_folder`: Xet storage when hf_xet is
installed, Git LFS otherwise), and it finds the token where it always does — `HF_TOKEN`, or the token saved by
`hf auth login`. This module never reads the token's value, prints it, logs it or writes it anywhere.

What is uploaded is a staging folder of links to the output folder's files, so the local folder is never modified,
even though the pushed README.md differs from the local one (its usage snippet loads the repo id, not a local path).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import HFFinetuneError

logger = logging.getLogger("hf_finetune.hub")

T = TypeVar("T")

# Status codes worth another try: the server or something in between is busy or briefly down.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Top-level files left out of the push: training_args.bin is a pickle (flagged by the Hub's scanner, and it can
# hold `hub_token`); recipe.yaml carries the same settings as readable text.
NOT_PUSHED = frozenset({"training_args.bin"})


class HubError(HFFinetuneError):
    """The push did not happen (or did not finish). The local output folder is unchanged."""


def push_folder(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    include_checkpoints: bool = False,
    attempts: int = 3,
    backoff_s: float = 2.0,
) -> str:
    """Upload `output_dir` to the model repo `repo_id` (created if needed); returns the commit URL.

    `revision` is a branch (created from main if missing). `checkpoint-*` folders stay local unless
    `include_checkpoints`. The branch then holds exactly the pushed files (and `.gitattributes`): files an earlier
    push left there are deleted in the same commit (git history keeps them), so a model never sits next to another
    run's weight shards, metrics or plots.

    Network failures and busy-server answers are retried `attempts` times, waiting `backoff_s`, then twice that, …;
    after that, or at once for errors a retry cannot fix (bad token, no write access), a `HubError` says what went
    wrong.
    """
    out = Path(output_dir)
    _check_output_dir(out)
    _check_repo_id(repo_id)

    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push {out} to {repo_id}: HF_HUB_OFFLINE is set; unset it to talk to the Hub")
    if get_token() is None:  # only whether there is one; its value stays inside huggingface_hub
        raise HubError(
            f"cannot push {out} to {repo_id}: no Hugging Face token found. Set HF_TOKEN or run `hf auth login` "
            "with a token that has write access."
        )
    api = HfApi()  # no token argument: huggingface_hub reads it from HF_TOKEN or its token file on each call
    target = f"{repo_id}{f' (branch {revision})' if revision else ''}"
    with tempfile.TemporaryDirectory(prefix="hf_finetune_push_") as tmp:
        files = stage_folder(out, Path(tmp), repo_id, revision=revision, include_checkpoints=include_checkpoints)
        logger.info("hub: pushing %d files from %s to %s at %s", len(files), out, target, api.endpoint)

        def upload() -> str:
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
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                commit_message=f"Upload {out.name} with hf_finetune",
                delete_patterns="*",  # whatever this push does not bring back is another run's leftover
            )
            return str(info.commit_url)

        url = with_retries(upload, attempts=attempts, backoff_s=backoff_s, what=f"pushing {out} to {target}")
    logger.info("hub: pushed %s to %s", out, url)
    return url


def stage_folder(
    out: Path, staging: Path, repo_id: str, *, revision: str | None = None, include_checkpoints: bool = False
) -> list[str]:
    """Fill `staging` with what the repo should hold: links to `out`'s files, plus the Hub's own README.md.

    Links, not copies, so pushing a model of several GB costs no disk space; `out` itself is only read.
    """
    from .card import card_for_repo

    staged = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        name = rel.as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue  # folders are recreated from their files; hidden files are temporary or caches
        if rel.parts[0].startswith("checkpoint-") and not include_checkpoints:
            continue
        if name in NOT_PUSHED:
            continue
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name == "README.md":
            dest.write_text(card_for_repo(path.read_text(encoding="utf-8"), repo_id, revision), encoding="utf-8")
        elif name == "recipe.yaml" and (redacted := _redacted_recipe(path)) is not None:
            dest.write_text(redacted, encoding="utf-8")
        else:
            _link(path, dest)
        staged.append(name)
    if "README.md" not in staged:
        logger.warning("hub: %s has no README.md; the repo will have no model card", out)
    return staged


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
    if not out.is_dir():
        raise HubError(f"{out}: no such folder; give the output folder of a run (training.output_dir)")
    if not (out / "config.json").is_file():
        raise HubError(f"{out} holds no model (config.json is missing); push a folder written by `hf-finetune train`")


def _check_repo_id(repo_id: str | None) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise HubError(f"repo id: expected USER/NAME or ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"repo id {repo_id!r}: {err}") from None


def _redacted_recipe(path: Path) -> str | None:
    """recipe.yaml with credentials blanked, or None when it holds none (then the file is pushed as it is)."""
    import yaml

    from .card import redact_recipe

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        return None
    redacted = redact_recipe(raw)
    if redacted.get("training") == (raw.get("training") or {}):
        return None
    logger.warning("hub: recipe.yaml holds a token under training:; the pushed copy has it blanked")
    return yaml.safe_dump(redacted, sort_keys=False)


def _link(src: Path, dest: Path) -> None:
    """A symbolic link where the OS allows one (Windows may not), else a hard link, else a copy."""
    try:
        os.symlink(src.resolve(), dest)
    except OSError:
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
