"""`hf-finetune` and `python -m hf_finetune`: train | sweep | eval | predict | export | push | validate | recipes.

Heavy libraries are imported inside the commands so `--help` answers at once. Bad input ends with one
`error:` message and exit status 2, never a traceback — unless `--debug` (or HF_FINETUNE_DEBUG=1) asks for the
full traceback, the original exception included, to tell a bug in hf_finetune or a library from a mistake in the input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HFFinetuneError
from .names import EVALUATED_PREFIXES, METRIC_PREFIX, SPLIT_OF_PREFIX, TTA_VIEWS

if TYPE_CHECKING:
    from typing import TypeAlias

    # what `add_subparsers()` returns: a private class of argparse, so only named for the type checker
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXAMPLES = """examples:
  hf-finetune train quickstart                      # offline: simple CNN on scikit-learn's digits
  hf-finetune train recipes/image/resnet50.yaml data.source=./pets training.num_train_epochs=3
  accelerate launch -m hf_finetune train quickstart
  hf-finetune sweep my_recipe.yaml --trials 8       # Optuna over the recipe's sweep.space; again to resume
  hf-finetune eval outputs/quickstart
  hf-finetune predict outputs/quickstart cat.jpg dog.png --top-k 3
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune classifiers on the Hugging Face stack from YAML recipes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (
        _add_train,
        _add_sweep,
        _add_validate,
        _add_check,
        _add_eval,
        _add_predict,
        _add_export,
        _add_push,
        _add_recipes,
    ):
        add_command(sub)
    return parser


def _add_train(sub: Commands) -> None:
    train = sub.add_parser(
        "train",
        help="fine-tune as a recipe says",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("recipe", help="recipe file or shipped recipe name (see `hf-finetune recipes ls`)")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. training.learning_rate=1e-4"
    )
    train.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in output_dir")
    train.add_argument("--output-dir", help="same as training.output_dir=…")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in output_dir (training.resume_from_checkpoint=latest)",
    )
    # SUPPRESS: the subcommand's default must not overwrite a --debug given before the command
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def _add_sweep(sub: Commands) -> None:
    sw = sub.add_parser(
        "sweep",
        help="hyperparameter search over the recipe's sweep.space (Optuna), each trial an ordinary run",
        description="Trials go to OUTPUT/trial-000/… (OUTPUT: training.output_dir), the study to OUTPUT/sweep.db: "
        "running the same command again resumes the sweep. Prints the leaderboard and names the best trial's folder.",
    )
    sw.add_argument("recipe", help="recipe file or shipped recipe name, with a sweep: section")
    sw.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for train")
    sw.add_argument("--trials", type=_positive_int, help="trials to finish in total (default: sweep.trials)")
    sw.add_argument("--output-dir", help="the sweep folder; same as training.output_dir=…")
    sw.add_argument(
        "--overwrite", action="store_true", help="start the sweep over (only what hf_finetune wrote is removed)"
    )
    sw.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def _add_validate(sub: Commands) -> None:
    check = sub.add_parser("validate", help="check a recipe and print it fully resolved, without training")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _add_check(sub: Commands) -> None:
    check = sub.add_parser(
        "check",
        help="the whole data pre-flight (columns, labels, images, duplicates, groups) without training",
        description="Prints one report. Exit status: 0 nothing is an error (warnings may be listed); 2 something is.",
    )
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _add_eval(sub: Commands) -> None:
    ev = sub.add_parser("eval", help="metrics of a trained model (its folder is never written)")
    ev.add_argument("output_dir", help="a folder written by `hf-finetune train`")
    ev.add_argument("--data", help="another data source (any data.source a recipe takes); default: the recipe's")
    ev.add_argument("--split", help="split to evaluate; default: test, else validation")
    ev.add_argument(
        "--batch-size", type=_positive_int, help="default: the recipe's training.per_device_eval_batch_size"
    )
    ev.add_argument(
        "--output",
        metavar="DIR",
        help="also write the error analysis (predictions_<split>.jsonl, errors_<split>.md, for images "
        "errors_<split>.png) and eval_metrics.json into DIR, a folder outside the trained one (single-label models)",
    )
    ev.add_argument("--overwrite", action="store_true", help="replace those files if DIR already has them")
    ev.add_argument(
        "--tta",
        choices=TTA_VIEWS,
        help="image models: test-time augmentation, each image scored as the average over its views (flip: it and "
        "its mirror; crops: it and five 7/8 crops); default: the recipe's metrics.tta (none unless it set one)",
    )


def _add_predict(sub: Commands) -> None:
    pr = sub.add_parser(
        "predict",
        help="top-k labels for images or texts, as JSON lines (or CSV); streamed, so inputs may be any number",
        description='Exit status: 0 all predicted; 1 some inputs could not be read (their rows carry "error"); '
        "2 refused before running.",
    )
    pr.add_argument("output_dir")
    pr.add_argument(
        "images",
        nargs="*",
        help="image models: image files, folders (their images, recursively; hidden files skipped) or quoted glob "
        "patterns ('photos/**/*.jpg')",
    )
    pr.add_argument("--text", action="append", default=[], help="a text to classify (text models; repeatable)")
    pr.add_argument(
        "--text-pair",
        action="append",
        default=[],
        help="models trained on sentence pairs: the second text of the pair, one per --text, in the same order",
    )
    pr.add_argument(
        "--input",
        "--file",
        dest="input",
        help="a file of inputs: .txt (one per line), .csv or .jsonl with the recipe's data.image_column (image "
        "models; default image) or data.text_column (default text) and data.text_pair_column (pair models). "
        "Relative image paths are taken from the file's folder, as training reads a CSV's",
    )
    pr.add_argument("--top-k", type=_positive_int, default=5, help="how many labels to list per input (default 5)")
    pr.add_argument("--batch-size", type=_positive_int, default=32, help="inputs per batch (default 32)")
    pr.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="default auto: cuda, else mps, else cpu",
    )
    pr.add_argument("--output", help="write the rows to this .jsonl or .csv file instead of stdout")
    pr.add_argument("--format", choices=["jsonl", "csv"], help="the format on stdout (default jsonl)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    pr.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal and there is more than one batch)",
    )
    pr.add_argument(
        "--onnx",
        action="store_true",
        help="run the folder's ONNX export (hf-finetune export) with onnxruntime (on CUDA with onnxruntime-gpu)",
    )
    pr.add_argument(
        "--tta",
        choices=TTA_VIEWS,
        default="none",
        help="image models: test-time augmentation, scores averaged over each image's views (flip: it and its "
        "mirror; crops: it and five 7/8 crops); default none, as pipeline() scores",
    )


def _add_export(sub: Commands) -> None:
    ex = sub.add_parser(
        "export",
        help="export a trained model to ONNX (OUTPUT/onnx/), verified against PyTorch on the validation split",
    )
    ex.add_argument("output_dir", help="a folder written by `hf-finetune train`")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="the export format (default onnx)")
    ex.add_argument("--quantize", choices=["int8"], help="also write an int8 model (onnxruntime dynamic quantization)")
    ex.add_argument(
        "--tolerance",
        type=_positive_float,
        help="the largest |Δlogit| between ONNX and PyTorch accepted (default 1e-3); beyond it the export is refused",
    )
    ex.add_argument(
        "--samples", type=_positive_int, help="verify on the first N rows of the validation split (default: all)"
    )
    ex.add_argument("--batch-size", type=_positive_int, default=32, help="rows per verification batch (default 32)")


def _add_push(sub: Commands) -> None:
    push = sub.add_parser("push", help="upload a trained output folder to the Hugging Face Hub")
    push.add_argument("output_dir")
    push.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument(
        "--include-checkpoints", action="store_true", help="also upload checkpoint-* folders (without their pickles)"
    )
    push.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also upload the pickle files (*.bin, *.pt, *.pth, *.pkl, *.pickle, *.ckpt: optimizer.pt, scheduler.pt, "
        "rng_state*.pth, training_args.bin) that PATTERN names; left out by default, as loading a pickle can run "
        "code. A name matches at any depth (optimizer.pt), a pattern with / the path in the folder "
        "(checkpoint-6/optimizer.pt); repeatable",
    )
    push.add_argument(
        "--delete-missing",
        action="store_true",
        help="delete every file on the branch that this push does not bring, including files added on the Hub "
        "(default: only files an earlier hf_finetune push left)",
    )


def _add_recipes(sub: Commands) -> None:
    rec = sub.add_parser("recipes", help="list, show or copy the shipped recipes")
    rsub = rec.add_subparsers(dest="recipes_command", required=True, metavar="ACTION")
    rsub.add_parser("ls", help="list the shipped recipes")
    show = rsub.add_parser("show", help="print a shipped recipe")
    show.add_argument("name")
    cp = rsub.add_parser("cp", help="copy a shipped recipe to edit it")
    cp.add_argument("name")
    cp.add_argument("path", help="destination file or folder")


DEBUG_HELP = "on an error, show the full traceback with its original cause (also: HF_FINETUNE_DEBUG=1)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    finally:
        _close_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like `parse_args`, but KEY=VALUE overrides (`train R --output-dir X a.b=1`) and predict's images may also come
    after options, and `--debug` is taken after any command. argparse stops filling a positional list at the first
    option."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if "--debug" in extra:
        args.debug = True
        extra = [e for e in extra if e != "--debug"]
    if hasattr(args, "images"):  # predict: image paths may follow options too (`predict OUT --tta flip a.png`)
        args.images = [*args.images, *(e for e in extra if not e.startswith("-"))]
        extra = [e for e in extra if e.startswith("-")]
    takes_overrides = hasattr(args, "overrides")
    unknown = [e for e in extra if not (takes_overrides and _looks_like_override(e))]
    if unknown:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    args.debug = bool(getattr(args, "debug", False)) or debug_from_env()
    return args


def _looks_like_override(text: str) -> bool:
    return not text.startswith("-") and "=" in text


def debug_from_env() -> bool:
    return os.environ.get("HF_FINETUNE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except HFFinetuneError as err:
        signum = getattr(err, "signum", None)
        if signum is not None:  # stopped by SIGINT/SIGTERM after saving: the shell's 128 + signal convention
            print(f"stopped: {err}", file=sys.stderr)
            return 128 + signum
        if getattr(args, "debug", False):
            show_causes(err)
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def show_causes(err: BaseException) -> None:
    """Undo `raise ... from None` along the chain, so the traceback shows the exception that started it."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__suppress_context__ = False
        current = current.__cause__ or current.__context__


def _close_process_group() -> None:
    """Under accelerate/torchrun, leave the process group cleanly: exiting with it open can abort at teardown."""
    torch = sys.modules.get("torch")  # only if a command imported it; --help must stay light
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"training.output_dir={args.output_dir}")
    if getattr(args, "overwrite", False):
        overrides.append("overwrite=true")
    if getattr(args, "resume", False):
        overrides.append("training.resume_from_checkpoint=latest")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .api import finetune
    from .formats import summary_lines

    result = finetune(args.recipe, _overrides(args))
    fmt = result.recipe.data.label_format
    test = METRIC_PREFIX["test"]
    for prefix in EVALUATED_PREFIXES:
        if prefix in result.metrics:
            m = result.metrics[prefix]
            # one table: the test split's, else validation's
            table = prefix == test or test not in result.metrics
            lines = summary_lines(fmt, SPLIT_OF_PREFIX[prefix], m, table=table)
            if "baseline_linear" in m:
                lines.insert(2 if "baseline" in m else 1, _linear_baseline_line(m["baseline_linear"], fmt))
            print("\n" + "\n".join(lines))
    print(f"\noutputs: {result.output_dir.resolve()}")
    example = '--text "some text"' if result.recipe.task == "text-classification" else "IMAGE.png"
    if result.recipe.data.text_pair_column:
        example += ' --text-pair "its second text"'
    print(f"  try:   hf-finetune predict {result.output_dir} {example}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .tuning import LEADERBOARD_MD, leaderboard_markdown, sweep

    result = sweep(args.recipe, _overrides(args), trials=args.trials)
    if not result.rows:  # a process other than the first under a launcher: rank 0 reports
        return 0
    keys = list(result.rows[0]["params"])
    print("\n" + leaderboard_markdown(result.rows, keys, result.metric))
    print(f"\nleaderboard: {result.output_dir / LEADERBOARD_MD}")
    if result.best is None:
        print("best: no trial completed")
        return 0
    print(f"best: {result.best['folder']} ({result.metric} {result.best['score']:.4f}): {result.best_dir}")
    print(f"  try:   hf-finetune eval {result.best_dir}")
    return 0


def _linear_baseline_line(b: dict[str, Any], fmt: str = "single") -> str:
    """metrics.baseline linear, printed as the constant baseline is: its scores on this split."""
    from .formats import headline_scores

    what = "this run itself (linear_probe)" if b.get("same_as") else "frozen pretrained features"
    if "C" in b:
        what += f", C={b['C']:g}"
    elif "alpha" in b:
        what += f", alpha={b['alpha']:g}"
    kind = {"single": "logistic-regression", "multi_label": "per-label logistic-regression"}.get(
        fmt, "ridge-regression"
    )
    return f"  {kind} baseline ({what}): {headline_scores(fmt, b)}"


def cmd_validate(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .api import check_data

    report = check_data(args.recipe, args.overrides)
    print("\n".join(report["lines"]))
    if report["errors"]:
        raise HFFinetuneError(f"{len(report['errors'])} problem(s) found:\n" + "\n".join(report["errors"]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import evaluate
    from .files import finite_only
    from .formats import saved_label_format, summary_lines

    result = evaluate(
        args.output_dir,
        data=args.data,
        split=args.split,
        batch_size=args.batch_size,
        output=args.output,
        overwrite=args.overwrite,
        tta=args.tta,
    )
    lines = summary_lines(saved_label_format(args.output_dir), result["split"], result, table=True)
    lines[0] += f" of {result['data']}" + (f" (tta {result['tta']})" if result["tta"] != "none" else "")
    if result.get("files"):
        lines.append(f"error analysis in {args.output}: {', '.join(result['files'])}")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(finite_only(result), allow_nan=False))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .prediction import command

    return command(args)


def cmd_export(args: argparse.Namespace) -> int:
    from .api import export
    from .names import ONNX_DIR, ONNX_MODEL_FILE
    from .onnx_export import summary

    result = export(
        args.output_dir,
        args.format,
        quantize=args.quantize,
        tolerance=args.tolerance,
        samples=args.samples,
        batch_size=args.batch_size,
    )
    print(f"onnx: {Path(args.output_dir) / ONNX_DIR / ONNX_MODEL_FILE}", file=sys.stderr)
    for line in summary(result):
        print(f"  {line}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .api import setup_logging
    from .hub import push_folder

    setup_logging()  # what is left out (pickles, links, checkpoints) and what is deleted on the branch is said there

    url = push_folder(
        args.output_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        include_checkpoints=args.include_checkpoints,
        include=args.include,
        delete_missing=args.delete_missing,
    )
    print(f"pushed {args.output_dir} to {url}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from .recipe import find_recipe, list_recipes, shipped_dir

    if args.recipes_command == "ls":
        header = ("NAME", "TASK", "MODEL", "STRATEGY", "FILE")
        rows = [header]
        for name, path in list_recipes().items():
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            rows.append(
                (
                    name,
                    raw.get("task", "image-classification"),
                    (raw.get("model") or {}).get("name", "?"),
                    (raw.get("transfer") or {}).get("strategy", "full"),
                    str(path.relative_to(shipped_dir("recipes"))),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    path = find_recipe(args.name)
    if args.recipes_command == "show":
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    dest = Path(args.path)
    if dest.is_dir():
        dest = dest / path.name
    if dest.exists():
        raise HFFinetuneError(f"{dest} already exists; nothing was copied. Choose another path or remove it first.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    print(f"copied {path.name} to {dest}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "sweep": cmd_sweep,
    "validate": cmd_validate,
    "check": cmd_check,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "push": cmd_push,
    "recipes": cmd_recipes,
}
