"""Tiny embedded weights made by the real pretraining code (a few steps), shared by the module's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from treegrpo.embedded import pretrain


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights root with ``base/``, ``classifier/`` and ``judge/`` written by ``pretrain.main`` in seconds."""
    root = tmp_path_factory.mktemp("weights")
    threads = torch.get_num_threads()
    try:
        assert pretrain.main(["--what", "all", "--out", str(root), "--base-steps", "3",
                              "--classifier-steps", "3", "--judge-steps", "3", "--eval-samples", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return root
