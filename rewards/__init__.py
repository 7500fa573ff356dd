"""treegrpo.rewards: reward models for text-to-image and text-to-video training, one interface and a registry.

A reward model maps ``(images [B, C, H, W] in [0, 1], prompts: list of B strings)`` to ``[B]``
float32 scores, without gradients, on the images' device; a score depends only on its own image
and prompt, never on the batch; a video reward maps ``(videos [B, F, 3, H, W], prompts)`` to ``[B]``
(:mod:`treegrpo.rewards.video`). Each reward is registered for what it scores, images or videos
(:func:`rewards_for` gives a model kind's by its family's modality). :func:`build_reward` makes one
by name (see :data:`REWARDS`; ``remote:http://HOST:PORT/NAME`` names a reward served by ``treegrpo serve-reward``, see
:class:`RemoteReward`); :func:`for_evaluation` gives the view that preprocesses exactly as the official scorer does.
Importable as ``treegrpo.rewards`` (the source lives in the top-level ``rewards/`` folder).
"""

from __future__ import annotations

from treegrpo.rewards.base import PreprocessingMode, RewardModel, for_evaluation
from treegrpo.rewards.clip_models import Aesthetic, OpenClipCosine, PickScore
from treegrpo.rewards.diversity import ClipDiversity, embedding_diversity, pixel_diversity
from treegrpo.rewards.imagereward import ImageReward
from treegrpo.rewards.ocr import OcrReward
from treegrpo.rewards.offline import JpegSize
from treegrpo.rewards.pil_resize import pil_bicubic_resize
from treegrpo.rewards.preprocess import (
    Preprocess,
    clip_preprocess,
    clip_processor_preprocess,
    hpsv2_preprocess,
    torchvision_clip_preprocess,
)
from treegrpo.rewards.registry import (
    REWARDS,
    RewardEntry,
    UnknownRewardError,
    build_reward,
    check_reward_names,
    declare_modality,
    modality,
    register_reward,
    rewards_for,
)
from treegrpo.rewards.remote import RemoteReward, RemoteRewardError
from treegrpo.rewards.video import FrameAveraged, TemporalConsistency, frame_strip, video_diversity
from treegrpo.rewards.weights import ENV_VAR, MissingRewardWeightsError, reward_dir

__all__ = [
    "ENV_VAR",
    "REWARDS",
    "Aesthetic",
    "ClipDiversity",
    "FrameAveraged",
    "ImageReward",
    "JpegSize",
    "MissingRewardWeightsError",
    "OcrReward",
    "OpenClipCosine",
    "PickScore",
    "Preprocess",
    "PreprocessingMode",
    "RemoteReward",
    "RemoteRewardError",
    "RewardEntry",
    "RewardModel",
    "TemporalConsistency",
    "UnknownRewardError",
    "build_reward",
    "check_reward_names",
    "clip_preprocess",
    "clip_processor_preprocess",
    "declare_modality",
    "embedding_diversity",
    "for_evaluation",
    "frame_strip",
    "hpsv2_preprocess",
    "modality",
    "pil_bicubic_resize",
    "pixel_diversity",
    "register_reward",
    "reward_dir",
    "rewards_for",
    "torchvision_clip_preprocess",
    "video_diversity",
]
