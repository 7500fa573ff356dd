"""Digits data for the embedded default: sklearn's bundled 8x8 digits, text prompts, fixed splits.

Images come from :func:`sklearn.datasets.load_digits` (1,797 images, no download), upsampled
bilinearly to ``size x size`` and scaled to ``[-1, 1]``, the pixel space the base model works in.

Prompts are short English phrases built from :data:`PROMPT_TEMPLATES`, each mapped to its digit.
The ``"train"`` templates are the only ones RL training sees; the ``"heldout"`` templates are kept
for evaluation. Pretraining the base model uses the prompts of *both* splits, so the frozen text
encoder knows every word; what is held out from RL is the phrasing, not the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_DIGITS = 10
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "heldout")

# Fields: {word} = "seven", {digit} = "7", {a_word} = "a seven" / "an eight".
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "a handwritten {word}",
        "the digit {digit}",
        "number {word} written by hand",
        "{a_word}",
        "a drawing of the number {digit}",
        "the number {word}",
        "{digit}",
        "a picture of the digit {word}",
    ),
    "heldout": (
        "a sketch of the digit {digit}",
        "handwritten number {digit}",
        "an image of {a_word}",
        "the handwritten digit {word}",
    ),
}


def check_split(split: str) -> str:
    """Return ``split`` if it names a prompt split, else raise one ``ValueError`` line."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    return split


def format_prompt(template: str, digit: int) -> str:
    """Fill one template for ``digit`` (0..9)."""
    word = DIGIT_WORDS[digit]
    article = "an" if word[0] in "aeiou" else "a"
    return template.format(word=word, digit=str(digit), a_word=f"{article} {word}")


def digit_of(prompt: str) -> int:
    """The digit a prompt asks for: its first digit word (``seven``) or single-digit token (``7``)."""
    for token in prompt.lower().replace(",", " ").split():
        if token in DIGIT_WORDS:
            return DIGIT_WORDS.index(token)
        if len(token) == 1 and token.isdigit():
            return int(token)
    raise ValueError(f"prompt: {prompt!r} names no digit (expected a word zero..nine or a digit 0..9)")


@dataclass(frozen=True)
class DigitPrompts:
    """The prompts of one split: ``texts[i]`` asks for digit ``labels[i]``.

    Order is template-major (all digits of the first template, then the next template), so a
    prompt id is ``template_index * 10 + digit``.
    """

    split: str
    texts: tuple[str, ...]
    labels: Tensor  # [len(texts)] long

    def __len__(self) -> int:
        return len(self.texts)


def digits_prompts(split: str = "train") -> DigitPrompts:
    """Every prompt of ``split`` (``"train"`` or ``"heldout"``) with its digit label."""
    templates = PROMPT_TEMPLATES[check_split(split)]
    texts = tuple(format_prompt(template, digit) for template in templates for digit in range(NUM_DIGITS))
    labels = torch.arange(NUM_DIGITS).repeat(len(templates))
    return DigitPrompts(split=split, texts=texts, labels=labels)


def all_prompts() -> DigitPrompts:
    """The prompts of both splits together (what pretraining and the tokenizer's vocabulary use)."""
    parts = [digits_prompts(split) for split in SPLITS]
    return DigitPrompts(split="all", texts=sum((p.texts for p in parts), ()),
                        labels=torch.cat([p.labels for p in parts]))


@lru_cache(maxsize=4)
def _load(size: int) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False) if size != 8 else raw
    return images * 2.0 - 1.0, torch.as_tensor(digits.target, dtype=torch.long)


def load_digit_images(size: int = 16) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``(images [N, 1, size, size] float32 in [-1, 1], labels [N] long)``.

    Upsampled from 8x8 with bilinear interpolation (``align_corners=False``); returns fresh copies.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size: expected an int >= 8, got {size!r}")
    images, labels = _load(size)
    return images.clone(), labels.clone()


def image_split(labels: Tensor, heldout_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A stratified, seeded split of image indices into ``(train, heldout)``, each sorted.

    Per digit, the indices are shuffled with a ``torch.Generator`` seeded by ``seed`` and the first
    ``round(heldout_fraction * count)`` go to the held-out part.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction: expected a number in (0, 1), got {heldout_fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    train, heldout = [], []
    for digit in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == digit).squeeze(-1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        cut = round(heldout_fraction * members.numel())
        heldout.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(heldout).sort().values
