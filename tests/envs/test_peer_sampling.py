"""The peers' sampling conventions: BranchGRPO's trees, widened split noise, the clean last-step
image, DanceGRPO's integer timestep, and an empty sliding window."""

from __future__ import annotations

import math

import pytest
import torch

from treegrpo.envs import (
    BranchSampler,
    CallableDenoiser,
    DanceSDE,
    FlowTimesteps,
    GaussianData,
    TrajectorySampler,
    parent_batch,
)
from treegrpo.envs.gaussian import gaussian_log_prob
from treegrpo.envs.windows import WindowSchedule

DATA = GaussianData(torch.zeros(6), torch.eye(6) * 0.5)


def _model():
    return CallableDenoiser(lambda x, t, cond: DATA.velocity(x, t, None))


def _dance(num_steps=8, eta=0.3):
    return DanceSDE(FlowTimesteps.dancegrpo(num_steps, shift=3.0), eta)


def test_dancegrpo_feeds_the_model_int_sigma_times_1000_in_float32():
    """DanceGRPO ``fastvideo/train_grpo_flux.py:311-313,506``: ``int(sigma * 1000)`` of its float32 schedule."""
    for steps in (10, 16, 20, 25):
        t = torch.linspace(1, 0, steps + 1)
        sigma = 3.0 * t / (1 + 2.0 * t)
        expected = [float(int(value * 1000)) for value in sigma][:steps]
        assert FlowTimesteps.dancegrpo(steps, shift=3.0).model_times.tolist() == expected
    assert FlowTimesteps.dancegrpo(10, shift=3.0).model_times[3] == 874  # sigma = 0.875 in real numbers


def test_branch_sampler_splits_at_its_split_steps_and_chains_elsewhere():
    sampler = BranchSampler(_model(), _dance(8), split_steps=[0, 2, 5], branching=2)
    rollout = sampler.sample(None, num_prompts=3, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    tree = rollout.tree
    assert rollout.sde_steps == tuple(range(8)) and sampler.leaves_per_tree == 8
    assert rollout.final.shape == (3 * 8, 6)
    children = tree.num_children()
    steps = tree.payload["step"]
    internal = ~tree.is_leaf
    assert set(children[internal & torch.isin(steps, torch.tensor([0, 2, 5]))].tolist()) == {2}
    assert set(children[internal & ~torch.isin(steps, torch.tensor([0, 2, 5]))].tolist()) == {1}
    assert int(tree.max_depth) == 8  # a level per step: depth == step, as BranchGRPO counts them
    torch.testing.assert_close(tree.depth.to(steps.dtype), steps)
    # every edge, split or chain, is in the training batch
    batch = parent_batch(tree)
    assert int(batch["mask"].sum()) == int((tree.parent >= 0).sum())
    assert set(batch["node"].tolist()) == set(torch.nonzero(internal).squeeze(1).tolist())


@pytest.mark.exact_numerics  # a float64 reference of the same rows
def test_split_noise_is_wider_and_scored_with_the_std_it_was_drawn_with():
    base = _dance(6)
    wide = base.with_noise_scale({0: 4.0, 3: 4.0})
    step = torch.arange(6)
    ratio = wide.step_std(step) / base.step_std(step)
    torch.testing.assert_close(ratio, torch.tensor([4.0, 1, 1, 4.0, 1, 1], dtype=torch.float64))
    assert base.noise_scale is None  # the original is untouched
    sampler = BranchSampler(_model(), wide, split_steps=[0, 3], branching=2)
    rollout = sampler.sample(None, num_prompts=2, latent_shape=(6,), generator=torch.Generator().manual_seed(3))
    tree = rollout.tree
    edges = torch.nonzero(tree.parent >= 0).squeeze(1)
    parent = tree.parent[edges]
    latent, sample = tree.payload["latent"][parent].double(), tree.payload["sample"][edges].double()
    at = tree.payload["step"][parent]
    t, t_next = base.timesteps.times(at)
    velocity = DATA.velocity(latent, base.model_time(at), None)  # the model sees int(1000 sigma)
    mean = latent + (velocity + 0.3**2 / (2 * t.view(-1, 1)) * (latent + (1 - t.view(-1, 1)) * velocity)) * (
        t_next - t).view(-1, 1)
    std = 0.3 * torch.sqrt(t - t_next) * torch.where(torch.isin(at, torch.tensor([0, 3])), 4.0, 1.0)
    expected = torch.distributions.Normal(mean, std.view(-1, 1)).log_prob(sample).mean(-1)
    torch.testing.assert_close(tree.log_prob[edges].double(), expected, rtol=1e-5, atol=1e-5)
    eps = (sample - mean) / std.view(-1, 1)  # the draws are standard normal at every step, split or not
    assert 0.6 < float(eps.std()) < 1.4


def test_with_noise_scale_refuses_bad_steps_and_scales():
    with pytest.raises(ValueError, match="step 9 is not in"):
        _dance(6).with_noise_scale({9: 2.0})
    with pytest.raises(ValueError, match="noise scale of step 1"):
        _dance(6).with_noise_scale({1: 0.0})


def test_branch_sampler_refuses_splits_without_noise_or_width():
    with pytest.raises(ValueError, match="^split_steps: \\[4\\] are not SDE steps"):
        BranchSampler(_model(), _dance(6), split_steps=[0, 4], sde_steps=[0, 1, 2])
    with pytest.raises(ValueError, match="branching"):
        BranchSampler(_model(), _dance(6), split_steps=[0], branching=1)


@pytest.mark.exact_numerics  # a float64 reference of the same rows
def test_x0_decode_gives_the_last_step_clean_prediction_not_the_sample():
    """BranchGRPO decodes ``pred_original`` of the last step: ``x - sigma v``, which equals the
    Euler step to ``t = 0``; the last edge is still sampled and stored."""
    transition = _dance(5)
    steps = list(range(5))
    model = _model()
    sampler = TrajectorySampler(model, transition, group_size=2, sde_steps=steps, decode="x0")
    rollout = sampler.sample(None, num_prompts=1, latent_shape=(6,), generator=torch.Generator().manual_seed(1))
    tree = rollout.tree
    leaves = tree.leaves()
    parent = tree.parent[leaves]
    x = tree.payload["latent"][parent].double()
    t = float(transition.timesteps.sigmas[4])
    clean = x - t * DATA.velocity(x, transition.model_time(torch.full((x.shape[0],), 4)), None)
    torch.testing.assert_close(rollout.final.double(), clean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tree.payload["sample"][leaves], rollout.final)  # the sample differs: noise was drawn
    assert torch.all(tree.log_prob[leaves] != 0)


class EmptyAt(WindowSchedule):
    """A sliding window with no step at even epochs (MixGRPO's end of sweep)."""

    def start(self, epoch):
        return 0

    def steps(self, epoch):
        return () if epoch % 2 == 0 else (1, 2)


def test_an_empty_window_samples_ode_trajectories_and_trains_nothing():
    transition = _dance(6)
    sampler = TrajectorySampler(_model(), transition, group_size=3, sde_steps=EmptyAt(6, 2), shared_noise=True)
    empty = sampler.sample(None, epoch=0, num_prompts=2, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    assert empty.sde_steps == () and parent_batch(empty.tree).batch_size[0] == 0
    full = sampler.sample(None, epoch=1, num_prompts=2, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    assert full.sde_steps == (1, 2) and full.final.shape == (6, 6)
    assert math.isfinite(float(gaussian_log_prob(full.final, full.final, torch.tensor(1.0)).sum()))
