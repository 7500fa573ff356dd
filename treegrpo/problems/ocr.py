"""Flow-GRPO's OCR (text-rendering) prompts, checked against the ``ocr`` reward's target extraction."""

from __future__ import annotations

from pathlib import Path

from treegrpo.families.prompts import load_prompts
from treegrpo.rewards.ocr import OcrTargetError, ocr_target


def load_ocr_prompts(path: str | Path, split: str | None = "train") -> list[str]:
    """Flow-GRPO's OCR prompts: ``path`` is its ``dataset/ocr`` folder (``train.txt``, ``test.txt``,
    one prompt per line; ``split`` picks one) or one such file. Every prompt must quote its text
    (the ``ocr`` reward's target), else a one-line :class:`~treegrpo.rewards.ocr.OcrTargetError`."""
    prompts = load_prompts(path, split)
    for number, prompt in enumerate(prompts, start=1):
        try:
            ocr_target(prompt)
        except OcrTargetError as error:
            raise OcrTargetError(f"{path}: prompt {number} (blank lines skipped): {error}") from None
    return prompts


__all__ = ["load_ocr_prompts"]
