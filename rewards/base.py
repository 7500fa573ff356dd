"""The reward-model interface every scorer implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RewardModel(Protocol):
    """``score(images, prompts) -> [B]``: images ``[B, C, H, W]`` in ``[0, 1]`` (RGB for text-to-image
    models, grey for the digits), one prompt per image."""

    name: str

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor: ...


def check_batch(images: Tensor, prompts: Sequence[str], name: str, channels: tuple[int, ...] = (3,)) -> None:
    """One-line errors for a malformed batch (``channels``: the image channel counts the scorer reads)."""
    if images.dim() != 4 or images.shape[1] not in channels:
        allowed = " or ".join(map(str, channels))
        raise ValueError(f"{name}: images must be [B, {allowed}, H, W] in [0, 1], got shape {tuple(images.shape)}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        got = "one str" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise ValueError(f"{name}: expected {images.shape[0]} prompts (one per image), got {got}")
