"""The peers' conventions where a user ports a setting: CPS scored as Flow-GRPO does, DanceGRPO's schedule."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from treegrpo.config import Config, ConfigError
from treegrpo.envs import FlowCPS, FlowSDE, FlowTimesteps
from treegrpo.problems.digits import flow_transition
from treegrpo.testing.numerics import assert_close_up_to_rounding


def _step(transition, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x, v = torch.randn(6, 3, 4, generator=generator), torch.randn(6, 3, 4, generator=generator)
    step = torch.tensor([0, 2, 4, 6, 7, 8])  # to the last noisy step, where t_next = 0.0089
    mean, std = transition.mean_std(x, v, step)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return sample, mean, std, x, step


def test_cps_scores_as_flow_grpo_by_default_and_as_the_density_on_request():
    timesteps = FlowTimesteps.linear(10, shift=3.0)
    sample, mean, std, _, _ = _step(FlowCPS(timesteps, 0.7))
    flow_grpo = FlowCPS(timesteps, 0.7).score(sample, mean, std)
    torch.testing.assert_close(flow_grpo, -((sample - mean) ** 2).mean((1, 2)))  # no 1/(2 s^2), no normaliser
    density = FlowCPS(timesteps, 0.7, scoring="density").score(sample, mean, std)
    reference = Normal(mean.double(), std.double().expand_as(mean)).log_prob(sample.double()).mean((1, 2))
    torch.testing.assert_close(density.double(), reference, rtol=1e-6, atol=1e-6)


def test_cps_density_log_ratios_are_one_over_two_s_squared_times_flow_grpos():
    timesteps = FlowTimesteps.linear(10, shift=3.0)
    sample, mean, std, _, _ = _step(FlowCPS(timesteps, 0.7))
    moved = mean + 0.01
    for scoring in ("flow_grpo", "density"):
        transition = FlowCPS(timesteps, 0.7, scoring=scoring)
        ratio = transition.score(sample, moved, std) - transition.score(sample, mean, std)
        if scoring == "flow_grpo":
            flow_grpo_ratio = ratio
    scale = 1 / (2 * std.flatten() ** 2)
    torch.testing.assert_close(ratio, flow_grpo_ratio * scale.to(ratio.dtype), rtol=1e-4, atol=1e-6)
    assert float(scale.max()) > 5000  # the last noisy step: about 8,000x more sensitive under the density


def test_samplers_losses_and_checks_score_through_the_transition():
    from treegrpo.algos.losses import PPOClipLoss
    from treegrpo.envs import CallableDenoiser, GaussianData, TreeSampler, check_on_policy, parent_batch

    data = GaussianData(torch.zeros(4), torch.eye(4))
    model = CallableDenoiser(lambda x, t, cond: data.velocity(x, t, None))
    transition = FlowCPS(FlowTimesteps.linear(10, shift=3.0), 0.7)
    rollout = TreeSampler(model, transition, branching=3, depth=2).sample(
        None, num_prompts=2, latent_shape=(4,), window_start=3, generator=torch.Generator().manual_seed(0))
    assert check_on_policy(rollout, model, transition, None).is_rounding  # up to rounding
    batch = parent_batch(rollout.tree, torch.zeros(rollout.tree.num_nodes))
    new, mean, _ = PPOClipLoss(model, transition).log_probs(batch)
    expected = -((batch["sample"] - mean.unsqueeze(1)) ** 2).mean(-1)
    torch.testing.assert_close(new[batch["mask"]], expected[batch["mask"]].to(new.dtype))
    assert_close_up_to_rounding(new[batch["mask"]], batch["log_prob"][batch["mask"]])  # the loss's batch shapes


def test_dancegrpo_schedule_is_its_shifted_linspace_not_diffusers_shifted_schedule():
    dance = FlowTimesteps.dancegrpo(10, shift=3.0)
    t = torch.linspace(1, 0, 11, dtype=torch.float64)
    torch.testing.assert_close(dance.sigmas, 3 * t / (1 + 2 * t))
    assert [round(float(v), 3) for v in dance.sigmas[[0, 1, 8, 9, 10]]] == [1.0, 0.964, 0.429, 0.25, 0.0]
    assert dance.model_times.tolist() == [1000, 964, 923, 874, 818, 750, 666, 562, 428, 250]  # int(1000 sigma), float32
    diffusers = FlowTimesteps.linear(10, shift=3.0)
    assert [round(float(v), 4) for v in diffusers.sigmas[[1, 8, 9]]] == [0.9601, 0.278, 0.0089]


def test_schedule_and_cps_scoring_are_config_options_for_flow_models():
    assert float(FlowTimesteps.named("dancegrpo", 10, shift=3.0).sigmas[9]) == pytest.approx(0.25)
    digits = flow_transition("flow_sde", 10, 3.0, 0.7, schedule="dancegrpo")
    assert isinstance(digits, FlowSDE) and float(digits.timesteps.sigmas[9]) == pytest.approx(0.25)
    cps = flow_transition("cps", 10, 3.0, 0.7, cps_scoring="density")
    assert cps.scoring == "density"
    Config().override(["sampling.schedule=dancegrpo", "sampling.transition=dance_sde"])
    with pytest.raises(ConfigError, match="^sampling.cps_scoring: 'density' is not used with sampling.transition=flow"):
        Config().override(["sampling.cps_scoring=density"])
    with pytest.raises(ConfigError, match="^sampling.schedule: 'dancegrpo' is not used with model.kind=sd15"):
        Config().override(["model.kind=sd15", "sampling.transition=ddim", "sampling.schedule=dancegrpo"])
