"""Load labelled images as a `datasets.DatasetDict` with canonical `image` / `label` columns and label names.

Sources: `builtin:digits` (scikit-learn's bundled 8×8 digits, offline), a local image folder (class sub-folders,
loaded as `imagefolder`), a CSV/JSON/JSONL/Parquet file listing image paths and labels (`data.files` for one file per
split), or a Hub dataset id (with `data.config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..recipe import DataSpec

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
VALIDATION_NAMES = ("validation", "valid", "val", "dev")
BUILTIN_SOURCES = ("builtin:digits",)


@dataclass
class LoadedData:
    """The splits (train, validation, optional test) and the label names, index = class id."""

    splits: Any  # datasets.DatasetDict
    label_names: list[str]
    description: str  # where it came from, for logs and the model card

    @property
    def has_test(self) -> bool:
        return "test" in self.splits


def load_image_data(spec: DataSpec, label_names: list[str] | None = None, carve_validation: bool = True) -> LoadedData:
    """Load, rename columns, encode labels and form train/validation/test splits, in that order.

    `label_names` (a trained model's) fixes the class ids instead of learning them from train.
    """
    raw, description, base_dirs = _load_raw(spec)
    raw, origin = _select_splits(raw, spec)
    _check_not_empty(raw, origin, description)
    # base_dirs is keyed by the data's own split names; _select_splits renamed them (e.g. val → validation)
    base_dirs = {role: base_dirs[name] for role, name in origin.items() if name in base_dirs}
    raw = _canonical_columns(raw, spec, base_dirs)
    raw, label_names = _encode_labels(raw, spec, label_names)
    if carve_validation:
        raw = _ensure_validation(raw, spec)
    raw = _limit(raw, spec)
    sizes = ", ".join(f"{k}={len(v)}" for k, v in raw.items())
    logger.info("data: %s → %s; %d classes", description, sizes, len(label_names))
    return LoadedData(splits=raw, label_names=label_names, description=description)


# --------------------------------------------------------------------------------------------- raw loading


def _load_raw(spec: DataSpec) -> tuple[Any, str, dict[str, Path]]:
    """(DatasetDict, description, split → folder that relative image paths are resolved against)."""
    import datasets

    if spec.files:
        return _load_files(spec.files)
    source = spec.source
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise DataError(f"data.source {source!r}: unknown built-in source; available: {list(BUILTIN_SOURCES)}")
        from .builtin import load_digits

        return load_digits(), "scikit-learn digits (built-in, 8×8 grayscale)", {}
    path = Path(source).expanduser()
    if path.is_file():
        return _load_files({spec.train_split: str(path)})
    if path.is_dir():
        builder = "imagefolder" if _has_images(path) else None
        try:
            if builder:
                ds = datasets.load_dataset("imagefolder", data_dir=str(path))
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
        if builder and spec.label_column == "label" and any("label" not in split.column_names for split in ds.values()):
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


def _load_files(files: dict[str, str]) -> tuple[Any, str, dict[str, Path]]:
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
            loaded[split] = datasets.load_dataset(builder, data_files={split: str(p)}, split=split)
        except Exception as err:  # datasets raises many types; all mean "this file cannot be read as a table"
            raise DataError(
                f"split {split!r}: could not read {str(p)!r} as {builder}: {type(err).__name__}: {err}"
            ) from None
    ds = datasets.DatasetDict(loaded)
    names = ", ".join(f"{k}: {v}" for k, v in paths.items())
    return ds, f"{builder} files ({names})", {k: v.parent for k, v in paths.items()}


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


def _has_images(path: Path) -> bool:
    return any(
        p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(path).parts)
        for p in path.rglob("*")
    )


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix.lower() in FILE_BUILDERS


# --------------------------------------------------------------------------------------------- shaping


def _select_splits(raw: Any, spec: DataSpec) -> tuple[Any, dict[str, str]]:
    """Keep train/validation/test only, under those names; also return role → the data's own split name."""
    import datasets

    available = list(raw)
    if spec.train_split not in raw:
        raise DataError(
            f"data.train_split {spec.train_split!r} not found; the data has splits {available}. "
            "Set data.train_split to one of them."
        )
    origin = {"train": spec.train_split}
    for role, asked, defaults in (
        ("validation", spec.validation_split, VALIDATION_NAMES),
        ("test", spec.test_split, ("test",)),
    ):
        if asked is not None:
            if asked not in raw:
                fallback = "carve one from train" if role == "validation" else "have none"
                raise DataError(
                    f"data.{role}_split {asked!r} not found; the data has splits {available}. "
                    f"Set data.{role}_split to one of them, or to null to {fallback}."
                )
            origin[role] = asked
        else:
            found = next((n for n in defaults if n in raw and n != spec.train_split), None)
            if found:
                origin[role] = found
    return datasets.DatasetDict({role: raw[name] for role, name in origin.items()}), origin


def _check_not_empty(raw: Any, origin: dict[str, str], description: str) -> None:
    for role, ds in raw.items():
        if len(ds) == 0:
            named = role if origin[role] == role else f"{role} (the data's {origin[role]!r})"
            raise DataError(
                f"split {named} of {description} is empty; give it some rows, or drop it "
                "(from data.files, or by pointing data.*_split elsewhere)"
            )


def _canonical_columns(raw: Any, spec: DataSpec, base_dirs: dict[str, Path]) -> Any:
    """Rename the recipe's image/label columns to `image`/`label`; file paths become `Image` features."""
    import datasets

    out = {}
    for split, ds in raw.items():
        columns = ds.column_names
        missing = [c for c in (spec.image_column, spec.label_column) if c not in columns]
        if missing:
            keys = {spec.image_column: "data.image_column", spec.label_column: "data.label_column"}
            raise DataError(
                f"split {split!r} has no column {', '.join(repr(m) for m in missing)} "
                f"(set by {', '.join(keys[m] for m in missing)}); its columns are {columns}. "
                f"Set {keys[missing[0]]} to the right one."
            )
        ds = ds.select_columns([spec.image_column, spec.label_column])
        if spec.image_column != "image":
            ds = ds.rename_column(spec.image_column, "image")
        if spec.label_column != "label":
            ds = ds.rename_column(spec.label_column, "label")
        feature = ds.features["image"]
        if not isinstance(feature, datasets.Image):
            if feature != datasets.Value("string") and feature != datasets.Value("large_string"):
                raise DataError(
                    f"column {spec.image_column!r} of split {split!r} holds {feature}, "
                    "expected images or image file paths"
                )
            base = base_dirs.get(split)
            if base is not None:
                ds = ds.map(
                    lambda b, base=base: {"image": [str(base / p) if p else p for p in b["image"]]},
                    batched=True,
                    desc=f"resolving image paths ({split})",
                )
            ds = ds.cast_column("image", datasets.Image())
        out[split] = ds
    return datasets.DatasetDict(out)


def _encode_labels(raw: Any, spec: DataSpec, known: list[str] | None = None) -> tuple[Any, list[str]]:
    """Labels become one ClassLabel for every split.

    Names come from `known` (a trained model's labels) or from train: a ClassLabel's own names, else the sorted
    distinct values (numbers in numeric order). A label outside those names is an error naming the split.
    """
    import datasets

    keys = {split: _label_keys(ds) for split, ds in raw.items()}
    if known is not None:
        names = list(known)
    elif isinstance(raw["train"].features["label"], datasets.ClassLabel):
        names = list(raw["train"].features["label"].names)
    else:
        values = {v for v in raw["train"]["label"] if v is not None}
        fractional = sorted(v for v in values if isinstance(v, float) and not v.is_integer())
        if fractional:
            raise DataError(
                f"column {spec.label_column!r} holds non-integer numbers {fractional[:5]}; expected class labels "
                "(strings or integers). Is data.label_column the right column?"
            )
        # numbers in numeric order (2 < 10), then strings alphabetically; ids follow this order
        names = [_label_key(v) for v in sorted(values, key=lambda v: (isinstance(v, str), v))]
    index = {n: i for i, n in enumerate(names)}
    class_label = datasets.ClassLabel(names=names)
    out = {}
    for split, ds in raw.items():
        if any(k is None for k in keys[split]):
            missing = sum(k is None for k in keys[split])
            raise DataError(
                f"split {split!r}: {missing} rows have no label in column {spec.label_column!r}; every row needs one"
            )
        unknown = sorted({k for k in keys[split] if k not in index})
        if unknown:
            whose = "the model" if known is not None else "split 'train'"
            raise DataError(
                f"split {split!r} has labels {unknown[:10]} that {whose} does not have "
                f"(known labels: {names[:20]}{'…' if len(names) > 20 else ''}); every class must appear in train"
            )
        ds = ds.remove_columns("label").add_column("label", [index[k] for k in keys[split]])
        out[split] = ds.cast_column("label", class_label)
    return datasets.DatasetDict(out), names


def _label_keys(ds: Any) -> list[str | None]:
    import datasets

    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.names[v] if v is not None and v >= 0 else None for v in ds["label"]]
    return [_label_key(v) for v in ds["label"]]


def _label_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ensure_validation(raw: Any, spec: DataSpec) -> Any:
    """Carve a stratified, seeded validation split out of train when the data has none."""
    import datasets

    if "validation" in raw:
        return raw
    train = raw["train"]
    if len(train) < 2:
        raise DataError(
            f"split 'train' has {len(train)} row(s): too few to carve a validation split from. "
            "Add data, or give a validation split (data.files.validation=… or data.validation_split)."
        )
    # An explicit count: datasets takes ceil(fraction × n), which turns 0.7 × 10 = 7.000000000000001 into 8.
    n_val = min(max(round(spec.validation_size * len(train)), 1), len(train) - 1)
    try:
        parts = train.train_test_split(test_size=n_val, seed=spec.seed, stratify_by_column="label")
        how = "stratified"
    except ValueError as err:
        # Stratification needs >= 2 rows per class; small data still deserves a validation split.
        logger.warning("data: stratified split impossible (%s); using a random split", err)
        parts = train.train_test_split(test_size=n_val, seed=spec.seed)
        how = "random"
    logger.info(
        "data: no validation split; made a %s one from train with seed %d: %d train / %d validation rows",
        how,
        spec.seed,
        len(parts["train"]),
        len(parts["test"]),
    )
    out = {"train": parts["train"], "validation": parts["test"]}
    if "test" in raw:
        out["test"] = raw["test"]
    return datasets.DatasetDict(out)


def _limit(raw: Any, spec: DataSpec) -> Any:
    import datasets

    out = {}
    for split, ds in raw.items():
        cap = spec.max_train_samples if split == "train" else spec.max_eval_samples
        if cap is not None and len(ds) > cap:
            ds = ds.shuffle(seed=spec.seed).select(range(cap))
        out[split] = ds
    return datasets.DatasetDict(out)
