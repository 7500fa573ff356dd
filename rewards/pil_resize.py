"""Pillow's 8-bit bicubic resize, reproduced in torch on the images' device.

``PIL.Image.resize(size, Image.BICUBIC)`` on an 8-bit RGB image (what torchvision's ``Resize`` and
transformers' PIL image processors call) resamples in two separable passes and rounds to 8 bits
after each. Which pass runs first depends on the Pillow version (:func:`vertical_first`): the
horizontal one, except that Pillow 13 starts with the vertical pass when the height shrinks by more
than twice as many pixels as the width (Pillow 12.2 and 12.3: when the image is over 100 times as
tall as wide and its height shrinks). Each output pixel is a weighted sum of input pixels with
the cubic convolution kernel (a = -0.5, support 2), stretched by the downscale factor (antialiasing)
and normalised to sum 1; the weights are fixed-point integers with 22 fractional bits, the sum
starts at half a unit and is shifted right by 22 bits and clipped to 0..255.

Here each pass is one matmul with a dense ``[out, in]`` matrix of those integer weights, in float64:
every product and partial sum is an integer below 2**53, so the result is exact on any device that
has float64 (on Apple's MPS, which has none, the resize runs on the CPU).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import PIL
import torch
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights: 22 fractional bits, 2 bits of headroom
BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0
PILLOW_VERSION = tuple(int(part) for part in PIL.__version__.split(".")[:2] if part.isdigit())
"""The installed Pillow's (major, minor): the pass order the official pipelines get here."""


def _bicubic(x: float) -> float:
    """Pillow's cubic convolution kernel (Keys, a = -0.5)."""
    x = abs(x)
    if x < 1.0:
        return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return 0.0


def _fixed_point(weight: float) -> int:
    """A weight as Pillow's 8-bit path stores it: scaled by 2**22, rounded half away from zero."""
    scaled = weight * (1 << PRECISION_BITS)
    return int(scaled - 0.5) if weight < 0 else int(scaled + 0.5)


@lru_cache(maxsize=64)
def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """The ``[out_size, in_size]`` integer weights (as float64) of one Pillow bicubic pass.

    Output pixel ``i`` is centred at ``(i + 0.5) * scale`` in input coordinates; the taps run from
    that centre minus the support to the centre plus it, each end rounded and clipped to the image,
    and their float weights are normalised to sum 1 before the fixed-point conversion."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"pil_bicubic_weights: sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    inverse = 1.0 / filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), in_size)
        taps = [_bicubic((x - center + 0.5) * inverse) for x in range(first, stop)]
        total = sum(taps)
        if total != 0.0:
            taps = [tap / total for tap in taps]
        weights[i, first:stop] = [_fixed_point(tap) for tap in taps]
    return weights


def _pass(levels: Tensor, weights: np.ndarray) -> Tensor:
    """One rounded pass along the last axis: ``clip((sum(w * x) + 2**21) >> 22, 0, 255)``."""
    matrix = torch.from_numpy(weights).to(levels.device)
    total = levels @ matrix.T + float(1 << (PRECISION_BITS - 1))
    return torch.floor(total / float(1 << PRECISION_BITS)).clamp_(0, 255)


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int],
                   pillow: tuple[int, ...] = PILLOW_VERSION) -> bool:
    """Whether Pillow ``pillow`` resizes ``(H, W)`` -> ``(h, w)`` vertically first (else horizontally)."""
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    if pillow >= (13,):  # libImaging/Resample.c: the height shrinks by more than twice the width's pixels
        return in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2
    if pillow >= (12, 2):  # Image.resize: very tall images, height shrinking
        return in_h > in_w * 100 and out_h < in_h
    return False


def pil_bicubic_resize(levels: Tensor, size: tuple[int, int], pillow: tuple[int, ...] = PILLOW_VERSION) -> Tensor:
    """``[..., H, W]`` 8-bit levels (integers 0..255, any dtype) -> ``[..., h, w]`` levels as float32,
    equal to Pillow's ``Image.resize((w, h), Image.BICUBIC)`` of the same 8-bit image (in the pass
    order of Pillow version ``pillow``, by default the installed one).

    An axis whose size does not change is not resampled (Pillow skips that pass too)."""
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"pil_bicubic_resize: size must be two positive ints (height, width), got {size}")
    device = levels.device
    x = levels.to("cpu" if device.type == "mps" else device, torch.float64)

    def horizontal(x: Tensor) -> Tensor:
        return _pass(x, pil_bicubic_weights(x.shape[-1], width)) if width != x.shape[-1] else x

    def vertical(x: Tensor) -> Tensor:
        if height == x.shape[-2]:
            return x
        return _pass(x.transpose(-1, -2), pil_bicubic_weights(x.shape[-2], height)).transpose(-1, -2)

    if vertical_first(tuple(x.shape[-2:]), (height, width), pillow):
        x = horizontal(vertical(x))
    else:
        x = vertical(horizontal(x))
    return x.to(device, torch.float32)

