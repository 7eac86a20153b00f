"""FSDP on CPU: what runs and what is refused.

torch's FSDP2 (`fully_shard`) runs on CPU processes over gloo: two ranks shard a tiny ViT and a tiny BERT per block
(the shipped recipes/accelerate/fsdp.yaml's TRANSFORMER_BASED_WRAP, chosen by accelerate's own policy), each rank
holds about half the parameters, and the full state dict gathered to rank 0 equals one process's training. accelerate
(1.16) does not: on CPU an FSDP config becomes DistributedDataParallel (`AcceleratorState` picks FSDP only for GPU-like
distributed types), so `accelerate launch --config_file recipes/accelerate/fsdp.yaml` of the toolkit on CPU is one
clear refusal, before any data or model is loaded, instead of a crash on meta tensors or a quiet DDP run.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "recipes" / "accelerate" / "fsdp.yaml"
SCRIPT = Path(__file__).parent / "scripts" / "fsdp2_torch.py"
SYNC_SCRIPT = Path(__file__).parent / "scripts" / "fsdp2_sync.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"})
    return env


def _torch_fsdp(model_dir: Path, out: Path, processes: int) -> dict:
    # --standalone: a free rendezvous port, not torchrun's fixed 29500 that another test's processes may hold (a rank
    # of one group joining the other's aborted this test under pytest -n 2)
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    )
    command = [sys.executable, *launcher, str(SCRIPT), str(model_dir), str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit", "bert"])
def test_torch_fsdp2_shards_on_cpu_and_gathers_what_one_process_trains(
    model: str, tiny_vit_dir: Path, tiny_bert_dir: Path, tmp_path: Path
):
    model_dir = tiny_vit_dir if model == "vit" else tiny_bert_dir
    single = _torch_fsdp(model_dir, tmp_path / "single", 1)
    sharded = _torch_fsdp(model_dir, tmp_path / "sharded", 2)
    # the shipped config's wrap policy found the blocks the model names in `_no_split_modules`
    block = "ViTLayer" if model == "vit" else "BertLayer"
    assert block in sharded["blocks"]
    total = sharded["total"]
    ranks = sorted(sharded["ranks"], key=lambda r: r["rank"])
    # no full copy per rank: the ranks' shards add up to the model once, and each holds about half
    assert sum(r["local"] for r in ranks) == total
    assert all(0.4 * total < r["local"] < 0.6 * total for r in ranks), ranks
    assert single["ranks"][0]["local"] == total
    # FULL_STATE_DICT with cpu offload gathers to rank 0 only
    assert ranks[0]["keys"] > 0 and ranks[1]["keys"] == 0
    start = load_file(model_dir / "model.safetensors")
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "sharded" / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
    differ = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-2  # training changed the weights...
    assert differ < 1e-3, differ  # ...and two sharded ranks changed them as one process did


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit", "bert"])
def test_the_weight_check_repairs_each_ranks_own_shard_under_fsdp2(
    model: str, tiny_vit_dir: Path, tiny_bert_dir: Path, tmp_path: Path
):
    """The best-model and resume check (`sync_with_checkpoint`) on DTensor parameters: each rank compares and
    repairs only its shard (ViT: through transformers' renamed keys), and every rank hears the same list."""
    model_dir = tiny_vit_dir if model == "vit" else tiny_bert_dir
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SYNC_SCRIPT)]
    # as under the shipped config (cpu_ram_efficient_loading): transformers then leaves what a checkpoint lacks on
    # the meta device on every rank but 0; the reference each rank reads must still be the whole checkpoint
    env = {**_env(), "ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    proc = subprocess.run(
        [*command, str(model_dir), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # a tensor spoiled on rank 0 only and one on rank 1 only: both ranks are told of both
    assert [r["wrong"] for r in report["told"]] == [report["spoiled"]] * 2
    assert [r["again"] for r in report["told"]] == [[], []]  # repaired: a second check finds nothing
    assert report["worst"] == 0.0  # the gathered model equals the checkpoint


def _launch_fsdp(args: list[str]) -> subprocess.CompletedProcess:
    # the shipped file, unchanged; only what CPU cannot do is overridden on the command line (bf16 autocast)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(SHIPPED), "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", "0", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())


@pytest.mark.slow
def test_the_shipped_fsdp_config_on_cpu_is_one_clear_refusal_before_loading(text_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = text_recipe(training={"output_dir": str(out), "eval_strategy": "epoch", "load_best_model_at_end": True})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = _launch_fsdp(["-m", "hf_finetune", "train", str(path)])
    assert proc.returncode != 0
    codes = [int(c) for c in re.findall(r"exitcode\s+:\s+(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -15}, proc.stderr[-4000:]
    assert "accelerate launch with an FSDP config: FSDP needs GPUs" in proc.stderr
    assert "--multi_gpu" in proc.stderr  # what to do instead on CPU
    assert "meta tensor" not in proc.stderr and "hf_finetune/" not in proc.stderr  # no crash, no traceback
    assert "[hf_finetune] data:" not in proc.stderr  # refused before the data was read
    assert not out.exists()


def test_fsdp_refusal_names_where_fsdp_was_asked_for(text_recipe, tmp_path: Path):
    from hf_finetune.api import _refuse_fsdp_on_cpu
    from hf_finetune.errors import RecipeError
    from hf_finetune.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(text_recipe()))
    plain = load_recipe(path)
    _refuse_fsdp_on_cpu(plain, "cpu", {})  # no FSDP asked for: nothing to refuse
    _refuse_fsdp_on_cpu(plain, "cuda", {"ACCELERATE_USE_FSDP": "true"})  # FSDP on GPUs is accelerate's to run
    with pytest.raises(RecipeError, match="accelerate launch with an FSDP config: FSDP needs GPUs"):
        _refuse_fsdp_on_cpu(plain, "cpu", {"ACCELERATE_USE_FSDP": "true"})
    asked = load_recipe(path, ["training.fsdp=full_shard"])
    with pytest.raises(RecipeError, match=r"training\.fsdp: FSDP needs GPUs"):
        _refuse_fsdp_on_cpu(asked, "cpu", {})


def _blocks_accelerate_wraps(model, cls_to_wrap: str | None = None) -> set[str]:
    """The classes accelerate's own FSDP2 TRANSFORMER_BASED_WRAP policy gives a unit of their own in this model."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="TRANSFORMER_BASED_WRAP",
        transformer_cls_names_to_wrap=[cls_to_wrap] if cls_to_wrap else None,
    )
    # as accelerate's fsdp2_prepare_model does: the plugin first takes the model's block names, then the policy
    try:
        plugin.set_auto_wrap_policy(model)
    except ValueError as error:
        # accelerate 1.8 (the lowest pinned) raises on a `_no_split_modules` name the model lacks (TimmWrapper's
        # TimmWrapperModel) where later ones drop the name: either way no block gets a unit of its own
        assert "Could not find the transformer layer class" in str(error)
        return set()
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return {type(m).__name__ for m in model.modules() if m is not model and policy(m)}


FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}


@pytest.mark.parametrize(
    ("arch", "model_args", "block"),
    [("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, "Block"), ("resnet18", {}, "BasicBlock")],
)
def test_a_timm_model_under_transformer_based_wrap_is_refused_with_its_block_class(arch, model_args, block):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from hf_finetune.fsdp import wrap_problem

    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture=arch, num_labels=3, model_args=model_args))
    # the shipped config as it is: accelerate would wrap no block of a timm model, only the whole model
    assert _blocks_accelerate_wraps(model) == set()
    problem = wrap_problem(model, FSDP_ENV)
    assert f"--fsdp_transformer_layer_cls_to_wrap {block} " in problem
    assert "TimmWrapperModel" in problem and "TRANSFORMER_BASED_WRAP" in problem
    # the fix the message gives works: accelerate then wraps each block, and the toolkit lets the run go
    assert _blocks_accelerate_wraps(model, block) == {block}
    assert wrap_problem(model, {**FSDP_ENV, "FSDP_TRANSFORMER_CLS_TO_WRAP": block}) is None
    assert wrap_problem(model, {**FSDP_ENV, "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}) is None
    assert wrap_problem(model, {}) is None  # no FSDP, nothing to check


def test_transformers_models_that_name_their_blocks_pass_the_wrap_check():
    from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

    from hf_finetune.fsdp import wrap_problem

    bert = BertForSequenceClassification(
        BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    )
    vit = ViTForImageClassification(
        ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    )
    assert "BertLayer" in _blocks_accelerate_wraps(bert) and "ViTLayer" in _blocks_accelerate_wraps(vit)
    assert wrap_problem(bert, FSDP_ENV) is None and wrap_problem(vit, FSDP_ENV) is None


def test_the_run_refuses_a_wrap_that_shards_nothing_as_a_recipe_error():
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from hf_finetune.api import _refuse_fsdp_that_shards_nothing
    from hf_finetune.errors import RecipeError

    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet18", num_labels=3))
    _refuse_fsdp_that_shards_nothing(model, {})
    with pytest.raises(RecipeError, match="--fsdp_transformer_layer_cls_to_wrap BasicBlock"):
        _refuse_fsdp_that_shards_nothing(model, FSDP_ENV)


def test_metrics_and_card_say_how_the_processes_shared_the_model(tiny_recipe, tmp_path: Path):
    from hf_finetune.fsdp import parallelism
    from hf_finetune.recipe import load_recipe
    from tests.test_card import _run, _split, _write

    assert parallelism(1, [], FSDP_ENV) is None  # one process shares nothing
    assert parallelism(2, [], FSDP_ENV) == "FSDP"
    assert parallelism(2, ["full_shard"], {}) == "FSDP"  # training.fsdp
    assert parallelism(2, [], {}) == "DDP"
    recipe = load_recipe(tiny_recipe())
    results = {"train": {"train_loss": 0.5}, "eval": _split(0.8, 0.8, 9), "test": _split(0.7, 0.6, 30)}
    hardware = {"device": "8× NVIDIA H100", "processes": 8, "parallelism": "FSDP", "precision": "bf16"}
    text = _write(recipe.output_dir, recipe, results, _run(hardware=hardware)).content
    assert "- hardware: 8× NVIDIA H100, 8 process(es) (FSDP)" in text
    single = {"device": "CPU (x86_64, 2 cores)", "processes": 1, "parallelism": None, "precision": "fp32"}
    text = _write(tmp_path / "one", recipe, results, _run(hardware=single)).content
    assert "- hardware: CPU (x86_64, 2 cores), 1 process(es)\n" in text


@pytest.mark.slow
def test_what_the_refusal_advises_on_cpu_runs_and_is_recorded_as_ddp(text_recipe, tmp_path: Path):
    out = tmp_path / "ddp"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(text_recipe(training={"num_train_epochs": 1, "output_dir": str(out)})))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", "0", "-m", "hf_finetune", "train", str(path),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    hardware = json.loads((out / "metrics.json").read_text())["run"]["hardware"]
    assert hardware["processes"] == 2 and hardware["parallelism"] == "DDP"
    assert "2 process(es) (DDP)" in (out / "README.md").read_text()
