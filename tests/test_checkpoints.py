"""Checkpoints a user can trust: a stop saves once and leaves in time, a complete checkpoint is never written into
again, save_total_limit never leaves a run without a complete checkpoint, and under several processes an error on
one ends all of them alike."""

import ast
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_finetune.checkpoints import COMPLETE_MARKER, resolve_resume

PROBE = Path(__file__).parent / "scripts" / "checkpoint_probe.py"
DELAYED = Path(__file__).parent / "scripts" / "delayed_start.py"
LAUNCHER_GRACE_S = 30  # torchrun/accelerate: SIGTERM, then SIGKILL 30 s later


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"})
    return env


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _checkpoints(out: Path) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in out.glob("checkpoint-*")}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _assert_never_written_after_marker(out: Path) -> None:
    """The marker is the last file of a checkpoint: anything newer means the complete checkpoint was saved into."""
    for folder in out.glob("checkpoint-*"):
        marker = folder / COMPLETE_MARKER
        assert marker.is_file(), f"{folder.name} has no completion marker"
        newer = [p.name for p in folder.iterdir() if p.stat().st_mtime_ns > marker.stat().st_mtime_ns]
        assert not newer, f"{folder.name}: {newer} written after it was marked complete"


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _probe(recipe: Path, events: Path, *options: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(PROBE), str(recipe), str(events), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def _train_recipe(tiny_recipe, out: Path, **training) -> dict:
    # 81 training rows in batches of 27: three steps an epoch; dataloader workers on, as users get them
    return tiny_recipe(
        training={
            "output_dir": str(out),
            "per_device_train_batch_size": 27,
            "dataloader_num_workers": 2,
            "eval_strategy": "epoch",
            "save_strategy": "epoch",
            **training,
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-epoch", "last step of an epoch"])
def test_a_stop_saves_once_without_evaluating(where: str, tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(_train_recipe(tiny_recipe, out, num_train_epochs=4), tmp_path / "r.yaml")
    events = tmp_path / "events.jsonl"
    stop = ["--term-at", "5"] if where == "mid-epoch" else ["--term-at-epoch-end", "2"]
    proc = _probe(recipe, events, *stop)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]

    log = _events(events)
    sent = next(i for i, e in enumerate(log) if e["event"] == "signal")
    step = log[sent]["step"]
    assert step == (5 if where == "mid-epoch" else 6)
    after = log[sent + 1 :]
    # the checkpoint of that step, once; no evaluation (the epoch-end flow would run one and save again)
    assert after == [{"event": "save", "step": step}]
    assert f"stopped by SIGTERM at step {step}; checkpoint-{step}" in proc.stderr
    assert sorted(_checkpoints(out)) == [3, step]
    _assert_never_written_after_marker(out)


@pytest.mark.slow
def test_a_second_save_at_the_same_step_does_not_rewrite_the_checkpoint(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    # saves every 3 steps, and a user's callback asks for one at each epoch end too: the same steps
    recipe = _train_recipe(tiny_recipe, out, num_train_epochs=2, save_strategy="steps", save_steps=3)
    events = tmp_path / "events.jsonl"
    proc = _probe(_write(recipe, tmp_path / "r.yaml"), events, "--save-at-epoch-end")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [e["step"] for e in _events(events) if e["event"] == "save"] == [3, 6]
    assert "checkpoint-3 is already complete; not saving it again" in proc.stderr
    _assert_never_written_after_marker(out)


@pytest.mark.slow
def test_sigterm_from_outside_ends_the_cli_within_the_launchers_grace(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(
        _train_recipe(tiny_recipe, out, num_train_epochs=200, logging_strategy="epoch"), tmp_path / "r.yaml"
    )
    command = [sys.executable, "-m", "hf_finetune", "train", str(recipe)]
    proc = _start_past_a_checkpoint(command, out)
    try:
        before = {s: _hashes(p) for s, p in _checkpoints(out).items() if (p / COMPLETE_MARKER).is_file()}
        signum = signal.SIGTERM
        sent = time.monotonic()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert took < LAUNCHER_GRACE_S, f"{took:.1f} s from the signal to the exit"
    print(f"SIGTERM: exited {took:.2f} s after the signal")
    name = signal.Signals(signum).name
    assert stderr.count(f"received {name}") == 1, stderr[-3000:]
    stopped = int(stderr.split(f"stopped by {name} at step ")[1].split(";")[0])

    after = _checkpoints(out)
    new = set(after) - set(before)
    assert new == {stopped} or (new == set() and stopped in before), (sorted(before), sorted(after), stopped)
    for s in set(before) & set(after):
        assert _hashes(after[s]) == before[s], f"complete checkpoint-{s} changed"
    _assert_never_written_after_marker(out)
    state = json.loads((after[stopped] / "trainer_state.json").read_text())
    evaluations = [ast.literal_eval(line) for line in stdout.splitlines() if "'eval_loss'" in line]
    # one evaluation per finished epoch at most: none was started for the epoch the stop cut short
    assert len(evaluations) <= int(state["epoch"]), (len(evaluations), state["epoch"])
    assert not (out / "metrics.json").exists()


@pytest.mark.slow
def test_save_total_limit_1_keeps_a_complete_checkpoint_until_the_next_one_is(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(_train_recipe(tiny_recipe, out, num_train_epochs=3, save_total_limit=1), tmp_path / "r.yaml")
    # killed after Trainer rotated its checkpoints for step 6 and before checkpoint-6 was marked complete
    killed = _probe(recipe, tmp_path / "events.jsonl", "--kill-after-rotation", "6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "keeping the newest 1 (training.save_total_limit)" in killed.stderr
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()
    assert not (out / "checkpoint-6" / COMPLETE_MARKER).exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "train", str(out / "recipe.yaml"), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from" in resumed.stderr and "checkpoint-3" in resumed.stderr
    assert (out / "incomplete-checkpoint-6").is_dir()
    # the user's limit still holds: one checkpoint, the last, complete
    assert sorted(_checkpoints(out)) == [9]
    _assert_never_written_after_marker(out)


@pytest.mark.slow
def test_save_total_limit_1_with_the_best_model_keeps_only_the_best(tiny_recipe, caplog):
    from test_train import _WreckAtEpoch

    from hf_finetune import finetune

    caplog.set_level("INFO", logger="hf_finetune")
    recipe = tiny_recipe(
        training={
            "num_train_epochs": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "loss",
            "save_total_limit": 1,
        }
    )
    result = finetune(recipe, callbacks=[_WreckAtEpoch(2)])  # the first epoch's checkpoint is the best
    assert "keeping the newest 1 (training.save_total_limit, plus the best)" in caplog.text
    # as plain Trainer does with save_total_limit 1: the best is kept, the last one deleted once training is over
    assert [p.name for p in result.output_dir.glob("checkpoint-*")] == [Path(result.best_checkpoint).name]
    assert json.loads((Path(result.best_checkpoint) / "trainer_state.json").read_text())["epoch"] == 1.0
    _assert_never_written_after_marker(result.output_dir)


def test_resume_sets_incomplete_checkpoints_aside_only_where_asked(tmp_path: Path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()
    assert resolve_resume("latest", tmp_path, set_aside=False) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4").is_dir()
    assert resolve_resume("latest", tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "incomplete-checkpoint-4"]


@pytest.mark.parametrize("launched", [True, False])
def test_a_launchers_echo_of_ctrl_c_is_not_a_second_signal(launched: bool, monkeypatch):
    from hf_finetune.checkpoints import stop_on_signals

    if launched:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # set by torchrun and accelerate launch for each rank
    else:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's
        assert stop.signum == signal.SIGINT
        if launched:
            os.kill(os.getpid(), signal.SIGINT)  # the launcher passing it on: still one request to save and stop
            assert stop.signum == signal.SIGINT
        else:
            with pytest.raises(KeyboardInterrupt):  # a user's second Ctrl-C: stop now
                os.kill(os.getpid(), signal.SIGINT)


def test_a_rank_stopping_for_another_takes_its_own_first_signal_as_the_same_request(monkeypatch):
    """Under a launcher, a rank learns of another rank's signal through the collective check and is already
    stopping after this step; its own first signal (the launcher forwarding the request) is that same request, not
    a second one that would end it mid-step without its checkpoint."""
    from hf_finetune.checkpoints import stop_on_signals

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    with stop_on_signals() as stop:
        stop.signum = signal.SIGTERM  # what the collective check sets on a rank that got no signal itself
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal of its own: stop now
            os.kill(os.getpid(), signal.SIGINT)


# --------------------------------------------------------------------------------------------- several processes


def _start_past_a_checkpoint(command: list[str], out: Path) -> subprocess.Popen:
    """Start a training command in its own process group; return once it has completed a checkpoint in `out` and
    trained half a second further (somewhere inside a later epoch)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not any((p / COMPLETE_MARKER).is_file() for p in out.glob("checkpoint-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was completed"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        raise
    time.sleep(0.5)
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_error_on_the_main_process_ends_both_ranks_alike(digits_folder: Path, tiny_recipe, tmp_path: Path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    broken = data / "train" / "zero" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # only the main process checks the images
    recipe = _write(
        tiny_recipe(data={"source": str(data)}, training={"dataloader_num_workers": 2}), tmp_path / "r.yaml"
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "hf_finetune", "train", str(recipe),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode != 0
    # the same message from each rank; both write to one pipe, so a line may not start where the message does
    assert proc.stderr.count("error: 1 of 121 images cannot be decoded") == 2, proc.stderr[-4000:]
    assert str(broken) in proc.stderr
    # both ranks exit 2 on their own error (the launcher lists every failed rank with its status)
    assert proc.stderr.count("exitcode  : 2 ") == 2, proc.stderr[-4000:]
    assert "exitcode  : -15" not in proc.stderr
    # the only traceback is the launcher's own report of a failed child, after both error lines
    ours, _, launcher = proc.stderr.partition("Traceback (most recent call last):")
    assert ours.count("error: ") == 2 and "ChildFailedError" in launcher and "hf_finetune/" not in launcher
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.slow
def test_two_nodes_resuming_rename_incomplete_checkpoints_once(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(tiny_recipe(training={"output_dir": str(out)}), tmp_path / "r.yaml")
    for step in range(1, 21):  # left by a run killed while saving; there is no complete one
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"\0" * 10)
    port = _free_port()

    def node(rank: int) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
            str(DELAYED), "train", str(recipe), "--resume",
        ]  # fmt: skip
        # node 0 starts late: node 1 (a local main process too) must still leave the renaming to it
        env = {**_env(), "DELAY_S": "5" if rank == 0 else "0"}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    nodes = [node(0), node(1)]
    results = [p.communicate(timeout=240) for p in nodes]
    moved = "was not saved completely"
    assert results[0][1].count(moved) == 20, results[0][1][-3000:]
    assert results[1][1].count(moved) == 0, results[1][1][-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"incomplete-checkpoint-{s}" for s in range(1, 21))
    # then every process finds no complete checkpoint and says so the same way
    for p, (_, stderr) in zip(nodes, results, strict=True):
        assert p.returncode != 0
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "no complete checkpoint" in errors[0], stderr[-3000:]
        assert stderr.split("Traceback (most recent call last):")[0].count("error: ") == 1


@pytest.mark.slow
def test_ctrl_c_under_accelerate_launch_saves_on_both_ranks(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(
        _train_recipe(tiny_recipe, out, num_train_epochs=200, per_device_train_batch_size=8, dataloader_num_workers=1),
        tmp_path / "r.yaml",
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", "hf_finetune", "train", str(recipe),
    ]  # fmt: skip
    proc = _start_past_a_checkpoint(command, out)
    try:
        # a terminal's Ctrl-C reaches the launcher and every rank; the launcher then sends the ranks SIGINT again
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < LAUNCHER_GRACE_S, f"{took:.1f} s from Ctrl-C to the end"
    assert "KeyboardInterrupt" not in stderr and "\ninterrupted" not in stderr, stderr[-4000:]
    # once per rank: neither the launcher's echo nor the ranks' DataLoader workers count as another request
    assert stderr.count("received SIGINT") == 2, stderr[-4000:]
    # both ranks, at the same step (their lines share one pipe, so one may run on from the other's)
    stops = re.findall(r"stopped: training stopped by SIGINT at step (\d+);", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-4000:]
    step = int(stops[0])
    assert (out / f"checkpoint-{step}" / COMPLETE_MARKER).is_file()
    assert (out / f"checkpoint-{step}" / "rng_state_1.pth").is_file()
    _assert_never_written_after_marker(out)
