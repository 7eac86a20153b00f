"""Predicting over many inputs, streamed: inputs expanded and read lazily (folders, globs, .txt/.csv/.jsonl files),
predicted `batch_size` at a time on the chosen device, and each row written (and flushed) before the next batch is
read, so memory stays flat in the number of inputs. An input that cannot be read is a row with `error`.

Named `prediction`, not `predict`: a submodule `hf_finetune.predict` would shadow the `hf_finetune.predict` function.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import glob
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .data.sources import IMAGE_EXTENSIONS
from .errors import DataError, HFFinetuneError

if TYPE_CHECKING:
    import argparse

    import torch

    from .tasks import PredictInput

DEVICES = ("auto", "cpu", "cuda", "mps")
INPUT_SUFFIXES = (".txt", ".csv", ".jsonl")
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class Unreadable:
    """An input row that could not be read (bad JSON, undecodable bytes): it becomes a row with `error`."""

    fields: dict[str, Any]
    error: str


# --------------------------------------------------------------------------------------------- predicting


def resolve_device(name: str | None) -> torch.device:
    """`auto`/None: cuda if available, else mps, else cpu. A device asked for but not available is refused."""
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    if torch.backends.mps.is_available():
        available.insert(-1, "mps")
    if name in (None, "auto"):
        return torch.device(available[0])
    if name.split(":")[0] not in DEVICES[1:]:
        raise HFFinetuneError(f"device {name!r}: expected one of {list(DEVICES)}")
    if name.split(":")[0] not in available:
        raise HFFinetuneError(
            f"device {name!r} is not available on this machine (torch {torch.__version__} sees none); "
            f"available: {', '.join(available)}. Use --device {available[0]} (or auto)"
        )
    return torch.device(name)


def iter_predictions(
    output_dir: str | Path,
    inputs: Iterable[PredictInput],
    top_k: int = 5,
    *,
    onnx: bool = False,
    batch_size: int = 32,
    device: str | None = None,
    tta: str = "none",
) -> Iterator[dict[str, Any]]:
    """Rows as `predict` returns them, lazily: `inputs` (any iterable, even an endless one) is read `batch_size` at
    a time, and a batch's rows are yielded before the next batch is read. The model loads when this is called.
    `tta` (image models): flip or crops averages each image's scores over its views (hf_finetune/tta.py), with the
    PyTorch model or the ONNX export alike."""
    from .recipe import is_count, load_saved_recipe
    from .tasks import get_task, task_of_saved
    from .tta import check_tta, wrap

    for name, value in (("top_k", top_k), ("batch_size", batch_size)):
        if not is_count(value):
            raise HFFinetuneError(f"{name} {value!r}: give a whole number of at least 1")
    task = get_task(task_of_saved(output_dir))
    tta = check_tta(tta, task.NAME)
    pair_column = None
    if "text_pair" in task.INPUTS:
        pair_column = load_saved_recipe(output_dir, task.NAME).data.text_pair_column
    chosen = resolve_device(device)
    built = task.load_trained(output_dir)
    if onnx:
        from .onnx_export import load_exported

        built = replace(built, model=load_exported(Path(output_dir), built.model, chosen))
        chosen = resolve_device("cpu")  # onnxruntime takes its inputs from CPU memory and places them itself
    else:
        built.model.to(chosen)
    built = replace(built, model=wrap(built.model, tta))
    return _stream(task, built, iter(inputs), top_k, batch_size, chosen, (pair_column, Path(output_dir)))


def _stream(task, built, inputs: Iterator[Any], top_k, batch_size, device, pairs) -> Iterator[dict[str, Any]]:
    for start in itertools.count(0, batch_size):
        batch = list(itertools.islice(inputs, batch_size))
        if not batch:
            return
        good = [x for x in batch if not isinstance(x, Unreadable)]
        if "text_pair" in task.INPUTS:
            check_pairs(good, *pairs, start)
        predicted = iter(task.predict(built, good, top_k, device) if good else [])
        for item in batch:
            yield {**item.fields, "error": item.error} if isinstance(item, Unreadable) else next(predicted)


def check_pairs(inputs: Sequence[PredictInput], pair_column: str | None, output_dir: Path, start: int = 0) -> None:
    """A model trained on pairs takes (text, text_pair) tuples, one trained on single texts takes texts."""
    pairs = [isinstance(x, (tuple, list)) for x in inputs]
    if pair_column and not all(pairs):
        raise DataError(
            f"{output_dir} was trained on sentence pairs (data.text_pair_column: {pair_column}): give each input as "
            "a pair (text, text_pair); on the command line --text A --text-pair B, or a .csv/.jsonl with both columns"
        )
    if not pair_column and any(pairs):
        raise DataError(f"{output_dir} was trained on single texts, not pairs: give one text per input")
    bad = [start + i for i, x in enumerate(inputs) if pairs[i] and len(x) != 2]
    if bad:
        raise DataError(f"inputs {bad[:10]}: a sentence pair is two texts (text, text_pair)")


# --------------------------------------------------------------------------------------------- image arguments


def expand_image_args(args: Sequence[str]) -> Iterator[str]:
    """Each argument a file, a folder (its images, recursively) or a glob pattern (`**` recursive), lazily, in a
    fixed order (sorted within each folder). A folder or pattern without images is refused here, before any model
    loads; a missing plain file is left to become a row with `error`."""
    for arg in args:
        if glob.has_magic(arg):
            if next(_glob_images(arg), None) is None:
                raise DataError(f"{arg}: the pattern matches no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif Path(arg).expanduser().is_dir() and next(_walk_images(Path(arg).expanduser()), None) is None:
            raise DataError(
                f"{arg}: the folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}; hidden ones skipped)"
            )
    return itertools.chain.from_iterable(map(_expand_one, args))


def _expand_one(arg: str) -> Iterator[str]:
    if glob.has_magic(arg):
        return _glob_images(arg)
    path = Path(arg).expanduser()
    return _walk_images(path) if path.is_dir() else iter([arg])


def _is_image(entry: os.DirEntry) -> bool:
    return Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS and entry.is_file()


def _entries(folder: Path) -> list[os.DirEntry]:
    """One folder's entries, hidden ones left out, sorted by name (os.scandir's order is the file system's)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def _walk_images(folder: Path) -> Iterator[str]:
    for entry in _entries(folder):
        if entry.is_dir():
            yield from _walk_images(Path(entry.path))
        elif _is_image(entry):
            yield entry.path


def _glob_images(pattern: str) -> Iterator[str]:
    """glob's matching (hidden names only by a pattern starting with a dot), walked in sorted order and lazily."""
    parts = Path(os.path.expanduser(pattern)).parts
    if Path(parts[0]).is_absolute():
        return _glob_parts(Path(parts[0]), parts[1:])
    return _glob_parts(Path(), parts)


def _glob_parts(base: Path, parts: Sequence[str]) -> Iterator[str]:
    head, rest = parts[0], parts[1:]
    if head == "**":
        if rest:
            yield from _glob_parts(base, rest)
        for entry in _entries(base):
            if entry.is_dir():
                yield from _glob_parts(base / entry.name, parts)
            elif not rest and _is_image(entry):
                yield str(base / entry.name)
        return
    if not glob.has_magic(head):
        names = [head] if (base / head).exists() else []
    else:
        entries = _entries(base) if not head.startswith(".") else sorted(os.scandir(base), key=lambda e: e.name)
        names = [e.name for e in entries if fnmatch.fnmatchcase(e.name, head)]
    for name in names:
        path = base / name
        if rest and path.is_dir():
            yield from _glob_parts(path, rest)
        elif not rest and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            yield str(path)


# --------------------------------------------------------------------------------------------- input files


def read_input_file(path: Path, columns: list[str], encoding: str, images: bool) -> Iterator[PredictInput]:
    """A .txt (one input per line), .csv (the `columns`) or .jsonl (the `columns` keys) file, row by row. Relative
    image paths are resolved against the file's folder, as training resolves those of a CSV. The file's kind, its
    columns (or the first row's keys) and that it has rows are checked here, before any model loads."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"--input {path}: no such file")
    if suffix not in INPUT_SUFFIXES:
        raise DataError(f"--input {path}: expected a {', '.join(INPUT_SUFFIXES)} file, got {suffix or 'no suffix'!r}")
    if suffix == ".txt" and len(columns) > 1:
        raise DataError(
            f"--input {path}: the model was trained on sentence pairs; give a .csv or .jsonl with columns "
            f"{', '.join(map(repr, columns))}"
        )
    reader = {".txt": _txt_rows, ".csv": _csv_rows, ".jsonl": _jsonl_rows}[suffix]
    first = next(reader(path, columns, encoding), None)
    if first is None:
        raise DataError(f"--input {path}: no rows to predict")
    if isinstance(first[1], str) and first[1].startswith("missing:"):
        raise DataError(f"--input {path}: {first[1].removeprefix('missing:')}")
    base = path.expanduser().resolve().parent
    return (_as_input(where, values, path, columns, base, images) for where, values in reader(path, columns, encoding))


def _as_input(where: str, values: Any, path: Path, columns: list[str], base: Path, images: bool) -> Any:
    keys = ["image"] if images else ["text", "text_pair"][: len(columns)]
    if isinstance(values, str):  # the reader's reason the row cannot be read
        return Unreadable(dict.fromkeys(keys), f"{path}, {where}: {values.removeprefix('missing:')}")
    if images:
        value = values[0]
        if not isinstance(value, str) or not value.strip():
            return Unreadable({"image": value}, f"{path}, {where}: no image path in column {columns[0]!r}")
        return str(base / value)
    return values[0] if len(values) == 1 else tuple(values)


def _decode(raw: bytes, encoding: str) -> str | None:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def _txt_rows(path: Path, columns: list[str], encoding: str) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            line = _decode(raw, encoding)
            if line is None:
                yield f"line {n}", f"not valid {encoding}; re-save the file as UTF-8 (or train with data.encoding)"
            elif line.strip():
                yield f"line {n}", [line.rstrip("\r\n")]


def _csv_rows(path: Path, columns: list[str], encoding: str) -> Iterator[tuple[str, Any]]:
    # surrogateescape: a row with bytes that are not `encoding` is reported alone, not the whole file
    with path.open(encoding=encoding, errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            yield "header", f"missing:no column {', '.join(map(repr, missing))}; its columns are {reader.fieldnames}"
            return
        for row in reader:
            values = [row[c] if row[c] is not None else "" for c in columns]
            if any(_has_surrogates(v) for v in values):
                yield f"line {reader.line_num}", f"not valid {encoding}; re-save the file as UTF-8"
            else:
                yield f"line {reader.line_num}", values


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _jsonl_rows(path: Path, columns: list[str], encoding: str) -> Iterator[tuple[str, Any]]:
    first = True
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            line = _decode(raw, encoding)
            if line is not None and not line.strip():
                continue
            yield f"line {n}", _jsonl_values(line, columns, encoding, first)
            first = False


def _jsonl_values(line: str | None, columns: list[str], encoding: str, first: bool) -> Any:
    if line is None:
        return f"not valid {encoding}; re-save the file as UTF-8"
    try:
        obj = json.loads(line)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(obj, dict):
        return f"expected a JSON object with key {columns[0]!r}, got {type(obj).__name__}"
    missing = [c for c in columns if c not in obj]
    if missing:
        # on the first row the whole file is taken to be keyed otherwise, and refused
        prefix = "missing:" if first else ""
        return f"{prefix}no key {', '.join(map(repr, missing))}; the row's keys are {sorted(obj)}"
    return [obj[c] for c in columns]


# --------------------------------------------------------------------------------------------- writing


class JsonlSink:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, row: dict[str, Any]) -> None:
        self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.stream.flush()


class CsvSink:
    """The input column(s), then by the model's label format, then error:
    - single: label_1, score_1 … label_k, score_k;
    - multi_label: labels (the predicted labels joined by `delimiter`, highest score first; empty when none reach
      their threshold), then label_1, score_1, threshold_1 … label_k, score_k, threshold_k;
    - regression: value."""

    def __init__(
        self, stream: IO[str], keys: list[str], top_k: int, label_format: str = "single", delimiter: str = "|"
    ):
        self.stream, self.keys, self.top_k = stream, keys, top_k
        self.label_format, self.delimiter = label_format, delimiter
        self.fields = {"single": ("label", "score"), "multi_label": ("label", "score", "threshold")}.get(label_format)
        self.writer = csv.writer(stream)
        if self.fields is None:  # regression
            self.writer.writerow([*keys, "value", "error"])
            return
        ranks = itertools.product(range(1, top_k + 1), self.fields)
        head = ["labels"] if label_format == "multi_label" else []
        self.writer.writerow([*keys, *head, *(f"{name}_{i}" for i, name in ranks), "error"])

    def write(self, row: dict[str, Any]) -> None:
        cells = [row.get(k) if row.get(k) is not None else "" for k in self.keys]
        if self.fields is None:
            cells.append(row.get("value", ""))
        else:
            if self.label_format == "multi_label":
                # an error row has no decision at all: empty, as an input with no label over its threshold
                cells.append(self.delimiter.join(p["label"] for p in row.get("labels") or []))
            predictions = row.get("predictions") or []
            for i in range(self.top_k):
                given = i < len(predictions)
                cells += [predictions[i][name] if given else "" for name in self.fields]
        self.writer.writerow([*cells, row.get("error", "")])
        self.stream.flush()


def check_output(path: str | None, fmt: str | None, overwrite: bool) -> str:
    """The output format (by --output's extension, else --format, else jsonl); an existing file is refused
    without --overwrite, as it may be the user's."""
    if path is None:
        return fmt or "jsonl"
    out = Path(path)
    by_suffix = OUTPUT_FORMATS.get(out.suffix.lower())
    if by_suffix is None:
        raise HFFinetuneError(f"--output {path}: expected a .jsonl or .csv file name, got {out.suffix or 'none'!r}")
    if fmt and fmt != by_suffix:
        raise HFFinetuneError(f"--format {fmt} and --output {path} disagree; drop --format or rename the file")
    if out.is_dir():
        raise HFFinetuneError(f"--output {path} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise HFFinetuneError(f"--output {path} already exists; nothing was written. Add --overwrite to replace it")
    return by_suffix


@contextlib.contextmanager
def open_sink(
    path: str | None, fmt: str, keys: list[str], top_k: int, label_format: str = "single", delimiter: str = "|"
) -> Iterator[JsonlSink | CsvSink]:
    """stdout, or a hidden temporary file beside `path` renamed onto it when the run ends: a run that fails or is
    killed leaves no partial file under the name that the next run would refuse to overwrite. `label_format` and
    `delimiter` (multi-label) shape the CSV's columns (see CsvSink)."""
    if path is None:
        yield _sink(sys.stdout, fmt, keys, top_k, label_format, delimiter)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield _sink(fh, fmt, keys, top_k, label_format, delimiter)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _sink(
    stream: IO[str], fmt: str, keys: list[str], top_k: int, label_format: str, delimiter: str
) -> JsonlSink | CsvSink:
    return CsvSink(stream, keys, top_k, label_format, delimiter) if fmt == "csv" else JsonlSink(stream)


def write_rows(
    rows: Iterable[dict[str, Any]], sink: JsonlSink | CsvSink, progress: bool | None, batch_size: int, total: int | None
) -> tuple[int, int]:
    """(rows written, rows with error). The bar goes to stderr (stdout is the data): forced by `progress`, else
    shown when stderr is a terminal and the input is more than one batch."""
    from tqdm.auto import tqdm

    def bar(initial: int = 0) -> Any:
        return tqdm(total=total, initial=initial, unit="input", file=sys.stderr, dynamic_ncols=True)

    shown = bar() if progress else None
    written = errors = 0
    try:
        for row in rows:
            sink.write(row)
            written += 1
            errors += "error" in row
            if shown is None and progress is None and written > batch_size and sys.stderr.isatty():
                shown = bar(written - 1)
            if shown is not None:
                shown.update(1)
    finally:
        if shown is not None:
            shown.close()
    return written, errors


# --------------------------------------------------------------------------------------------- the command


def saved_data(output_dir: Path) -> dict[str, Any]:
    """The `data:` section of a trained folder's recipe.yaml (empty when it has none)."""
    from .recipe import read_saved_recipe

    return read_saved_recipe(output_dir).get("data") or {}


def command(args: argparse.Namespace) -> int:
    """`hf-finetune predict`: 0 when every input was predicted, 1 when some could not be read (their rows carry
    `error`), 2 (raised) when refused before running."""
    from .tasks import label_format_of_saved, task_of_saved

    output_dir = Path(args.output_dir)
    text = task_of_saved(output_dir) == "text-classification"
    data = saved_data(output_dir)
    pair_column = data.get("text_pair_column") if text else None
    inputs, total = _cli_inputs(args, output_dir, text, data)
    resolve_device(args.device)  # refused before the model loads
    fmt = check_output(args.output, args.format, args.overwrite)
    keys = (["text", "text_pair"] if pair_column else ["text"]) if text else ["image"]
    rows = iter_predictions(
        output_dir, inputs, args.top_k, onnx=args.onnx, batch_size=args.batch_size, device=args.device, tta=args.tta
    )
    try:
        # the CSV's predicted labels are joined as the training data's were (data.label_delimiter, default "|")
        delimiter = data.get("label_delimiter") or "|"
        with open_sink(args.output, fmt, keys, args.top_k, label_format_of_saved(output_dir), delimiter) as sink:
            written, errors = write_rows(rows, sink, args.progress, args.batch_size, total)
    except BrokenPipeError:  # the reader of stdout stopped early (`| head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141  # 128 + SIGPIPE
    if errors:
        print(f'{errors} of {written} inputs could not be read (rows with "error")', file=sys.stderr)
        return 1
    return 0


def _cli_inputs(
    args: argparse.Namespace, output_dir: Path, text: bool, data: dict[str, Any]
) -> tuple[Iterator[Any], int | None]:
    pair_column = data.get("text_pair_column") if text else None
    if text and args.images:
        raise HFFinetuneError(f"{output_dir} is a text model: pass texts with --text (or --input), not positionals")
    if not text and (args.text or args.text_pair):
        raise HFFinetuneError(f"{output_dir} is an image model: --text does not apply; pass image files or folders")
    if args.text_pair and not pair_column:
        raise HFFinetuneError(
            f"--text-pair: {output_dir} was trained on single texts (its recipe sets no data.text_pair_column)"
        )
    if pair_column and len(args.text_pair) != len(args.text):
        raise HFFinetuneError(
            f"{output_dir} was trained on sentence pairs: give one --text-pair for each --text "
            f"(got {len(args.text)} --text and {len(args.text_pair)} --text-pair), or a .csv/.jsonl with --input"
        )
    given: list[Any] = list(zip(args.text, args.text_pair, strict=True)) if pair_column else list(args.text)
    if not (args.images or given or args.input):
        what = "--text TEXT or --input FILE" if text else "IMAGE files, folders or globs, or --input FILE"
        if pair_column:
            what = "--text A --text-pair B, or --input FILE.csv"
        raise HFFinetuneError(f"nothing to predict: give {what}")
    streams: list[Iterable[Any]] = [given]
    cheap = not args.input and not any(glob.has_magic(a) or Path(a).is_dir() for a in args.images)
    if args.images:
        streams.append(expand_image_args(args.images))
    if args.input:
        column = (data.get("text_column") or "text") if text else (data.get("image_column") or "image")
        columns = [column, *([pair_column] if pair_column else [])]
        streams.append(read_input_file(Path(args.input), columns, data.get("encoding") or "utf-8", not text))
    total = len(given) + len(args.images) if cheap else None
    return itertools.chain.from_iterable(streams), total
