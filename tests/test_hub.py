"""Pushing to the Hub over real HTTP: the real huggingface_hub and transformers clients against a loopback emulator.

Every client runs in a subprocess whose HF_ENDPOINT points at the emulator (tests/hub_emulator.py) before
huggingface_hub is imported, with HF_HUB_OFFLINE unset and a unique HF_TOKEN, so nothing here can reach the real Hub
(`_client_env` refuses any endpoint that is not loopback). Both upload paths are covered: Xet (hf_xet writes to a
local CAS folder) and Git LFS (HF_HUB_DISABLE_XET=1).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import make_text_recipe
from hub_emulator import HubEmulator

from hf_finetune.hub import stage_folder

# Reads a pushed repo back through the endpoint the way a user would, and compares it with the local folder.
VERIFY = r"""
import json, sys
from pathlib import Path

local, repo_id, revision, task = sys.argv[1:5]
inputs = json.loads(sys.argv[5])
from huggingface_hub import ModelCard, snapshot_download
import hf_finetune.models  # an hf_finetune user's view; tests/test_portable.py loads with transformers alone
from transformers import pipeline

snapshot = Path(snapshot_download(repo_id, revision=revision))
files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
# every pushed file but the card (its snippet names the repo) and the run's provenance (local paths rewritten) is the
# local file, byte for byte
same_bytes = {
    f: (snapshot / f).read_bytes() == (Path(local) / f).read_bytes()
    for f in files
    if (Path(local) / f).is_file() and f not in ("README.md", "metrics.json", "recipe.yaml")
}
card = ModelCard.load(snapshot / "README.md")
remote = pipeline(task, model=repo_id, revision=revision)(inputs, top_k=None)
here = pipeline(task, model=local)(inputs, top_k=None)
print(json.dumps({
    "files": files,
    "same_bytes": same_bytes,
    "eval_results": [[r.dataset_split, r.metric_type, r.metric_config, r.metric_value] for r in card.data.eval_results],
    "card": card.content,
    "remote": remote,
    "local": here,
}))
"""


@pytest.fixture
def hub(tmp_path: Path):
    token = f"hf_{uuid.uuid4().hex}"
    with HubEmulator(tmp_path / "hub-store", token=token) as emulator:
        yield emulator
    assert not emulator.errors, emulator.errors[0]


@pytest.fixture(scope="module")
def trained_text(text_csv: Path, tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """A trained tiny BERT output folder (the `text_recipe` fixture's run), shared by the push tests."""
    from hf_finetune import finetune

    out = tmp_path_factory.mktemp("pushed") / "text-out"
    recipe = make_text_recipe(text_csv, tiny_bert_dir, out, training={"save_strategy": "epoch"})
    return finetune(recipe).output_dir


class Clients:
    """Runs client subprocesses against one endpoint and keeps everything they printed, to search for the token."""

    def __init__(self, endpoint: str, token: str | None, home: Path, **env: str) -> None:
        # the one guard that matters: these tests talk to the loopback emulator, never to huggingface.co
        assert urlsplit(endpoint).hostname == "127.0.0.1", endpoint
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
        self.env.update(
            HF_ENDPOINT=endpoint,
            HF_HOME=str(home),
            HF_DATASETS_OFFLINE="1",
            HF_EVALUATE_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_VERBOSITY="info",  # huggingface_hub's own log lines are searched for the token too
            **env,
        )
        if token is not None:
            self.env["HF_TOKEN"] = token
        self.outputs: list[str] = []

    def run(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        self.outputs += [done.stdout, done.stderr]
        return done

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("-m", "hf_finetune", *args)

    def verify(self, local: Path, repo_id: str, revision: str, task: str, inputs: list[str]) -> dict[str, Any]:
        done = self.run("-c", VERIFY, str(local), repo_id, revision, task, json.dumps(inputs))
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_token_nowhere(token: str, texts: list[str], folders: list[Path], hub: HubEmulator) -> None:
    for text in texts:
        assert token not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "token":  # `hf auth login`'s own token file is where it belongs
                assert token.encode() not in path.read_bytes(), path
    for repo in hub.repos.values():
        for files in repo.commits.values():
            assert all(token.encode() not in (e.content or b"") for e in files.values())
    assert all(token not in r.path for r in hub.requests)


def _same_predictions(result: dict[str, Any]) -> None:
    for remote, local in zip(result["remote"], result["local"], strict=True):
        assert [p["label"] for p in remote] == [p["label"] for p in local]
        assert [p["score"] for p in remote] == pytest.approx([p["score"] for p in local], abs=1e-6)


def _eval_results_match(result: dict[str, Any], metrics: dict[str, Any]) -> None:
    parsed = {(s, t, c): v for s, t, c, v in result["eval_results"]}
    for prefix, split in (("eval", "validation"), ("test", "test")):
        assert parsed[(split, "accuracy", None)] == pytest.approx(metrics[prefix]["accuracy"], abs=1e-4)
        assert parsed[(split, "f1", "macro")] == pytest.approx(metrics[prefix]["f1_macro"], abs=1e-4)


def test_train_with_hub_push_uploads_through_xet_and_reloads(tiny_recipe, digits_folder: Path, hub, tmp_path: Path):
    repo_id = "tester/tiny-digits"
    recipe = tiny_recipe(hub={"push": True, "repo_id": repo_id}, training={"save_strategy": "epoch"})
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = Path(recipe["training"]["output_dir"])
    clients = Clients(hub.url, hub.token, tmp_path / "home")

    trained = clients.cli("train", str(recipe_path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "hub: pushed" in trained.stderr

    files = hub.files(repo_id)
    assert {"README.md", "config.json", "model.safetensors", "recipe.yaml", "metrics.json"} <= set(files)
    assert {"confusion_matrix_test.png", "preprocessor_config.json"} <= set(files)
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())  # they exist locally …
    assert not any(f.startswith("checkpoint-") for f in files)  # … but were not asked for
    assert "training_args.bin" not in files
    # weights went through Xet (hf_xet → local CAS); the emulator rebuilds the same bytes from the CAS
    assert files["model.safetensors"].xet_hash and files["README.md"].content is not None
    assert hub.read(repo_id, "model.safetensors") == (out / "model.safetensors").read_bytes()
    assert any("/xet-write-token/" in r.path for r in hub.requests)
    assert not any("lfs/objects/batch" in r.path for r in hub.requests)
    assert all(r.authorized for r in hub.requests if r.method == "POST" and r.path != "/api/validate-yaml")
    # the pushed card loads the repo; the local one still loads the local folder
    assert f'model="{repo_id}"' in hub.read(repo_id, "README.md").decode()
    assert f'model="{out}"' in (out / "README.md").read_text()

    before = _digest(out)
    inputs = [str(p) for p in sorted((digits_folder / "test").rglob("*.png"))[::7]]
    result = clients.verify(out, repo_id, "main", "image-classification", inputs)
    assert _digest(out) == before
    assert any("/xet-read-token/" in r.path for r in hub.requests)  # read back through hf_xet too
    assert "model.safetensors" in result["files"] and all(result["same_bytes"].values())
    _same_predictions(result)
    _eval_results_match(result, json.loads((out / "metrics.json").read_text()))
    # simple_cnn's code went with it, and the card says how to run it
    assert {"configuration_simple_cnn.py", "modeling_simple_cnn.py"} <= set(result["files"])
    assert f'model="{repo_id}", trust_remote_code=True' in result["card"]

    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    # the saved copy does not push again when it is run again (issue 9, item 1); it still names the repo
    assert saved["hub"]["push"] is False and saved["hub"]["repo_id"] == repo_id
    _assert_token_nowhere(hub.token, clients.outputs, [out, tmp_path / "home", hub.root], hub)


def test_cli_push_over_lfs_to_a_private_branch(trained_text: Path, hub, tmp_path: Path):
    repo_id = "tester/tiny-text"
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(hub.token)  # what `hf auth login` saves: the other usual place for the token
    clients = Clients(hub.url, None, home, HF_HUB_DISABLE_XET="1")
    before = _digest(trained_text)

    pushed = clients.cli("push", str(trained_text), "--repo-id", repo_id, "--private", "--revision", "dev")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert f"{hub.url}/{repo_id}/commit/" in pushed.stdout
    assert _digest(trained_text) == before

    repo = hub.repo(repo_id)
    assert repo.private and set(hub.files(repo_id, "main")) == {".gitattributes"}  # the branch got the files
    files = hub.files(repo_id, "dev")
    assert files["model.safetensors"].sha256 and not files["model.safetensors"].xet_hash  # plain LFS
    assert any(r.method == "PUT" and r.path.startswith("/lfs-upload/") for r in hub.requests)
    assert not any("xet-write-token" in r.path for r in hub.requests)
    assert not any(f.startswith("checkpoint-") for f in files) and "tokenizer.json" in files

    texts = ["the ride was great and lovely", "an awful broken car", "the trip today"]
    result = clients.verify(trained_text, repo_id, "dev", "text-classification", texts)
    _same_predictions(result)
    _eval_results_match(result, json.loads((trained_text / "metrics.json").read_text()))
    assert f'pipeline("text-classification", model="{repo_id}", revision="dev")' in result["card"]
    assert all(result["same_bytes"][f] for f in ("model.safetensors", "tokenizer.json", "config.json"))
    assert _digest(trained_text) == before
    _assert_token_nowhere(hub.token, clients.outputs, [trained_text, home, hub.root], hub)


def test_server_errors_are_retried_then_reported_and_nothing_local_changes(trained_text: Path, hub, tmp_path: Path):
    hub.fail_with(500)
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    before = _digest(trained_text)

    done = clients.cli("push", str(trained_text), "--repo-id", "tester/down")
    assert done.returncode == 2
    assert "error: pushing" in done.stderr and "failed after 3 attempts: HTTP 500" in done.stderr
    assert "The local folder is unchanged" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("retrying in") == 2
    assert sum(r.path == "/api/repos/create" for r in hub.requests) == 3
    assert _digest(trained_text) == before and not hub.repos
    _assert_token_nowhere(hub.token, clients.outputs, [trained_text, tmp_path / "home"], hub)


def test_connection_refused_is_retried_then_reported(trained_text: Path, tmp_path: Path):
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = f"hf_{uuid.uuid4().hex}"
    clients = Clients(f"http://127.0.0.1:{port}", token, tmp_path / "home")
    before = _digest(trained_text)

    done = clients.cli("push", str(trained_text), "--repo-id", "tester/nowhere")
    assert done.returncode == 2
    assert "failed after 3 attempts: ConnectError" in done.stderr and "Traceback" not in done.stderr
    assert _digest(trained_text) == before
    assert all(token not in text for text in clients.outputs)


def test_a_busy_server_is_retried_until_the_push_succeeds(trained_text: Path, hub, tmp_path: Path):
    hub.fail_with(503, times=2)
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    script = (
        "import sys; from hf_finetune.hub import push_folder; "
        "print(push_folder(sys.argv[1], 'tester/flaky', backoff_s=0.1))"
    )
    done = clients.run("-c", script, str(trained_text))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attempt 1 of 3 failed (HTTP 503" in done.stderr and "attempt 2 of 3 failed" in done.stderr
    assert "model.safetensors" in hub.files("tester/flaky")


def test_a_new_push_replaces_what_an_earlier_push_left(trained_text: Path, hub, tmp_path: Path):
    second = tmp_path / "second-run"
    shutil.copytree(trained_text, second)
    (second / "confusion_matrix_test.png").unlink()
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    script = (
        "import sys; from hf_finetune.hub import push_folder; "
        "push_folder(sys.argv[1], 'tester/twice'); push_folder(sys.argv[2], 'tester/twice')"
    )
    done = clients.run("-c", script, str(trained_text), str(second))
    assert done.returncode == 0, done.stderr[-3000:]
    repo = hub.repo("tester/twice")
    assert len(repo.commits) == 3  # the repo's first commit, then one per push
    files = hub.files("tester/twice")
    assert "confusion_matrix_test.png" not in files and "confusion_matrix_test.csv" in files
    assert "model.safetensors" in files and ".gitattributes" in files


def test_private_push_never_uploads_into_an_existing_public_repo(trained_text: Path, hub, tmp_path: Path):
    hub.create_repo("tester/public", private=False)
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    done = clients.cli("push", str(trained_text), "--repo-id", "tester/public", "--private")
    assert done.returncode == 2 and "already exists and is public" in done.stderr
    assert set(hub.files("tester/public")) == {".gitattributes"}


def test_a_refused_token_is_reported_at_once(trained_text: Path, hub, tmp_path: Path):
    clients = Clients(hub.url, "hf_not_the_right_one", tmp_path / "home")
    done = clients.cli("push", str(trained_text), "--repo-id", "tester/denied")
    assert done.returncode == 2
    assert "HTTP 401" in done.stderr and "Check the token" in done.stderr and "retrying" not in done.stderr
    assert sum(r.path == "/api/repos/create" for r in hub.requests) == 1
    assert "hf_not_the_right_one" not in done.stdout + done.stderr


def test_no_token_is_reported_before_any_request(trained_text: Path, hub, tmp_path: Path):
    clients = Clients(hub.url, None, tmp_path / "empty-home")
    done = clients.cli("push", str(trained_text), "--repo-id", "tester/anonymous")
    assert done.returncode == 2
    assert "no Hugging Face token found" in done.stderr and "hf auth login" in done.stderr
    assert not [r for r in hub.requests if r.path != "/api/agent-harnesses"]


def test_staging_leaves_out_checkpoints_and_secrets_and_retargets_the_card(tmp_path: Path):
    out = tmp_path / "run"
    (out / "checkpoint-6").mkdir(parents=True)
    (out / "checkpoint-6" / "model.safetensors").write_bytes(b"old weights")
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "training_args.bin").write_bytes(b"pickle")
    (out / ".README.md.x.tmp").write_text("half-written")
    (out / "README.md").write_text(f'classifier = pipeline("image-classification", model="{out}")\n')
    (out / "recipe.yaml").write_text(yaml.safe_dump({"name": "x", "training": {"hub_token": "hf_secret"}}))
    before = _digest(out)

    staged = stage_folder(out, tmp_path / "stage", "me/model")
    assert sorted(staged) == ["README.md", "model.safetensors", "recipe.yaml"]
    card = (tmp_path / "stage" / "README.md").read_text()
    assert card == 'classifier = pipeline("image-classification", model="me/model")\n'
    assert "hf_secret" not in (tmp_path / "stage" / "recipe.yaml").read_text()
    assert (tmp_path / "stage" / "model.safetensors").read_bytes() == b"weights"
    assert _digest(out) == before

    with_checkpoints = stage_folder(out, tmp_path / "stage2", "me/model", include_checkpoints=True)
    assert "checkpoint-6/model.safetensors" in with_checkpoints


# --------------------------------------------------------------------------------------------- what is published

PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def _pickles_in(names) -> list[str]:
    return [n for n in names if n.rsplit("/", 1)[-1] in PICKLES or n.endswith((".pt", ".pth", ".bin"))]


def test_push_never_follows_links_out_of_the_folder_nor_uploads_pickles_unless_named(
    trained_text: Path, hub, tmp_path: Path
):
    out = tmp_path / "run"
    shutil.copytree(trained_text, out)
    private = tmp_path / "elsewhere"
    (private / "keys").mkdir(parents=True)
    secret = b"secret bytes that live outside the output folder"
    (private / "id_rsa").write_bytes(secret)
    (private / "keys" / "more.txt").write_bytes(secret)
    (out / "notes.txt").symlink_to(private / "id_rsa")  # a file link out of the folder
    (out / "shared").symlink_to(private / "keys", target_is_directory=True)  # a folder link out of it
    checkpoint = sorted(p.name for p in out.glob("checkpoint-*"))[0]
    assert all((out / checkpoint / name).is_file() for name in PICKLES)  # Trainer wrote them …
    before = _digest(out)
    clients = Clients(hub.url, hub.token, tmp_path / "home", HF_HUB_DISABLE_XET="1")

    done = clients.cli("push", str(out), "--repo-id", "tester/safe", "--include-checkpoints")
    assert done.returncode == 0, done.stderr[-3000:]
    files = hub.files("tester/safe")
    assert f"{checkpoint}/model.safetensors" in files and f"{checkpoint}/trainer_state.json" in files
    assert not _pickles_in(files)  # … and none of them went up, the top-level training_args.bin neither
    assert not any(f.startswith(("notes.txt", "shared")) for f in files)
    assert all(secret not in hub.read("tester/safe", f) for f in files)
    # nor any local path: the text model's folder (model.name), its CSV files and the run's folder sit under basetemp
    basetemp = str(trained_text.parents[1]).encode()
    assert [f for f in files if basetemp in hub.read("tester/safe", f)] == []
    assert "from **.../tiny_bert" in hub.read("tester/safe", "README.md").decode()
    assert f"not pushed: notes.txt is a link to {private / 'id_rsa'}" in done.stderr
    assert "not pushed: shared is a link to" in done.stderr
    assert "pickle file(s)" in done.stderr and f"{checkpoint}/optimizer.pt" in done.stderr

    named = clients.cli(
        "push", str(out), "--repo-id", "tester/safe", "--include-checkpoints", "--include", "optimizer.pt"
    )
    assert named.returncode == 0, named.stderr[-3000:]
    files = hub.files("tester/safe")
    assert sorted(_pickles_in(files)) == sorted(f"{p.name}/optimizer.pt" for p in out.glob("checkpoint-*"))
    assert hub.read("tester/safe", f"{checkpoint}/optimizer.pt") == (out / checkpoint / "optimizer.pt").read_bytes()
    assert _digest(out) == before


@pytest.mark.slow  # trains through the CLI, then pushes
def test_pushed_card_metrics_and_recipe_carry_no_local_paths(digits_folder: Path, tiny_recipe, hub, tmp_path: Path):
    # a folder name with a space and a non-ASCII letter, as on many laptops
    base = tmp_path / "Mes données" / "exp 1"
    data = base / "digits"
    shutil.copytree(digits_folder, data)
    recipe = tiny_recipe(
        data={"source": str(data)}, training={"output_dir": str(base / "out"), "save_strategy": "epoch"}
    )
    recipe["training"].update(eval_strategy="epoch", load_best_model_at_end=True)
    recipe_path = base / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    out = base / "out"
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    trained = clients.cli("train", str(recipe_path))
    assert trained.returncode == 0, trained.stderr[-3000:]
    local = json.loads((out / "metrics.json").read_text())
    assert str(out) in local["best_checkpoint"] and str(data) in local["run"]["data"]  # the local files have them
    before = _digest(out)

    done = clients.cli("push", str(out), "--repo-id", "tester/paths", "--include-checkpoints")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _digest(out) == before  # the local folder is only read
    files = hub.files("tester/paths")
    # in any spelling (as written, JSON's \u00e9, YAML's \xE9): the part before the first non-ASCII letter is enough
    leaks = [str(tmp_path), str(Path(str(tmp_path)).resolve()), str(Path.home())]
    for name in files:
        content = hub.read("tester/paths", name)
        assert not [leak for leak in leaks if leak.encode() in content], name
    card = hub.read("tester/paths", "README.md").decode()
    assert "Source: imagefolder folder .../digits." in card and "output_dir: out" in card
    pushed = json.loads(hub.read("tester/paths", "metrics.json"))
    best = Path(local["best_checkpoint"]).name
    assert pushed["best_checkpoint"] == f"out/{best}" and pushed["run"]["data"] == "imagefolder folder .../digits"
    assert pushed["test"] == local["test"] and pushed["label_names"] == local["label_names"]
    state = json.loads(hub.read("tester/paths", f"{best}/trainer_state.json"))
    assert state["best_model_checkpoint"] == f"out/{best}"
    assert yaml.safe_load(hub.read("tester/paths", "recipe.yaml"))["data"]["source"] == ".../digits"


def test_files_added_on_the_hub_survive_a_push_and_delete_missing_removes_them(trained_text: Path, hub, tmp_path):
    repo_id = "tester/kept"
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    first = clients.cli("push", str(trained_text), "--repo-id", repo_id)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(hub.read(repo_id, ".hf_finetune_push.json"))["files"] == sorted(
        [*(f for f in hub.files(repo_id) if f != ".gitattributes")]
    )
    hub.add_file(repo_id, "notes.md", b"my own notes, uploaded on the website\n")
    hub.add_file(repo_id, "images/cover.png", b"\x89PNG user image")
    second = tmp_path / "second-run"  # the next run has no confusion matrix plot
    shutil.copytree(trained_text, second)
    (second / "confusion_matrix_test.png").unlink()

    again = clients.cli("push", str(second), "--repo-id", repo_id)
    assert again.returncode == 0, again.stderr[-3000:]
    files = hub.files(repo_id)
    assert hub.read(repo_id, "notes.md") == b"my own notes, uploaded on the website\n"
    assert "images/cover.png" in files
    assert "confusion_matrix_test.png" not in files  # what the earlier push left is replaced
    assert "keeping 2 file(s) on the branch that hf_finetune did not push" in again.stderr

    everything = clients.cli("push", str(second), "--repo-id", repo_id, "--delete-missing")
    assert everything.returncode == 0, everything.stderr[-3000:]
    files = hub.files(repo_id)
    assert "notes.md" not in files and "images/cover.png" not in files
    # checkpoints stay local; pickles and hidden files (the run's own list of what it wrote) are never pushed, nor
    # the per-row error analysis (the evaluation data's own rows) unless named with --include
    assert set(files) == {".gitattributes", ".hf_finetune_push.json", *_digest(second)} - {
        f
        for f in _digest(second)
        if f.startswith(("checkpoint-", ".", "predictions_", "errors_")) or f == "training_args.bin"
    }


def test_a_branch_pushed_by_other_means_loses_only_stale_weights(trained_text: Path, hub, tmp_path: Path):
    repo_id = "tester/by-hand"
    hub.create_repo(repo_id)
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "notes.md"):
        hub.add_file(repo_id, name, b"uploaded by hand")
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    done = clients.cli("push", str(trained_text), "--repo-id", repo_id)
    assert done.returncode == 0, done.stderr[-3000:]
    files = hub.files(repo_id)
    assert "notes.md" in files and "model.safetensors" in files
    assert not any(f.startswith("model-0000") for f in files)  # another model's shards would confuse loaders


SLURM_SHIMS = {
    "scontrol": 'printf "node-a\\nnode-b\\n"\n',
    # srun runs its command on this "node" with the node's own SLURM_NODEID, after its options
    "srun": 'while [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"\n',
    # records the launcher's argv, one argument per NUL-terminated record
    "accelerate": 'printf "%s\\0" "$@" > "$ARGV_FILE"\n',
}


def test_slurm_script_passes_overrides_as_written(tmp_path: Path):
    script = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "slurm_two_nodes.sbatch"
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in SLURM_SHIMS.items():
        (shims / name).write_text("#!/bin/bash\n" + body)
        (shims / name).chmod(0o755)
    marker = tmp_path / "PWNED"
    overrides = [
        "data.source=/shared/my data/pets",
        'card.title=it\'s "quoted"',
        f"name=$(touch {marker})",
        "training.learning_rate=1e-4; rm -rf ~",
        "--resume",
    ]
    env = {
        "PATH": f"{shims}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_NNODES": "2",
        "ARGV_FILE": str(tmp_path / "argv"),
    }
    done = subprocess.run(
        ["bash", str(script), "resnet50", *overrides], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_bytes().split(b"\0")[:-1]
    argv = [a.decode() for a in argv]
    assert argv[-(len(overrides) + 4) :] == ["-m", "hf_finetune", "train", "resnet50", *overrides]
    assert argv[argv.index("--machine_rank") + 1] == "1" and argv[argv.index("--main_process_ip") + 1] == "node-a"
    assert argv[argv.index("--num_processes") + 1] == "16"
    assert not marker.exists()  # the $(...) was never run


# --------------------------------------------------------------------------------------------- bad input


def _bad_folders(trained_text: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name → (push arguments, what the error must say); each is refused before anything is uploaded."""
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(trained_text / "config.json", no_weights / "config.json")
    not_model = tmp_path / "just-data"
    not_model.mkdir()
    (not_model / "train.csv").write_text("text,label\n")
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"x")
    linked = tmp_path / "linked-weights"
    linked.mkdir()
    for p in trained_text.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            shutil.copy(p, linked / p.name)
    (linked / "model.safetensors").symlink_to(trained_text / "model.safetensors")
    outside_named = tmp_path / "outside-named"
    shutil.copytree(trained_text, outside_named, ignore=shutil.ignore_patterns("checkpoint-*"))
    (tmp_path / "elsewhere.pt").write_bytes(b"pickle")
    (outside_named / "extra.pt").symlink_to(tmp_path / "elsewhere.pt")
    pickled = tmp_path / "pickled-weights"
    pickled.mkdir()
    shutil.copy(trained_text / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    broken = tmp_path / "broken-metrics"
    shutil.copytree(trained_text, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    (broken / "metrics.json").write_text('{"test": {"accuracy": 0.9')  # cut off
    good = str(trained_text)
    return {
        "repo id without a namespace": ([good, "--repo-id", "just-a-name"], "expected USER/NAME"),
        "repo id with two slashes": ([good, "--repo-id", "a/b/c"], "expected USER/NAME"),
        "repo id with a space": ([good, "--repo-id", "tester/my model"], "repo id 'tester/my model'"),
        "missing folder": ([str(tmp_path / "nope"), "--repo-id", "tester/x"], "no such folder"),
        "a file, not a folder": ([str(a_file), "--repo-id", "tester/x"], "is a file"),
        "not a model folder": ([str(not_model), "--repo-id", "tester/x"], "config.json is missing"),
        "no weights": ([str(no_weights), "--repo-id", "tester/x"], "holds no model weights"),
        "weights only as a pickle": ([str(pickled), "--repo-id", "tester/x"], "only as pytorch_model.bin, a pickle"),
        "weights linked from outside": ([str(linked), "--repo-id", "tester/x"], "model.safetensors is a link to"),
        "metrics.json cut off": (
            [str(broken), "--repo-id", "tester/x"],
            "metrics.json: not the file hf_finetune wrote",
        ),
        "include names no file": ([good, "--repo-id", "tester/x", "--include", "optimiser.pt"], "Did you mean"),
        "include names a checkpoint file only": (
            [good, "--repo-id", "tester/x", "--include", "scheduler.pt"],
            "add --include-checkpoints",
        ),
        "include names a link out of the folder": (
            [str(outside_named), "--repo-id", "tester/x", "--include", "extra.pt"],
            "extra.pt is a link to a place outside",
        ),
    }


def test_push_refuses_bad_input_before_any_upload(trained_text: Path, hub, tmp_path: Path):
    cases = _bad_folders(trained_text, tmp_path)
    clients = Clients(hub.url, hub.token, tmp_path / "home")
    before = _digest(trained_text)
    for name, (args, expected) in cases.items():
        done = clients.cli("push", *args)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and expected in done.stderr, (name, done.stderr[-2000:])
        assert done.stderr.count("error:") == 1, name
    assert not hub.repos and not [r for r in hub.requests if r.path != "/api/agent-harnesses"]
    assert _digest(trained_text) == before


def test_staging_rewrites_local_paths_in_every_spelling_and_leaves_the_rest(tmp_path: Path):
    out = tmp_path / "café runs" / "run"
    data = tmp_path / "données" / "pets"
    (out / "checkpoint-6").mkdir(parents=True)
    data.mkdir(parents=True)
    (out / "config.json").write_text('{"label": "/m/01g317"}')
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "recipe.yaml").write_text(
        yaml.safe_dump({"data": {"source": str(data)}, "training": {"output_dir": str(out)}})
    )
    (out / "checkpoint-6" / "trainer_state.json").write_text(
        json.dumps({"best_model_checkpoint": f"{out}/checkpoint-6"})
    )
    (out / "metrics.json").write_text(
        json.dumps({"run": {"data": f"imagefolder folder {data}", "log": f"{Path.home()}/x.log"}, "label": "/m/01g317"})
    )
    other = Path("/" + next(p.name for p in Path("/").iterdir() if p.is_dir())) / "somewhere" / "else.csv"
    card = (
        f'classifier = pipeline("image-classification", model="{out}")\n'
        f"Source: imagefolder folder {data}.\n"
        # YAML's own spelling: "\xE9" for é (on one line, as the card writes it, however long the tmp path is)
        f"{yaml.safe_dump({'source': str(data)}, width=float('inf'))}"
        f"also {other}, see https://huggingface.co/docs/hub and /m/01g317 and {data}.csv\n"
    )
    (out / "README.md").write_text(card)
    before = _digest(out)

    staged = stage_folder(out, tmp_path / "stage", "me/model", include_checkpoints=True)
    stage = tmp_path / "stage"
    pushed = (stage / "README.md").read_text()
    assert pushed == (
        'classifier = pipeline("image-classification", model="me/model")\n'
        "Source: imagefolder folder .../pets.\n"
        'source: ".../pets"\n'
        "also .../else.csv, see https://huggingface.co/docs/hub and /m/01g317 and .../pets.csv\n"
    )
    assert json.loads((stage / "metrics.json").read_text()) == {
        "run": {"data": "imagefolder folder .../pets", "log": "~/x.log"},
        "label": "/m/01g317",
    }
    assert yaml.safe_load((stage / "recipe.yaml").read_text()) == {
        "data": {"source": ".../pets"},
        "training": {"output_dir": "run"},
    }
    assert json.loads((stage / "checkpoint-6" / "trainer_state.json").read_text()) == {
        "best_model_checkpoint": "run/checkpoint-6"
    }
    assert (stage / "config.json").is_symlink()  # a model file is pushed as it is
    assert "config.json" in staged and _digest(out) == before
