"""Offline rewards for digit images: no download, no network, deterministic.

The scorers here read ``(images [B, 1, H, W] in [0, 1], labels [B] long) -> [B] float32``; each is
registered in :data:`treegrpo.rewards.REWARDS` for ``model.kind=digits`` in the one reward call
shape, ``(images, prompts) -> [B]`` (:class:`PromptedDigit` reads the digit from the prompt). They
run without gradients, accept images on any device (scores come back on that device), and give
each image the same score whatever batch it arrives in. The JPEG rewards are DDPO's, shared with
the text-to-image models (:class:`treegrpo.rewards.JpegSize`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from treegrpo.embedded.classifier import DigitClassifier, load_classifier
from treegrpo.embedded.data import digit_of
from treegrpo.embedded.judge import DigitJudge, load_judge
from treegrpo.rewards.base import check_batch
from treegrpo.rewards.registry import register_reward

Scorer = Callable[[Tensor, Tensor], Tensor]

AESTHETIC_INK = 0.3  # mean pixel value of a typical digit in [0, 1] (the dataset's is 0.305 at 16x16)
AESTHETIC_SPECKLE_WEIGHT = 2.0


def _check(images: Tensor, labels: Tensor | None) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected shape [B, 1 or 3, H, W], got {tuple(images.shape)}")
    if labels is not None and tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels: expected shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}")


class NetworkReward:
    """Probability a digit network gives the prompted digit, in ``[0, 1]``.

    ``load(path, device)`` builds the network (an ``nn.Module`` mapping images to ``[B, 10]``
    logits); it is loaded from ``path`` (``None``: the shipped weights) at the first call, and a
    copy is kept per device the images arrive on.
    """

    def __init__(self, load: Callable[[Path | str | None, torch.device | str], nn.Module],
                 network: nn.Module | None = None, path: Path | str | None = None) -> None:
        self._load = load
        self._network = network
        self.path = path
        self._per_device: dict[torch.device, nn.Module] = {}

    @property
    def network(self) -> nn.Module:
        """The network on the device it was loaded on (the CPU unless given)."""
        if self._network is None:
            self._network = self._load(self.path, "cpu")
        return self._network

    def on(self, device: torch.device) -> nn.Module:
        """The network on ``device`` (a copy per device, made once)."""
        if device not in self._per_device:
            network = self.network
            self._per_device[device] = network if _device_of(network) == device else copy.deepcopy(network).to(device)
        return self._per_device[device]

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        _check(images, labels)
        probs = torch.softmax(self.on(images.device)(images.float().clamp(0, 1)).double(), dim=-1)
        return probs.gather(1, labels.to(images.device).long().view(-1, 1)).squeeze(1).float()


class ClassifierReward(NetworkReward):
    """Probability the digit classifier (the CNN RL trains on) gives the prompted digit: the main reward."""

    def __init__(self, classifier: DigitClassifier | None = None, path: Path | str | None = None) -> None:
        super().__init__(load_classifier, classifier, path)

    @property
    def classifier(self) -> DigitClassifier:
        return self.network


class JudgeReward(NetworkReward):
    """Probability the unseen judge (:mod:`treegrpo.embedded.judge`, an MLP trained only on images the
    classifier never saw) gives the prompted digit: reported beside the classifier, never trained on
    by the presets, so a gap between the two exposes reward hacking."""

    def __init__(self, judge: DigitJudge | None = None, path: Path | str | None = None) -> None:
        super().__init__(load_judge, judge, path)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


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


class PromptedDigit:
    """A digits scorer in the one reward call shape, ``(images, prompts) -> [B]``: the digit each
    prompt asks for is read from its text (:func:`~treegrpo.embedded.data.digit_of`)."""

    def __init__(self, name: str, scorer: Scorer) -> None:
        self.name, self.scorer = name, scorer

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_batch(images, prompts, self.name, channels=(1, 3))
        labels = torch.tensor([digit_of(prompt) for prompt in prompts], dtype=torch.long, device=images.device)
        return self.scorer(images, labels)


NETWORK_REWARDS = {"classifier": ClassifierReward, "judge": JudgeReward}
"""The rewards that are networks, read from ``<weights>/<name>/`` (the shipped weights by default)."""


def _network_reward(name: str) -> Callable[..., PromptedDigit]:
    def build(root: Path | str | None = None, device: object = None) -> PromptedDigit:
        return PromptedDigit(name, NETWORK_REWARDS[name](path=Path(root) / name if root else None))

    return build


DIGITS_REWARDS = ("classifier", "judge", "jpeg_compressibility", "jpeg_incompressibility", "aesthetic_proxy")
"""The rewards of ``model.kind=digits``, in the order held-out tables show them (``root``: the
weights folder holding ``classifier/`` and ``judge/``)."""

register_reward("classifier", _network_reward("classifier"), kinds=("digits",))
register_reward("judge", _network_reward("judge"), kinds=("digits",))
register_reward("aesthetic_proxy", lambda **_: PromptedDigit("aesthetic_proxy", aesthetic_proxy), kinds=("digits",))
