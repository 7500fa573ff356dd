"""Reward models by name: ``build_reward("hpsv2", root=..., device=...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treegrpo.rewards import clip_models
from treegrpo.rewards.base import RewardModel
from treegrpo.rewards.imagereward import imagereward
from treegrpo.rewards.offline import JpegSize

REWARDS: dict[str, Callable[..., RewardModel]] = {
    "hpsv2": clip_models.hpsv2,
    "clipscore": clip_models.clipscore,
    "imagereward": imagereward,
    "pickscore": clip_models.pickscore,
    "aesthetic": clip_models.aesthetic,
    "jpeg_compressibility": lambda **_: JpegSize(-1.0),
    "jpeg_incompressibility": lambda **_: JpegSize(1.0),
}
"""Reward name to factory (``root``: the reward-weights folder, ``device``); :func:`build_reward` builds from it."""


def build_reward(name: str, **options: Any) -> RewardModel:
    """The reward model registered as ``name``, built with ``options`` (``root``: the reward-weights
    folder, ``device``)."""
    if name not in REWARDS:
        raise ValueError(f"model.rewards: unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[name](**options)
