"""Tree and trajectory samplers: NFE, shared prefixes, layout, and the on-policy self-checks."""

from __future__ import annotations

import pytest
import torch

from tests.envs.tiny_models import reference_edges
from treegrpo.envs import (
    DDIM,
    CallableDenoiser,
    FlowCPS,
    FlowSDE,
    FlowTimesteps,
    GaussianData,
    OnPolicyError,
    ShiftingWindow,
    TrajectorySampler,
    TreeSampler,
    check_ode_limit,
    check_on_policy,
    edge_log_probs,
    tree_nfe,
)
from treegrpo.testing.numerics import assert_close_up_to_rounding

DATA = GaussianData(torch.zeros(6), torch.eye(6) * 0.5)


class CountingModel(CallableDenoiser):
    """The analytic velocity, recording every call's batch size."""

    def __init__(self):
        super().__init__(lambda x, t, cond: DATA.velocity(x, t, None))
        self.batches: list[int] = []

    def forward(self, x, t, cond):
        self.batches.append(x.shape[0])
        return super().forward(x, t, cond)


def _sampler(num_steps=10, k=3, d=3, trees=1, max_batch=None, noise_level=0.7):
    model = CountingModel()
    transition = FlowSDE(FlowTimesteps.linear(num_steps), noise_level)
    return model, transition, TreeSampler(model, transition, branching=k, depth=d, trees_per_prompt=trees, max_batch=max_batch)


@pytest.mark.parametrize("num_steps, k, d, start", [(10, 3, 3, 0), (10, 3, 3, 4), (10, 2, 4, 6), (6, 4, 1, 5), (5, 2, 5, 0)])
def test_nfe_equals_the_formula_and_prefixes_are_shared(num_steps, k, d, start):
    model, _, sampler = _sampler(num_steps, k, d)
    rollout = sampler.sample(None, num_prompts=1, latent_shape=(6,), window_start=start, generator=torch.Generator().manual_seed(0))
    assert rollout.nfe == tree_nfe(num_steps, k, d, start)
    expected = [1] * start + [k**j for j in range(d)] + [k**d] * (num_steps - start - d)
    assert model.batches == expected  # one row per prefix step: computed once, not per leaf
    assert rollout.final.shape == (k**d, 6)
    assert rollout.sde_steps == tuple(range(start, start + d))


def test_frontiers_of_all_prompts_share_one_call_split_by_max_batch():
    model, _, sampler = _sampler(10, 3, 2, trees=2, max_batch=7)
    rollout = sampler.sample(None, num_prompts=3, latent_shape=(6,), window_start=2)
    trees = 6
    per_step = [trees, trees, trees, 3 * trees] + [9 * trees] * 6
    expected = [min(7, n - lo) for n in per_step for lo in range(0, n, 7)]
    assert model.batches == expected
    assert rollout.nfe == trees * tree_nfe(10, 3, 2, 2)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
def test_tree_layout_and_payload():
    _, transition, sampler = _sampler(10, 3, 2, trees=2)
    rollout = sampler.sample(None, num_prompts=2, latent_shape=(6,), window_start=4, generator=torch.Generator().manual_seed(0))
    tree = rollout.tree
    assert tree.num_nodes == 4 * (1 + 3 + 9)
    assert torch.equal(tree.group, tree.payload["cond_index"])
    assert torch.equal(tree.group[tree.is_leaf], torch.arange(2).repeat_interleave(18))
    steps = tree.payload["step"]
    assert torch.equal(steps[tree.depth == 0], torch.full((4,), 4))
    assert torch.equal(steps[tree.depth == 1], torch.full((12,), 5))
    assert torch.equal(steps[tree.is_leaf], torch.full((36,), 10))
    edges = reference_edges(tree)
    assert edges["node"].shape == (48,)
    # the child's sample is the parent's next state in a contiguous window
    internal_children = tree.depth == 1
    assert torch.equal(tree.payload["sample"][internal_children], tree.payload["latent"][internal_children])
    # every stored log-prob is finite and re-scores exactly
    torch.testing.assert_close(edges["log_prob"], transition.log_prob(
        edges["sample"], edges["latent"], DATA.velocity(edges["latent"], transition.model_time(edges["step"])), edges["step"]))


def test_importance_ratio_is_one_before_any_update():
    model, transition, sampler = _sampler(10, 3, 3, trees=2)
    rollout = sampler.sample(None, num_prompts=2, latent_shape=(6,), window_start=3, generator=torch.Generator().manual_seed(0))
    assert check_on_policy(rollout, model, transition, None, max_batch=5).is_rounding  # up to rounding


def test_on_policy_check_catches_a_changed_model():
    _model, transition, sampler = _sampler(10, 3, 2)
    rollout = sampler.sample(None, num_prompts=1, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    shifted = CallableDenoiser(lambda x, t, cond: DATA.velocity(x, t, None) + 0.1)
    with pytest.raises(OnPolicyError, match="importance ratio"):
        check_on_policy(rollout, shifted, transition, None)


def test_static_shapes_pad_every_call_and_change_nothing_else():
    """With static shapes every model call sees max_batch rows; samples, log-probs and NFE are unchanged."""
    results = {}
    for static in (False, True):
        model = CountingModel()
        transition = FlowSDE(FlowTimesteps.linear(10), 0.7)
        sampler = TreeSampler(model, transition, branching=3, depth=2, trees_per_prompt=2, max_batch=7,
                              static_shapes=static)
        rollout = sampler.sample(None, num_prompts=3, latent_shape=(6,), window_start=2,
                                 generator=torch.Generator().manual_seed(3))
        results[static] = (model.batches, rollout)
    padded_batches, padded = results[True]
    plain_batches, plain = results[False]
    assert set(padded_batches) == {7} and len(padded_batches) == len(plain_batches)
    assert padded.nfe == plain.nfe == 6 * tree_nfe(10, 3, 2, 2) and padded.calls == plain.calls
    # padded calls have other batch shapes, so other kernel rounding (exact on batch-invariant kernels)
    assert_close_up_to_rounding(padded.final, plain.final)
    assert_close_up_to_rounding(padded.tree.log_prob, plain.tree.log_prob)


def test_results_do_not_depend_on_micro_batch_size():
    outs = []
    for max_batch in (None, 1, 4, 13):
        _, _, sampler = _sampler(10, 3, 3, trees=2, max_batch=max_batch)
        outs.append(sampler.sample(None, num_prompts=2, latent_shape=(6,), window_start=2, generator=torch.Generator().manual_seed(5)))
    for other in outs[1:]:
        assert_close_up_to_rounding(other.final, outs[0].final)  # other micro-batches, other rounding
        assert_close_up_to_rounding(other.tree.log_prob, outs[0].tree.log_prob)


@pytest.mark.parametrize("make", [lambda ts: FlowSDE(ts, 0.7), lambda ts: FlowSDE(ts, 0.7, reduce="sum")])
def test_noise_level_zero_reproduces_the_ode_sampler_exactly(make):
    transition = make(FlowTimesteps.linear(12))
    noise = torch.randn(4, 6)
    assert check_ode_limit(CountingModel(), transition, None, noise, num_prompts=2) == 0.0


def test_ddim_eta_zero_reproduces_ddim_ode_exactly_and_cps_to_rounding():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(clip_sample=False)
    model = DATA.epsilon_model(scheduler.alphas_cumprod)
    assert check_ode_limit(model, DDIM.from_scheduler(scheduler, 20), None, torch.randn(3, 6), num_prompts=3) == 0.0
    cps = FlowCPS(FlowTimesteps.linear(20))
    assert check_ode_limit(DATA.velocity_model(), cps, None, torch.randn(3, 6), num_prompts=3, atol=1e-5) <= 1e-5


def test_edge_log_probs_use_one_row_per_parent():
    model, transition, sampler = _sampler(10, 3, 3)
    rollout = sampler.sample(None, num_prompts=1, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    model.batches.clear()
    scored = edge_log_probs(model, transition, rollout.tree, None)
    assert model.batches == [1 + 3 + 9]
    child = rollout.tree.parent >= 0
    assert_close_up_to_rounding(scored[child], rollout.tree.log_prob[child])  # one call of 13 rows against per-step calls


def test_trajectory_sampler_independent_and_shared_noise():
    model = CountingModel()
    transition = FlowSDE(FlowTimesteps.linear(8), 0.7)
    independent = TrajectorySampler(model, transition, group_size=4)
    rollout = independent.sample(None, num_prompts=2, latent_shape=(6,), generator=torch.Generator().manual_seed(0))
    assert rollout.tree.num_nodes == 8 * 9 and rollout.nfe == 8 * 8
    assert torch.equal(rollout.tree.group[rollout.tree.is_leaf], torch.arange(2).repeat_interleave(4))
    model.batches.clear()
    mix = TrajectorySampler(model, transition, group_size=4, sde_steps=ShiftingWindow(8, 2, start=3), shared_noise=True)
    rollout = mix.sample(None, num_prompts=2, latent_shape=(6,), epoch=1, generator=torch.Generator().manual_seed(0))
    assert rollout.sde_steps == (4, 5)
    assert model.batches == [2] * 5 + [8] * 3  # shared ODE prefix until the first SDE step
    assert torch.equal(rollout.tree.num_children()[rollout.tree.depth == 0], torch.full((2,), 4))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"branching": 0, "depth": 2}, "k"),
        ({"branching": 3, "depth": 11}, "d"),
        ({"branching": 3, "depth": 0}, "d"),
        ({"branching": 3, "depth": 2, "trees_per_prompt": 0}, "trees_per_prompt"),
    ],
)
def test_bad_sampler_arguments(kwargs, name):
    transition = FlowSDE(FlowTimesteps.linear(10))
    with pytest.raises(ValueError, match=f"^{name}: "):
        TreeSampler(CountingModel(), transition, **kwargs)


def test_bad_sample_arguments():
    _, _, sampler = _sampler(10, 3, 3)
    with pytest.raises(ValueError, match="^window_start: "):
        sampler.sample(None, num_prompts=1, latent_shape=(6,), window_start=8)
    with pytest.raises(ValueError, match="^noise: "):
        sampler.sample(None, num_prompts=2, noise=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="^noise: latent shape"):
        sampler.sample(None, num_prompts=1, noise=torch.zeros(1, 6), latent_shape=(5,))
    with pytest.raises(ValueError, match="^latent_shape: "):
        sampler.sample(None, num_prompts=1)
