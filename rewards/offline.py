"""Rewards that need no weights: DDPO's JPEG compressibility and incompressibility."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from treegrpo.embedded.rewards import JPEG_QUALITY, jpeg_size_kb
from treegrpo.rewards.base import check_batch

MIN_JPEG_SIDE = 64  # smaller images are enlarged (nearest) first, so the file is not mostly header


class JpegSize:
    """DDPO's JPEG rewards: file size in kB at quality 95 (``sign=-1``: compressibility)."""

    def __init__(self, sign: float = -1.0, quality: int = JPEG_QUALITY) -> None:
        if sign not in (-1.0, 1.0):
            raise ValueError(f"sign: expected -1 (compressibility) or 1 (incompressibility), got {sign!r}")
        self.sign, self.quality = sign, quality
        self.name = "jpeg_compressibility" if sign < 0 else "jpeg_incompressibility"

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name)
        upscale = max(1, -(-MIN_JPEG_SIDE // images.shape[-1]))
        return self.sign * jpeg_size_kb(images, self.quality, upscale)
