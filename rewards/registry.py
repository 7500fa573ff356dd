"""Reward models by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treegrpo.rewards.base import RewardModel
from treegrpo.rewards.offline import JpegSize

REWARDS: dict[str, Callable[..., RewardModel]] = {
    "jpeg_compressibility": lambda **_: JpegSize(-1.0),
    "jpeg_incompressibility": lambda **_: JpegSize(1.0),
}


def build_reward(name: str, **options: Any) -> RewardModel:
    """The reward model registered as ``name``, built with ``options`` (paths, device)."""
    if name not in REWARDS:
        raise ValueError(f"model.rewards: unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[name](**options)
