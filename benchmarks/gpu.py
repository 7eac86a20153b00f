"""GPU training throughput: the toolkit against timm's own train.py on the same model, batch and images; BERT-base.

For each model (ResNet-50 and ViT-B/16 from timm, random init, 224 px) and each precision (bf16 autocast, fp32),
both train for the same number of steps at the same batch size on the same generated image folder (random-noise JPEGs
in class folders, written once), with the same DataLoader worker count:

  toolkit   `hf_finetune.finetune` with a recipe (model timm:<arch>, model.pretrained false, training.bf16 for bf16,
            training.torch_compile with --compile), timed by a callback: images/s of each step (batch / seconds from
            one step's end to the next), median over the steps after --warmup. With --channels-last the callback
            converts the model to channels_last before training (the recipe has no such setting; inputs stay NCHW
            and convolutions run channels_last, as PyTorch propagates the weights' layout)
  timm      timm's train.py (fetched from the pytorch-image-models repository, or --timm-train PATH) with --amp
            --amp-dtype bfloat16 for bf16, --channels-last, --torchcompile inductor with --compile, --val-split ''
            (no evaluation): images/s as train.py logs it every --log-interval updates, median after the first log

and the ratio toolkit / timm (target >= 0.95). Then BERT-base (random init from BertConfig(), a word-level tokenizer
built here, every text 128 tokens) through the toolkit: tokens/s = batch × 128 / step seconds, median after warm-up.

    python benchmarks/gpu.py                 # on a GPU: resnet50 + vit_base_patch16_224, bf16 + fp32, ~5 min on an H200
    python benchmarks/gpu.py --compile       # the same with torch.compile on both sides
    python benchmarks/gpu.py --smoke         # timm's test models, tiny batches on CPU: proves it runs, measures nothing

Writes benchmarks/results/gpu.md/.json (gpu_smoke.* with --smoke), with the 1-minute load average beside every run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

_common.set_environment()

PACKAGES = ("torch", "transformers", "timm", "accelerate")
TIMM_TRAIN_URL = "https://raw.githubusercontent.com/huggingface/pytorch-image-models/main/train.py"
MODELS = ("resnet50", "vit_base_patch16_224")
SMOKE_MODELS = ("test_resnet", "test_vit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--timm-train", type=Path, help="a local copy of timm's train.py (default: fetch it)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "hf_finetune_gpu_bench")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=60, help="training steps per run (both sides)")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers (both sides)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile on both sides")
    p.add_argument("--bert-batch", type=int, default=64)
    p.add_argument("--skip-bert", action="store_true")
    p.add_argument("--smoke", action="store_true", help="timm's test models, 160 px, batch 4, 6 steps, on CPU")
    p.add_argument("--results", type=Path, default=_common.RESULTS_DIR / "gpu")
    args = p.parse_args(argv)
    if args.smoke:
        args.models = ",".join(SMOKE_MODELS)
        # 160 px: the test models' own input size (timm's train.py does not pass --img-size to the model)
        args.image_size, args.batch, args.steps, args.warmup, args.workers = 160, 4, 6, 2, 1
        args.bert_batch = 4
        args.results = args.results.with_name(args.results.name + "_smoke")
    return args


# --------------------------------------------------------------------------------------------- inputs


def timm_train_script(args: argparse.Namespace) -> tuple[Path, str]:
    if args.timm_train:
        return args.timm_train.resolve(), f"local copy {args.timm_train} (--timm-train)"
    path = _common.fetch_once(TIMM_TRAIN_URL, args.cache_dir / "timm_train.py", "pass --timm-train PATH")
    return path, TIMM_TRAIN_URL


def image_folder(root: Path, images: int, side: int, classes: int = 4) -> Path:
    """train/ and validation/ class folders of random-noise JPEGs (`side` px), written once."""
    import numpy as np
    from PIL import Image

    folder = root / f"noise-{images}-{side}px"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("validation", max(classes, images // 16))):
        for i in range(n):
            out = folder / split / f"class{i % classes}" / f"{i:06d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, quality=90)
    (folder / ".done").write_text("")
    return folder


def bert_folder(root: Path, smoke: bool) -> Path:
    """A random-init BERT (BertConfig() defaults: BERT-base; tiny with --smoke) and a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = root / ("bert-tiny" if smoke else "bert-base")
    if (folder / "config.json").is_file():
        return folder
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(1000)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    fast.save_pretrained(folder)
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    config = BertConfig(vocab_size=len(vocab), num_labels=2, **(sizes if smoke else {}))
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def text_file(root: Path, rows: int) -> Path:
    """A CSV of `rows` texts of exactly 126 words (128 tokens with [CLS] and [SEP]) and a 0/1 label."""
    import csv
    import random

    path = root / f"texts-{rows}.csv"
    if path.is_file():
        return path
    rng = random.Random(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(rows):
            writer.writerow([" ".join(f"w{rng.randrange(1000)}" for _ in range(126)), i % 2])
    return path


# --------------------------------------------------------------------------------------------- the toolkit


def step_timer(warmup: int, channels_last: bool) -> tuple[Any, list[float]]:
    """A callback recording each step's end time (synchronising CUDA), and converting the model to channels_last."""
    import torch
    from transformers import TrainerCallback

    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if channels_last and model is not None:
                model.to(memory_format=torch.channels_last)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    return StepTimer(), ends


def per_step_rates(ends: list[float], per_step: float, warmup: int) -> list[float]:
    return [per_step / (b - a) for a, b in zip(ends[warmup:], ends[warmup + 1 :], strict=False)]


def toolkit_run(args: argparse.Namespace, recipe: dict[str, Any], per_step: float) -> dict[str, Any]:
    import hf_finetune

    timer, ends = step_timer(args.warmup, args.channels_last and recipe["task"] == "image-classification")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    hf_finetune.finetune(recipe, callbacks=[timer])
    rates = per_step_rates(ends, per_step, args.warmup)
    return {"per_s": statistics.median(rates), "steps": len(ends), "wall_s": time.perf_counter() - start, "load": load}


def image_recipe(args: argparse.Namespace, arch: str, precision: str, data: Path, out: Path) -> dict[str, Any]:
    training: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "per_device_eval_batch_size": args.batch,
        "learning_rate": 1e-3,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_strategy": "no",
        "dataloader_num_workers": args.workers,
        "bf16": precision == "bf16",
        "seed": 0,
    }
    if args.compile:
        training["torch_compile"] = True
    return {
        "task": "image-classification",
        "model": {"name": f"timm:{arch}", "pretrained": False, "image_size": args.image_size},
        "data": {"source": str(data), "duplicates": "off"},
        "training": training,
    }


# --------------------------------------------------------------------------------------------- timm's train.py

_RATE = re.compile(r"Train: .*?([\d.]+)/s")


def timm_run(args: argparse.Namespace, script: Path, arch: str, precision: str, data: Path, out: Path) -> dict:
    import torch

    log_interval = max(1, (args.steps - args.warmup) // 10)
    command = [
        sys.executable, str(script), "--data-dir", str(data), "--model", arch, "--num-classes", "4",
        "--img-size", str(args.image_size), "-b", str(args.batch), "--epochs", "1", "--val-split", "",
        "--workers", str(args.workers), "--log-interval", str(log_interval), "--opt", "adamw", "--lr", "1e-3",
        "--warmup-epochs", "0", "--output", str(out), "--seed", "0",
    ]  # fmt: skip
    if precision == "bf16":
        command += ["--amp", "--amp-dtype", "bfloat16"]
    if args.channels_last:
        command.append("--channels-last")
    if args.compile:
        command += ["--torchcompile", "inductor"]
    if not torch.cuda.is_available():
        command += ["--device", "cpu", "--no-prefetcher"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    log = done.stdout + done.stderr
    (out.parent / f"{out.name}.log").write_text(log)
    if done.returncode:
        raise SystemExit(f"timm train.py exited {done.returncode}:\n{log[-3000:]}")
    rates = [float(r) for r in _RATE.findall(log)][1:]  # the first log includes start-up
    if not rates:
        raise SystemExit(f"no throughput lines in timm's log:\n{log[-2000:]}")
    return {"per_s": statistics.median(rates), "logs": len(rates), "wall_s": time.perf_counter() - start, "load": load}


# --------------------------------------------------------------------------------------------- report


def markdown(args: argparse.Namespace, payload: dict[str, Any]) -> list[str]:
    lines = [
        "# GPU throughput: the toolkit vs timm's train.py; BERT-base"
        + (" (SMOKE: not a measurement)" if args.smoke else ""),
        "",
        f"- command: `{payload['command']}`",
        f"- device: {payload['device']}",
        f"- timm train.py: {payload['timm_train']}",
        f"- settings: {args.image_size} px, batch {args.batch}, {args.steps} steps (median after {args.warmup}), "
        f"{args.workers} workers, channels_last {args.channels_last}, torch.compile {args.compile}",
        *_common.machine_lines(payload["machine"], PACKAGES),
        f"- code: {_common.describe_git(payload['git'])}",
        "",
        "| model | precision | toolkit images/s | timm images/s | toolkit / timm | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["images"]:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['toolkit']['per_s']:.1f} | {r['timm']['per_s']:.1f} | "
            f"{r['ratio']:.3f} | {r['toolkit']['load']:.2f} / {r['timm']['load']:.2f} |"
        )
    if payload.get("bert"):
        b = payload["bert"]
        lines += ["", f"BERT ({b['model']}), 128 tokens per row, batch {args.bert_batch}:", ""]
        for precision, r in b["runs"].items():
            lines.append(f"- {precision}: {r['per_s']:.0f} tokens/s (load {r['load']:.2f})")
    lines += ["", "Target: toolkit / timm >= 0.95."]
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU; --smoke checks that it runs on CPU")
    script, where = timm_train_script(args)
    data = image_folder(args.cache_dir, args.batch * args.steps, args.image_size + args.image_size // 7)
    work = Path(tempfile.mkdtemp(dir=args.cache_dir, prefix="runs-"))
    images = []
    for arch in args.models.split(","):
        for precision in args.precisions.split(","):
            name = f"{arch}-{precision}"
            tk = toolkit_run(args, image_recipe(args, arch, precision, data, work / f"toolkit-{name}"), args.batch)
            tm = timm_run(args, script, arch, precision, data, work / f"timm-{name}")
            images.append(
                {"model": arch, "precision": precision, "toolkit": tk, "timm": tm, "ratio": tk["per_s"] / tm["per_s"]}
            )
            print(f"{name}: toolkit {tk['per_s']:.1f}/s, timm {tm['per_s']:.1f}/s, ratio {images[-1]['ratio']:.3f}")
    bert = None
    if not args.skip_bert:
        folder, rows = bert_folder(args.cache_dir, args.smoke), args.bert_batch * args.steps
        csv = text_file(args.cache_dir, rows + rows // 8 + args.bert_batch)  # 10% is carved off as validation
        bert = {"model": "bert-tiny (smoke)" if args.smoke else "bert-base-uncased layout, random init", "runs": {}}
        for precision in args.precisions.split(","):
            recipe = {
                "task": "text-classification",
                "model": {"name": str(folder)},
                "data": {"files": {"train": str(csv)}, "validation_size": 0.1, "duplicates": "off"},
                "tokenization": {"padding": "max_length", "max_length": 128},
                "training": {
                    **image_recipe(args, "", precision, data, work / f"bert-{precision}")["training"],
                    "per_device_train_batch_size": args.bert_batch,
                    "per_device_eval_batch_size": args.bert_batch,
                    "learning_rate": 5e-5,
                },
            }
            bert["runs"][precision] = toolkit_run(args, recipe, args.bert_batch * 128)
            print(f"bert {precision}: {bert['runs'][precision]['per_s']:.0f} tokens/s")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({_common.cpu_name()})"
    payload = {
        "command": _common.command_line("gpu.py", sys.argv[1:] if argv is None else argv),
        "device": device,
        "timm_train": where,
        "settings": _common.settings(args),
        "machine": _common.machine_info(PACKAGES),
        "git": _common.git_state(),
        "images": images,
        "bert": bert,
    }
    lines = markdown(args, payload)
    md, js = _common.write_results(args.results, payload, lines)
    print("\n".join(lines))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
