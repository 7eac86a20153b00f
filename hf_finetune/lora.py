"""LoRA with peft (recipe section `peft:`): low-rank adapters in the backbone's blocks, the new head trained whole.

    build model → transfer plan (which blocks) → `wrap` (peft.get_peft_model: adapters + modules_to_save = the head)
        → Trainer (checkpoints hold the adapter) → `save` (adapter/ first, then the merged model, each reloaded
        and checked against the trained model's logits)

The blocks are the transfer module's (`transfer.map_layers`), so `target_modules: auto` needs no per-architecture
table: the Linear layers inside the blocks (attention and MLP: BERT's query/key/value/dense, timm ViT's
qkv/proj/fc1/fc2), or their Conv2d layers for a convolutional network whose blocks have no Linear (depthwise
convolutions are left out). The head is never adapted: it is new, so it trains whole and is saved in the adapter
(`modules_to_save`); an adapter without it would load with a random head (peft issues #310, #577, #876).

The output folder holds the merged model (`merge_and_unload`: the same files as a run without LoRA, loadable with
`pipeline()`) and `adapter/` (`PeftModel.from_pretrained(base, OUT/adapter)`). BatchNorm stays in eval mode:
running statistics are buffers the adapter does not carry, so updating them would make the two outputs differ.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HFFinetuneError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .recipe import PeftSpec, Recipe
    from .transfer import LayerMap

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
INSTALL_HINT = 'peft.method lora needs peft: pip install "hf_finetune[peft]"'
# Trainer's own 5e-5 suits full fine-tuning, not adapters: MiniLM + LoRA on a held-out news set reached 0.41
# accuracy at 5e-5 and 0.96 at 2e-3 (issue 16); benchmarks/lora.py measures it again on the offline tweets
DEFAULT_LEARNING_RATE = 2e-3
# largest |Δlogit| accepted between the trained model and what its saved folders reload to, relative to the largest
# |logit| when that is above 1: merging (W + B·A·scale) rounds in float32, and the rounding grows with the logits
# (a fitted probe head with C = 1000 gave logits in the hundreds and |Δ| 0.006); a wrong or missing tensor moves
# them by far more
TOLERANCE = 1e-3


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise HFFinetuneError(INSTALL_HINT) from None


def with_peft_defaults(recipe: Recipe) -> Recipe:
    """peft on and no training.learning_rate: LoRA's default, logged (and saved in recipe.yaml)."""
    if not recipe.peft.enabled or "learning_rate" in recipe.training:
        return recipe
    logger.info(
        "training: learning_rate = %r (peft.method %s default: adapters need a higher rate than full fine-tuning; "
        "set training.learning_rate to change it)",
        DEFAULT_LEARNING_RATE,
        recipe.peft.method,
    )
    return dataclasses.replace(recipe, training={**recipe.training, "learning_rate": DEFAULT_LEARNING_RATE})


def is_peft_model(model: nn.Module) -> bool:
    """A peft-wrapped model (by name: asking imports nothing)."""
    return any(cls.__name__ == "PeftModel" for cls in type(model).__mro__)


# --------------------------------------------------------------------------------------------- what LoRA adapts


def head_module_names(model: nn.Module) -> list[str]:
    """The head's module names from the model's root, for `modules_to_save` (two for a distilled timm model)."""
    from .models.structure import head_module

    head = head_module(model)
    names = {id(m): n for n, m in model.named_modules()}
    if head is None:
        raise ModelError(
            f"{type(model).__name__}: cannot find the classification head, which LoRA must train whole; "
            "set peft.method: none"
        )
    if id(head) in names:
        return [names[id(head)]]
    return [names[id(m)] for m in head.children()]  # a ModuleList built around the distilled model's two heads


def _adaptable(module: nn.Module) -> str | None:
    """'linear' or 'conv' for a layer type LoRA (peft) adapts here; None otherwise."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
        return "conv"
    return None


def target_modules(model: nn.Module, spec: PeftSpec, layers: LayerMap, unfreeze_last: int | None) -> list[str]:
    """Full module names LoRA adapts: `auto` (the blocks' Linear layers, else their Conv2d layers) or the recipe's
    names (each must name at least one module); with `unfreeze_last` only those in the last blocks (and after)."""
    head = set(head_module_names(model))
    candidates: dict[str, tuple[str, int]] = {}  # name -> (kind, layer index)
    for name, module in model.named_modules():
        kind = _adaptable(module)
        if kind is None or name in head or any(name.startswith(h + ".") for h in head):
            continue
        index = layers.layer.get(f"{name}.weight")
        if index is not None:
            candidates[name] = (kind, index)
    lowest = layers.num_blocks - unfreeze_last + 1 if unfreeze_last is not None else 0
    if spec.target_modules == "auto":
        in_blocks = {n: k for n, (k, i) in candidates.items() if 1 <= i <= layers.num_blocks and i >= lowest}
        chosen = [n for n, k in in_blocks.items() if k == "linear"] or [n for n, k in in_blocks.items() if k == "conv"]
        if not chosen:
            raise ModelError(
                f"peft.target_modules auto: {type(model).__name__}'s blocks have no Linear or Conv2d layer for LoRA "
                f"to adapt; name the modules in peft.target_modules, or set peft.method: none"
            )
        return chosen
    return _named_targets(model, spec.target_modules, candidates, head, lowest)


def _named_targets(
    model: nn.Module, names: list[str], candidates: dict[str, tuple[str, int]], head: set[str], lowest: int
) -> list[str]:
    problems, chosen = [], []
    short = sorted({n.rsplit(".", 1)[-1] for n in candidates})
    for wanted in names:
        matches = [n for n in candidates if n == wanted or n.endswith("." + wanted)]
        if any(h == wanted or h.endswith("." + wanted) for h in head):
            problems.append(
                f"{wanted!r} is the classification head, which trains whole (peft modules_to_save) and is saved "
                "in the adapter; remove it"
            )
        elif not matches:
            problems.append(f"{wanted!r} names no Linear or Conv2d layer of {type(model).__name__}")
        else:
            kept = [n for n in matches if candidates[n][1] >= lowest]
            if not kept:
                problems.append(f"{wanted!r}: none of its layers is in the last transfer.unfreeze_last blocks")
            chosen += [n for n in kept if n not in chosen]
    if problems:
        raise ModelError(
            "peft.target_modules: "
            + "; ".join(problems)
            + f". The layers LoRA can adapt are named: {', '.join(short)} (or write auto: the blocks' layers)"
        )
    return chosen


# --------------------------------------------------------------------------------------------- wrapping


def wrap(model: nn.Module, spec: PeftSpec, layers: LayerMap, unfreeze_last: int | None) -> nn.Module:
    """The model with LoRA adapters (peft.get_peft_model), its head in modules_to_save, BatchNorm kept in eval."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    from .transfer import freeze_batchnorm

    targets = target_modules(model, spec, layers, unfreeze_last)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=head_module_names(model),
        bias="none",
    )
    wrapped = get_peft_model(model, config)
    # every BatchNorm is frozen now: it normalises with the pretrained statistics, which both outputs carry
    handles = freeze_batchnorm(wrapped)
    trainable, total = parameter_counts(wrapped)
    logger.info(
        "peft: LoRA r %d, alpha %g, dropout %g on %d layers (%s); head %s trained whole — %s of %s parameters train%s",
        spec.r,
        spec.alpha,
        spec.dropout,
        len(targets),
        ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets})),
        ", ".join(config.modules_to_save),
        f"{trainable:,}",
        f"{total:,}",
        f"; {len(handles)} BatchNorm layers keep their statistics" if handles else "",
    )
    return wrapped


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; under peft the total is the model's own size, as the merged model has it (the
    adapters and the head's frozen original beside its trained copy are not counted)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    own = (p.numel() for n, p in model.named_parameters() if "lora_" not in n and ".original_module." not in n)
    return trainable, sum(own)


def run_info(model: nn.Module, spec: PeftSpec) -> dict[str, Any]:
    """metrics.json's run.peft (and the card's lines)."""
    config = model.peft_config[model.active_adapter]
    trainable, total = parameter_counts(model)
    targets = sorted(config.target_modules)
    return {
        "method": spec.method,
        "r": spec.r,
        "alpha": spec.alpha,
        "dropout": spec.dropout,
        "target_modules": spec.target_modules,
        "adapted_layers": len(targets),
        "adapted_names": sorted({t.rsplit(".", 1)[-1] for t in targets}),
        "modules_to_save": sorted(config.modules_to_save or []),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "adapter": ADAPTER_DIR,
    }


# --------------------------------------------------------------------------------------------- saving


def save_adapter(model: nn.Module, folder: Path, base_model: str | None) -> None:
    """`folder`: adapter_model.safetensors (LoRA tensors + the trained head) and adapter_config.json, whose
    `base_model_name_or_path` is the Hub id the run started from, or null for a local folder (an absolute path of
    this machine means nothing elsewhere and would be pushed)."""
    from .files import write_json

    model.save_pretrained(str(folder), safe_serialization=True)
    path = folder / "adapter_config.json"
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model
    write_json(path, config)
    # peft also writes a README.md template; the run's card is the folder's own README.md
    readme = folder / "README.md"
    if readme.is_file():
        readme.unlink()


def hub_id(name: str, config: Any = None) -> str | None:
    """Where the base model comes from on the Hub: the model's name if it is a Hub id (`org/name`, `timm/…`), the
    weights' Hub id of a `timm:<architecture>` (its pretrained_cfg), else None (a local folder, builtin:…)."""
    if name.startswith("timm:"):
        cfg = getattr(config, "pretrained_cfg", None) or {}
        return cfg.get("hf_hub_id") if isinstance(cfg, dict) else None
    local = name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()
    if local or ":" in name or name.count("/") > 1:  # builtin:…, a path
        return None
    return name


def merge(model: nn.Module) -> nn.Module:
    """The base model with the adapters merged into its weights and the trained head in place (no peft left)."""
    return model.merge_and_unload()


@dataclasses.dataclass
class Reloaded:
    """What one reload gave: the largest |Δlogit| against the trained model (whose largest |logit| is `scale`) and
    any tensors that differ."""

    what: str
    max_abs_diff: float
    wrong: list[str]
    scale: float = 1.0


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.float().cpu()
    model.train(was_training)
    return out


def compare(what: str, reference: torch.Tensor, model: nn.Module, batch: dict[str, torch.Tensor]) -> Reloaded:
    diff = float((logits_of(model, batch) - reference).abs().max())
    return Reloaded(what, diff, [], float(reference.abs().max()))


def adapter_tensors_differ(trained: dict[str, torch.Tensor], folder: Path) -> list[str]:
    """Names of the adapter file's tensors that are missing or differ from the trained ones (head included)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(folder / "adapter_model.safetensors"))
    wrong = [k for k in trained if k not in saved or not torch.equal(saved[k], trained[k].cpu())]
    return wrong + [k for k in saved if k not in trained]


def check(results: list[Reloaded], tolerance: float = TOLERANCE) -> None:
    """A reload that does not reproduce the trained model is an error (the folder would predict something else);
    the tolerance is relative to the logits' size when they exceed 1 (see TOLERANCE)."""
    bad = [r for r in results if r.wrong or not r.max_abs_diff <= tolerance * max(1.0, r.scale)]
    if bad:
        lines = [
            f"{r.what}: max |Δlogit| {r.max_abs_diff:.3g} (tolerance {tolerance * max(1.0, r.scale):.3g}: "
            f"{tolerance:g} × the largest |logit|, {r.scale:.3g}, when above 1)"
            + (f", {len(r.wrong)} tensors differ (e.g. {r.wrong[0]})" if r.wrong else "")
            for r in bad
        ]
        raise HFFinetuneError(
            "peft: what was saved does not reproduce the trained model: " + "; ".join(lines) + ". The output "
            "folder is not usable as it is; this is a bug in hf_finetune or peft, please report it"
        )
