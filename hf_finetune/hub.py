"""Pushing an output folder to the Hugging Face Hub: the only module that talks to the network on purpose."""

from __future__ import annotations

from pathlib import Path

from .errors import HFFinetuneError


def push_folder(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    include_checkpoints: bool = False,
) -> str:
    """Upload `output_dir` to `repo_id` with huggingface_hub; returns the commit URL."""
    raise HFFinetuneError("pushing to the Hub is not implemented yet")
