"""Loading weights into a model: a checkpoint file (`model.weights`), and the check of what Trainer restored.

Trainer restores checkpoints non-strictly and transformers 5 renames some models' tensors between disk and memory
(ViT: `vit.encoder.layer.*` saved, `vit.layers.*` in memory), so a load that "worked" may have left tensors out;
everything here either loads all of it or says what did not fit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HFFinetuneError, ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint file as a state dict: safetensors, or a pickled one read with `weights_only=True`.

    A folder is read through its `model.safetensors` (what `save_pretrained` and `finetune` write)."""
    import torch

    path = Path(path).expanduser()
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"model.weights {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that is more than tensors
        raise ModelError(f"model.weights {str(path)!r}: cannot be read ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"model.weights {str(path)!r}: expected a state dict, got {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(
            f"model.weights {str(path)!r}: expected a state dict (name → tensor), but {_few(not_tensors)} are not "
            "tensors"
        )
    return state


def load_weights_file(model: torch.nn.Module, path: str | Path, head: set[str]) -> None:
    """Load `path` into `model`, strictly except for the classification head, which is replaced for the new labels
    and so never taken from the file.

    Accepted besides the model's own names: names saved by DDP (`module.`), a bare timm model's names for a model
    inside TimmWrapper (whose own start with `timm_model.`), and the names transformers writes with `save_pretrained`
    when they differ from the model's (ViT in transformers 5: `vit.encoder.layer.*` on disk, `vit.layers.*` in memory).
    Nothing is loaded unless everything fits.
    """
    state = read_state_dict(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if hasattr(model, "timm_model") and not any(k.startswith("timm_model.") for k in state):
        state = {f"timm_model.{k}": v for k, v in state.items()}
    own = model.state_dict()
    # the file's own head (any size, any classes) is left out: the model keeps the head built for the new labels
    state = {k: v for k, v in state.items() if k not in head}
    problems = _misfit(own, state, head)
    if any(problems) and not hasattr(model, "timm_model"):
        converted = _converted_by_transformers(model, state, head)
        if converted is not None and not any(_misfit(own, converted, head)):
            state, problems = converted, ([], [], [])
    missing, unexpected, wrong_shape = problems
    if missing or unexpected or wrong_shape:
        raise ModelError(
            f"model.weights {str(path)!r} does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys {_few(missing)}, {len(unexpected)} unexpected keys {_few(unexpected)}, "
            f"{len(wrong_shape)} shape mismatches {_few(wrong_shape)}. "
            "Check that the checkpoint is for this architecture (and convert its key names if it is not)."
        )
    model.load_state_dict(state, strict=False)
    logger.info("model: loaded %d tensors from %s (the classification head stays new)", len(state), path)


def _misfit(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], head: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) of a state dict against the model's own, the head left aside."""
    missing = [
        k
        for k in own
        # BatchNorm fills in a missing batch counter itself (older checkpoints lack it)
        if k not in state and k not in head and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    return missing, unexpected, wrong_shape


def _converted_by_transformers(
    model: torch.nn.Module, state: dict[str, torch.Tensor], head: set[str]
) -> dict[str, torch.Tensor] | None:
    """The file's tensors under the model's own names, as `from_pretrained` renames them, or None when that fails.

    `save_pretrained` writes some models under older names than they use in memory (and reads them back through
    the same renaming); a file saved that way only fits through it."""
    import copy

    from_pretrained = getattr(type(model), "from_pretrained", None)
    config = getattr(model, "config", None)
    if from_pretrained is None or config is None:
        return None
    try:
        loaded, info = from_pretrained(
            None, config=copy.deepcopy(config), state_dict=state, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        logger.debug("model.weights: transformers could not rename the checkpoint's keys (%s)", err)
        return None
    missing = set(info.get("missing_keys") or ()) - head
    mismatched = {m[0] for m in info.get("mismatched_keys") or ()} - head
    if missing or mismatched or info.get("unexpected_keys"):
        return None
    return {k: v for k, v in loaded.state_dict().items() if k not in head}


def _few(items: list[str], n: int = 8) -> str:
    return f"{items[:n]}{'…' if len(items) > n else ''}"


def sync_with_checkpoint(model: PreTrainedModel, checkpoint: str | Path) -> list[str]:
    """Make `model`'s tensors equal to the checkpoint as `from_pretrained` reads it; returns what had differed.

    Trainer restores checkpoints non-strictly, and silently skips tensors whose names changed between versions (ViT
    in transformers 5); `from_pretrained` knows the renames, so it is the reference.
    """
    import torch

    if any(cls.__name__ == "PeftModel" for cls in type(model).__mro__):
        return _sync_with_adapter(model, checkpoint)
    reference = type(model).from_pretrained(str(checkpoint)).state_dict()
    current = model.state_dict()
    if any(type(v).__name__ == "DTensor" for v in current.values()):
        return _sync_sharded(current, reference, checkpoint)

    def mismatched() -> list[str]:
        return [
            k
            for k, v in reference.items()
            if k not in current or current[k].shape != v.shape or not torch.equal(current[k].cpu(), v.cpu())
        ]

    wrong = mismatched()
    if wrong:
        with torch.no_grad():
            for key in wrong:
                current[key].copy_(reference[key].to(current[key].device, current[key].dtype))
        still = mismatched()
        if still:
            raise HFFinetuneError(
                f"{len(still)} tensors still differ from {checkpoint} after reloading (e.g. {still[0]})"
            )
    return wrong


def _sync_sharded(
    current: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], checkpoint: str | Path
) -> list[str]:
    """`sync_with_checkpoint` under FSDP2, whose parameters are DTensors sharded across the processes: each process
    compares and repairs only its own shard, against the same slice of the checkpoint (cut locally, no collective),
    so no process gathers the trained model. The checkpoint itself is read whole on each process, on the CPU, for
    a moment: `from_pretrained` is what knows the renamed keys. Returns what had differed on any process."""
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    def views(key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        mine, theirs = current.get(key), reference[key]
        if mine is None or mine.shape != theirs.shape:
            return None
        theirs = theirs.to(mine.device, mine.dtype)
        if isinstance(mine, DTensor):
            sliced = distribute_tensor(theirs, mine.device_mesh, mine.placements, src_data_rank=None)
            return mine.to_local(), sliced.to_local()
        return mine, theirs

    pairs = {key: views(key) for key in reference}

    def mismatched() -> list[str]:
        return [k for k, pair in pairs.items() if pair is None or not torch.equal(*pair)]

    wrong = mismatched()
    with torch.no_grad():
        for key in wrong:
            if pairs[key] is not None:
                pairs[key][0].copy_(pairs[key][1])
    still = mismatched()
    if torch.distributed.is_initialized():  # one answer for every process: each saw only its own shard
        everyone: list[tuple[list[str], list[str]] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, (wrong, still))
        wrong = sorted({k for w, _ in everyone for k in w})
        still = sorted({k for _, s in everyone for k in s})
    if still:
        raise HFFinetuneError(f"{len(still)} tensors still differ from {checkpoint} after reloading (e.g. {still[0]})")
    return wrong


def _sync_with_adapter(model: torch.nn.Module, checkpoint: str | Path) -> list[str]:
    """`sync_with_checkpoint` for a peft model (hf_finetune/lora.py): a checkpoint holds only the adapter (LoRA
    tensors and the trained head), which must equal the model's; returns what had differed (then restored)."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise HFFinetuneError(f"{checkpoint}: no adapter_model.safetensors, so it is not a checkpoint of a peft run")
    reference = read_state_dict(path)

    def mismatched() -> list[str]:
        current = get_peft_model_state_dict(model)
        differ = [k for k, v in reference.items() if k not in current or not torch.equal(current[k].cpu(), v.cpu())]
        return differ + [k for k in current if k not in reference]

    wrong = mismatched()
    if wrong:
        set_peft_model_state_dict(model, reference)
        still = mismatched()
        if still:
            raise HFFinetuneError(f"{len(still)} adapter tensors still differ from {checkpoint} (e.g. {still[0]})")
    return wrong
