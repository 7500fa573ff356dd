"""Step math against torch.distributions in float64, closed forms, and diffusers' own schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch.distributions import Normal

from treegrpo.envs import (
    DDIM,
    DanceSDE,
    FlowCPS,
    FlowSDE,
    FlowTimesteps,
    dance_sde_mean_std,
    ddim_mean_std,
    flow_cps_mean_std,
    flow_sde_mean_std,
    flow_sde_step,
    gaussian_log_prob,
)


def _x_v(batch=5, shape=(3, 4, 4), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=dtype), torch.randn(batch, *shape, generator=g, dtype=dtype)


def test_flow_sde_step_log_prob_is_normal_density_of_the_drawn_noise():
    x, v = _x_v()
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64)
    t_next = t - 0.05
    noise = torch.randn_like(x)
    a = 0.7
    x_next, log_prob = flow_sde_step(x, v, t, t_next, a, noise)
    # closed form of docs/concepts.md, "Denoising as a decision process", written out per sample
    for i in range(5):
        ti, dt = float(t[i]), float(t_next[i] - t[i])
        sigma = a * math.sqrt(ti / (1 - ti))
        mean = x[i] + (v[i] + sigma**2 / (2 * ti) * (x[i] + (1 - ti) * v[i])) * dt
        std = sigma * math.sqrt(-dt)
        torch.testing.assert_close(x_next[i], mean + std * noise[i])
        expected = Normal(mean, torch.tensor(std, dtype=torch.float64)).log_prob(x_next[i]).mean()
        torch.testing.assert_close(log_prob[i], expected)


def test_flow_sde_step_accepts_scalar_times_and_sum_reduction():
    x, v = _x_v()
    _x_next, lp_mean = flow_sde_step(x, v, 0.6, 0.5, 0.7, torch.zeros_like(x))
    _, lp_sum = flow_sde_step(x, v, 0.6, 0.5, 0.7, torch.zeros_like(x), reduce="sum")
    torch.testing.assert_close(lp_sum, lp_mean * x[0].numel())
    assert lp_mean.shape == (5,)


def test_flow_sde_at_t_one_uses_next_time_and_stays_finite():
    x, v = _x_v()
    mean, std = flow_sde_mean_std(x, v, torch.ones(5, dtype=torch.float64), torch.full((5,), 0.9, dtype=torch.float64), 0.7)
    expected_sigma = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    torch.testing.assert_close(std.flatten(), torch.full((5,), expected_sigma * math.sqrt(0.1), dtype=torch.float64))
    assert torch.isfinite(mean).all()


def test_zero_noise_level_is_the_euler_step_and_a_point_mass():
    x, v = _x_v()
    mean, std = flow_sde_mean_std(x, v, 0.6, 0.5, 0.0)
    assert torch.equal(mean, x + v * (0.5 - 0.6))
    assert torch.equal(gaussian_log_prob(mean, mean, std), torch.zeros(5, dtype=torch.float64))
    assert torch.isneginf(gaussian_log_prob(mean + 1, mean, std)).all()


def test_dance_sde_has_constant_noise_and_the_same_drift_form():
    x, v = _x_v()
    t, t_next, eta = 0.8, 0.7, 0.3
    mean, std = dance_sde_mean_std(x, v, t, t_next, eta)
    torch.testing.assert_close(std, torch.tensor(eta * math.sqrt(0.1), dtype=torch.float64))
    expected = x + (v + eta**2 / (2 * t) * (x + (1 - t) * v)) * (t_next - t)
    torch.testing.assert_close(mean, expected)


def test_cps_matches_its_closed_form():
    x, v = _x_v()
    t, t_next, a = 0.8, 0.6, 0.7
    mean, std = flow_cps_mean_std(x, v, t, t_next, a)
    s = t_next * math.sin(a * math.pi / 2)
    expected = (1 - t_next) * (x - t * v) + math.sqrt(t_next**2 - s**2) * (x + (1 - t) * v)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(std, torch.tensor(s, dtype=torch.float64))


def test_ddim_matches_diffusers_scheduler_step_with_eta():
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
    transition = DDIM.from_scheduler(scheduler, 10, eta=0.8)
    scheduler.set_timesteps(10)
    x, eps = _x_v(dtype=torch.float32)
    noise = torch.randn_like(x)
    for i, timestep in enumerate(scheduler.timesteps):
        expected = scheduler.step(eps, timestep, x, eta=0.8, variance_noise=noise).prev_sample
        mean, std = transition.mean_std(x, eps, torch.full((5,), i))
        torch.testing.assert_close((mean + std * noise).float(), expected, rtol=1e-5, atol=1e-5)


def test_ddim_log_prob_against_normal_float64():
    x, eps = _x_v()
    mean, std = ddim_mean_std(x, eps, 0.5, 0.6, 1.0)
    sample = mean + std * torch.randn_like(x)
    expected = Normal(mean, std.expand_as(mean)).log_prob(sample).flatten(1).mean(1)
    torch.testing.assert_close(gaussian_log_prob(sample, mean, std), expected)


def test_flow_ode_step_matches_diffusers_euler_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    transition = FlowSDE.from_scheduler(scheduler, 8)
    scheduler.set_timesteps(8)
    x, v = _x_v(dtype=torch.float32)
    ours = x
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(v, timestep, x, return_dict=False)[0]
        ours = transition.ode_step(ours, v, i)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transition_cls", [FlowSDE, DanceSDE, FlowCPS])
def test_bf16_model_output_runs_step_math_in_float32(transition_cls):
    transition = transition_cls(FlowTimesteps.linear(10))
    x, v = _x_v(dtype=torch.float32)
    x_next, log_prob = transition.sde_step(x.bfloat16(), v.bfloat16(), 3, noise=torch.zeros_like(x))
    assert x_next.dtype == torch.float32 and log_prob.dtype == torch.float32
    reference, _ = transition.sde_step(x.bfloat16().double(), v.bfloat16().double(), 3, noise=torch.zeros_like(x).double())
    torch.testing.assert_close(x_next.double(), reference, rtol=1e-6, atol=1e-6)


def test_transition_log_prob_rescoring_matches_the_sampled_log_prob():
    transition = FlowSDE(FlowTimesteps.linear(10), noise_level=0.9)
    x, v = _x_v(dtype=torch.float32)
    steps = torch.tensor([0, 2, 4, 6, 9])
    x_next, log_prob = transition.sde_step(x, v, steps, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(transition.log_prob(x_next, x, v, steps), log_prob)


def test_bad_arguments_name_themselves():
    timesteps = FlowTimesteps.linear(10)
    with pytest.raises(ValueError, match="noise_level"):
        FlowSDE(timesteps, noise_level=-0.1)
    with pytest.raises(ValueError, match="reduce"):
        FlowSDE(timesteps, reduce="max")
    with pytest.raises(ValueError, match="noise"):
        flow_sde_step(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, 0.4, 0.7, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="time"):
        flow_sde_step(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3) * 0.5, 0.4, 0.7)
