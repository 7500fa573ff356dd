"""Rewards that need no weights: DDPO's JPEG compressibility and incompressibility."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from treegrpo.rewards.base import check_batch

JPEG_QUALITY = 95  # as in DDPO
MIN_JPEG_SIDE = 64  # smaller images are enlarged (nearest) first, so the file is not mostly header


@torch.no_grad()
def jpeg_size_kb(images: Tensor, quality: int = JPEG_QUALITY, upscale: int = 1) -> Tensor:
    """JPEG file size in kB (1000 bytes) of each of ``images [B, 1 or 3, H, W]`` in ``[0, 1]``, encoded
    in memory by PIL.

    Pixels are rounded to 8 bits, then upsampled ``upscale`` times by pixel repetition (nearest):
    at 16x16 a JPEG is four 8x8 blocks and its size is mostly header, which leaves little signal.
    """
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if upscale > 1:
        pixels = pixels.repeat_interleave(upscale, dim=-2).repeat_interleave(upscale, dim=-1)
    arrays = pixels.permute(0, 2, 3, 1).numpy()
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array)).save(
            buffer, format="JPEG", quality=quality
        )
        sizes.append(buffer.tell())
    return (torch.tensor(sizes, dtype=torch.float32) / 1000.0).to(images.device)


class JpegSize:
    """DDPO's JPEG rewards: file size in kB at quality 95 (``sign=-1``: compressibility)."""

    def __init__(self, sign: float = -1.0, quality: int = JPEG_QUALITY) -> None:
        if sign not in (-1.0, 1.0):
            raise ValueError(f"sign: expected -1 (compressibility) or 1 (incompressibility), got {sign!r}")
        self.sign, self.quality = sign, quality
        self.name = "jpeg_compressibility" if sign < 0 else "jpeg_incompressibility"

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name, channels=(1, 3))
        upscale = max(1, -(-MIN_JPEG_SIDE // images.shape[-1]))
        return self.sign * jpeg_size_kb(images, self.quality, upscale)
