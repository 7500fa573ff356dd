"""Tiny random-weight SD3, FLUX.1 and SD1.5 pipelines on disk, built once per session, and a prompt file."""

from __future__ import annotations

from pathlib import Path

import pytest

from treegrpo.testing.pipelines import save_tiny_flux_pipeline, save_tiny_sd3_pipeline, save_tiny_sd15_pipeline

PROMPTS = ["a red cat", "a blue dog", "two small birds", "a green house", "sunset over the sea", "a bowl of fruit"]


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd3": save_tiny_sd3_pipeline(root / "sd3"), "flux": save_tiny_flux_pipeline(root / "flux"),
            "sd15": save_tiny_sd15_pipeline(root / "sd15")}


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    """A prompt folder in the HPDv2 shape: ``train.txt`` and a held-out ``test.txt``."""
    folder = tmp_path_factory.mktemp("prompts")
    (folder / "train.txt").write_text("\n".join(PROMPTS[:4]) + "\n")
    (folder / "test.txt").write_text("\n".join(PROMPTS[4:]) + "\n")
    return folder


@pytest.fixture(scope="session")
def reward_root(tmp_path_factory) -> Path:
    """Tiny HPSv2, CLIPScore, PickScore and aesthetic models in their real file layouts."""
    from tests.rewards.tiny_rewards import save_tiny_rewards

    return save_tiny_rewards(tmp_path_factory.mktemp("rewards"))
