"""FSDP2 (torch's `fully_shard`) on CPU processes over gloo, wrapped and sharded the way the shipped
recipes/accelerate/fsdp.yaml asks, for a saved transformers model folder; or the same steps in one plain process.

    torchrun --nproc_per_node 2 fsdp2_torch.py MODEL_DIR OUT_DIR [STEPS]     # sharded
    python fsdp2_torch.py MODEL_DIR OUT_DIR [STEPS]                          # one process, no sharding: the reference

accelerate does not run FSDP on CPU (see api._refuse_fsdp_on_cpu), so this drives torch directly, using
accelerate's own plugin (from the shipped config's fsdp_config) and its TRANSFORMER_BASED_WRAP policy to choose the
blocks. Each rank trains on its half of every batch; rank 0 writes the gathered full state dict (torch's
`get_model_state_dict(full_state_dict=True, cpu_offload=True)`, which FULL_STATE_DICT maps to) and a JSON report.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "accelerate" / "fsdp.yaml"
STEPS, BATCH = 3, 8


def _batches(model, steps: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        labels = torch.randint(0, model.config.num_labels, (BATCH,), generator=gen)
        if "pixel_values" in model.main_input_name:
            size = model.config.image_size
            out.append({"pixel_values": torch.randn(BATCH, 3, size, size, generator=gen), "labels": labels})
        else:
            ids = torch.randint(5, model.config.vocab_size, (BATCH, 12), generator=gen)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def _shard(model) -> list[str]:
    """fully_shard every block the shipped config's wrap policy picks, then the root (accelerate's order)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import fully_shard

    settings = load_config_from_file(str(CONFIG)).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=settings["fsdp_version"],
        auto_wrap_policy=settings["fsdp_auto_wrap_policy"],
        reshard_after_forward=settings["fsdp_reshard_after_forward"],
        state_dict_type=settings["fsdp_state_dict_type"],
    )
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    blocks = [m for m in model.modules() if m is not model and policy(m)]
    names = sorted({type(b).__name__ for b in blocks})  # before fully_shard renames the classes FSDP<name>
    for block in blocks:
        fully_shard(block, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, reshard_after_forward=plugin.reshard_after_forward)
    return names


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else STEPS
    sharded = "WORLD_SIZE" in os.environ
    if sharded:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if sharded else 0
    world = torch.distributed.get_world_size() if sharded else 1
    config = AutoConfig.from_pretrained(model_dir)
    # no dropout: the sharded and the single-process runs must see the same function
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        setattr(config, key, 0.0)
    auto = AutoModelForImageClassification if config.model_type == "vit" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir, config=config)
    model.train()
    total = sum(p.numel() for p in model.parameters())
    blocks = _shard(model) if sharded else []
    # a sharded parameter is a DTensor; `to_local()` is the part this rank stores
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    batches = _batches(model, steps)
    started = time.perf_counter()
    for batch in batches:
        part = {k: v.chunk(world)[rank] for k, v in batch.items()}
        loss = model(**part).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    # what this rank stores of the parameters and AdamW's two moments (sharded like the parameters)
    local_bytes = sum(
        (t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size()
        for p in model.parameters()
        for t in [p, *optimizer.state[p].values()]
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        gathered = [None] * world
        mine = {"rank": rank, "local": local, "keys": len(full), "seconds": seconds, "local_bytes": local_bytes}
        torch.distributed.all_gather_object(gathered, {**mine, "peak_rss_kib": _peak_rss()})
    else:
        mine = {"rank": 0, "local": local, "keys": -1, "seconds": seconds, "local_bytes": local_bytes}
        full, gathered = model.state_dict(), [{**mine, "peak_rss_kib": _peak_rss()}]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()}, out / "model.safetensors")
        report = {"total": total, "world": world, "blocks": blocks, "ranks": gathered, "losses": losses}
        (out / "report.json").write_text(json.dumps(report))
    if sharded:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
