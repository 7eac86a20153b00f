"""The toolkit's weight check (`sync_with_checkpoint`: best model, resume) on an FSDP2-sharded model, two CPU ranks.

    torchrun --nproc_per_node 2 fsdp2_sync.py MODEL_DIR OUT_DIR

Shards the model as fsdp2_torch.py does, spoils some of each rank's own shard (a tensor on rank 0 only, another on
rank 1 only: what a partial restore leaves), runs the check, and has rank 0 write a JSON report with what each rank
was told had differed and how far the gathered model is from the checkpoint afterwards.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fsdp2_torch import _shard


def main() -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    from hf_finetune.models.weights import sync_with_checkpoint

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    vit = AutoConfig.from_pretrained(model_dir).model_type == "vit"
    auto = AutoModelForImageClassification if vit else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir)
    _shard(model)
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    spoiled = {0: names[1], 1: names[-1]}
    with torch.no_grad():
        dict(model.named_parameters())[spoiled[rank]].to_local().add_(1.0)
    wrong = sync_with_checkpoint(model, model_dir)
    again = sync_with_checkpoint(model, model_dir)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    told = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(told, {"rank": rank, "wrong": wrong, "again": again})
    if rank == 0:
        reference = auto.from_pretrained(model_dir).state_dict()
        worst = max((full[k] - reference[k]).abs().max().item() for k in reference if k in full)
        out.mkdir(parents=True, exist_ok=True)
        report = {"spoiled": sorted(spoiled.values()), "told": told, "worst": worst, "keys": len(full)}
        (out / "report.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
