"""The reward registry is a treeadv Registry: the same reward again replaces it, another under a taken name is refused."""

from __future__ import annotations

import pytest

from treeadv.registry import RegistryError
from treegrpo.rewards import REWARDS, build_reward, register_reward, rewards_for
from treegrpo.rewards.offline import JpegSize


def _bright(**_):
    return JpegSize(1.0)


def test_a_reward_registers_once_per_name() -> None:
    register_reward("bright_test", _bright, kinds=("sd3",))
    try:
        register_reward("bright_test", _bright, kinds=("sd3",))  # the same factory again (a plugin loaded twice)
        assert "bright_test" in rewards_for("sd3") and "bright_test" not in rewards_for("flux")
        assert isinstance(build_reward("bright_test", kind="sd3"), JpegSize)
        with pytest.raises(RegistryError, match="reward 'bright_test' is already registered"):
            register_reward("bright_test", lambda **_: JpegSize(-1.0), kinds=("sd3",))
        register_reward("bright_test", _bright, kinds=("sd3", "flux"), replace=True)
        assert "bright_test" in rewards_for("flux")
    finally:
        REWARDS.remove("bright_test")
    assert "bright_test" not in REWARDS


def test_a_reward_scores_the_families_of_its_modality() -> None:
    """A reward registered for a modality scores every family kind of that modality (the kinds
    treegrpo.problems declares from the families), and named non-family kinds besides."""
    import torch

    import treegrpo.problems  # noqa: F401  (declares each family kind's modality)
    from treegrpo.families import families
    from treegrpo.rewards import FrameAveraged, modality

    images = [f.name for f in families() if f.modality == "image"]
    videos = [f.name for f in families() if f.modality == "video"]
    assert images and videos and all(modality(kind) == "image" for kind in images) and modality("digits") is None
    register_reward("clip_test", _bright, modalities=("video",), kinds=("digits",))
    try:
        assert all("clip_test" in rewards_for(kind) for kind in [*videos, "digits"])
        assert not any("clip_test" in rewards_for(kind) for kind in images)
    finally:
        REWARDS.remove("clip_test")
    with pytest.raises(TypeError, match="one str"):
        register_reward("clip_test", _bright, modalities="video")
    # the image rewards' frame averages score videos [B, F, 3, H, W]
    video = build_reward("jpeg_compressibility_frames", kind=videos[0])
    assert isinstance(video, FrameAveraged) and video.name == "jpeg_compressibility_frames"
    frames = torch.rand(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([JpegSize(-1.0)(frames[:, k], ["a", "b"]) for k in (0, 1, 3, 4)]).mean(0)
    torch.testing.assert_close(video(frames, ["a", "b"]), expected)
