"""The reward-model interface every scorer implements."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol, Self, runtime_checkable

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


class PreprocessingMode:
    """Mixin for scorers with two preprocessing modes (see :mod:`treegrpo.rewards.preprocess`).

    ``exact_preprocessing = True`` reproduces the official scorer's preprocessing for the 8-bit image
    it would be given (evaluation); ``False`` skips the 8-bit rounding for speed (training)."""

    exact_preprocessing: bool = False

    def with_exact_preprocessing(self, exact: bool = True) -> Self:
        """A view of this scorer in the other mode: a shallow copy, so the weights are shared, not copied."""
        view = copy.copy(self)
        view.exact_preprocessing = bool(exact)
        return view


def for_evaluation(reward: RewardModel) -> RewardModel:
    """``reward`` as evaluation scores it: with exact preprocessing where it has the choice (sharing its
    weights), else ``reward`` itself."""
    return reward.with_exact_preprocessing(True) if isinstance(reward, PreprocessingMode) else reward
