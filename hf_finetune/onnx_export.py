"""ONNX export of a trained model, verified against the PyTorch model it came from (`hf_finetune.export`).

`torch.onnx.export` (torch's dynamo exporter: `torch.export` traces the model, onnxscript translates it) writes
`onnx/model.onnx` with a dynamic batch axis (and a dynamic sequence axis for text). onnxruntime then runs rows the
caller prepared with the model's own preprocessing through both models: top-1 agreement and the largest logit
difference are the export's figures, and a difference beyond the tolerance refuses the export. `--quantize int8` adds
onnxruntime's dynamic quantization, reported (not refused) by its accuracy change against PyTorch on the same rows.

The files go in an `onnx/` subfolder, the layout Optimum and transformers.js read on the Hub (`onnx/model.onnx`,
`onnx/model_quantized.onnx`), beside the folder's preprocessor_config.json or tokenizer files; `onnx/export.json`
holds the labels, the inputs and their preprocessing as plain JSON (readable without transformers) and the figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ExportError, HFFinetuneError, ModelError
from .files import write_json, write_text_atomic
from .names import ONNX_DIR, ONNX_FIGURES_FILE, ONNX_MODEL_FILE, ONNX_QUANTIZED_FILE

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime
    from transformers import BaseImageProcessor, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# fp32 onnxruntime kernels differ from PyTorch's by rounding only (≈1e-6 on these models' logits); a real export
# fault (a dropped mask, a wrong axis, a constant baked in) moves logits by far more. 1e-3 keeps three orders of
# magnitude on either side. Top-1 agreement is reported, not a second limit: with every logit within `tolerance`, only
# rows whose two best logits are within 2 × tolerance can change their top-1, and those are ties either way.
DEFAULT_TOLERANCE = 1e-3
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
_SECTION_START = "<!-- hf_finetune:export -->"
_SECTION_END = "<!-- /hf_finetune:export -->"


def require_packages() -> None:
    """The exporter (onnx, onnxscript) and the runtime (onnxruntime) are the `export` extra, checked before any work."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'hf_finetune[export]'"
        )


class LogitsOnly(torch.nn.Module):
    """The classifier with positional tensor inputs and its logits as the one output: what an ONNX graph takes."""

    def __init__(self, model: PreTrainedModel, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, tensors, strict=True))).logits


def input_names(
    model: PreTrainedModel, processor: BaseImageProcessor | PreTrainedTokenizerBase | None, text: bool
) -> list[str]:
    """The graph's inputs: `pixel_values`, or what the tokenizer returns and the model reads (token_type_ids for
    BERT-style segment embeddings, so sentence pairs keep their second segment)."""
    if not text:
        return ["pixel_values"]
    import inspect

    takes = inspect.signature(model.forward).parameters
    return [name for name in processor.model_input_names if name in takes]


def export_onnx(model: PreTrainedModel, example: Mapping[str, torch.Tensor], path: Path, text: bool) -> int:
    """Write `model` as ONNX to `path` (weights inside the file), traced on `example` (a batch of real rows with at
    least 2 rows and, for text, 2 tokens: torch.export fixes axes of size 0 or 1). Returns the opset."""
    from torch.export import Dim

    names = list(example)
    axes = {0: Dim("batch"), **({1: Dim("sequence")} if text else {})}
    model.eval()
    try:
        # the exporter prints its progress on stdout, which the CLI keeps for the figures
        with contextlib.redirect_stdout(sys.stderr):
            program = torch.onnx.export(
                LogitsOnly(model, names).eval(),
                tuple(example[n] for n in names),
                str(path),
                dynamo=True,  # torch.export: the default from torch 2.9, asked for on the earlier releases too
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=(tuple(dict(axes) for _ in names),),  # one entry: forward's *tensors
                external_data=False,
                verbose=False,
            )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelError(
            f"{type(model).__name__} could not be exported to ONNX by torch.onnx.export ({type(err).__name__}: "
            f"{first}); rerun with --debug for the exporter's full report"
        ) from err
    return int(program.model.opset_imports.get("", 0))


def session(path: Path, device: str | torch.device = "cpu") -> onnxruntime.InferenceSession:
    """An onnxruntime session: on CUDA when `device` is a CUDA device and onnxruntime has its CUDA provider (the
    onnxruntime-gpu build), else on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("running ONNX models needs onnxruntime: pip install 'hf_finetune[export]'") from None
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(path), providers=providers)


def run_session(sess: onnxruntime.InferenceSession, batch: Mapping[str, Any]) -> np.ndarray:
    """The logits of one batch; the graph's inputs are taken from `batch` by name (other keys, labels, are left)."""
    feed = {}
    for item in sess.get_inputs():
        if item.name not in batch:
            raise ModelError(f"the ONNX model takes {item.name!r}, which the preprocessing did not produce")
        value = batch[item.name]
        feed[item.name] = value.numpy() if isinstance(value, torch.Tensor) else value
    return sess.run(["logits"], feed)[0]


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's advice before quantizing: shapes inferred and the graph folded, so more of it is quantized.
    # Its symbolic shape inference gives up on the exporter's attention graphs (BERT); ONNX's own inference does not.
    prepared = target.with_name(f".{target.name}.pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    except Exception as err:  # onnx's shape inference and the quantizer raise their own (or plain) exceptions
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelError(
            f"int8 quantization by onnxruntime failed ({type(err).__name__}: {first}); nothing was written. Export "
            "without --quantize, or upgrade onnxruntime and onnx"
        ) from err
    finally:
        prepared.unlink(missing_ok=True)


@dataclass
class Logits:
    """Logits of the verification rows from each model, with the rows' labels."""

    torch: list[np.ndarray]
    onnx: list[np.ndarray]
    int8: list[np.ndarray]
    labels: list[np.ndarray]


def collect_logits(
    model: PreTrainedModel,
    names: list[str],
    batches: Iterable[Mapping[str, torch.Tensor]],
    sessions: list[onnxruntime.InferenceSession],
) -> Logits:
    """Every batch through PyTorch and each ONNX session (the fp32 one, then the int8 one if any)."""
    out = Logits([], [], [], [])
    model.eval()
    for batch in batches:
        with torch.no_grad():
            out.torch.append(model(**{n: batch[n] for n in names}).logits.float().numpy())
        out.onnx.append(run_session(sessions[0], batch))
        if len(sessions) > 1:
            out.int8.append(run_session(sessions[1], batch))
        out.labels.append(batch["labels"].numpy())
    return out


def figures(logits: Logits, tolerance: float) -> dict[str, Any]:
    """Top-1 agreement and max |Δlogit| of the ONNX model against PyTorch; the int8 model's accuracy change."""
    import numpy as np

    ref, labels = np.concatenate(logits.torch), np.concatenate(logits.labels)
    top1 = ref.argmax(-1)
    accuracy = float((top1 == labels).mean())

    def against(other: np.ndarray) -> dict[str, float]:
        return {
            "top1_agreement": float((other.argmax(-1) == top1).mean()),
            "max_abs_logit_diff": float(np.abs(other - ref).max()),
            "accuracy": float((other.argmax(-1) == labels).mean()),
        }

    result: dict[str, Any] = {"rows": len(labels), "pytorch_accuracy": accuracy}
    result["onnx"] = {**against(np.concatenate(logits.onnx)), "tolerance": tolerance}
    if logits.int8:
        int8 = against(np.concatenate(logits.int8))
        result["int8"] = {**int8, "accuracy_change": int8["accuracy"] - accuracy}
    return result


def check_within_tolerance(result: dict[str, Any], where: str) -> None:
    onnx = result["onnx"]
    if not math.isfinite(onnx["max_abs_logit_diff"]) or onnx["max_abs_logit_diff"] > onnx["tolerance"]:
        raise ExportError(
            f"the ONNX export of {where} does not match the PyTorch model: max |Δlogit| "
            f"{onnx['max_abs_logit_diff']:.3g} over {result['rows']} rows is beyond the tolerance "
            f"{onnx['tolerance']:g} (top-1 agreement {onnx['top1_agreement']:.2%}). Nothing was written. If the "
            "difference is rounding you accept, raise --tolerance; otherwise rerun with --debug and report it."
        )


def write_export_folder(
    folder: Path,
    config: PreTrainedConfig,
    inputs: dict[str, Any],
    preprocessing: dict[str, Any],
    result: dict[str, Any],
    weights: str,
) -> None:
    """`export.json`: what an onnxruntime user needs without transformers (labels, inputs, preprocessing) and the
    verification figures."""
    write_json(
        folder / ONNX_FIGURES_FILE,
        {
            "format": "onnx",
            "model": ONNX_MODEL_FILE,
            "weights": weights,  # sha256 of the PyTorch weights exported: predict --onnx refuses a stale export
            **({"quantized_model": ONNX_QUANTIZED_FILE} if "int8" in result else {}),
            "inputs": inputs,
            "outputs": {"logits": ["batch", "num_labels"]},
            "id2label": {str(i): config.id2label[i] for i in sorted(config.id2label)},
            "preprocessing": preprocessing,
            "verification": result,
        },
    )


def summary(result: dict[str, Any]) -> list[str]:
    """The figures in words: the ONNX model against PyTorch, then the int8 model's accuracy change (if any)."""
    onnx = result["onnx"]
    lines = [
        f"verified with onnxruntime {result['onnxruntime']} against the PyTorch model on {result['rows']} rows of the "
        f"{result['split']} split ({result['data']}): top-1 agreement {onnx['top1_agreement']:.2%}, max |Δlogit| "
        f"{onnx['max_abs_logit_diff']:.2g} (tolerance {onnx['tolerance']:g})"
    ]
    if "int8" in result:
        int8 = result["int8"]
        lines.append(
            f"int8 (onnxruntime dynamic quantization): accuracy {int8['accuracy']:.4f} against "
            f"{result['pytorch_accuracy']:.4f} in PyTorch on the same rows ({int8['accuracy_change']:+.4f}), top-1 "
            f"agreement {int8['top1_agreement']:.2%}"
        )
    return lines


def card_section(result: dict[str, Any], output_dir: Path, example: str) -> str:
    """The model card's "## Export" section: where the ONNX files are and how well they reproduce PyTorch."""
    onnx_line, *int8_line = summary(result)
    lines = [
        _SECTION_START,
        "## Export",
        "",
        f"ONNX: `{ONNX_DIR}/{ONNX_MODEL_FILE}` (opset {result['opset']}, dynamic {result['axes']}), {onnx_line}.",
    ]
    if int8_line:
        lines += ["", f"`{ONNX_DIR}/{ONNX_QUANTIZED_FILE}`: {int8_line[0]}."]
    lines += [
        "",
        f"Labels, inputs and preprocessing: `{ONNX_DIR}/{ONNX_FIGURES_FILE}`. Run it with "
        f"`hf-finetune predict {output_dir} {example} --onnx`.",
        _SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def write_card_section(readme: Path, section: str) -> bool:
    """Put `section` in the card, replacing the one an earlier export wrote (the card is not re-rendered: its
    training facts come from files we never load again). False when the folder has no card."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    marked = re.compile(re.escape(_SECTION_START) + r".*?" + re.escape(_SECTION_END) + r"\n?", re.DOTALL)
    found = marked.search(text)
    before, after = (text[: found.start()], text[found.end() :]) if found else (text.rstrip("\n") + "\n\n", "")
    write_text_atomic(readme, before + section + after)
    return True


class OnnxClassifier:
    """An exported model in the place of the PyTorch one: called with the preprocessing's tensors, it answers with
    `.logits` (a tensor), and keeps the replaced model's configs (labels; text limits and segment ids, which are the
    encoder's — `base_model.config` — under a mean-pooling head), so `predict` runs unchanged on it."""

    def __init__(self, path: Path, model: PreTrainedModel, device: str | torch.device = "cpu"):
        self.session = session(path, device)
        self.config = model.config
        # a timm model's base_model is timm's own module, without a config
        self.base_model = _Configured(getattr(model.base_model, "config", model.config))

    def eval(self) -> OnnxClassifier:
        return self

    def __call__(self, **batch: Any) -> _Output:
        return _Output(torch.from_numpy(run_session(self.session, batch)))


@dataclass
class _Output:
    logits: torch.Tensor


@dataclass
class _Configured:
    config: PreTrainedConfig


def weights_fingerprint(output_dir: Path) -> str:
    """sha256 over the folder's PyTorch weight files: an export records the weights it was made from."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(output_dir.glob("model*.safetensors*")):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_exported(output_dir: Path, model: PreTrainedModel, device: str | torch.device = "cpu") -> OnnxClassifier:
    """The folder's verified export, refused when the PyTorch weights changed since (a run resumed in the folder)."""
    path = output_dir / ONNX_DIR / ONNX_MODEL_FILE
    if not path.is_file():
        raise HFFinetuneError(
            f"{output_dir} has no ONNX export ({ONNX_DIR}/{ONNX_MODEL_FILE}); run hf-finetune export {output_dir} first"
        )
    try:
        made_from = json.loads((output_dir / ONNX_DIR / ONNX_FIGURES_FILE).read_text(encoding="utf-8"))["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        made_from = None
    if made_from != weights_fingerprint(output_dir):
        raise HFFinetuneError(
            f"{output_dir / ONNX_DIR} was not exported from the model now in {output_dir} (its weights changed "
            f"since, or {ONNX_DIR}/{ONNX_FIGURES_FILE} is missing); run hf-finetune export {output_dir} again"
        )
    return OnnxClassifier(path, model, device)
