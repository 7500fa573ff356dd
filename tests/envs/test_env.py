"""The TorchRL environment: specs, terminal reward, and agreement with the fast sampler."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs
from treegrpo.envs import (
    DenoisingEnv,
    DenoisingPolicy,
    FlowSDE,
    FlowTimesteps,
    GaussianData,
    SD3Denoiser,
    TrajectorySampler,
)

from .tiny_models import LATENT_SHAPE, text_cond, tiny_sd3

DATA = GaussianData(torch.tensor([1.0, -1.0, 0.5]), torch.eye(3) * 0.3)


def _rollout_both(model, transition, cond, num_prompts, group, latent_shape, sde_steps):
    noise = torch.randn(num_prompts * group, *latent_shape, generator=torch.Generator().manual_seed(0))
    sampler = TrajectorySampler(model, transition, group_size=group, sde_steps=sde_steps)
    fast = sampler.sample(cond, noise=noise, num_prompts=num_prompts, generator=torch.Generator().manual_seed(1))
    env = DenoisingEnv(transition, latent_shape=latent_shape, batch_size=num_prompts * group, num_prompts=num_prompts,
                       reward_fn=lambda x, c: x.flatten(1).sum(1))
    policy = DenoisingPolicy(model, transition, cond, sde_steps=sde_steps, generator=torch.Generator().manual_seed(1))
    start = TensorDict({"latent": noise}, batch_size=[num_prompts * group])
    slow = env.rollout(transition.num_steps, policy, auto_reset=True, tensordict=start)
    return fast, slow


def _sde_log_probs_by_depth(fast):
    """Stored log-probs of the fast sampler, ordered [trajectory, SDE step] like the env's."""
    tree = fast.tree  # level-major: level D holds every trajectory's D-th SDE sample
    return tree.log_prob[tree.parent >= 0].view(tree.max_depth, -1).T


@pytest.mark.parametrize("sde_steps", ["all", (2, 3, 4)])
def test_env_rollout_equals_the_trajectory_sampler_exactly_for_an_analytic_model(sde_steps):
    transition = FlowSDE(FlowTimesteps.linear(8), 0.7)
    fast, slow = _rollout_both(DATA.velocity_model(), transition, None, 2, 3, (3,), sde_steps)
    assert torch.equal(slow["next", "latent"][:, -1], fast.final)
    steps = list(range(8)) if sde_steps == "all" else list(sde_steps)
    assert torch.equal(slow["log_prob"][:, steps], _sde_log_probs_by_depth(fast))
    assert torch.equal(slow["next", "reward"][:, -1, 0], fast.final.sum(1))
    assert torch.count_nonzero(slow["next", "reward"][:, :-1]) == 0
    assert slow["next", "done"][:, -1].all() and not slow["next", "done"][:, :-1].any()


def test_env_rollout_matches_the_sampler_for_an_sd3_transformer(tmp_path):
    model = SD3Denoiser(tiny_sd3(tmp_path))
    transition = FlowSDE(FlowTimesteps.linear(5, shift=3.0), 0.7)
    with torch.no_grad():
        fast, slow = _rollout_both(model, transition, text_cond(2), 2, 2, LATENT_SHAPE, "all")
    torch.testing.assert_close(slow["next", "latent"][:, -1], fast.final, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slow["log_prob"], _sde_log_probs_by_depth(fast), rtol=1e-5, atol=1e-6)


def test_env_specs_are_consistent():
    env = DenoisingEnv(FlowSDE(FlowTimesteps.linear(4)), latent_shape=(3,), batch_size=4, num_prompts=2)
    env.set_seed(0)
    check_env_specs(env)
    reset = env.reset()
    assert torch.equal(reset["cond_index"], torch.tensor([0, 0, 1, 1]))
    assert reset["t"][0] == 1000.0


def test_env_rejects_a_wrong_latent_shape():
    env = DenoisingEnv(FlowSDE(FlowTimesteps.linear(4)), latent_shape=(3,), batch_size=2)
    with pytest.raises(ValueError, match="^latent: "):
        env.reset(TensorDict({"latent": torch.zeros(2, 4)}, batch_size=[2]))
    with pytest.raises(ValueError, match="^batch_size: "):
        DenoisingEnv(FlowSDE(FlowTimesteps.linear(4)), latent_shape=(3,), batch_size=3, num_prompts=2)
