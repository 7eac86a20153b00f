"""The bad-input catalogue: what a new user gets wrong, driven through the CLI as they would type it.

Every case must end with exit status 2 (1 for the inputs `predict` reports as rows with "error"), no traceback, a
message naming what was wrong (key, file, row or label), and every file the user already had — data, recipes, an
earlier run's output folder — byte-identical. The fixtures live under paths with spaces and non-ASCII characters, as
users' folders do. A few cases then run the corrected command, to show that nothing the failed run wrote stands in
its way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from conftest import text_data

REPO = Path(__file__).resolve().parents[1]
NAMES = {0: "zéro", 1: "un", 2: "deux"}


# --------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """`args` and `files` may name {images} {texts} {recipe} {text_recipe} {run} {out} {case} {vit} {bert}.

    `files`: path under {case} -> text, bytes, or ("copy", "{placeholder}") for a copy of a fixture folder,
    ("truncated-png",) for an image cut short, ("png",) for a good image."""

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of stderr naming what was wrong
    files: dict[str, object] = field(default_factory=dict)
    slow: bool = False  # needs torch and the data loaded before it fails
    status: int = 2  # 1: predict's unreadable inputs, reported as rows with "error" while the others are predicted


def case(
    id: str, args: str | tuple[str, ...], *expect: str, files: dict | None = None, slow: bool = False, status: int = 2
) -> Case:
    return Case(id, tuple(args.split("|")) if isinstance(args, str) else args, expect, files or {}, slow, status)


TRAIN = "train|{recipe}"
TEXT = "train|{text_recipe}"
OUT = "|--output-dir|{out}"

CASES = [
    # ---- recipe: values TrainingArguments takes without complaint but that make no sense
    case("epochs-zero", TRAIN + "|training.num_train_epochs=0" + OUT, "training.num_train_epochs", "got 0"),
    case("epochs-negative", TRAIN + "|training.num_train_epochs=-2" + OUT, "training.num_train_epochs", "got -2"),
    case("epochs-zero-validate", "validate|{recipe}|training.num_train_epochs=0", "training.num_train_epochs"),
    case("lr-negative", TRAIN + "|training.learning_rate=-0.001" + OUT, "training.learning_rate", "-0.001"),
    case("batch-zero", TRAIN + "|training.per_device_train_batch_size=0" + OUT, "per_device_train_batch_size"),
    case("eval-batch-zero", TRAIN + "|training.per_device_eval_batch_size=0" + OUT, "per_device_eval_batch_size"),
    case("accumulation-zero", TRAIN + "|training.gradient_accumulation_steps=0" + OUT, "gradient_accumulation_steps"),
    case("max-steps-zero", TRAIN + "|training.max_steps=0" + OUT, "training.max_steps", "got 0"),
    case("max-steps-below-minus-one", TRAIN + "|training.max_steps=-5" + OUT, "training.max_steps", "got -5"),
    case("label-smoothing-one", TRAIN + "|training.label_smoothing_factor=1" + OUT, "label_smoothing_factor"),
    case("save-total-limit-zero", TRAIN + "|training.save_total_limit=0" + OUT, "training.save_total_limit"),
    case("warmup-fractional-steps", TRAIN + "|training.warmup_steps=2.5" + OUT, "training.warmup_steps", "2.5"),
    case("seed-negative", TRAIN + "|training.seed=-1" + OUT, "training.seed"),
    case("data-seed-negative", TRAIN + "|data.seed=-1" + OUT, "data.seed", "got -1"),
    case("workers-negative", TRAIN + "|training.dataloader_num_workers=-1" + OUT, "dataloader_num_workers"),
    case(
        "all-at-once",
        TRAIN + "|training.learning_rate=-1|training.weight_decay=-0.1|training.max_grad_norm=-1" + OUT,
        "3 problems",
        "training.learning_rate",
        "training.weight_decay",
        "training.max_grad_norm",
    ),
    case(
        "scheduler-option-typo",
        TRAIN + "|training.lr_scheduler_type=cosine_with_restarts|training.lr_scheduler_kwargs={num_cycls: 2}" + OUT,
        "training.lr_scheduler_kwargs.num_cycls",
        "'num_cycles'",
    ),
    case(
        "scheduler-option-ignored",
        "validate|{recipe}|training.lr_scheduler_type=constant|training.lr_scheduler_kwargs={min_lr: 0.001}",
        "training.lr_scheduler_kwargs",
        "min_lr",
    ),
    case("tracker-not-installed", TRAIN + "|training.report_to=wandb" + OUT, "training.report_to", "'wandb'"),
    case("tracker-typo", "validate|{recipe}|training.report_to=[tensorbord]", "'tensorbord'", "'tensorboard'"),
    # ---- recipe: names and types
    # `no` itself is read as the string transformers takes (YAML 1.2); a real boolean is refused with the fix
    case("eval-strategy-false", TRAIN + "|training.eval_strategy=false" + OUT, "training.eval_strategy", "'no'"),
    case("eval-strategy-false-validate", "validate|{recipe}|training.eval_strategy=false", "training.eval_strategy"),
    case("training-key-typo", TRAIN + "|training.learnig_rate=0.1" + OUT, "training.learnig_rate", "learning_rate"),
    case("section-typo", TRAIN + "|trainig.num_train_epochs=1" + OUT, "trainig", "'training'"),
    case("task-typo", TRAIN + "|task=image-classfication" + OUT, "task", "'image-classification'"),
    case("strategy-typo", TRAIN + "|transfer.strategy=linear-probe" + OUT, "transfer.strategy", "'linear_probe'"),
    case("preset-typo", TRAIN + "|augmentation.preset=strnog" + OUT, "augmentation.preset", "'strong'"),
    case("epochs-not-a-number", TRAIN + "|training.num_train_epochs=three" + OUT, "training.num_train_epochs"),
    case("image-size-tiny", TRAIN + "|model.image_size=4" + OUT, "model.image_size"),
    case("top-k-zero-in-recipe", TRAIN + "|metrics.top_k=[0]" + OUT, "metrics.top_k"),
    case(
        "override-not-key-value", TRAIN + "|training.num_train_epochs" + OUT, "training.num_train_epochs", "KEY=VALUE"
    ),
    case(
        "recipe-not-yaml",
        "train|{case}/ma recette.yaml",
        "ma recette.yaml",
        "not valid YAML",
        files={"ma recette.yaml": "model: [simple_cnn\ndata: {source: x}\n"},
    ),
    case(
        "recipe-path-typo",  # item 3: a path that does not exist is not a shipped recipe
        "train|{case}/mes recettes/quickstart.yaml" + OUT,
        "mes recettes/quickstart.yaml",
        "no such file",
    ),
    case(
        "class-weights-length",
        TRAIN + "|loss.class_weights=[1.0,2.0]" + OUT,
        "loss.class_weights",
        "3 classes",
        slow=True,
    ),
    case("extra-metric-missing", TRAIN + "|metrics.extra=[métrique_absente]" + OUT, "métrique_absente", slow=True),
    # ---- data
    case("source-missing", TRAIN + "|data.source={case}/pas là" + OUT, "pas là", slow=True),
    case("files-wrong-type", TEXT + "|data.files=[{texts}/train.csv]" + OUT, "data.files"),
    case(
        "files-missing-file",
        TEXT + "|data.files.train={case}/absent.csv" + OUT,
        "absent.csv",
        slow=True,
    ),
    case("label-column-missing", TEXT + "|data.label_column=humeur" + OUT, "humeur", "sentiment", slow=True),
    case("text-column-missing", TEXT + "|data.text_column=avis" + OUT, "avis", "review", slow=True),
    case(
        "train-split-empty",
        TEXT + "|data.files.train={case}/vide.csv" + OUT,
        "vide.csv",
        files={"vide.csv": "review,sentiment\n"},
        slow=True,
    ),
    case(
        "csv-not-utf8",
        TEXT + "|data.files.train={case}/latin.csv" + OUT,
        "latin.csv",
        "data.encoding",
        files={"latin.csv": b"review,sentiment\n" + "très bien,positive\n".encode("latin-1") * 20},
        slow=True,
    ),
    case(
        "csv-empty-label",
        TEXT + "|data.files.train={case}/sans étiquette.csv" + OUT,
        "split 'train'",
        "'sentiment'",
        "rows 21,",
        files={"sans étiquette.csv": "review,sentiment\n" + "good day,positive\nbad day,negative\n" * 10 + "meh,\n"},
        slow=True,
    ),
    case(
        "csv-test-label-unseen",
        TEXT + "|data.files.test={case}/test.csv" + OUT,
        "'mixed'",
        files={"test.csv": "review,sentiment\ngood,positive\nso so,mixed\n"},
        slow=True,
    ),
    case(
        "text-file-named-jpg",
        TRAIN + "|data.source={case}/images" + OUT,
        "photo.jpg",
        files={"images": ("copy", "{images}"), "images/train/un/photo.jpg": "pas une image"},
        slow=True,
    ),
    case(
        "truncated-image",
        TRAIN + "|data.source={case}/images" + OUT,
        "cassé.png",
        files={"images": ("copy", "{images}"), "images/train/un/cassé.png": ("truncated-png",)},
        slow=True,
    ),
    case(
        "test-class-not-in-train",  # h5
        TRAIN + "|data.source={case}/images" + OUT,
        "trois",
        files={"images": ("copy", "{images}"), "images/test/trois/0.png": ("png",)},
        slow=True,
    ),
    case("test-split-missing", TRAIN + "|data.test_split=réserve" + OUT, "réserve", slow=True),
    # ---- model
    case(
        "simple-cnn-config-typo",
        TRAIN + "|model.config.filtrs=[4]" + OUT,
        "model.config",
        "filtrs",
        "'filters'",
        slow=True,
    ),
    case(
        "transformers-config-typo",
        TRAIN + "|model.name={vit}|model.image_size=null|model.config.hiden_dropout_prob=0.1" + OUT,
        "hiden_dropout_prob",
        "'hidden_dropout_prob'",
        slow=True,
    ),
    case(
        "timm-model-args-typo",
        TRAIN + "|model.name=timm:resnet18|model.pretrained=false|model.config={drop_rat: 0.1}" + OUT,
        "model.config.drop_rat",
        "'drop_rate'",
        slow=True,
    ),
    case(
        "timm-name-typo", TRAIN + "|model.name=timm:resnet81|model.config={}" + OUT, "resnet81", "resnet18", slow=True
    ),
    case("num-labels-in-config", TRAIN + "|model.config.num_labels=7" + OUT, "model.config.num_labels", slow=True),
    case("model-folder-missing", TRAIN + "|model.name={case}/pas de modèle" + OUT, "pas de modèle", slow=True),
    case("weights-missing", TRAIN + "|model.weights={case}/poids.safetensors" + OUT, "poids.safetensors", slow=True),
    case(
        "weights-do-not-fit",
        TRAIN + "|model.weights={vit}/model.safetensors" + OUT,
        "model.safetensors",
        "does not fit",
        slow=True,
    ),
    case(
        "text-task-image-model", TEXT + "|model.name={vit}" + OUT, "{vit}", "ViT", "sequence classification", slow=True
    ),  # h5
    # ---- output folder
    case(
        "output-holds-earlier-run",
        "train|{recipe}|--output-dir|{run}",
        "already holds results of an earlier run",
        "--overwrite",
    ),
    case(
        "output-under-a-file",  # h1
        TRAIN + "|--output-dir|{case}/un fichier.txt/run",
        "un fichier.txt",
        files={"un fichier.txt": "pas un dossier"},
    ),
    case("resume-without-checkpoint", TRAIN + OUT + "|--resume", "checkpoint", slow=True),
    # ---- eval / predict
    case("eval-not-a-model", "eval|{case}/pas un modèle", "pas un modèle", files={"pas un modèle/notes.txt": "x"}),
    case("eval-missing-folder", "eval|{case}/absent", "absent"),
    case("eval-split-missing", "eval|{run}|--split|réserve", "réserve", slow=True),
    case("eval-data-missing", "eval|{run}|--data|{case}/pas là", "pas là", slow=True),
    case(
        "eval-data-truncated-image",  # h5
        "eval|{run}|--data|{case}/images",
        "cassé.png",
        files={"images": ("copy", "{images}"), "images/test/un/cassé.png": ("truncated-png",)},
        slow=True,
    ),
    case("eval-batch-size-zero", "eval|{run}|--batch-size|0", "--batch-size"),
    case("predict-missing-image", "predict|{run}|{case}/absente.png", "absente.png", slow=True, status=1),
    case(
        "predict-not-an-image",
        "predict|{run}|{case}/notes.txt",
        "notes.txt",
        files={"notes.txt": "pas une image"},
        slow=True,
        status=1,
    ),
    case(
        "predict-truncated-image",
        "predict|{run}|{case}/cassé.png",
        "cassé.png",
        files={"cassé.png": ("truncated-png",)},
        slow=True,
        status=1,
    ),
    case("predict-top-k-zero", "predict|{run}|{images}/test/un/0.png|--top-k|0", "--top-k"),  # h5
    case("predict-top-k-negative", "predict|{run}|{images}/test/un/0.png|--top-k|-3", "--top-k"),  # h5
    case("predict-text-on-image-model", "predict|{run}|--text|bonjour", "--text", "image model"),
    case("predict-file-missing", "predict|{run}|--file|{case}/liste.txt", "liste.txt"),
    case("predict-nothing", "predict|{run}", "nothing to predict"),
    # ---- push (offline: each must be refused before any network use)
    case("push-missing-folder", "push|{case}/absent|--repo-id|moi/modèle", "absent"),
    case("push-repo-id-no-slash", "push|{run}|--repo-id|modèle", "repo id", "'modèle'"),
    case("push-not-a-run", "push|{case}/vide|--repo-id|moi/modele", "vide", files={"vide/notes.txt": "x"}),
    # ---- recipes
    case(
        "recipes-cp-onto-file",
        "recipes|cp|quickstart|{case}/ma recette.yaml",
        "ma recette.yaml",
        "already exists",
        files={"ma recette.yaml": "# mine\n"},
    ),
    case("recipes-show-typo", "recipes|show|quickstrat", "quickstrat", "'quickstart'"),
]


# --------------------------------------------------------------------------------------------- fixtures


def _png(size: int = 16, shade: int = 128) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 255 - shade, shade // 2)).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png() -> bytes:
    """An image that does not compress to a few bytes, so cutting it in half really truncates the pixel data."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_FINETUNE_DEBUG", None)
    return env


# These go through `python -m hf_finetune` in a fresh process, one or more per area, as a user's shell would run them;
# the rest call the same entry point, `hf_finetune.cli.main`, in this process (the same code path without paying
# ~3 s of imports per case, which kept the catalogue from fitting the suite's time budget).
IN_A_SUBPROCESS = {
    "epochs-zero",
    "all-at-once",
    "recipe-path-typo",
    "eval-strategy-false",
    "csv-empty-label",
    "truncated-image",
    "transformers-config-typo",
    "output-under-a-file",
    "eval-data-truncated-image",
    "predict-top-k-zero",
    "push-repo-id-no-slash",
    "recipes-cp-onto-file",
}


def cli_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess:
    """`hf_finetune.cli.main(args)` run in `cwd`, with what it printed; an exception escaping it fails the test
    with its traceback (the in-process form of "no traceback")."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from hf_finetune.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HF_FINETUNE_DEBUG", raising=False)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse ends a bad command line this way, after printing its message
            code = exit_.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_finetune", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_vit_dir: Path, tiny_bert_dir: Path, text_csv: Path) -> dict[str, Path]:
    """The user's files: image folder, CSVs, two recipes and an earlier run, under `données d'essai/`."""
    import yaml

    root = tmp_path_factory.mktemp("catalogue") / "données d'essai"
    images = root / "mes images"
    for split, count in (("train", 8), ("test", 3)):
        for label, name in NAMES.items():
            folder = images / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.png").write_bytes(_png(shade=40 + 80 * label + i))
    texts = root / "mes textes"
    shutil.copytree(text_csv, texts)
    recipe = root / "ma recette.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "essai",
                "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [4], "dense_units": [8]}},
                "data": {"source": str(images)},
                "training": {
                    "output_dir": str(root / "sorties" / "essai"),
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": 8,
                    "disable_tqdm": True,
                },
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    text_recipe = root / "recette texte.yaml"
    text_recipe.write_text(
        yaml.safe_dump(
            {
                "name": "texte",
                "task": "text-classification",
                "model": {"name": str(tiny_bert_dir)},
                "data": text_data(texts),
                "training": {"output_dir": str(root / "sorties" / "texte"), "num_train_epochs": 1},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    run = root / "première exécution"
    done = cli(["train", str(recipe), "--output-dir", str(run)], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "root": root,
        "images": images,
        "texts": texts,
        "recipe": recipe,
        "text_recipe": text_recipe,
        "run": run,
        "vit": tiny_vit_dir,
        "bert": tiny_bert_dir,
    }


def _fill(text: str, places: dict[str, Path]) -> str:
    for name, path in places.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _make_files(files: dict[str, object], places: dict[str, Path]) -> None:
    for rel, content in files.items():
        path = places["case"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "copy":
            shutil.copytree(_fill(content[1], places), path)
        elif isinstance(content, tuple) and content[0] == "png":
            path.write_bytes(_png())
        elif isinstance(content, tuple) and content[0] == "truncated-png":
            whole = _noise_png()
            path.write_bytes(whole[: len(whole) // 2])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content), encoding="utf-8")


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (and the roots' own names, so a vanished folder shows)."""
    out = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        out[str(root)] = "dir" if root.is_dir() else "absent"
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _places(world: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    case_dir = tmp_path / "cas à l'étude"
    case_dir.mkdir()
    return {**world, "case": case_dir, "out": tmp_path / "nouvelle sortie" / "run"}


# --------------------------------------------------------------------------------------------- the test


def _params():
    for c in CASES:
        yield pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])


def test_catalogue_is_broad():
    """At least 40 distinct bad inputs, spread over every part a user touches."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    commands = {c.args[0] for c in CASES}
    assert {"train", "validate", "eval", "predict", "push", "recipes"} <= commands
    # the real command line is exercised for every command too
    assert set(ids) >= IN_A_SUBPROCESS
    assert {c.args[0] for c in CASES if c.id in IN_A_SUBPROCESS} >= commands - {"validate"}


@pytest.mark.parametrize("bad", list(_params()))
def test_bad_input(bad: Case, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    places = _places(world, tmp_path)
    _make_files(bad.files, places)
    protected = [world["root"], world["vit"], world["bert"], places["case"]]
    before = tree_hashes(*protected)

    args = [_fill(a, places) for a in bad.args]
    run = cli if bad.id in IN_A_SUBPROCESS else partial(cli_in_process, monkeypatch=monkeypatch)
    done = run(args, places["case"])

    assert done.returncode == bad.status, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # exit 1 (predict's unreadable inputs): the reason is in the input's row on stdout, the count on stderr
    said = done.stderr if bad.status == 2 else done.stdout
    assert bad.status == 2 or "could not be read" in done.stderr, done.stderr[-3000:]
    for text in bad.expect:
        assert _fill(text, places) in said, f"{text!r} not named in:\n{said[-3000:]}"
    assert tree_hashes(*protected) == before, "a file the user already had was changed"


# A failed run must leave nothing that stands in the way of the corrected command (same output folder).
RERUNS = [
    # (id, bad overrides, corrected overrides, files under {case}, file to delete before the corrected run)
    ("lr-negative", ["training.learning_rate=-0.001"], ["training.learning_rate=0.001"], {}, None),
    ("class-weights-length", ["loss.class_weights=[1.0,2.0]"], ["loss.class_weights=[1.0,2.0,1.0]"], {}, None),
    (
        "truncated-image",
        ["data.source={case}/images"],
        ["data.source={case}/images"],
        {"images": ("copy", "{images}"), "images/train/un/cassé.png": ("truncated-png",)},
        "images/train/un/cassé.png",
    ),
    (
        "scheduler-crash-at-start",
        ["training.lr_scheduler_type=cosine_with_restarts", "training.lr_scheduler_kwargs={num_cycls: 2}"],
        ["training.lr_scheduler_type=cosine_with_restarts", "training.lr_scheduler_kwargs={num_cycles: 2}"],
        {},
        None,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("bad", "good", "files", "remove"), [pytest.param(*r[1:], id=r[0]) for r in RERUNS])
def test_corrected_rerun_succeeds(bad, good, files, remove, world: dict[str, Path], tmp_path: Path):
    places = _places(world, tmp_path)
    _make_files(files, places)
    base = ["train", str(world["recipe"])]
    out = ["--output-dir", str(places["out"])]

    failed = cli([*base, *(_fill(o, places) for o in bad), *out], places["case"])
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    if remove:
        (places["case"] / remove).unlink()
    fixed = cli([*base, *(_fill(o, places) for o in good), *out], places["case"])

    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert (places["out"] / "metrics.json").is_file()


# --------------------------------------------------------------------------------------------- what stays accepted


def test_sensible_values_next_to_the_refused_ones_are_accepted():
    """The range checks refuse only nonsense: epochs are unused once max_steps is set, 0 is a valid learning rate
    and warm-up fraction, and a scheduler's real options pass."""
    from hf_finetune.recipe import load_recipe

    base = {"model": {"name": "simple_cnn"}, "data": {"source": "builtin:digits"}}
    training = {
        "num_train_epochs": 0,
        "max_steps": 5,
        "learning_rate": 0,
        "warmup_steps": 0.0,
        "save_total_limit": 1,
        "label_smoothing_factor": 0.1,
        "lr_scheduler_type": "cosine_with_restarts",
        "lr_scheduler_kwargs": {"num_cycles": 2},
    }
    recipe = load_recipe({**base, "training": training})
    assert recipe.training["max_steps"] == 5 and recipe.training["lr_scheduler_kwargs"] == {"num_cycles": 2}


def test_known_config_keys_are_honoured(tiny_vit_dir: Path):
    """A real field, a keyword every transformers config takes, and a simple_cnn option reach the built model."""
    from hf_finetune.recipe import ModelSpec
    from hf_finetune.tasks import image_classification

    spec = ModelSpec(name=str(tiny_vit_dir), config={"hidden_dropout_prob": 0.25, "attn_implementation": "eager"})
    vit = image_classification.build_model(spec, ["a", "b"]).model
    assert vit.config.hidden_dropout_prob == 0.25 and vit.config._attn_implementation == "eager"
    cnn = image_classification.build_model(ModelSpec(name="simple_cnn", config={"filters": [3]}), ["a", "b"]).model
    assert cnn.config.filters == [3]
