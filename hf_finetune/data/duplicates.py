"""Exact and near duplicates, within and across splits, and the same input under different labels (issue 15).

What inflates a score is a test image that training has already seen: Fashion-MNIST's own tracker lists duplicates
across its train and test sets. Every row gets two keys, computed once with `datasets.Dataset.map` (in parallel with
`num_proc`; module-level functions, so it works under the `spawn` start method):

- images: `exact`, a BLAKE2b digest of the decoded RGB pixels and the size (the same pixels saved as PNG and BMP are
  one image; a re-encoded JPEG is not), and `near`, a 64-bit difference hash (dHash: the grayscale image at 9×8,
  each bit whether a pixel is brighter than its right neighbour), which survives resizing and re-encoding;
- texts: `exact`, a digest of the text after NFKC, casefolding and collapsing whitespace, and `near`, a MinHash
  signature of its word 3-grams (character 5-grams for texts under three words).

Near-duplicate search is not quadratic. Images: two 64-bit hashes within Hamming distance r agree exactly on at
least one of r + 1 bit bands (pigeonhole), so hashes are bucketed by band and compared only within a bucket. Texts:
locality-sensitive hashing on bands of the MinHash signature proposes pairs, and each is kept only if the Jaccard
similarity of the two texts' shingle sets is at least the threshold. Distinct keys are compared, not rows, so a
thousand copies of one blank image cost one comparison, not half a million.

Rows linked by either relation form one group (three copies are one group, not three pairs). A group is `exact` when
all its rows share the exact key, else `near`; `cross_split` when it spans splits; `conflicting` when its rows carry
different labels.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import DataError
from ..names import DUPLICATES_FILE

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

Kind = Literal["image", "text"]
# splits from the most protected to the least: a duplicate across splits keeps its test copy, then validation's
KEEP_ORDER = ("test", "validation", "train")
# near duplicates: a dHash alone (64 bits of left-right brightness order) matches many different small images on a
# plain background (Fashion-MNIST: one chain of 12,000 garments at 2 bits); each candidate pair must also agree on a
# 16×16 grayscale thumbnail, to within a mean absolute difference of NEAR_MAE grey levels (of 255)
THUMB_SIDE = 16
NEAR_MAE = 3.0
SHOWN_MEMBERS = 6  # a report line names at most this many rows of a group
MINHASH_PERMUTATIONS = 128
# of 4 rows each: a pair at Jaccard 0.7 becomes a candidate with probability 1 - (1 - 0.7⁴)³² > 0.9999
MINHASH_BANDS = 32
_PRIME = (1 << 61) - 1
_MINHASH_PRIME = (1 << 31) - 1
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------- keys


def normalise_text(text: str) -> str:
    """What "the same text" means here: Unicode-compatible forms (NFKC: ﬁ → fi), case and whitespace ignored."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str) -> set[str]:
    """The normalised text's word 3-grams; its character 5-grams when it has fewer than three words."""
    norm = normalise_text(text)
    words = norm.split(" ")
    if len(words) >= 3:
        return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}
    return {norm[i : i + 5] for i in range(max(1, len(norm) - 4))}


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _stable_hash(text: str) -> int:
    """A 61-bit hash of a shingle that is the same in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") % _PRIME


def _minhash_family() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20261203)  # fixed: signatures must agree across processes and runs
    # modulo the Mersenne prime 2³¹ - 1: a, b, x < 2³¹, so a·x + b < 2⁶² never wraps numpy's uint64, and the mod
    # folds it many times (a modulus far above a·x + b would leave x's order nearly intact: no mixing at all)
    a = rng.integers(1, _MINHASH_PRIME, MINHASH_PERMUTATIONS, dtype=np.uint64)
    b = rng.integers(0, _MINHASH_PRIME, MINHASH_PERMUTATIONS, dtype=np.uint64)
    return a, b


def minhash(items: set[str]) -> list[int]:
    """The MinHash signature of a shingle set: for each of the fixed hash functions (a·x + b mod p), the minimum
    over the set's 32-bit shingle hashes."""
    a, b = _minhash_family()
    x = np.array(sorted(_stable_hash(s) for s in items), dtype=np.uint64) % np.uint64(_MINHASH_PRIME)
    values = (a[:, None] * x[None, :] + b[:, None]) % np.uint64(_MINHASH_PRIME)
    return values.min(axis=1).astype(np.int64).tolist()


def dhash(image: Any) -> int:
    """The 64-bit difference hash of a PIL image."""
    from PIL import Image

    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _open(value: Any) -> Any:
    from PIL import Image

    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        return Image.open(io.BytesIO(data)) if data else Image.open(path)
    if isinstance(value, str):
        return Image.open(value)
    return value  # already a PIL image


def decode_rgb(value: Any) -> tuple[Any, bool]:
    """Decode one stored image fully and convert it to RGB as pipeline()'s loader does (raising if either fails);
    the RGB image, and whether values above 255 (16-bit, 32-bit images) were lost in that conversion."""
    if value is None:
        raise ValueError("no image")
    with _open(value) as img:
        img.load()
        mode = img.mode
        try:
            rgb = img.convert("RGB")
        except ValueError as err:
            raise ValueError(
                f"image mode {mode!r} cannot be converted to RGB as pipeline() reads images ({err}); "
                "save it as an 8-bit RGB or grayscale PNG/JPEG"
            ) from None
        return rgb, (mode.startswith("I") or mode == "F") and img.getextrema()[1] > 255


def image_keys(batch: dict[str, list[Any]], column: str) -> dict[str, list[Any]]:
    """`Dataset.map` function: each image's exact digest, dHash (as a signed 64-bit int), grayscale thumbnail (the
    near-duplicate check's second opinion), decode error and whether converting it saturated values above 255.

    The one decoding pass over the images: the pre-flight image check (checks.check_images) reads the same keys."""
    exact, near, thumbs, errors, saturated = [], [], [], [], []
    for value in batch[column]:
        try:
            rgb, lost = decode_rgb(value)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError… for broken files
            exact.append("")
            near.append(0)
            thumbs.append(bytes(THUMB_SIDE * THUMB_SIDE))
            errors.append(f"{type(err).__name__}: {err}")
            saturated.append(False)
            continue
        exact.append(_digest(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()))
        near.append(int(np.int64(np.uint64(dhash(rgb)).view(np.int64))))
        thumbs.append(thumbnail(rgb))
        errors.append("")
        saturated.append(bool(lost))
    return {"exact": exact, "near": near, "thumb": thumbs, "error": errors, "saturated": saturated}


def thumbnail(image: Any) -> bytes:
    """The image as THUMB_SIDE² grayscale bytes: what two near-duplicates must also agree on, pixel by pixel."""
    from PIL import Image

    return image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS).tobytes()


def text_keys(batch: dict[str, list[Any]], column: str) -> dict[str, list[Any]]:
    """`Dataset.map` function: each text's normalised digest and MinHash signature."""
    exact, near = [], []
    for text in batch[column]:
        text = "" if text is None else str(text)
        exact.append(_digest(normalise_text(text).encode("utf-8")))
        near.append(minhash(shingles(text)))
    return {"exact": exact, "near": near, "error": [""] * len(exact)}


# bump when the keys change meaning: a cache written by another version is then never read
KEYS_VERSION = 2  # 2: images also record `saturated`
# rows from which decoding runs in worker processes: below it, starting them costs more than they save
PARALLEL_FROM_ROWS = 4000


def decode_workers(rows: int) -> int | None:
    """`num_proc` for decoding or hashing `rows` rows: every core (up to 8) on large data, else None (in-process)."""
    return min(8, os.cpu_count() or 1) if rows >= PARALLEL_FROM_ROWS else None


def keys_of(ds: Dataset, kind: Kind, column: str, num_proc: int | None = None) -> dict[str, list[Any]]:
    """Each row's keys: {"exact", "near", "error"} (+ "thumb", "saturated" for images), computed once per split and
    cached (see `_keys`): the image check and the duplicate check share one decoding pass."""
    return _keys(ds, kind, column, num_proc)


def _keys(ds: Dataset, kind: Kind, column: str, num_proc: int | None) -> dict[str, Any]:
    """Each row's keys (`image_keys` / `text_keys` columns), from the cache when this split was hashed before.

    The cache is keyed by the split's `datasets` fingerprint (which follows its content and every transform, and is
    the same in every process): a re-run, a `--resume` and the second and later processes of a distributed run read
    the keys instead of decoding every image again. It lives under datasets' cache folder (HF_DATASETS_CACHE)."""
    import datasets

    undecoded = ds.select_columns([column])
    if kind == "image":
        undecoded = undecoded.cast_column(column, datasets.Image(decode=False))
    path = _cache_path(undecoded, kind, column)
    if path is not None and path.is_file():
        try:
            return _read_keys(path)
        except (OSError, ValueError, KeyError):
            logger.info("data: the duplicate check's cache %s is unreadable; hashing again", path)
    function = image_keys if kind == "image" else text_keys
    keyed = undecoded.map(
        function,
        batched=True,
        batch_size=256,
        fn_kwargs={"column": column},
        remove_columns=[column],
        num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 2 * num_proc else None,
        desc=f"hashing {kind}s",
        keep_in_memory=True,  # the keys are cached below, in a form that is cheap to read back
    )
    keys = {name: keyed[name] for name in keyed.column_names}
    if path is not None:
        _write_keys(path, keys)
    return keys


def _cache_path(ds: Dataset, kind: Kind, column: str) -> Path | None:
    """Where `ds`'s keys are cached. Images stored as file paths add each file's size and modification time to the
    key: the fingerprint follows the paths, not the files, so an image replaced under the same name is hashed again."""
    import datasets

    fingerprint = getattr(ds, "_fingerprint", None)
    if not fingerprint:
        return None
    digest = hashlib.blake2b(f"{KEYS_VERSION}:{kind}:{column}:{fingerprint}".encode(), digest_size=12)
    if kind == "image":
        for value in ds.with_format("arrow")[column].to_pylist():
            if value and not value.get("bytes") and value.get("path"):
                try:
                    stat = os.stat(value["path"])
                except OSError:
                    digest.update(b"missing")
                    continue
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    name = digest.hexdigest()
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_finetune_duplicates" / f"{name}.npz"


def _write_keys(path: Path, keys: dict[str, Any]) -> None:
    """Written to a temporary name and renamed: a reader never sees half a file, and a failure only costs a rehash."""
    import tempfile

    arrays = {
        "exact": np.array(keys["exact"], dtype=str),
        "near": np.array(keys["near"], dtype=np.int64),
        "error": np.array(keys["error"], dtype=str),
    }
    if "saturated" in keys:
        arrays["saturated"] = np.array(keys["saturated"], dtype=bool)
    if "thumb" in keys:
        thumbs = np.frombuffer(b"".join(keys["thumb"]), np.uint8)
        arrays["thumb"] = thumbs.reshape(len(keys["thumb"]), THUMB_SIDE * THUMB_SIDE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache costs speed, never the run
        logger.info("data: could not cache the duplicate check's keys in %s (%s)", path.parent, err)


def _read_keys(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as saved:
        keys: dict[str, Any] = {
            "exact": saved["exact"].tolist(),
            "near": saved["near"].tolist(),
            "error": saved["error"].tolist(),
        }
        if "saturated" in saved.files:
            keys["saturated"] = saved["saturated"].tolist()
        if "thumb" in saved.files:
            keys["thumb"] = [row.tobytes() for row in saved["thumb"]]
    if len(keys["exact"]) == 0 and len(keys["near"]):
        raise ValueError("inconsistent cache")
    return keys


# --------------------------------------------------------------------------------------------- search


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def _near_image_pairs(
    hashes: np.ndarray, radius: int, thumbs: np.ndarray | None = None, max_mae: float = NEAR_MAE
) -> tuple[list[tuple[int, int]], int]:
    """Pairs (i, j) of distinct hashes within `radius` bits, by pigeonhole banding, whose thumbnails (rows of
    `thumbs`, when given) differ by at most `max_mae` on average; and the hash comparisons made."""
    if radius < 0 or len(hashes) < 2:
        return [], 0
    unsigned = hashes.view(np.uint64)
    bands = radius + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    pairs: set[tuple[int, int]] = set()
    comparisons = 0
    for lo, hi in itertools.pairwise(edges):
        mask = np.uint64(((1 << (hi - lo)) - 1) << lo)
        band = unsigned & mask
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            for k, i in enumerate(members[:-1]):
                rest = members[k + 1 :]
                comparisons += len(rest)
                close = rest[_popcount(unsigned[rest] ^ unsigned[i]) <= radius]
                if thumbs is not None and len(close):
                    mae = np.abs(thumbs[close].astype(np.int16) - thumbs[i].astype(np.int16)).mean(axis=1)
                    close = close[mae <= max_mae]
                pairs.update((int(min(i, j)), int(max(i, j))) for j in close)
    return sorted(pairs), comparisons


def _near_text_pairs(signatures: np.ndarray, texts: Sequence[str], jaccard: float) -> tuple[list[tuple[int, int]], int]:
    """Candidate pairs from LSH bands of the MinHash signatures, kept when their shingle sets' Jaccard >= jaccard."""
    if len(signatures) < 2:
        return [], 0
    rows = MINHASH_PERMUTATIONS // MINHASH_BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(MINHASH_BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for members in buckets.values():
            candidates.update((a, b) for k, a in enumerate(members) for b in members[k + 1 :])
    sets = {}
    pairs = []
    for a, b in sorted(candidates):
        sa = sets.setdefault(a, shingles(texts[a]))
        sb = sets.setdefault(b, shingles(texts[b]))
        if len(sa & sb) / max(1, len(sa | sb)) >= jaccard:
            pairs.append((a, b))
    return pairs, len(candidates)


# --------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Member:
    split: str
    row: int  # the row's index in its split
    id: str  # the file path when the data has one, else split[row]
    label: Any


@dataclass(frozen=True)
class Group:
    members: tuple[Member, ...]
    exact: bool  # every member has the same exact key (the same decoded pixels / normalised text)

    @property
    def splits(self) -> list[str]:
        return sorted({m.split for m in self.members}, key=_split_order)

    @property
    def cross_split(self) -> bool:
        return len(self.splits) > 1

    @property
    def conflicting(self) -> bool:
        labels = {_hashable(m.label) for m in self.members if m.label is not None}
        return len(labels) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "exact" if self.exact else "near",
            "cross_split": self.cross_split,
            "conflicting": self.conflicting,
            "members": [{"split": m.split, "row": m.row, "id": m.id, "label": m.label} for m in self.members],
        }

    def line(self) -> str:
        kind = "exact duplicate" if self.exact else "near duplicate"
        where = f"across {' and '.join(self.splits)}" if self.cross_split else f"within {self.splits[0]}"
        shown = self.members[:SHOWN_MEMBERS]
        more = f" == … {len(self.members) - len(shown)} more" if len(self.members) > len(shown) else ""
        labels = ", ".join(str(m.label) for m in shown) + (", …" if more else "")
        conflict = "conflicting labels " if self.conflicting else "labels "
        return f"{kind} {where}: {' == '.join(m.id for m in shown)}{more} ({conflict}{labels})"


def _hashable(label: Any) -> Any:
    return tuple(label) if isinstance(label, list) else label


def _split_order(split: str) -> int:
    order = ("train", "validation", "test")
    return order.index(split) if split in order else len(order)


@dataclass
class DuplicateReport:
    groups: list[Group]
    rows: dict[str, int]  # rows checked per split
    comparisons: int = 0  # near-duplicate comparisons made (far below n²/2: the search is bucketed)
    settings: dict[str, Any] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # data.duplicates drop: the ids of the rows dropped

    def _count(self, exact: bool, cross: bool) -> int:
        return sum(1 for g in self.groups if g.exact == exact and g.cross_split == cross)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "exact_within": self._count(True, False),
            "exact_cross": self._count(True, True),
            "near_within": self._count(False, False),
            "near_cross": self._count(False, True),
            "conflicting": sum(1 for g in self.groups if g.conflicting),
            "rows_in_groups": sum(len(g.members) for g in self.groups),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "counts": self.counts,
            "comparisons": self.comparisons,
            "settings": self.settings,
            "dropped": self.dropped,
            "groups": [g.to_json() for g in self.groups],
        }

    def lines(self, limit: int = 10) -> list[str]:
        """A count line, then the worst groups first (conflicting, then cross-split, then the rest)."""
        c = self.counts
        head = (
            f"duplicates: {c['exact_cross']} exact and {c['near_cross']} near across splits, {c['exact_within']} "
            f"exact and {c['near_within']} near within a split, {c['conflicting']} with conflicting labels "
            f"({c['rows_in_groups']} of {sum(self.rows.values())} rows)"
        )
        ranked = sorted(self.groups, key=lambda g: (not g.conflicting, not g.cross_split, not g.exact))
        out = [head, *(g.line() for g in ranked[:limit])]
        if len(ranked) > limit:
            out.append(f"… and {len(ranked) - limit} more groups")
        return out

    def drop_plan(self, keep_order: Sequence[str] = KEEP_ORDER) -> dict[str, list[int]]:
        """{split: sorted rows to drop} keeping one copy of each group: in the most protected split it appears in
        (test before validation before train: the evaluation stays intact, training loses the copy), and there its
        first row. Conflicting groups are treated alike: which label is right is the user's call, so they are
        reported, and one copy (the kept split's first) stays."""
        rank = {s: i for i, s in enumerate(keep_order)}
        drop: dict[str, list[int]] = defaultdict(list)
        for g in self.groups:
            keep = min(g.members, key=lambda m: (rank.get(m.split, len(rank)), m.row))
            for m in g.members:
                if m != keep:
                    drop[m.split].append(m.row)
        return {s: sorted(rows) for s, rows in drop.items()}


def find_duplicates(
    splits: Mapping[str, Dataset],
    kind: Kind,
    *,
    input_column: str | None = None,
    label_column: str | None = "label",
    near: bool = True,
    hamming_radius: int = 2,
    jaccard: float = 0.7,
    num_proc: int | None = None,
    row_ids: Mapping[str, Sequence[str]] | None = None,
    skip_unreadable: bool = False,
) -> DuplicateReport:
    """Every group of duplicates in `splits` (see the module docstring). An image that cannot be decoded raises one
    DataError naming every such row; with `skip_unreadable` (data.check_images: false, where the user chose to meet
    broken files mid-run) such rows are left out of the search and counted in `settings["unreadable"]`."""
    column = input_column or kind
    keyed = {split: _keys(ds, kind, column, num_proc) for split, ds in splits.items()}
    bad = [
        f"{split} row {i}" + (f" ({row_ids[split][i]})" if row_ids and split in row_ids else "") + f": {err}"
        for split, ds in keyed.items()
        for i, err in enumerate(ds["error"])
        if err
    ]
    if bad and not skip_unreadable:
        more = f"\n  … and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} image(s) cannot be decoded for the duplicate check:\n  " + "\n  ".join(bad[:10]) + more
        )
    members: list[Member] = []
    texts_of: dict[str, list[Any]] = {}
    exact_keys: list[str] = []
    near_keys: list[Any] = []
    thumbs: list[bytes] = []
    for split, ds in keyed.items():
        source = splits[split]
        n = len(ds["exact"])
        # whole columns through Arrow: indexing `source[column]` row by row decodes one row per call (6 s on 10k rows)
        plain = source.with_format("arrow")
        labels = plain[label_column].to_pylist() if label_column and label_column in source.column_names else [None] * n
        if kind == "text":
            texts_of[split] = plain[column].to_pylist()
        ids = row_ids.get(split) if row_ids else None
        for i in range(n):
            members.append(Member(split, i, str(ids[i]) if ids is not None else f"{split}[{i}]", labels[i]))
        exact_keys += ds["exact"]
        near_keys += ds["near"]
        if kind == "image":
            thumbs += ds["thumb"]
    union = _UnionFind(len(members))
    first_of: dict[str, int] = {}
    for i, key in enumerate(exact_keys):
        if key:  # "" marks a row that could not be decoded (skip_unreadable)
            union.union(first_of.setdefault(key, i), i)
    comparisons = 0
    if near and first_of:
        distinct = list(first_of.values())  # one row per exact key: copies were joined above
        if kind == "image":
            hashes = np.array([near_keys[i] for i in distinct], np.int64)
            small = np.frombuffer(b"".join(thumbs[i] for i in distinct), np.uint8).reshape(len(distinct), -1)
            pairs, comparisons = _near_image_pairs(hashes, hamming_radius, small)
        else:
            texts = [texts_of[members[i].split][members[i].row] or "" for i in distinct]
            signatures = np.array([near_keys[i] for i in distinct], dtype=np.int64)
            pairs, comparisons = _near_text_pairs(signatures, texts, jaccard)
        for a, b in pairs:
            union.union(distinct[a], distinct[b])
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(members)):
        components[union.find(i)].append(i)
    groups = [
        Group(tuple(members[i] for i in rows), len({exact_keys[i] for i in rows}) == 1)
        for rows in components.values()
        if len(rows) > 1
    ]
    groups.sort(key=lambda g: (_split_order(g.members[0].split), g.members[0].row))
    settings: dict[str, Any] = {"kind": kind, "near": near}
    if bad:
        settings["unreadable"] = len(bad)
    settings |= {"hamming_radius": hamming_radius} if kind == "image" else {"jaccard": jaccard}
    return DuplicateReport(groups, {s: len(ds) for s, ds in splits.items()}, comparisons, settings)


# --------------------------------------------------------------------------------------------- the recipe's policy

POLICIES = ("warn", "error", "drop", "off")
PAIR_SEPARATOR = "\n\u241e\n"  # joins a sentence pair into one key: a pair is a duplicate only as a whole


def pair_text(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """`Dataset.map` function: a sentence pair as one text, so pairs that share only a premise are not duplicates."""
    return {
        "text": [f"{a or ''}{PAIR_SEPARATOR}{b or ''}" for a, b in zip(batch["text"], batch["text_pair"], strict=True)]
    }


def _row_ids(splits: Mapping[str, Dataset], kind: Kind) -> dict[str, list[str]]:
    """How the report names rows: an image's file (its name under its class folder, never the absolute path), a
    text's split row and first words."""
    import datasets

    out = {}
    for split, ds in splits.items():
        if kind == "image":
            raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))["image"]
            out[split] = [
                "/".join(Path(v["path"]).parts[-2:]) if v and v.get("path") else f"{split}[{i}]"
                for i, v in enumerate(raw)
            ]
        else:
            out[split] = [f"{split}[{i}] {str(t or '')[:40]!r}" for i, t in enumerate(ds["text"])]
    return out


def apply_policy(
    splits: Mapping[str, Dataset], policy: str, kind: Kind, num_proc: int | None = None, skip_unreadable: bool = False
) -> tuple[dict[str, Dataset], DuplicateReport | None, dict[str, Any] | None]:
    """`data.duplicates` on the loaded splits: the splits to train on, the report and metrics.json's run.duplicates.

    warn (the default): the groups are logged and recorded. error: a duplicate across splits or the same input
    under different labels stops the run (duplicates within one split only warn: they weight a row twice but do not
    leak). drop: one copy of each group is kept, in test before validation before train (`drop_plan`), the rest
    dropped. off: no check. The default is not error because plain transformers trains on such data, and public
    datasets (Fashion-MNIST among them) hold cross-split duplicates: a run that worked would stop working.
    """
    if policy == "off":
        return dict(splits), None, None
    checked = dict(splits)
    if kind == "text" and all("text_pair" in ds.column_names for ds in checked.values()):
        checked = {
            s: ds.select_columns(["text", "text_pair", "label"]).map(pair_text, batched=True)
            for s, ds in checked.items()
        }
    ids = _row_ids(checked, kind)
    report = find_duplicates(checked, kind, num_proc=num_proc, row_ids=ids, skip_unreadable=skip_unreadable)
    info: dict[str, Any] = {"policy": policy, "counts": report.counts, "settings": report.settings}
    if not report.groups:
        logger.info("data: no duplicates within or across %s (%d rows)", ", ".join(splits), sum(report.rows.values()))
        return dict(splits), report, info
    leaking = [g for g in report.groups if g.cross_split or g.conflicting]
    if policy == "error" and leaking:
        raise DataError(
            "\n  ".join(report.lines())
            + "\nA test or validation row that training has seen (or the same input under two labels) inflates the "
            "score. Remove the copies, or set data.duplicates: drop (keeps test intact, drops the train copies) or "
            "warn"
        )
    out = dict(splits)
    if policy == "drop":
        plan = report.drop_plan()
        ids = {(m.split, m.row): m.id for g in report.groups for m in g.members}
        report.dropped = {split: [ids[split, i] for i in rows] for split, rows in plan.items()}
        for split, rows in plan.items():
            gone = set(rows)
            out[split] = splits[split].select([i for i in range(len(splits[split])) if i not in gone])
        info["dropped"] = {split: len(rows) for split, rows in plan.items()}
        logger.warning(
            "data: dropped %s (data.duplicates: drop; listed in %s)",
            ", ".join(f"{n} {s} rows" for s, n in info["dropped"].items()),
            DUPLICATES_FILE,
        )
    level = logging.WARNING if leaking else logging.INFO
    for line in report.lines():
        logger.log(level, "data: %s", line)
    return out, report, info
