"""Built-in offline data: scikit-learn ships its 8×8 handwritten digits, so the quickstart needs no network."""

from __future__ import annotations

from typing import Any


def load_digits(test_size: float = 0.2, seed: int = 0) -> Any:
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
