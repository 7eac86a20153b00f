"""Tests run offline: a Hub lookup would otherwise wait 20–45 s before failing."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# two busy processes on a 2-core machine collapse multi-threaded torch; keep tests from spinning idle threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _digit_images(classes: tuple[int, ...], per_class: int, size: int, offset: int = 0):
    """Real (if tiny) signal: scikit-learn's digits, upscaled and saved as RGB PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for c in classes:
        rows = np.flatnonzero(digits.target == c)[offset : offset + per_class]
        for i in rows:
            pixels = (digits.images[i] * (255 / 16)).astype("uint8")
            out.append((c, Image.fromarray(pixels).resize((size, size)).convert("RGB")))
    return out


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """An image folder with train/ and test/ splits, three classes named zero/one/two."""
    root = tmp_path_factory.mktemp("digits_folder")
    names = {0: "zero", 1: "one", 2: "two"}
    for split, per_class, offset in (("train", 30, 0), ("test", 10, 40)):
        for n, (c, img) in enumerate(_digit_images((0, 1, 2), per_class, 16, offset)):
            folder = root / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{n}.png")
    return root


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny ViT saved as a 'pretrained' checkpoint with its processor, for the transformers-model path."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


@pytest.fixture
def tiny_recipe(digits_folder: Path, tmp_path: Path):
    """A simple_cnn recipe over the digits folder that trains in a few seconds."""

    def make(**sections):
        recipe = {
            "name": "tiny",
            "model": {"name": "simple_cnn", "image_size": 16, "config": {"filters": [8], "dense_units": [16]}},
            "data": {"source": str(digits_folder)},
            "training": {
                "output_dir": str(tmp_path / "out"),
                "num_train_epochs": 2,
                "per_device_train_batch_size": 16,
                "learning_rate": 3e-3,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
            },
        }
        return _with_sections(recipe, sections)

    return make


def _with_sections(recipe: dict, sections: dict) -> dict:
    """A test's sections on top of a base recipe: a dict is merged into that section, anything else replaces it."""
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


POSITIVE = ["good", "great", "lovely", "happy", "fine", "nice", "superb", "calm"]
NEGATIVE = ["bad", "awful", "sad", "angry", "poor", "ugly", "broken", "slow"]
FILLER = ["the", "car", "ride", "was", "very", "today", "and", "a", "trip", "it", "felt", "really"]


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows whose label is readable from the words, with varied lengths (3–40 words)."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["positive", "negative", "neutral"][i % 3]
        words = rng.choices(FILLER, k=rng.randint(3, 40))
        if label != "neutral":
            cue = POSITIVE if label == "positive" else NEGATIVE
            for _ in range(2):
                words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    """train.csv (120 rows) and test.csv (30 rows) with columns review,sentiment in one folder."""
    import csv

    folder = tmp_path_factory.mktemp("texts")
    for name, n, seed in (("train.csv", 120, 0), ("test.csv", 30, 1)):
        with (folder / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "sentiment"])
            writer.writerows(make_texts(n, seed))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT with a WordPiece tokenizer trained here (tokenizers), saved as a 'pretrained' model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [t for t, _ in make_texts(300, 7)] + POSITIVE + NEGATIVE + FILLER
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def text_data(folder: Path) -> dict:
    """The data section that reads `text_csv`'s train.csv and test.csv (or those of a folder laid out like it)."""
    return {
        "files": {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")},
        "text_column": "review",
        "label_column": "sentiment",
    }


def make_text_recipe(folder: Path, model_dir: Path, output_dir: Path, **sections) -> dict:
    """The tiny text recipe (the CSVs in `folder`, the tiny BERT in `model_dir`); trains in a few seconds. A plain
    function, not only the `text_recipe` fixture, because module-scoped fixtures cannot use a function-scoped one."""
    recipe = {
        "name": "tiny-text",
        "task": "text-classification",
        "model": {"name": str(model_dir)},
        "data": text_data(folder),
        "training": {
            "output_dir": str(output_dir),
            "num_train_epochs": 2,
            "per_device_train_batch_size": 16,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
        },
    }
    return _with_sections(recipe, sections)


@pytest.fixture
def text_recipe(text_csv: Path, tiny_bert_dir: Path, tmp_path: Path):
    """`make_text_recipe` over the `text_csv` CSVs and the tiny BERT, writing under this test's tmp_path."""

    def make(**sections):
        return make_text_recipe(text_csv, tiny_bert_dir, tmp_path / "text-out", **sections)

    return make
