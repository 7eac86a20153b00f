"""`data.streaming: true`: the train split is read as a `datasets.IterableDataset` (never copied to the disk), for
data larger than the disk: a Hub dataset, or local Parquet/JSONL/CSV files or WebDataset tar shards (a folder, a
file, a glob). Validation and test are small and scored many times, so they are read whole into map-style datasets
(datasets' cache) before training; the data must have them (a stream cannot be carved).

Label names come from the train features (a `ClassLabel`) or `data.labels`, never from scanning the stream. The
number of train examples comes from the dataset's split info (Hub) or the Parquet footers; `api` derives
`max_steps` from it. On `--resume` the stream skips the rows the checkpoint consumed, below the decoding and label
mapping, so consumed rows are not decoded again (datasets' `IterableDataset.skip`). The processes each read their
own shards: accelerate (dispatch_batches false) gives each one whole shards with datasets' `IterableDataset.shard`.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..recipe import DataSpec

logger = logging.getLogger(__name__)

# what datasets' packaged builders read, by file name
STREAM_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tar": "webdataset"}
EVAL_SPLITS = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class StreamInfo:
    """What is known of the train stream without reading it."""

    num_examples: int | None  # from split info or Parquet footers (after data.max_train_samples); None: unknown
    n_shards: int
    skipped: int  # rows skipped at the start (a resumed run's consumed rows)
    how_counted: str  # where num_examples came from


def load_streams(spec: DataSpec) -> tuple[dict[str, Any], str, dict[str, list[str]]]:
    """The data's splits as IterableDatasets, a description, and the local files per split ({} for the Hub)."""
    import datasets

    files = _local_files(spec)
    try:
        if files is None:
            streams = datasets.load_dataset(spec.source, spec.config, streaming=True)
            description = f"Hub dataset {spec.source}{f' ({spec.config})' if spec.config else ''}, streamed"
            return dict(streams), description, {}
        builder = _builder(files)
        streams = datasets.load_dataset(builder, data_files=files, streaming=True)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; all mean "this cannot be streamed"
        raise DataError(
            f"data.source {spec.source or spec.files!r}: could not stream it ({type(err).__name__}: {err}). "
            "Check the id or the files (Parquet, JSONL, CSV or WebDataset .tar shards) and HF_DATASETS_OFFLINE."
        ) from None
    count = sum(len(v) for v in files.values())
    return dict(streams), f"{builder} files ({count} in all splits), streamed", files


def _local_files(spec: DataSpec) -> dict[str, list[str]] | None:
    """split → files for a local source (data.files entries may be globs), None for a Hub id."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if spec.files:
        out = {}
        for split, pattern in spec.files.items():
            found = sorted(glob.glob(str(Path(pattern).expanduser())))
            if not found:
                raise DataError(f"data.files.{split}: {pattern!r} matches no file")
            out[split] = [str(Path(f).resolve()) for f in found]
        return out
    path = Path(spec.source).expanduser()
    if path.is_file():
        return {spec.train_split: [str(path.resolve())]}
    if path.is_dir():
        # datasets' own split inference from file names (train-0.parquet, validation/…, test-*.tar)
        found = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
        return {
            str(split): [f for f in names if Path(f).suffix.lower() in STREAM_BUILDERS]
            for split, names in found.items()
        }
    matches = sorted(glob.glob(str(path)))
    if matches:
        return {spec.train_split: [str(Path(f).resolve()) for f in matches]}
    if spec.source.startswith((".", "/", "~")) or Path(spec.source).suffix.lower() in STREAM_BUILDERS:
        raise DataError(f"data.source {spec.source!r}: no such file or folder")
    return None


def _builder(files: dict[str, list[str]]) -> str:
    suffixes = {Path(f).suffix.lower() for names in files.values() for f in names}
    builders = {STREAM_BUILDERS.get(s) for s in suffixes}
    if not suffixes or None in builders or len(builders) != 1:
        raise DataError(
            f"data.streaming: expected files of one kind among {sorted(STREAM_BUILDERS)}, got {sorted(suffixes)}"
        )
    return builders.pop()


def pick_split(streams: dict[str, Any], role: str, asked: str | None) -> str | None:
    """The data's split name for `role` (validation, test), as data.validation_split/test_split say."""
    from .sources import is_none_split

    if is_none_split(asked):
        return None
    if asked:
        if asked not in streams:
            raise DataError(f"data.{role}_split {asked!r} not found; the data has splits {sorted(streams)}")
        return asked
    return next((n for n in EVAL_SPLITS[role] if n in streams), None)


def label_names(train: Any, spec: DataSpec) -> list[str]:
    """The class names: the train features' ClassLabel, or data.labels (which must agree with it when both exist)."""
    import datasets

    feature = (train.features or {}).get("label")  # train is canonical: the label column is named label
    from_features = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if from_features is not None and spec.labels is not None and list(spec.labels) != from_features:
        raise DataError(
            f"data.labels {spec.labels!r} differs from the class names the data's features give for "
            f"{spec.label_column!r} ({from_features}); remove data.labels or make it the same list"
        )
    names = from_features or (list(spec.labels) if spec.labels is not None else None)
    if names is None:
        raise DataError(
            f"data.labels: required under data.streaming, because the features of column {spec.label_column!r} "
            f"({feature if feature is not None else 'unknown until read'}) carry no class names and the stream is "
            "not scanned for them; list the classes in id order, e.g. data.labels=[cat,dog]"
        )
    return names


class EncodeLabel:
    """`IterableDataset.map` function: a label (a name, or an id into the names) → its class id. Module level so
    DataLoader workers pickle it under `spawn`."""

    def __init__(self, names: list[str], column: str):
        self.index, self.count, self.column = {n: i for i, n in enumerate(names)}, len(names), column

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        value = row["label"]
        key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        if key in self.index:
            return {"label": self.index[key]}
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.count:
            return {"label": value}
        raise DataError(
            f"column {self.column!r}: label {value!r} is neither one of data.labels ({list(self.index)}) nor an id "
            f"below {self.count}; add it to data.labels"
        )


def canonical(ds: Any, spec: DataSpec, inputs: dict[str, str]) -> Any:
    """Keep the input and label columns under canonical names (works for streams and map-style splits)."""
    import datasets

    wanted = {getattr(spec, key): column for column, key in inputs.items() if getattr(spec, key)}
    wanted[spec.label_column] = "label"
    if ds.features is not None:
        missing = [c for c in wanted if c not in ds.features]
        if missing:
            raise DataError(
                f"the data has no column {missing} (its columns are {list(ds.features)}); set "
                "data.image_column/text_column/label_column (WebDataset: the file extensions, e.g. png and cls)"
            )
    ds = ds.select_columns(list(wanted)).rename_columns({k: v for k, v in wanted.items() if k != v})
    if "image" in wanted.values() and ds.features is not None and not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())  # a column of image file paths
    return ds


def materialise(stream: Any, limit: int | None) -> Any:
    """A (small) split of the stream read whole into a map-style Dataset, through datasets' cache."""
    import datasets

    if limit is not None:
        stream = stream.take(limit)
    return datasets.Dataset.from_generator(_rows, gen_kwargs={"stream": stream}, features=stream.features)


def _rows(stream: Any) -> Any:
    yield from stream


def count_examples(train: Any, files: list[str], spec: DataSpec) -> tuple[int | None, str]:
    """The train rows known without reading them: split info (Hub), else the Parquet footers."""
    splits = getattr(train.info, "splits", None) or {}
    info = splits.get(spec.train_split) if hasattr(splits, "get") else None
    if info is not None and info.num_examples:
        n, how = int(info.num_examples), "the dataset's split info"
    elif files and all(f.lower().endswith(".parquet") for f in files):
        import pyarrow.parquet as pq

        n, how = sum(pq.ParquetFile(f).metadata.num_rows for f in files), "the Parquet footers"
    else:
        return None, "unknown (no split info, not Parquet)"
    if spec.max_train_samples is not None and n > spec.max_train_samples:
        return spec.max_train_samples, f"data.max_train_samples (of {n} by {how})"
    return n, how


def prepare_train(train: Any, spec: DataSpec, names: list[str], skip: int) -> Any:
    """The train stream as training reads it: shards and rows shuffled (seeded), capped, the resumed run's consumed
    rows skipped, then labels mapped to ids. The skip sits below every map (labels here, the task's tokenizing or
    decoding and augmenting above), so skipped rows are read from the files but never decoded or mapped."""
    import datasets

    train = train.shuffle(seed=spec.seed, buffer_size=spec.shuffle_buffer)
    if spec.max_train_samples is not None:
        train = train.take(spec.max_train_samples)
    if skip:
        train = train.skip(skip)
    if not isinstance((train.features or {}).get("label"), datasets.ClassLabel):
        train = train.map(EncodeLabel(names, spec.label_column))
    return train


def skipped_rows(consumed: int, num_examples: int | None) -> int:
    """Rows to skip on resume: what the checkpoint consumed, within the current pass when the length is known (a
    resumed run starts that pass in the first pass's order: Trainer restarts its epoch count at 0 for a stream)."""
    return consumed % num_examples if num_examples else consumed


def sample(train: Any, size: int) -> Any:
    """The first `size` rows of the stream as a map-style Dataset, for the pre-flight checks."""
    return materialise(train, size)


def load_streaming(
    spec: DataSpec, inputs: dict[str, str], known_labels: list[str] | None = None, consumed: int = 0
) -> Any:
    """`sources.load_data` under data.streaming: LoadedData whose train split is an IterableDataset (with `.stream`
    saying what is known of it), validation/test map-style with ClassLabel ids, and `.check_sample` for the checks."""
    import datasets

    from .sources import LoadedData

    streams, description, files = load_streams(spec)
    if spec.train_split not in streams and known_labels is None:
        raise DataError(
            f"data.train_split {spec.train_split!r} not found; the data has splits {sorted(streams)}. "
            "Set data.train_split to one of them."
        )
    roles = {"validation": pick_split(streams, "validation", spec.validation_split)}
    roles["test"] = pick_split(streams, "test", spec.test_split)
    if roles["validation"] is None:
        raise DataError(
            f"data.streaming: the data has no validation split (its splits: {sorted(streams)}), and a stream cannot "
            "be carved; give one: data.files.validation=FILE (a file or glob), a validation-*/val-* file in the "
            "folder, or data.validation_split=NAME"
        )
    train = canonical(streams[spec.train_split], spec, inputs) if spec.train_split in streams else None
    names = known_labels or label_names(train, spec)
    class_label = datasets.ClassLabel(names=names)
    splits: dict[str, Any] = {}
    for role, name in roles.items():
        if name is None:
            continue
        ds = materialise(canonical(streams[name], spec, inputs), spec.max_eval_samples)
        own = ds.features["label"]
        if not isinstance(own, datasets.ClassLabel):
            ds = ds.map(EncodeLabel(names, spec.label_column), desc=f"labels ({role})")
        elif list(own.names) != names:  # ids would be read with the wrong names
            raise DataError(
                f"split {role} ({name!r}): its ClassLabel names {list(own.names)} differ from train's {names}; "
                "write the splits with the same class list"
            )
        splits[role] = ds.cast_column("label", class_label)
        if len(ds) == 0:
            raise DataError(f"split {role} ({name!r}) is empty; give it some rows")
    info = None
    check_sample = None
    if train is not None:
        n, how = count_examples(streams[spec.train_split], files.get(spec.train_split, []), spec)
        skip = skipped_rows(consumed, n)
        check_sample = sample(_encoded(train, spec, names), spec.check_sample)
        splits = {"train": prepare_train(train, spec, names, skip), **splits}
        info = StreamInfo(n, train.n_shards, skip, how)
        logger.info(
            "data: %s → train streamed (%s examples, by %s; %d shards%s), %s; %d classes",
            description,
            n if n is not None else "?",
            how,
            train.n_shards,
            f"; {skip} consumed rows skipped" if skip else "",
            ", ".join(f"{k}={len(v)} (read whole)" for k, v in splits.items() if k != "train"),
            len(names),
        )
    loaded = LoadedData(splits=splits, label_names=names, description=description)
    loaded.stream, loaded.check_sample = info, check_sample
    return loaded


def _encoded(train: Any, spec: DataSpec, names: list[str]) -> Any:
    import datasets

    if isinstance((train.features or {}).get("label"), datasets.ClassLabel):
        return train
    return train.map(EncodeLabel(names, spec.label_column))
