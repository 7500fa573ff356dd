"""Video rewards and measures: videos ``[B, F, 3, H, W]`` in ``[0, 1]``, one prompt per video.

A video family (Wan2.1, ``modality = "video"``) decodes to frames; these turn image scorers and
image embeddings into video scores:

- :class:`FrameAveraged`: any image reward averaged over evenly spaced frames (DanceGRPO and
  Flow-GRPO score video models with image scorers, HPSv2 or CLIP, this way);
- :class:`TemporalConsistency`: the mean cosine similarity of consecutive frames' image
  embeddings (1 for a still video), with any embedding such as CLIP's;
- :func:`video_diversity`: per-prompt diversity of a prompt's videos (pixels, or mean frame embeddings);
- :func:`frame_strip`: the frames side by side, one image per video, for sample grids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

import torch
from torch import Tensor

from treegrpo.rewards.base import PreprocessingMode, RewardModel
from treegrpo.rewards.diversity import embedding_diversity, pixel_diversity

__all__ = ["FrameAveraged", "TemporalConsistency", "check_videos", "frame_indices", "frame_strip", "video_diversity"]

Embed = Callable[[Tensor], Tensor]
"""``images [N, 3, H, W] in [0, 1] -> [N, D]`` image embeddings (e.g. ``OpenClipCosine.image_embeddings``)."""


def check_videos(videos: Tensor, prompts: Sequence[str] | None, name: str) -> None:
    """One-line errors for a malformed video batch (``prompts=None``: no prompts to check)."""
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise ValueError(f"{name}: videos must be [B, F, 3, H, W] in [0, 1], got shape {tuple(videos.shape)}")
    if prompts is not None and (isinstance(prompts, str) or len(prompts) != videos.shape[0]):
        got = "one str" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise ValueError(f"{name}: expected {videos.shape[0]} prompts (one per video), got {got}")


def frame_indices(num_frames: int, frames: int | Sequence[int] | None) -> Tensor:
    """The frames to read of ``num_frames``: all (``None``), ``frames`` evenly spaced from the first to
    the last (an int; all when it is at least ``num_frames``), or the given indices."""
    if frames is None:
        return torch.arange(num_frames)
    if isinstance(frames, int):
        if frames < 1:
            raise ValueError(f"frames: expected an int >= 1, got {frames}")
        if frames >= num_frames:
            return torch.arange(num_frames)
        return torch.linspace(0, num_frames - 1, frames, dtype=torch.float64).round().long()
    index = torch.as_tensor(list(frames), dtype=torch.long)
    if index.numel() == 0 or index.min() < -num_frames or index.max() >= num_frames:
        raise ValueError(f"frames: indices {index.tolist()} out of range for {num_frames} frames")
    return index % num_frames


class FrameAveraged(PreprocessingMode):
    """``mean_k reward(frame_k, prompt)`` over the frames ``frames`` picks (see :func:`frame_indices`):
    any image :class:`~treegrpo.rewards.base.RewardModel` as a video reward.

    All picked frames of the batch are scored in calls of at most ``batch`` images, each with its
    video's prompt. The exact-preprocessing view (:func:`~treegrpo.rewards.for_evaluation`) wraps
    the image reward's own.
    """

    def __init__(self, image_reward: RewardModel, frames: int | Sequence[int] | None = 4, *, batch: int = 64,
                 name: str | None = None) -> None:
        self.image_reward, self.frames, self.batch = image_reward, frames, int(batch)
        self.name = name or image_reward.name
        self.exact_preprocessing = bool(getattr(image_reward, "exact_preprocessing", False))

    def with_exact_preprocessing(self, exact: bool = True) -> Self:
        """A view whose image reward preprocesses exactly (shared weights), where it has the choice."""
        view = super().with_exact_preprocessing(exact)
        if isinstance(self.image_reward, PreprocessingMode):
            view.image_reward = self.image_reward.with_exact_preprocessing(exact)
        return view

    @torch.no_grad()
    def __call__(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        check_videos(videos, prompts, self.name)
        index = frame_indices(videos.shape[1], self.frames).to(videos.device)
        picked = videos.index_select(1, index)  # [B, K, 3, H, W]
        count, k = picked.shape[:2]
        images = picked.flatten(0, 1)  # [B K, 3, H, W], video-major
        texts = [prompt for prompt in prompts for _ in range(k)]
        scores = torch.cat([self.image_reward(images[lo:lo + self.batch], texts[lo:lo + self.batch]).float()
                            for lo in range(0, images.shape[0], self.batch)])
        return scores.view(count, k).mean(1).to(videos.device)


def _embed_frames(embed: Embed, videos: Tensor, batch: int) -> Tensor:
    """``[B, F, D]`` unit-norm float64 embeddings of every frame, ``batch`` images per ``embed`` call."""
    frames = videos.flatten(0, 1)
    chunks = [embed(frames[lo:lo + batch]).double() for lo in range(0, frames.shape[0], batch)]
    units = torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
    return units.view(videos.shape[0], videos.shape[1], -1)


class TemporalConsistency:
    """``mean_t cos(e_t, e_{t+1})`` of consecutive frames' image embeddings ``e`` (1 for a video of
    one frame or a still one), in ``[-1, 1]``; ``embed`` maps images ``[N, 3, H, W]`` in ``[0, 1]`` to
    ``[N, D]`` (e.g. :meth:`~treegrpo.rewards.clip_models.OpenClipCosine.image_embeddings`, CLIP's).
    The prompts are not read: it scores motion smoothness, not alignment."""

    def __init__(self, embed: Embed, *, batch: int = 64, name: str = "temporal_consistency") -> None:
        self.embed, self.batch, self.name = embed, int(batch), name

    @torch.no_grad()
    def __call__(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        check_videos(videos, prompts, self.name)
        if videos.shape[1] == 1:
            return torch.ones(videos.shape[0], device=videos.device)
        units = _embed_frames(self.embed, videos, self.batch)  # [B, F, D]
        cosine = (units[:, 1:] * units[:, :-1]).sum(-1)  # [B, F - 1]
        return cosine.mean(1).float().to(videos.device)


@torch.no_grad()
def video_diversity(videos: Tensor, prompt_ids: Tensor, embed: Embed | None = None, *, batch: int = 64) -> Tensor:
    """``[Q]`` per-prompt diversity of videos ``[L, F, 3, H, W]``, prompts in ascending id (0 for a prompt
    with one video): without ``embed`` the per-pixel std across the prompt's videos, averaged over every
    pixel of every frame (:func:`~treegrpo.rewards.diversity.pixel_diversity`); with ``embed`` the mean
    pairwise distance of the videos' mean unit frame embeddings, unit-normalised
    (:func:`~treegrpo.rewards.diversity.embedding_diversity`)."""
    check_videos(videos, None, "video_diversity")
    if embed is None:
        return pixel_diversity(videos, prompt_ids)
    return embedding_diversity(_embed_frames(embed, videos, batch).mean(1), prompt_ids.to(videos.device))


def frame_strip(videos: Tensor, frames: int | Sequence[int] | None = None) -> Tensor:
    """Frames side by side: ``[B, F, C, H, W] -> [B, C, H, K W]`` (``[F, C, H, W] -> [C, H, K W]``) with the
    ``K`` frames ``frames`` picks (all by default, see :func:`frame_indices`), for sample grids."""
    single = videos.dim() == 4
    batch = videos.unsqueeze(0) if single else videos
    if batch.dim() != 5:
        raise ValueError(f"frame_strip: videos must be [B, F, C, H, W] or [F, C, H, W], got shape {tuple(videos.shape)}")
    picked = batch.index_select(1, frame_indices(batch.shape[1], frames).to(batch.device))  # [B, K, C, H, W]
    count, k, channels, height, width = picked.shape
    strip = picked.permute(0, 2, 3, 1, 4).reshape(count, channels, height, k * width)
    return strip[0] if single else strip
