"""Samplers on Gaussian data, where the exact denoiser is known: outputs must match the data law."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from treegrpo.envs import DDIM, DanceSDE, FlowCPS, FlowSDE, FlowTimesteps, GaussianData, sample_forest

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.3], [0.3, 1.0]], dtype=torch.float64)
NUM_SAMPLES = 20_000


def _final_moments(model, transition, stochastic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    steps = range(transition.num_steps) if stochastic else ()
    noise = torch.randn(NUM_SAMPLES, 2, generator=torch.Generator().manual_seed(0))
    rollout = sample_forest(
        model, transition, None, sde_steps=steps, branching=[1] * len(steps), noise=noise,
        num_prompts=NUM_SAMPLES, generator=torch.Generator().manual_seed(1),
    )
    final = rollout.final.double()
    return final.mean(0), torch.cov(final.T)


FLOW_CASES = {
    "euler_ode": (lambda ts: FlowSDE(ts, 0.7), False),
    "flow_grpo_sde": (lambda ts: FlowSDE(ts, 0.7), True),
    "dance_grpo_sde": (lambda ts: DanceSDE(ts, 0.5), True),
}


@pytest.mark.parametrize("case", sorted(FLOW_CASES))
def test_flow_samplers_reproduce_gaussian_data(case):
    make, stochastic = FLOW_CASES[case]
    data = GaussianData(MEAN, COV)
    mean, cov = _final_moments(data.velocity_model(), make(FlowTimesteps.linear(100)), stochastic)
    # Monte-Carlo error of the mean is ~0.007 here; discretisation error at 100 steps is ~0.02.
    torch.testing.assert_close(mean, MEAN, atol=0.04, rtol=0)
    torch.testing.assert_close(cov, COV, atol=0.08, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_gaussian_data(eta):
    scheduler = DDIMScheduler(clip_sample=False)
    data = GaussianData(MEAN, COV)
    transition = DDIM.from_scheduler(scheduler, 200, eta=eta)
    mean, cov = _final_moments(data.epsilon_model(scheduler.alphas_cumprod), transition, stochastic=eta > 0)
    torch.testing.assert_close(mean, MEAN, atol=0.04, rtol=0)
    torch.testing.assert_close(cov, COV, atol=0.08, rtol=0)


def test_cps_keeps_the_mean_but_shrinks_the_covariance():
    """CPS's noise is a fixed fraction of t', not O(sqrt(dt)): the data mean survives, the spread shrinks.

    This documents the peer's sampler as it is (it is not marginal-preserving at finite noise).
    """
    data = GaussianData(MEAN, COV)
    mean, cov = _final_moments(data.velocity_model(), FlowCPS(FlowTimesteps.linear(100), 0.7), True)
    torch.testing.assert_close(mean, MEAN, atol=0.04, rtol=0)
    assert (torch.diagonal(cov) < torch.diagonal(COV)).all()


def test_sde_with_shared_noise_differs_from_ode_but_not_in_law():
    data = GaussianData(MEAN, COV)
    transition = FlowSDE(FlowTimesteps.linear(100), 0.7)
    sde_mean, _ = _final_moments(data.velocity_model(), transition, True)
    ode_mean, _ = _final_moments(data.velocity_model(), transition, False)
    assert not torch.equal(sde_mean, ode_mean)
    torch.testing.assert_close(sde_mean, ode_mean, atol=0.05, rtol=0)
