"""The built-in data in the other label formats, through load_data and offline: builtin:digits' tags (multi_label)
and value (regression), builtin:tweets' sentiment|topic tags and polarity, and the topic recovered from the file's
order."""

from __future__ import annotations

import numpy as np
import pytest

from hf_finetune.data import builtin
from hf_finetune.data.labels import multi_hot, targets
from hf_finetune.data.sources import load_data
from hf_finetune.recipe import DataSpec

IMAGE = {"image": "image_column"}
TEXT = {"text": "text_column"}
DIGIT_TAG_NAMES = ["even", "ge5", "loop", "prime"]
# each digit's tags, written out by hand (not from builtin.DIGIT_TAGS), in DIGIT_TAG_NAMES' order
DIGIT_ROWS = {
    0: [1, 0, 1, 0],
    1: [0, 0, 0, 0],
    2: [1, 0, 0, 1],
    3: [0, 0, 0, 1],
    4: [1, 0, 0, 0],
    5: [0, 1, 0, 1],
    6: [1, 1, 1, 0],
    7: [0, 1, 0, 1],
    8: [1, 1, 1, 0],
    9: [0, 1, 1, 0],
}
SENTIMENTS = ["negative", "neutral", "positive"]
TOPICS = ["airline", "apple", "claritin", "coachella", "deflategate", "self_driving"]


@pytest.fixture(scope="module")
def digits():
    return builtin.load_digits()


@pytest.fixture(scope="module")
def tweets():
    return builtin.load_tweets()


def test_digit_tags_by_hand():
    assert builtin.digit_tags(8) == "even|ge5|loop"
    assert builtin.digit_tags(1) == ""
    assert builtin.digit_tags(7) == "ge5|prime"


def test_digits_multi_label_loads_with_the_digits_tags(digits):
    data = load_data(
        DataSpec(source="builtin:digits", label_format="multi_label", label_column="tags", allow_empty_labels=True),
        IMAGE,
    )
    assert data.label_names == DIGIT_TAG_NAMES and data.label_format == "multi_label"
    assert data.splits["test"].column_names == ["image", "label"]
    # the test split keeps the built-in order: row i is the built-in test split's digit i
    digit_of = digits["test"]["label"]
    assert multi_hot(data.splits["test"]).tolist() == [DIGIT_ROWS[d] for d in digit_of]
    # train and the validation carved from it are the built-in train split's rows: the same tag counts
    carved = np.concatenate([multi_hot(data.splits[s]) for s in ("train", "validation")])
    assert carved.sum(0).tolist() == np.array([DIGIT_ROWS[d] for d in digits["train"]["label"]]).sum(0).tolist()
    assert len(data.splits["validation"]) == round(0.1 * len(digits["train"]))
    # ones have no tag: about a tenth of the rows, allowed by data.allow_empty_labels
    assert (carved.sum(1) == 0).sum() == digits["train"]["label"].count(1)


def test_digits_regression_target_is_the_digit(digits):
    data = load_data(DataSpec(source="builtin:digits", label_format="regression", label_column="value"), IMAGE)
    assert data.label_names == ["value"] and data.target_scaler is None
    assert targets(data.splits["test"]).tolist() == [float(d) for d in digits["test"]["label"]]
    carved = np.concatenate([targets(data.splits[s]) for s in ("train", "validation")])
    assert sorted(carved.tolist()) == sorted(float(d) for d in digits["train"]["label"])

    scaled = load_data(
        DataSpec(source="builtin:digits", label_format="regression", label_column="value", standardize_targets=True),
        IMAGE,
    )
    assert scaled.target_scaler["mean"] == pytest.approx(targets(data.splits["train"]).mean())


def test_digits_single_label_is_unchanged():
    data = load_data(DataSpec(source="builtin:digits"), IMAGE)
    assert data.label_names == [str(d) for d in range(10)]
    assert data.splits["train"].column_names == ["image", "label"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1293, "validation": 144, "test": 360}


def test_tweets_multi_label_is_sentiment_and_topic(tweets):
    data = load_data(DataSpec(source="builtin:tweets", label_format="multi_label", label_column="tags"), TEXT)
    assert data.label_names == sorted(SENTIMENTS + TOPICS)
    matrix = multi_hot(data.splits["test"])
    sentiment_cols = [data.label_names.index(s) for s in SENTIMENTS]
    topic_cols = [data.label_names.index(t) for t in TOPICS]
    # every row: exactly one sentiment and one topic
    assert (matrix[:, sentiment_cols].sum(1) == 1).all() and (matrix[:, topic_cols].sum(1) == 1).all()
    # the sentiment tag is the built-in label of the same test row (the test split keeps its order)
    expected = tweets["test"]["label"]
    assert matrix[:, sentiment_cols].argmax(1).tolist() == expected
    assert data.splits["test"]["text"] == tweets["test"]["text"]
    # every topic is in train, with the share the source corpora have (airlines the largest, claritin the smallest)
    shares = multi_hot(data.splits["train"])[:, topic_cols].mean(0)
    assert TOPICS[int(shares.argmax())] == "airline" and TOPICS[int(shares.argmin())] == "claritin"


def test_tweets_regression_is_polarity(tweets):
    data = load_data(DataSpec(source="builtin:tweets", label_format="regression", label_column="polarity"), TEXT)
    assert data.label_names == ["polarity"]
    expected = [{0: -1.0, 1: 0.0, 2: 1.0}[label] for label in tweets["test"]["label"]]
    assert targets(data.splits["test"]).tolist() == expected


def test_tweet_topics_follow_the_files_order(tweets):
    # a topic is the tweet's place in the file: words only move the cuts between corpora
    sentiments = ["negative"] * 6 + ["positive"] * 3
    texts = [
        "my self-driving car",
        "driverless is scary",
        "no words here",  # between two self-driving rows: self_driving
        "autonomous cars",
        "@united lost my bag, and my iphone",  # the first airline word
        "still waiting",  # after the cut: airline
        "@JetBlue thanks",  # a new sentiment starts again from the first corpus
        "the Patriots cheat",
        "Brady!",
    ]
    confidences = [1.0] * len(texts)
    topics = builtin.tweet_topics(sentiments, texts, confidences)
    assert topics == [*["self_driving"] * 4, "airline", "airline", "airline", "deflategate", "deflategate"]
    # rows without a confidence mark coachella/claritin even when they name no topic's words
    topics = builtin.tweet_topics(["neutral"] * 3, ["@united late", "so fun", "#Coachella2015"], [1.0, None, None])
    assert topics == ["airline", "coachella", "coachella"]
    # on the shipped corpus: each topic's share of the kept rows, within a point of the corpora's sizes
    counts = {t: 0 for t in TOPICS}
    for split in tweets.values():
        for topic in split.with_format("arrow")["topic"].to_pylist():
            counts[topic] += 1
    total = sum(counts.values())
    assert counts["airline"] / total == pytest.approx(0.39, abs=0.02)
    assert min(counts.values()) > 1000
