"""Per-prompt diversity of samples: how different a prompt's images are from each other.

Reward optimisation collapses a generator towards one image per prompt long before the reward
saturates; these measures make that visible next to the rewards. Each takes a batch of samples and
the prompt (group) of each, and returns one value per prompt, for prompts in ascending id:

- :func:`pixel_diversity`: the per-pixel standard deviation across the prompt's samples, averaged
  over pixels (0 when every sample is the same image, about 0.12 for the digits base model);
- :func:`embedding_diversity`: the mean pairwise Euclidean distance of the samples' unit-normalised
  embeddings (0 for identical images, at most 2), with any feature extractor;
- :class:`ClipDiversity`: :func:`embedding_diversity` of CLIP image embeddings (open_clip), the
  text-to-image measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ClipDiversity", "embedding_diversity", "group_rows", "pixel_diversity"]


def group_rows(values: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pad ``values [L, ...]`` into ``[Q, n, ...]`` by ``group [L]`` (``n`` = the largest group).

    Returns ``(padded, mask [Q, n], ids [Q])`` with groups in ascending id; padding rows are zeros.
    """
    if group.dim() != 1 or group.shape[0] != values.shape[0]:
        raise ValueError(f"group: expected shape [{values.shape[0]}] (one id per sample), got {tuple(group.shape)}")
    ids, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    start = torch.cumsum(counts, 0) - counts  # [Q] first sorted row of each group
    slot = torch.arange(values.shape[0], device=group.device) - start[inverse[order]]
    width = int(counts.max()) if counts.numel() else 0
    padded = values.new_zeros((ids.numel(), width, *values.shape[1:]))
    padded[inverse[order], slot] = values[order]
    mask = torch.arange(width, device=group.device) < counts.unsqueeze(-1)
    return padded, mask, ids


def pixel_diversity(images: Tensor, group: Tensor) -> Tensor:
    """``[Q]`` mean over pixels of the sample std (Bessel-corrected, as ``torch.std``) across each
    prompt's samples; ``images`` is ``[L, ...]`` (0 for a prompt with one sample)."""
    padded, mask, _ = group_rows(images.flatten(1).double(), group)  # [Q, n, P]
    weight = mask.to(padded.dtype).unsqueeze(-1)
    count = weight.sum(1)
    mean = (padded * weight).sum(1) / count.clamp(min=1)
    variance = (((padded - mean.unsqueeze(1)) ** 2) * weight).sum(1) / (count - 1).clamp(min=1)
    return variance.sqrt().mean(-1)


def embedding_diversity(embeddings: Tensor, group: Tensor) -> Tensor:
    """``[Q]`` mean pairwise distance ``|u_i - u_j|`` of unit-normalised ``embeddings [L, D]`` within
    each prompt (0 for a prompt with one sample)."""
    units = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    padded, mask, _ = group_rows(units, group)  # [Q, n, D]
    distance = torch.cdist(padded, padded)  # [Q, n, n]
    pair = (mask.unsqueeze(-1) & mask.unsqueeze(-2)) & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    pairs = pair.sum((1, 2))
    return torch.where(pairs > 0, (distance * pair).sum((1, 2)) / pairs.clamp(min=1), 0.0)


class ClipDiversity:
    """Per-prompt :func:`embedding_diversity` of CLIP image embeddings.

    ``embed`` maps images ``[B, 3, H, W]`` in ``[0, 1]`` to ``[B, D]`` embeddings, e.g.
    :meth:`~treegrpo.rewards.clip_models.OpenClipCosine.image_embeddings` of the ``clipscore``
    (LAION ViT-H-14) or ``hpsv2`` model; images are embedded ``batch`` at a time.
    """

    name = "clip"

    def __init__(self, embed: Callable[[Tensor], Tensor], batch: int = 64) -> None:
        self.embed, self.batch = embed, batch

    @torch.no_grad()
    def __call__(self, images: Tensor, group: Tensor) -> Tensor:
        chunks = [self.embed(images[lo:lo + self.batch]).float().cpu() for lo in range(0, images.shape[0], self.batch)]
        return embedding_diversity(torch.cat(chunks), group.cpu())
