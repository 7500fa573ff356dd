"""Each scorer's official image preprocessing, in torch on the images' device.

A :class:`Preprocess` states one scorer's pipeline: how the image is fitted to the model's square
input (shorter side resized and centre-cropped, or longer side resized and zero-padded), how the
crop offset is rounded, what resizes it, and the normalisation. Three official pipelines cover the
scorers:

- :func:`torchvision_clip_preprocess`: ``Resize(size, BICUBIC)``, ``CenterCrop(size)``, ``ToTensor``,
  ``Normalize`` on a PIL image (open_clip's eval transform, OpenAI CLIP's, BLIP's in ImageReward).
  torchvision truncates the longer side (``int(size * long / short)``), Pillow resizes the 8-bit
  image, and the crop offset is ``round((n - size) / 2)`` (Python's round, half to even).
- :func:`clip_processor_preprocess`: transformers' ``CLIPImageProcessor`` on a PIL image (PickScore):
  the same truncated size and Pillow resize, but the crop offset is ``(n - size) // 2``.
- :func:`hpsv2_preprocess`: hpsv2's ``image_transform(..., is_train=False)``: ``ToTensor`` first,
  then ``ResizeMaxSize``: the longer side to ``size`` (``round(n * size / max(h, w))``) with
  torchvision's float bicubic (antialiased, not clamped), zero padding centred (the odd pixel right
  and bottom), ``Normalize``.

``exact=True`` reproduces the official code for the image it would receive: the image is first
quantised to 8 bits (as saved to PNG or handed over as a PIL image), and Pillow's resize runs as its
two rounded passes (:mod:`treegrpo.rewards.pil_resize`). ``exact=False`` (fast, for training) keeps
the float image and resizes in one float pass; the geometry is the official one either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from treegrpo.rewards.pil_resize import pil_bicubic_resize

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Fit = Literal["crop", "pad"]
CropRounding = Literal["half_even", "floor"]
Resampler = Literal["pil", "tensor"]


def to_levels(images: Tensor) -> Tensor:
    """``[0, 1]`` images -> 8-bit levels ``round(255 * x)`` as float32, what a saved PNG holds."""
    return (images.float().clamp(0, 1) * 255).round()


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size`` and the longer ``int(size * long / short)`` (truncated),
    as torchvision's ``Resize(int)`` and transformers' ``shortest_edge`` compute it."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def longer_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side ``size`` and each side ``round(n * size / max(h, w))``, as
    hpsv2's ``ResizeMaxSize`` computes it (Python's round, half to even)."""
    scale = size / float(max(height, width))
    return round(height * scale), round(width * scale)


def crop_offset(length: int, size: int, rounding: CropRounding) -> int:
    """Where a centred ``size`` crop of ``length`` starts: ``round((length - size) / 2)`` for torchvision
    (half to even), ``(length - size) // 2`` for transformers."""
    return round((length - size) / 2.0) if rounding == "half_even" else (length - size) // 2


@dataclass(frozen=True)
class Preprocess:
    """One scorer's official preprocessing: ``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, 3, size, size]``
    normalised float32 (see the module docstring for the three pipelines)."""

    size: int
    """The model's input side."""
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    fit: Fit = "crop"
    """``crop``: shorter side to ``resize``, centre crop; ``pad``: longer side to ``size``, zero pad."""
    crop_rounding: CropRounding = "half_even"
    """How a centre crop rounds a half-pixel offset: torchvision's ``half_even``, transformers' ``floor``."""
    resampler: Resampler = "pil"
    """What the official code resizes with: Pillow on the 8-bit image, or torchvision on the float tensor."""
    resize: int | None = None
    """The shorter side's target for ``fit="crop"`` (default ``size``)."""

    def __post_init__(self) -> None:
        choices = {"fit": ("crop", "pad"), "crop_rounding": ("half_even", "floor"), "resampler": ("pil", "tensor")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"Preprocess.{field}: got {getattr(self, field)!r}; expected one of {list(allowed)}")
        if self.size < 1:
            raise ValueError(f"Preprocess.size: got {self.size}; expected a positive int")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"Preprocess.resize: got {self.resize}; expected >= size ({self.size}) or None")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Preprocess.mean/std: got {len(self.mean)} and {len(self.std)} values; expected 3 each")

    def __call__(self, images: Tensor, *, exact: bool = False) -> Tensor:
        """The model's input pixels; ``exact`` quantises to 8 bits and resizes as the official code does."""
        x = to_levels(images) if exact else images.float()
        if exact and self.resampler == "tensor":
            x = x / 255  # hpsv2's ToTensor comes before its resize; Pillow resizes the 8-bit levels
        height, width = x.shape[-2:]
        if self.fit == "pad":
            x = self._resize(x, longer_side_size(height, width, self.size), exact)
            pad_h, pad_w = self.size - x.shape[-2], self.size - x.shape[-1]
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        else:
            x = self._resize(x, shorter_side_size(height, width, self.resize or self.size), exact)
            top = crop_offset(x.shape[-2], self.size, self.crop_rounding)
            left = crop_offset(x.shape[-1], self.size, self.crop_rounding)
            x = x[..., top: top + self.size, left: left + self.size]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def _resize(self, x: Tensor, size: tuple[int, int], exact: bool) -> Tensor:
        """``x`` resized to ``size``, in ``[0, 1]``: Pillow's two rounded passes on 8-bit levels when exact
        and official, else one antialiased float bicubic pass (clamped where Pillow's output would be)."""
        if exact and self.resampler == "pil":
            return pil_bicubic_resize(x, size) / 255
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            if self.resampler == "pil":
                x = x.clamp(0, 1)
        return x


def torchvision_clip_preprocess(size: int, mean: Sequence[float] = OPENAI_MEAN,
                                std: Sequence[float] = OPENAI_STD) -> Preprocess:
    """torchvision's ``Resize(size, BICUBIC)``, ``CenterCrop(size)`` on a PIL image: open_clip's eval
    transform (CLIPScore), OpenAI CLIP's (the LAION aesthetic predictor) and ImageReward's."""
    return Preprocess(size, tuple(mean), tuple(std), fit="crop", crop_rounding="half_even", resampler="pil")


def clip_processor_preprocess(config: Mapping, default_size: int) -> Preprocess:
    """transformers' ``CLIPImageProcessor`` (its PIL backend) as ``preprocessor_config.json`` sets it:
    ``size.shortest_edge``, ``crop_size``, ``image_mean``, ``image_std`` (PickScore)."""
    crop = config.get("crop_size", default_size)
    crop = int(crop.get("height", default_size) if isinstance(crop, Mapping) else crop)
    resize = config.get("size", {"shortest_edge": crop})
    resize = int(resize.get("shortest_edge", crop) if isinstance(resize, Mapping) else resize)
    if config.get("resample", 3) != 3:
        raise ValueError(f"preprocessor_config.json resample: got {config['resample']}; expected 3 (bicubic)")
    return Preprocess(crop, tuple(config.get("image_mean", OPENAI_MEAN)), tuple(config.get("image_std", OPENAI_STD)),
                      fit="crop", crop_rounding="floor", resampler="pil", resize=resize)


def hpsv2_preprocess(size: int = 224) -> Preprocess:
    """hpsv2's eval transform: ``ToTensor``, ``ResizeMaxSize(size)`` (longer side, zero pad), ``Normalize``."""
    return Preprocess(size, OPENAI_MEAN, OPENAI_STD, fit="pad", resampler="tensor")


def clip_preprocess(images: Tensor, size: int, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD, *, exact: bool = False) -> Tensor:
    """``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, 3, size, size]``: :func:`torchvision_clip_preprocess` applied."""
    return torchvision_clip_preprocess(size, mean, std)(images, exact=exact)
