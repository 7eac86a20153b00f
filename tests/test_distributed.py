"""accelerate/torch.distributed runs on CPU (gloo), resume after SIGKILL, and stopping on SIGTERM.

Two ranks on CPU need `accelerate launch --multi_gpu --num_processes 2` (or torchrun): `--cpu --num_processes 2`
silently starts a single process.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "run_recipe.py"
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # one thread per rank: two ranks on two cores must not fight over threads
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"})
    return env


def _launch(args: list[str], processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env())


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_two_ranks_train_disjoint_shards_and_one_writes(tiny_recipe, tmp_path: Path):
    recipe = tiny_recipe(
        training={
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "eval_strategy": "no",  # recording stops at the end of training; no evaluation batches before that
            "output_dir": str(tmp_path / "out"),
        }
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    path = _write(recipe, tmp_path / "r.yaml")
    single = tmp_path / "single"
    single.mkdir()
    alone = _run([str(SCRIPT), str(path), f"training.output_dir={tmp_path / 'alone'}", "--record-shards", str(single)])
    assert alone.returncode == 0, alone.stderr[-4000:]
    everything = json.loads((single / "rank0.json").read_text())
    assert len(everything) == 81  # the training split after the validation rows were set aside

    proc = _launch([str(SCRIPT), str(path), "--record-shards", str(shards)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = json.loads((shards / "rank0.json").read_text())
    rank1 = json.loads((shards / "rank1.json").read_text())
    # together they cover the data once; each rank's last batch is topped up with repeats to stay even
    assert set(rank0) | set(rank1) == set(everything)
    assert len(rank0) == len(rank1) < len(everything)
    repeats = len(rank0) + len(rank1) - len(everything)
    assert len(set(rank0) & set(rank1)) <= repeats
    log = proc.stderr
    assert log.count("distributed: 2 processes") == 1
    assert "per-device batch 8, global batch 16" in log
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["hardware"]["processes"] == 2


def test_two_rank_text_run(text_recipe, tmp_path: Path):
    out = tmp_path / "text"
    recipe = _write(text_recipe(training={"num_train_epochs": 1, "output_dir": str(out)}), tmp_path / "t.yaml")
    proc = _launch(["-m", "hf_finetune", "train", str(recipe)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "metrics.json").read_text())["test"]["num_samples"] == 30


def test_lp_ft_under_two_ranks_is_refused_before_any_data_is_loaded(tiny_recipe, tmp_path: Path):
    """A refusal that needs only the recipe and the process count comes first: here the data folder does not even
    exist, and the user still hears about lp_ft (not about the data, after minutes of loading), and nothing is
    written."""
    out = tmp_path / "lp_ft"
    recipe = tiny_recipe(transfer={"strategy": "lp_ft"}, training={"output_dir": str(out)})
    recipe["data"]["source"] = str(tmp_path / "no such folder")
    proc = _launch(["-m", "hf_finetune", "train", str(_write(recipe, tmp_path / "r.yaml"))])
    assert proc.returncode != 0
    # the first rank out ends with the CLI's bad-input status; the launcher may SIGTERM the other one (-15) while it
    # is still on its way out with the same error
    codes = [int(c) for c in re.findall(r"exitcode\s+:\s+(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -15}, proc.stderr[-4000:]
    assert "error: 1 problem in the recipe" in proc.stderr
    assert "transfer.strategy lp_ft" in proc.stderr and "DistributedDataParallel" in proc.stderr
    assert "no such folder" not in proc.stderr and "hf_finetune/" not in proc.stderr  # no data error, no traceback
    assert not out.exists()


def test_distributed_evaluation_counts_every_sample_once(tiny_recipe, tmp_path: Path):
    from hf_finetune import evaluate

    out = tmp_path / "out"
    recipe = tiny_recipe(training={"num_train_epochs": 1, "output_dir": str(out)})
    assert _run([str(SCRIPT), str(_write(recipe, tmp_path / "r.yaml"))]).returncode == 0
    single = evaluate(out, split="validation", batch_size=4)
    assert single["num_samples"] == 9  # odd: the last batch of each rank is padded by the sampler
    proc = _launch(["-m", "hf_finetune", "eval", str(out), "--split", "validation", "--batch-size", "4"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    distributed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert distributed["num_samples"] == 9
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed["per_class"] == single["per_class"]
    assert distributed["accuracy"] == pytest.approx(single["accuracy"])


def test_reported_loss_is_the_mean_loss_under_two_ranks(tiny_recipe, tiny_vit_dir: Path, tmp_path: Path):
    # learning rate 0: the model never changes, so the epoch's mean training loss must not depend on the ranks
    def run(processes: int) -> float:
        out = tmp_path / f"p{processes}"
        recipe = tiny_recipe(
            model={"name": str(tiny_vit_dir), "config": {}},
            data={"max_train_samples": 80},
            training={
                "num_train_epochs": 1,
                "learning_rate": 0.0,
                "per_device_train_batch_size": 20 // processes,
                "output_dir": str(out),
                "seed": 3,
            },
        )
        path = _write(recipe, tmp_path / f"r{processes}.yaml")
        proc = (
            _launch(["-m", "hf_finetune", "train", str(path)], processes)
            if processes > 1
            else _run([str(SCRIPT), str(path)])
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads((out / "metrics.json").read_text())["train"]["train_loss"]

    assert run(2) == pytest.approx(run(1), rel=1e-4)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _resume_recipe(base: dict, tmp_path: Path, name: str, **training) -> Path:
    # the shipped recipes' default: random augmentation on (here `strong`: random-resized crop, flip, RandAugment,
    # random erasing, and mixup/CutMix drawn from numpy in the training step), dataloader workers on, dropout on
    base["augmentation"] = {"preset": "strong"}
    base["training"].update(
        {
            "num_train_epochs": 2,
            "save_strategy": "steps",
            "save_steps": 4,
            "eval_strategy": "epoch",
            "dataloader_num_workers": 2,
            "output_dir": str(tmp_path / name),
            "seed": 11,
            **training,
        }
    )
    return _write(base, tmp_path / f"{name}.yaml")


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = _weights(a_dir), _weights(b_dir)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, f"resumed weights differ from the uninterrupted run by up to {worst}"
    ma = json.loads((a_dir / "metrics.json").read_text())
    mb = json.loads((b_dir / "metrics.json").read_text())
    assert ma["test"]["accuracy"] == mb["test"]["accuracy"]
    assert ma["test"]["loss"] == pytest.approx(mb["test"]["loss"], rel=1e-5)


def test_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(tiny_recipe, tiny_vit_dir: Path, tmp_path: Path):
    # a ViT (whose renamed tensors Trainer's own restore leaves alone) with dropout; 81 rows, batch 16: 6 steps an
    # epoch, checkpoints at 4, 8, 12; killed after step 9, so the resume restarts 2 steps into the second epoch
    def recipe(name: str) -> Path:
        base = tiny_recipe(model={"name": str(tiny_vit_dir), "config": {"hidden_dropout_prob": 0.1}})
        return _resume_recipe(base, tmp_path, name)

    straight = _run([str(SCRIPT), str(recipe("straight"))])
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    killed = _run([str(SCRIPT), str(recipe("killed")), "--kill-at", "9"])
    assert killed.returncode == -9
    assert (out / "checkpoint-8" / "hf_finetune_complete.json").is_file()
    # a checkpoint half-written when the process died must never be resumed from
    (out / "checkpoint-9").mkdir()
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"\0" * 10)

    resumed = _run([str(SCRIPT), str(out / "recipe.yaml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from" in resumed.stderr and "checkpoint-8" in resumed.stderr
    assert (out / "incomplete-checkpoint-9").is_dir()
    assert "resume: weights verified against checkpoint-8" in resumed.stderr
    # the ViT case: Trainer's own restore leaves the renamed tensors alone; the toolkit repairs them
    assert "resume: Trainer left" in resumed.stderr
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert 1 < state["epoch"] < 2  # mid-epoch: the resumed run skips the second epoch's first two batches
    _assert_same_weights(tmp_path / "straight", out)


def test_a_cached_run_resumed_after_sigkill_matches_an_uninterrupted_uncached_run(tiny_recipe, tmp_path: Path):
    # data.cache: decoded must change where the pixels come from, not which: the killed and resumed run reads every
    # image from the decoded cache (workers on, strong augmentation seeded per row) and ends with the weights of a
    # straight run that decodes the files every epoch
    def recipe(name: str, cache: str) -> Path:
        base = tiny_recipe()
        base["data"]["cache"] = cache
        return _resume_recipe(base, tmp_path, name)

    straight = _run([str(SCRIPT), str(recipe("straight", "off"))])
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    killed = _run([str(SCRIPT), str(recipe("killed", "decoded")), "--kill-at", "9"])
    assert killed.returncode == -9
    resumed = _run([str(SCRIPT), str(out / "recipe.yaml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-8" in resumed.stderr and "cache: decoded" in (out / "recipe.yaml").read_text()
    _assert_same_weights(tmp_path / "straight", out)


def test_two_rank_resume_after_sigkill_mid_epoch_matches_an_uninterrupted_run(tiny_recipe, tmp_path: Path):
    # simple_cnn (BatchNorm, dropout); 81 rows over 2 ranks, batch 8: 5 steps an epoch, so checkpoint-8 is 3 steps
    # into the second epoch; only rank 0 is killed, after step 9, and the launcher takes rank 1 down with it
    def recipe(name: str) -> Path:
        return _resume_recipe(tiny_recipe(), tmp_path, name, per_device_train_batch_size=8)

    straight = _launch([str(SCRIPT), str(recipe("straight"))])
    assert straight.returncode == 0, straight.stderr[-4000:]
    out = tmp_path / "killed"
    killed = _launch([str(SCRIPT), str(recipe("killed")), "--kill-at", "9"])
    assert killed.returncode != 0
    assert (out / "checkpoint-8" / "hf_finetune_complete.json").is_file()
    resumed = _launch([str(SCRIPT), str(out / "recipe.yaml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "continuing from" in resumed.stderr and "checkpoint-8" in resumed.stderr
    assert (out / "checkpoint-8" / "rng_state_1.pth").is_file()
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert 1 < state["epoch"] < 2
    assert json.loads((out / "metrics.json").read_text())["run"]["hardware"]["processes"] == 2
    _assert_same_weights(tmp_path / "straight", out)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(
        tiny_recipe(training={"num_train_epochs": 3, "output_dir": str(out), "save_strategy": "epoch"}),
        tmp_path / "r.yaml",
    )
    proc = _run([str(SCRIPT), str(recipe), "--term-at", "2"])
    assert proc.returncode == 128 + 15, proc.stderr[-3000:]
    assert "stopped by SIGTERM at step 2" in proc.stderr and "--resume" in proc.stderr
    assert (out / "checkpoint-2" / "hf_finetune_complete.json").is_file()
    assert not (out / "metrics.json").exists()
    resumed = _run([str(SCRIPT), str(out / "recipe.yaml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads(
        sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert state["epoch"] == pytest.approx(3.0)
    assert (out / "metrics.json").is_file()


def test_resume_without_checkpoint_is_a_clear_error(tiny_recipe, tmp_path: Path, capsys):
    from hf_finetune.cli import main

    recipe = _write(tiny_recipe(), tmp_path / "r.yaml")
    assert main(["train", str(recipe), "--resume"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_shipped_accelerate_configs_parse_and_are_not_recipes():
    from accelerate.commands.config.config_args import load_config_from_file

    from hf_finetune.recipe import accelerate_configs, list_recipes

    configs = accelerate_configs()
    assert set(configs) == {"single_gpu", "multi_gpu_ddp", "fsdp", "two_machines"}
    assert not set(configs) & set(list_recipes())
    for name, path in configs.items():
        loaded = load_config_from_file(str(path))
        assert "accelerate launch --config_file recipes/accelerate/" in path.read_text(), name
        assert loaded.mixed_precision == "bf16"
    assert load_config_from_file(str(configs["fsdp"])).fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert load_config_from_file(str(configs["two_machines"])).num_machines == 2


def test_two_ranks_stop_together_on_sigterm_and_resume(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(
        tiny_recipe(training={"num_train_epochs": 3, "output_dir": str(out), "per_device_train_batch_size": 8}),
        tmp_path / "r.yaml",
    )
    # only rank 0 receives the signal; both ranks must stop at the same step (or the other would hang)
    stopped = _launch([str(SCRIPT), str(recipe), "--term-at", "3"])
    assert stopped.returncode != 0
    assert "stopped by SIGTERM at step 3" in stopped.stderr
    assert (out / "checkpoint-3" / "hf_finetune_complete.json").is_file()
    assert (out / "checkpoint-3" / "rng_state_1.pth").is_file()  # each rank's RNG is in the checkpoint
    resumed = _launch([str(SCRIPT), str(out / "recipe.yaml"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "continuing from" in resumed.stderr and "checkpoint-3" in resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["hardware"]["processes"] == 2
    assert metrics["train"]["epoch"] == pytest.approx(3.0)


def test_mixed_precision_is_set_in_one_place():
    from hf_finetune.errors import RecipeError
    from hf_finetune.trainer import mixed_precision

    # the run reports what it used: tests/test_values.py::test_precision_reported_is_the_precision_used
    assert mixed_precision({}, {}) == ("no", "default (fp32)")
    assert mixed_precision({"bf16": True}, {}) == ("bf16", "recipe training.bf16")
    assert mixed_precision({}, {"ACCELERATE_MIXED_PRECISION": "bf16"}) == ("bf16", "accelerate launch config")
    assert mixed_precision({"bf16": True}, {"ACCELERATE_MIXED_PRECISION": "bf16"})[0] == "bf16"
    with pytest.raises(RecipeError, match="set it in one place"):
        mixed_precision({"bf16": True}, {"ACCELERATE_MIXED_PRECISION": "fp16"})
    with pytest.raises(RecipeError, match="set it in one place"):
        mixed_precision({"bf16": False}, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    # accelerate would drop fp16 on the CPU and train in fp32 without saying so
    with pytest.raises(RecipeError, match=r"training\.fp16: true: fp16 needs a GPU"):
        mixed_precision({"fp16": True, "use_cpu": True}, {})
    with pytest.raises(RecipeError, match="mixed_precision=fp16: fp16 needs a GPU"):
        mixed_precision({}, {"ACCELERATE_MIXED_PRECISION": "fp16", "ACCELERATE_USE_CPU": "true"})


def test_a_duplicate_error_ends_both_ranks_cleanly_and_drop_trains_on_the_same_rows(
    tiny_recipe, digits_folder: Path, tmp_path: Path
):
    """data.duplicates under two processes: `error` ends every rank with the CLI's bad-input status and the report,
    no traceback, nothing written; `drop` gives both ranks the same rows (one run, one set of results)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    leaked = next((data / "test" / "two").glob("*.png"))
    shutil.copy(leaked, data / "train" / "two" / "leaked.png")
    out = tmp_path / "out"
    recipe = tiny_recipe(training={"num_train_epochs": 1, "output_dir": str(out)})
    recipe["data"] = {"source": str(data), "duplicates": "error"}
    proc = _launch(["-m", "hf_finetune", "train", str(_write(recipe, tmp_path / "r.yaml"))])
    assert proc.returncode != 0
    codes = [int(c) for c in re.findall(r"exitcode\s+:\s+(-?\d+)", proc.stderr)]
    assert 2 in codes and set(codes) <= {2, -15}, proc.stderr[-4000:]
    assert "two/leaked.png" in proc.stderr and "data.duplicates: drop" in proc.stderr
    assert "hf_finetune/" not in proc.stderr  # no traceback
    assert not out.exists()

    recipe["data"]["duplicates"] = "drop"
    proc = _launch(["-m", "hf_finetune", "train", str(_write(recipe, tmp_path / "r.yaml"))])
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert "test" not in run["duplicates"]["dropped"] and run["splits"]["test"]["rows"] == 30
    dropped = json.loads((out / "duplicates.json").read_text())["dropped"]
    assert "two/leaked.png" in [name for names in dropped.values() for name in names]
