"""Configuration of the classic small CNN (see modeling_simple_cnn.py).

save_pretrained copies this file into every simple_cnn output folder (`auto_map` in config.json), so the folder loads
with plain transformers and `trust_remote_code=True` where hf_finetune is not installed: it may import only the
standard library, torch and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

POOLINGS = ("max", "avg")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `filters=[True]` is a mistake, not one filter.
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int_list(name: str, value: Any, *, allow_int: bool, allow_empty: bool) -> list[int]:
    items = [value] if allow_int and _is_int(value) else value
    if not isinstance(items, (list, tuple)) or not all(_is_int(v) and v >= 1 for v in items):
        what = "a positive int or a list of positive ints" if allow_int else "a list of positive ints"
        raise ValueError(f"{name}={value!r} is not allowed: expected {what}")
    if not items and not allow_empty:
        raise ValueError(f"{name}={value!r} is not allowed: expected at least one entry")
    return list(items)


def _one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")


class SimpleCNNConfig(PretrainedConfig):
    """Configuration of `SimpleCNNForImageClassification`.

    One conv block (Conv2d "same" → [BatchNorm2d] → activation → 2x2 pooling) per entry of `filters`, then flatten,
    one Linear → activation → Dropout per entry of `dense_units`, then the Linear classifier over `num_labels`.
    `kernel_sizes` is one int for every block or a list with one per block. Invalid values raise `ValueError`.
    """

    # In transformers 5 configs are keyword-only dataclasses: these annotated attributes are the fields, and
    # `num_labels` / `id2label` / `label2id` / … go to the base class.
    model_type = "simple_cnn"

    num_channels: int = 3
    image_size: int = 32
    filters: list[int] | tuple[int, ...] = (32, 64)
    kernel_sizes: int | list[int] | tuple[int, ...] = 3
    pooling: str = "max"
    activation: str = "relu"
    dense_units: int | list[int] | tuple[int, ...] = (128,)
    dropout: float = 0.5
    batch_norm: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # Runs inside the generated `__init__`, so a bad config never exists; the checks are ours rather than
        # `@strict`'s because strict raises its own (non-ValueError) exception type.
        if not _is_int(self.num_channels) or self.num_channels < 1:
            raise ValueError(f"num_channels={self.num_channels!r} is not allowed: expected a positive int")
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size={self.image_size!r} is not allowed: expected a positive int (square side)")
        self.filters = _positive_int_list("filters", self.filters, allow_int=False, allow_empty=False)
        if isinstance(self.kernel_sizes, (list, tuple)):
            self.kernel_sizes = _positive_int_list(
                "kernel_sizes", self.kernel_sizes, allow_int=False, allow_empty=False
            )
            if len(self.kernel_sizes) != len(self.filters):
                raise ValueError(
                    f"kernel_sizes={self.kernel_sizes!r} has {len(self.kernel_sizes)} entries but filters="
                    f"{self.filters!r} has {len(self.filters)}: give one kernel size per conv block, or a single int"
                )
        elif not _is_int(self.kernel_sizes) or self.kernel_sizes < 1:
            raise ValueError(
                f"kernel_sizes={self.kernel_sizes!r} is not allowed: expected a positive int or a list of them"
            )
        if self.image_size // 2 ** len(self.filters) < 1:
            raise ValueError(
                f"image_size={self.image_size!r} is too small for {len(self.filters)} conv blocks (filters="
                f"{self.filters!r}): each block halves the side, so image_size // 2**{len(self.filters)} must be >= 1 "
                f"(use image_size >= {2 ** len(self.filters)} or fewer filters)"
            )
        _one_of("pooling", self.pooling, POOLINGS)
        _one_of("activation", self.activation, ACTIVATIONS)
        self.dense_units = _positive_int_list("dense_units", self.dense_units, allow_int=True, allow_empty=True)
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r} is not allowed: expected a float in [0, 1)")
        self.dropout = float(self.dropout)
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"batch_norm={self.batch_norm!r} is not allowed: expected true or false")
        super().__post_init__(**kwargs)

    @property
    def block_kernel_sizes(self) -> list[int]:
        """Kernel size of each conv block (`kernel_sizes` expanded when it is a single int)."""
        if isinstance(self.kernel_sizes, int):
            return [self.kernel_sizes] * len(self.filters)
        return list(self.kernel_sizes)

    @property
    def flat_features(self) -> int:
        """Number of features after flatten: last block's channels x the pooled side squared."""
        side = self.image_size // 2 ** len(self.filters)
        return self.filters[-1] * side * side


__all__ = ["SimpleCNNConfig"]
