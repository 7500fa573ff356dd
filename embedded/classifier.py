"""A small CNN digit classifier on 16x16 images in ``[0, 1]``: the judge behind the main reward.

Trained by :mod:`treegrpo.embedded.pretrain` on the train split of the digits with small random
shifts and light pixel noise, so that it scores slightly off-centre or grainy samples sensibly.
Shipped as ``weights/classifier/model.safetensors`` with its ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from treegrpo.embedded._files import WEIGHTS_DIR, require

CLASSIFIER_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class ClassifierConfig:
    """Sizes of :class:`DigitClassifier` (stored as its ``config.json``)."""

    size: int = 16
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    num_classes: int = 10


class DigitClassifier(nn.Module):
    """conv-conv-pool, conv-pool, MLP; ``forward(images [B, 1, H, W] in [0, 1]) -> logits [B, 10]``."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * (config.size // 4) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images * 2 - 1))


def save_classifier(classifier: DigitClassifier, directory: Path | str) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(asdict(classifier.config), indent=1, sort_keys=True) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in classifier.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_classifier(path: Path | str | None = None, device: torch.device | str = "cpu") -> DigitClassifier:
    """Load a classifier saved by :func:`save_classifier`; ``path=None`` is the shipped one (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(path) if path is not None else WEIGHTS_DIR / "classifier"
    require(directory, CLASSIFIER_FILES, "classifier")
    raw = json.loads((directory / "config.json").read_text())
    config = ClassifierConfig(**{**raw, "channels": tuple(raw["channels"])})
    classifier = DigitClassifier(config)
    classifier.load_state_dict(load_file(str(directory / "model.safetensors")))
    return classifier.eval().to(device)


@torch.no_grad()
def accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``classifier`` on ``images`` in ``[0, 1]``."""
    correct = 0
    for lo in range(0, images.shape[0], batch_size):
        logits = classifier(images[lo : lo + batch_size])
        correct += int((logits.argmax(-1) == labels[lo : lo + batch_size]).sum())
    return correct / images.shape[0]
