"""The image processor of a 1-channel `simple_cnn`: ViT's resize → rescale → normalise on the grayscale image.

`pipeline("image-classification")` hands every image processor an RGB picture (its loader ends with
`.convert("RGB")`), and no processor in transformers turns that into one channel. This one does, with PIL's own
`convert("L")`, so `pipeline()` gives the net exactly the pixels training gave it (hf_finetune converts a file to RGB
as the loader does, then to L the same way). It travels with the saved folder (`register_for_auto_class`), so it
imports nothing but transformers and PIL.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers import ViTImageProcessor


class SimpleCNNImageProcessor(ViTImageProcessor):
    """`ViTImageProcessor` whose PIL inputs are converted to grayscale ("L") first; the output has one channel."""

    def process_image(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(image, Image.Image):
            image = image.convert("L")
        elif getattr(image, "ndim", 2) == 3 and 1 not in image.shape:
            # a colour array's grayscale would round differently from PIL's: refused, not silently a little off
            raise ValueError(
                "SimpleCNNImageProcessor takes PIL images (converted to grayscale as in training) or "
                f"1-channel arrays; got an array of shape {tuple(image.shape)}"
            )
        kwargs["do_convert_rgb"] = False
        return super().process_image(image, *args, **kwargs)
