"""FSDP2 on CPU (two gloo processes) against one plain process: what each process stores, and whether the sharded run
trains the same weights. The toolkit itself does not run FSDP on CPU (accelerate does not shard there; see the
README), so this drives torch's `fully_shard` through tests/scripts/fsdp2_torch.py, wrapped per block by
accelerate's TRANSFORMER_BASED_WRAP policy from the shipped recipes/accelerate/fsdp.yaml.

    python benchmarks/fsdp.py                       # quick: ViT and BERT, hidden 128, 4 layers, 5 steps
    python benchmarks/fsdp.py --hidden 256 --layers 6 --steps 10

Per model: parameters in all and per rank; the bytes a rank stores for its parameters and AdamW's two moments
(fp32); peak RSS per process (ru_maxrss: the torch runtime dominates at these sizes, so it shows little); the step
loop's wall time (one run each, next to each other: a rough ratio on a shared machine); and the largest weight
difference between the sharded and the single-process result after the same steps on the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

SCRIPT = _common.REPO / "tests" / "scripts" / "fsdp2_torch.py"


def _build(kind: str, folder: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    shape = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 4}
    shape["intermediate_size"] = 4 * hidden
    if kind == "vit":
        model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, num_labels=5, **shape))
    else:
        model = BertForSequenceClassification(BertConfig(vocab_size=1000, num_labels=3, **shape))
    model.save_pretrained(folder)


def _run(model_dir: Path, out: Path, processes: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    launcher = torchrun if processes > 1 else []
    command = [sys.executable, *launcher, str(SCRIPT), str(model_dir), str(out), str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-6000:])
    return {**json.loads((out / "report.json").read_text()), "load_1min": os.getloadavg()[0]}


def _largest_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((x[k] - y[k]).abs().max().item() for k in x)


def main(argv: list[str] | None = None) -> None:
    _common.set_environment()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", type=Path, default=_common.RESULTS_DIR / "fsdp_cpu")
    args = parser.parse_args(argv)
    rows, payload = [], {"settings": _common.settings(args), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("vit", "bert"):
            model_dir = Path(tmp) / kind
            _build(kind, model_dir, args.hidden, args.layers)
            single = _run(model_dir, Path(tmp) / f"{kind}-1", 1, args.steps)
            sharded = _run(model_dir, Path(tmp) / f"{kind}-2", 2, args.steps)
            diff = _largest_difference(Path(tmp) / f"{kind}-1", Path(tmp) / f"{kind}-2")
            payload["models"][kind] = {"single": single, "sharded": sharded, "max_abs_weight_diff": diff}
            one, ranks = single["ranks"][0], sorted(sharded["ranks"], key=lambda r: r["rank"])
            mib = [f"{r['local_bytes'] / 2**20:.2f}" for r in ranks]
            rss = [f"{r['peak_rss_kib'] / 1024:.0f}" for r in ranks]
            held = " / ".join(f"{r['local']:,}" for r in ranks)
            rows.append(
                f"| {kind} ({', '.join(sharded['blocks'])}) | {sharded['total']:,} | "
                f"{held} | {one['local_bytes'] / 2**20:.2f} → "
                f"{' / '.join(mib)} | {one['peak_rss_kib'] / 1024:.0f} → {' / '.join(rss)} | "
                f"{one['seconds']:.2f} → {ranks[0]['seconds']:.2f} ({ranks[0]['seconds'] / one['seconds']:.2f}) | "
                f"{diff:.1e} | {single['load_1min']:.1f} / {sharded['load_1min']:.1f} |"
            )
    machine = _common.machine_info(["torch", "transformers", "accelerate"])
    payload["machine"], payload["git"] = machine, _common.git_state()
    page = [
        "# FSDP2 on CPU: two gloo processes against one (torch fully_shard, the shipped fsdp.yaml's wrap policy)",
        "",
        f"`{_common.command_line('fsdp.py', argv if argv is not None else sys.argv[1:])}`: ViT (32 px, patch 4) and "
        f"BERT (vocab 1000, 12 tokens) with hidden {args.hidden}, {args.layers} layers; {args.steps} AdamW steps "
        "(lr 1e-2) on the same batches of 8, each rank taking its half; dropout off. Each cell: one process → "
        "rank 0 / rank 1.",
        "",
        "| model (blocks wrapped) | parameters | parameters per rank | params + AdamW moments MiB | peak RSS MiB | "
        "step loop s (ratio) | max abs weight diff | 1-min load (1 proc / 2 procs) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "- What is sharded: each rank stores about half of every parameter and of AdamW's moments; rank 0 alone gets "
        "the gathered full state dict (FULL_STATE_DICT, CPU offload). Peak RSS is the torch runtime plus the "
        "model at these sizes, so its halving is not visible; the sharded bytes are.",
        "- Time: one run each, side by side, on a shared 2-core machine: a rough ratio only (gloo all-gathers each "
        "block's weights in forward and backward and reduce-scatters its gradients).",
        *_common.machine_lines(machine, ["torch", "transformers", "accelerate"]),
        f"- code: {_common.describe_git(payload['git'])}",
        "",
    ]
    for path in _common.write_results(args.output, payload, page):
        print(path)


if __name__ == "__main__":
    main()
