"""The unseen judge: a second digit classifier that RL never trains on, to catch reward hacking.

The main reward is a CNN (:mod:`treegrpo.embedded.classifier`) trained on the train split of the
digit images. The judge is another model family, a fully connected network on pixels with no
convolution, trained only on the *held-out* split (the 359 images the CNN never saw), with the same
shifts and pixel noise. A policy that finds the CNN's blind spots (saturated blobs the CNN scores
at 0.99) does not find the judge's at the same time, so a gap between the two rewards after
training is the sign of hacking. Its penultimate layer is also the feature space of the digits'
feature diversity (:func:`treegrpo.rewards.diversity.embedding_diversity` of :meth:`Judge.features`).

Shipped as ``weights/judge/model.safetensors`` with its ``config.json``; made by
``python -m treegrpo.embedded.pretrain --what judge``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from treegrpo.embedded._files import WEIGHTS_DIR, require

JUDGE_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class JudgeConfig:
    """Sizes of :class:`DigitJudge` (stored as its ``config.json``)."""

    size: int = 16
    hidden: tuple[int, int] = (256, 128)
    num_classes: int = 10


class DigitJudge(nn.Module):
    """MLP on flattened pixels: ``forward(images [B, 1, H, W] in [0, 1]) -> logits [B, 10]``."""

    def __init__(self, config: JudgeConfig = JudgeConfig()) -> None:
        super().__init__()
        self.config = config
        h1, h2 = config.hidden
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(config.size**2, h1), nn.GELU(), nn.Linear(h1, h2), nn.GELU())
        self.head = nn.Linear(h2, config.num_classes)

    def features(self, images: Tensor) -> Tensor:
        """``[B, hidden[-1]]`` penultimate activations: the judge's view of a digit's shape."""
        return self.body(images * 2 - 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def save_judge(judge: DigitJudge, directory: Path | str) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(asdict(judge.config), indent=1, sort_keys=True) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in judge.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_judge(path: Path | str | None = None, device: torch.device | str = "cpu") -> DigitJudge:
    """Load a judge saved by :func:`save_judge`; ``path=None`` is the shipped one (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(path) if path is not None else WEIGHTS_DIR / "judge"
    require(directory, JUDGE_FILES, "judge")
    raw = json.loads((directory / "config.json").read_text())
    judge = DigitJudge(JudgeConfig(**{**raw, "hidden": tuple(raw["hidden"])}))
    judge.load_state_dict(load_file(str(directory / "model.safetensors")))
    return judge.eval().to(device)
