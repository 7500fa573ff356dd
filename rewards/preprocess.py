"""CLIP-style image preprocessing in torch, on the images' device (no PIL round trip).

``Resize(size, bicubic)`` of the shorter side, ``CenterCrop(size)`` and per-channel normalisation,
as open_clip, CLIP, BLIP and ImageReward do with PIL. Pixels are clamped to ``[0, 1]`` after the
resize, as an 8-bit PIL image is; the remaining difference from the PIL path is its 8-bit rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: Tensor, size: int, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD) -> Tensor:
    """``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, 3, size, size]`` normalised float32."""
    x = TF.resize(images.float(), size, interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    x = TF.center_crop(x, [size, size])
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
