"""Offline rewards for digit images: no download, no network, deterministic.

Every scorer has the signature ``(images [B, 1, H, W] in [0, 1], labels [B] long) -> [B] float32``,
runs without gradients, accepts images on any device (scores come back on that device), and gives
each image the same score whatever batch it arrives in. Scorers that ignore the prompt ignore
``labels``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from treegrpo.embedded.classifier import DigitClassifier, load_classifier

Scorer = Callable[[Tensor, Tensor], Tensor]

JPEG_QUALITY = 95  # as in DDPO
JPEG_UPSCALE = 4  # 16x16 -> 64x64 (nearest) before encoding; at 16x16 the header dominates the file size
AESTHETIC_INK = 0.3  # mean pixel value of a typical digit in [0, 1] (the dataset's is 0.305 at 16x16)
AESTHETIC_SPECKLE_WEIGHT = 2.0


def _check(images: Tensor, labels: Tensor | None) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected shape [B, 1 or 3, H, W], got {tuple(images.shape)}")
    if labels is not None and tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels: expected shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}")


class ClassifierReward:
    """Probability the digit classifier gives the prompted digit: the main reward, in ``[0, 1]``.

    ``classifier=None`` loads the shipped classifier (from ``path`` if given) at the first call.
    A copy is kept per device the images arrive on.
    """

    def __init__(self, classifier: DigitClassifier | None = None, path: Path | str | None = None) -> None:
        self._classifier = classifier
        self.path = path
        self._per_device: dict[torch.device, DigitClassifier] = {}

    @property
    def classifier(self) -> DigitClassifier:
        if self._classifier is None:
            self._classifier = load_classifier(self.path)
        return self._classifier

    def _on(self, device: torch.device) -> DigitClassifier:
        if device not in self._per_device:
            self._per_device[device] = self.classifier if _device_of(self.classifier) == device else (
                load_classifier(self.path, device) if self._classifier is None else _copy_to(self.classifier, device)
            )
        return self._per_device[device]

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        _check(images, labels)
        classifier = self._on(images.device)
        probs = torch.softmax(classifier(images.float().clamp(0, 1)).double(), dim=-1)
        return probs.gather(1, labels.to(images.device).long().view(-1, 1)).squeeze(1).float()


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _copy_to(classifier: DigitClassifier, device: torch.device) -> DigitClassifier:
    clone = DigitClassifier(classifier.config)
    clone.load_state_dict(classifier.state_dict())
    return clone.eval().to(device)


@torch.no_grad()
def jpeg_size_kb(images: Tensor, quality: int = JPEG_QUALITY, upscale: int = JPEG_UPSCALE) -> Tensor:
    """JPEG file size in kB (1000 bytes) of each image, encoded in memory by PIL.

    Pixels are rounded to 8 bits, then upsampled ``upscale`` times by pixel repetition (nearest):
    at 16x16 a JPEG is four 8x8 blocks and its size is mostly header, which leaves little signal.
    """
    _check(images, None)
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


def jpeg_compressibility(images: Tensor, labels: Tensor | None = None) -> Tensor:
    """DDPO's compressibility reward: minus the JPEG size in kB (quality 95, 4x nearest upsampling)."""
    return -jpeg_size_kb(images)


def jpeg_incompressibility(images: Tensor, labels: Tensor | None = None) -> Tensor:
    """DDPO's incompressibility reward: the JPEG size in kB (quality 95, 4x nearest upsampling)."""
    return jpeg_size_kb(images)


def _median3x3(x: Tensor) -> Tensor:
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # [B, C, H, W, 3, 3]
    return windows.reshape(*x.shape, 9).median(dim=-1).values


@torch.no_grad()
def aesthetic_proxy(images: Tensor, labels: Tensor | None = None) -> Tensor:
    """A PROXY for an aesthetic score on digits (not a learned aesthetic model): crisp, clean strokes.

    ``crispness * coverage - 2 * speckle``, per image, with pixels ``x`` in ``[0, 1]``:

    - crispness: mean of ``|2x - 1|`` (1 when every pixel is pure black or white, 0 for flat grey);
    - coverage: ``max(0, 1 - |mean(x) - 0.3| / 0.3)``, 1 at a typical digit's amount of ink and 0
      for a blank or an all-white image, so crispness cannot be bought by erasing the digit;
    - speckle: mean of ``|x - median3x3(x)|`` (replicate padding), which isolated noisy pixels
      raise and clean strokes barely do.

    Range about ``[-2, 1]``; real held-out digits score around 0.6.
    """
    _check(images, labels)
    x = images.float().clamp(0, 1)
    crispness = (2 * x - 1).abs().mean(dim=(1, 2, 3))
    ink = x.mean(dim=(1, 2, 3))
    coverage = (1 - (ink - AESTHETIC_INK).abs() / AESTHETIC_INK).clamp(min=0)
    speckle = (x - _median3x3(x)).abs().mean(dim=(1, 2, 3))
    return crispness * coverage - AESTHETIC_SPECKLE_WEIGHT * speckle


REWARDS: dict[str, Scorer] = {
    "classifier": ClassifierReward(),
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "aesthetic": aesthetic_proxy,
}
"""The offline rewards by name, each ``(images [B, 1, H, W] in [0, 1], digit labels [B]) -> [B]``."""


def get_reward(name: str) -> Scorer:
    """The scorer registered as ``name`` in :data:`REWARDS` (one-line error otherwise)."""
    if name not in REWARDS:
        raise ValueError(f"rewards: unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[name]
