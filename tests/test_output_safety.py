"""The output folder and the recipe path, as a user meets them on the command line.

Re-running a saved recipe, `--overwrite`, folders where overwriting could take the user's work with it, a failed run's
leftovers, a recipe path with a typo, odd characters in paths. Every run is a real `python -m hf_finetune` process,
and every file that must survive is hashed before and after.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_finetune.recipe import load_recipe


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def _hashes(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) by relative path, so a deletion or a rewrite both show."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(recipe: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-3000:]


def _one_epoch(tiny_recipe, out: Path, **sections) -> dict:
    return tiny_recipe(
        training={"num_train_epochs": 1, "output_dir": str(out), **sections.pop("training", {})}, **sections
    )


@pytest.mark.slow
def test_rerunning_a_saved_recipe_changes_nothing_and_the_saved_copy_holds_no_actions(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    recipe = _write(_one_epoch(tiny_recipe, out), tmp_path / "r.yaml")
    done = _cli("train", str(recipe), "--overwrite", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    saved = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8"))
    assert "overwrite" not in saved  # the first command's --overwrite is not the run's
    assert saved["hub"]["push"] is False and "resume_from_checkpoint" not in saved["training"]
    before = _hashes(out)
    again = _cli("train", str(out / "recipe.yaml"), cwd=tmp_path)
    _refused(again, "already holds results of an earlier run", "--overwrite", "--resume")
    assert _hashes(out) == before


def test_saved_recipe_does_not_push_or_resume_again(tmp_path: Path):
    recipe = load_recipe(
        {
            "model": {"name": "simple_cnn"},
            "data": {"source": "builtin:digits"},
            "hub": {"push": True, "repo_id": "someone/digits"},
            "overwrite": True,
            "training": {"output_dir": str(tmp_path / "o"), "resume_from_checkpoint": "latest"},
        }
    )
    text = recipe.to_saved_yaml()
    (tmp_path / "recipe.yaml").write_text(text, encoding="utf-8")
    saved = load_recipe(tmp_path / "recipe.yaml")
    assert saved.hub.push is False and saved.hub.repo_id == "someone/digits"
    assert saved.overwrite is False and "resume_from_checkpoint" not in saved.training
    assert "hf-finetune push <this folder> --repo-id someone/digits" in text
    # nothing else is lost on the way
    assert saved == recipe.for_rerun()
    assert saved.training == {k: v for k, v in recipe.training.items() if k != "resume_from_checkpoint"}


@pytest.mark.slow
def test_overwrite_removes_the_earlier_run_and_keeps_the_users_files(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out"
    first = _write(
        _one_epoch(tiny_recipe, out, training={"num_train_epochs": 2, "save_total_limit": 5}), tmp_path / "a.yaml"
    )
    assert _cli("train", str(first), cwd=tmp_path).returncode == 0
    old_checkpoints = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    assert len(old_checkpoints) == 2
    (out / "notes.txt").write_text("my notes on this run")
    (out / "plots").mkdir()
    (out / "plots" / "loss.svg").write_text("<svg/>")
    (out / ".my_hidden").write_text("x")
    users = {k: v for k, v in _hashes(out).items() if k in ("notes.txt", "plots/loss.svg", ".my_hidden")}

    second = _write(_one_epoch(tiny_recipe, out), tmp_path / "b.yaml")
    proc = _cli("train", str(second), "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "keeping 3 entries" in proc.stderr and "notes.txt" in proc.stderr
    after = _hashes(out)
    assert {k: after.get(k) for k in users} == users  # the user's files, byte for byte
    new_checkpoints = [p.name for p in out.glob("checkpoint-*")]
    assert new_checkpoints == old_checkpoints[:1]  # one epoch now: the second epoch's checkpoint is gone
    assert yaml.safe_load((out / "recipe.yaml").read_text())["training"]["num_train_epochs"] == 1


def _copy_digits(digits_folder: Path, dest: Path) -> Path:
    shutil.copytree(digits_folder, dest)
    return dest


@pytest.mark.parametrize("where", ["above_cwd", "home", "root", "git", "data_inside", "recipe_inside"])
def test_overwrite_is_refused_where_it_could_take_the_users_work(
    where: str, tiny_recipe, digits_folder: Path, tmp_path: Path
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    recipe_path = tmp_path / "r.yaml"
    data = str(digits_folder)
    env = {}
    cwd = tmp_path
    if where == "above_cwd":  # the folder the user works in is inside the output folder
        out, cwd = tmp_path, work
    elif where == "home":
        out = work
        env["HOME"] = str(work)
    elif where == "root":
        out = Path("/")
        data = str(tmp_path / "missing")  # if the refusal broke, the run would stop at the data, not write into /
    elif where == "git":
        out = work
        (work / ".git").mkdir()
        (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    elif where == "data_inside":
        out = work
        data = str(_copy_digits(digits_folder, work / "my_data"))
    else:
        out = work
        recipe_path = work / "my_recipe.yaml"
    _write(_one_epoch(tiny_recipe, out, data={"source": data}), recipe_path)
    watched = tmp_path if where != "root" else work
    before = _hashes(watched)
    root_listing = sorted(os.listdir("/"))

    proc = _cli("train", str(recipe_path), "--overwrite", cwd=cwd, env=env)
    expected = {
        "above_cwd": "holds the current folder",
        "home": "is your home folder",
        "root": "is a filesystem root",
        "git": "holds a .git repository",
        "data_inside": "holds data.source",
        "recipe_inside": "holds the recipe file",
    }[where]
    _refused(proc, expected, "--overwrite is refused there", "Nothing was changed")
    assert _hashes(watched) == before
    assert sorted(os.listdir("/")) == root_listing


def test_output_dir_dot_with_overwrite_and_the_data_under_cwd(tiny_recipe, digits_folder: Path, tmp_path: Path):
    """The reported scenario: `hf-finetune train R data.source=./my_data --output-dir . --overwrite`."""
    work = tmp_path / "project"
    _copy_digits(digits_folder, work / "my_data")
    (work / "train.py").write_text("print('my own script')\n")
    recipe = _write(_one_epoch(tiny_recipe, Path("ignored")), work / "recipe.yaml")
    before = _hashes(work)
    proc = _cli("train", recipe.name, "data.source=./my_data", "--output-dir", ".", "--overwrite", cwd=work)
    _refused(proc, "'.' is the current folder", "Nothing was changed")
    assert _hashes(work) == before


def test_a_recipe_path_that_does_not_exist_is_an_error(tiny_recipe, tmp_path: Path):
    # a typo in the folder: once, the shipped recipe of the same name trained instead
    proc = _cli("train", "./my_recipes/quickstart.yaml", cwd=tmp_path)
    _refused(proc, "'./my_recipes/quickstart.yaml': no such file", "hf-finetune train quickstart")
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written
    # a typo in the file name: the neighbour is suggested
    _write(tiny_recipe(), tmp_path / "my_recipes" / "tiny.yaml")
    proc = _cli("train", "my_recipes/tny.yaml", cwd=tmp_path)
    _refused(proc, "no such file", "did you mean 'my_recipes/tiny.yaml'")
    proc = _cli("train", "quikstart", cwd=tmp_path)
    _refused(proc, "no shipped recipe named 'quikstart'", "did you mean 'quickstart'")


def test_only_a_bare_name_means_a_shipped_recipe(tmp_path: Path):
    shipped = _cli("validate", "quickstart", cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr
    assert yaml.safe_load(shipped.stdout)["model"]["name"] == "simple_cnn"
    _refused(_cli("validate", "quickstart.yaml", cwd=tmp_path), "'quickstart.yaml': no such file")
    _refused(_cli("validate", "image/quickstart", cwd=tmp_path), "no such file")


@pytest.mark.slow
def test_a_failed_run_does_not_block_the_fixed_rerun(tiny_recipe, digits_folder: Path, tmp_path: Path):
    data = _copy_digits(digits_folder, tmp_path / "data")
    broken = next((data / "train" / "one").glob("*.png"))
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:40])  # truncated: found only when the row is decoded, mid-run
    out = tmp_path / "out"
    recipe = _write(
        _one_epoch(tiny_recipe, out, data={"source": str(data), "check_images": False}), tmp_path / "r.yaml"
    )
    failed = _cli("train", str(recipe), cwd=tmp_path)
    assert failed.returncode != 0
    assert (out / "recipe.yaml").is_file() and not (out / "metrics.json").exists()  # it failed after starting

    # the natural next step of editing the failed run's own recipe.yaml is refused, not deleted under the user
    edited = out / "recipe.yaml"
    edited.write_text(edited.read_text() + "# fixed the data\n")
    before = _hashes(out)
    _refused(_cli("train", str(edited), cwd=tmp_path), "Copy it out of the folder", "Nothing was changed")
    assert _hashes(out) == before

    broken.write_bytes(good_bytes)
    fixed = _cli("train", str(recipe), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "an earlier run in this folder failed" in fixed.stderr
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()


def test_output_dir_under_a_regular_file_is_refused_up_front(tiny_recipe, tmp_path: Path):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    recipe = _write(_one_epoch(tiny_recipe, blocker / "run1"), tmp_path / "r.yaml")
    before = _hashes(tmp_path)
    _refused(_cli("train", str(recipe), cwd=tmp_path), f"{str(blocker)!r} is a file")
    assert _hashes(tmp_path) == before


@pytest.mark.slow
def test_paths_with_spaces_and_non_ascii(tiny_recipe, tmp_path: Path):
    out = tmp_path / "out dir" / "é ü"
    recipe = _write(_one_epoch(tiny_recipe, out), tmp_path / "my récipes" / "tiny run ß.yaml")
    done = _cli("train", str(recipe), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and str(out) in done.stdout
    saved = out / "recipe.yaml"
    assert load_recipe(saved).training["output_dir"] == str(out)
    assert "é ü" in saved.read_text(encoding="utf-8")  # written as it is, not escaped

    before = _hashes(out)
    _refused(_cli("train", str(saved), cwd=tmp_path), f"{str(out)!r} already holds results")
    assert _hashes(out) == before
    # what the stop message suggests: resume the saved recipe in its own folder (here with one more epoch)
    resumed = _cli("train", str(saved), "training.num_train_epochs=2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from" in resumed.stderr
    assert "resume_from_checkpoint" not in yaml.safe_load(saved.read_text(encoding="utf-8"))["training"]


def test_what_counts_as_an_earlier_runs_in_folders_left_by_killed_or_older_runs(tmp_path: Path):
    """The manifest's edge cases, on folders built by hand: a run killed while saving the model, a run killed
    earlier and a file the user dropped in afterwards, and a folder written before the manifest existed."""
    import json

    from hf_finetune.errors import OutputDirError
    from hf_finetune.names import MANIFEST_FILE
    from hf_finetune.outputs import check_output_dir

    def folder(name: str, files: list[str], manifest: dict | None) -> Path:
        out = tmp_path / name
        for f in files:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_text(f)
        if manifest is not None:
            (out / MANIFEST_FILE).write_text(json.dumps(manifest))
        return out

    # killed while saving the model: whatever appeared since the listing is the model's, odd names included
    saving = folder(
        "saving",
        ["recipe.yaml", "notes.txt", "model.safetensors", "source.spm"],
        {"entries": ["recipe.yaml"], "finished": False, "listing_before_save": ["notes.txt", "recipe.yaml"]},
    )
    plan = check_output_dir(saving, overwrite=True, resume=False)
    assert plan.remove == [MANIFEST_FILE, "model.safetensors", "recipe.yaml", "source.spm"]

    # killed mid-training; the user dropped a file in later: only names a run writes count as the run's, so the
    # folder is not taken for a failed run's leftovers and the file is never removed
    killed = folder(
        "killed",
        ["recipe.yaml", "checkpoint-3/model.safetensors", "runs/events", "my_notes.md"],
        {"entries": ["recipe.yaml"], "finished": False, "listing_at_start": []},
    )
    with pytest.raises(OutputDirError, match=r"files hf_finetune did not write \(my_notes\.md\)"):
        check_output_dir(killed, overwrite=False, resume=False)
    assert "my_notes.md" not in check_output_dir(killed, overwrite=True, resume=False).remove

    # written before the manifest existed: recognised by recipe.yaml + results; the rest stays
    legacy = folder("legacy", ["recipe.yaml", "metrics.json", "config.json", "checkpoint-5/x", "data.csv"], None)
    plan = check_output_dir(legacy, overwrite=True, resume=False)
    assert plan.remove == ["checkpoint-5", "config.json", "metrics.json", "recipe.yaml"]
    # a lone recipe.yaml there may be the user's own: not removed, and not silently replaced either
    lone = folder("lone", ["recipe.yaml"], None)
    with pytest.raises(OutputDirError, match=r"recipe\.yaml, which hf_finetune did not write"):
        check_output_dir(lone, overwrite=True, resume=False)
