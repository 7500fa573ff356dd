"""The ``ocr`` reward: how well an image spells the text its prompt quotes (Flow-GRPO's text rendering).

Flow-GRPO (``flow_grpo/ocr.py``) reads each image with an OCR model and scores the edit distance
between what it read and the prompt's quoted text:

    target  = the text between the first pair of double quotes in the prompt
    t, r    = target and recognised text with spaces removed, lower-cased
    d       = 0 if t occurs in r, else Levenshtein(r, t)
    reward  = 1 - min(d, |t|) / |t|                      (in [0, 1]; 1 = spelled exactly)

Flow-GRPO runs PaddleOCR 2.9 (``lang="en"``, no angle classifier); this reward runs the PP-OCRv4
detection and recognition models through ``rapidocr-onnxruntime``, whose wheel ships them as ONNX,
so nothing is downloaded (``pip install -e '.[ocr]'``). docs/rewards.md lists the differences.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from treegrpo.errors import TreegrpoError
from treegrpo.rewards.base import check_batch

INSTALL_HINT = "pip install -e '.[ocr]'"


class MissingOcrError(TreegrpoError, ImportError):
    """The ``ocr`` extra (rapidocr-onnxruntime) is not installed."""


class OcrTargetError(TreegrpoError, ValueError):
    """A prompt with no quoted text for the ``ocr`` reward to look for."""


def ocr_target(prompt: str) -> str:
    """The text the ``ocr`` reward looks for: what follows the prompt's first ``"`` up to the next one
    (to the end when unclosed), as Flow-GRPO's ``prompt.split('"')[1]``; spaces and case are kept
    (:func:`normalise_text` drops them)."""
    parts = prompt.split('"')
    if len(parts) < 2:
        raise OcrTargetError(f'ocr: prompt {_short(prompt)} quotes no text; the ocr reward scores the text between '
                             'double quotes, e.g. a sign that says "OPEN"')
    if not normalise_text(parts[1]):
        raise OcrTargetError(f"ocr: prompt {_short(prompt)} quotes no letters (only spaces or nothing); quote the "
                             "text the image should show")
    return parts[1]


def normalise_text(text: str) -> str:
    """``text`` as both sides are compared: spaces removed, lower-cased (Flow-GRPO's normalisation)."""
    return text.replace(" ", "").lower()


def levenshtein(a: str, b: str) -> int:
    """The edit distance between ``a`` and ``b``: the fewest single-character insertions, deletions
    and substitutions turning one into the other (two-row dynamic programme, O(|a| |b|))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ocr_score(recognised: str, target: str) -> float:
    """Flow-GRPO's OCR reward of ``recognised`` text for ``target``: ``1 - min(d, |t|) / |t|`` on the
    normalised strings, with ``d = 0`` when the target occurs inside the recognised text."""
    t, r = normalise_text(target), normalise_text(recognised)
    if not t:
        raise OcrTargetError(f"ocr: target {target!r} is empty after removing spaces")
    d = 0 if t in r else levenshtein(r, t)
    return 1.0 - min(d, len(t)) / len(t)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _rapidocr() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as error:
        raise MissingOcrError(f"ocr: the ocr reward needs rapidocr-onnxruntime ({error}); install it with "
                              f"{INSTALL_HINT}") from None
    # PaddleOCR's defaults where rapidocr's differ: the detector sees the image with its longer side
    # cut to 960 pixels (rapidocr enlarges the shorter side to 736, 5x the work on a 512x128 banner).
    # No angle classifier (Flow-GRPO: use_angle_cls=False); lines scored under 0.5 are dropped, as
    # PaddleOCR's default drop_score does.
    return RapidOCR(use_cls=False, text_score=0.5, print_verbose=False, det_limit_side_len=960.0,
                    det_limit_type="max")


def to_uint8_hwc(images: Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in ``[0, 1]`` (or uint8) to ``[B, H, W, 3]`` uint8 RGB, as the 8-bit image a
    sampler would save (grey is repeated to three channels)."""
    if images.dtype != torch.uint8:
        images = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # [B, H, W, 3]


class OcrReward:
    """``(images [B, 3, H, W] in [0, 1], prompts) -> [B]``: Flow-GRPO's OCR reward (module docstring).

    The images are read one at a time on the CPU (the OCR engine batches the text lines it finds
    inside an image); scores come back as float32 on the images' device. The engine is built on
    first use and shared by threads through a lock (onnxruntime already uses every core).
    """

    name = "ocr"

    def __init__(self, engine: Any = None) -> None:
        self._engine = engine if engine is not None else _rapidocr()
        self._lock = threading.Lock()

    def read(self, image: np.ndarray) -> str:
        """The text found in one ``[H, W, 3]`` uint8 RGB image, lines joined in reading order."""
        with self._lock:
            lines, _ = self._engine(np.ascontiguousarray(image[..., ::-1]))  # the engine takes OpenCV's BGR
        return "".join(text for _, text, score in lines or () if float(score) > 0)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name, channels=(1, 3))
        targets = [ocr_target(prompt) for prompt in prompts]  # fail on a bad prompt before any OCR
        pixels = to_uint8_hwc(images)
        scores = [ocr_score(self.read(image), target) for image, target in zip(pixels, targets, strict=True)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def ocr(root: Path | str | None = None, device: object = None) -> OcrReward:
    """The registry's factory: the model files ship inside rapidocr-onnxruntime, so ``root`` is unused;
    the engine runs on the CPU whatever ``device`` is."""
    return OcrReward()


__all__ = [
    "INSTALL_HINT",
    "MissingOcrError",
    "OcrReward",
    "OcrTargetError",
    "levenshtein",
    "normalise_text",
    "ocr",
    "ocr_score",
    "ocr_target",
    "to_uint8_hwc",
]
