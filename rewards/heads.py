"""The five-linear MLP head shared by the LAION aesthetic predictor and ImageReward."""

from __future__ import annotations

from torch import nn


def mlp_head(width: int = 768) -> nn.Sequential:
    """``width -> 1024 -> 128 -> 64 -> 16 -> 1`` without activations, as both projects publish it
    (dropouts idle at eval); its state-dict keys are ``0, 2, 4, 6, 7``."""
    return nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
