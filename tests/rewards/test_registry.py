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
