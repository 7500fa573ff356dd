"""The stateless TorchRL environment and its policy: the specs, branching from any state, rows at mixed
steps, micro-batch invariance, and TorchRL's own rollout equal to the engine's for the same noise."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

import treeadv
from treeadv.interop import from_torchrl, to_torchrl
from treegrpo.envs import (
    DenoisingEnv,
    DenoisingPolicy,
    FlowSDE,
    FlowTimesteps,
    GaussianData,
    SD3Denoiser,
    TrajectorySampler,
    TreeSampler,
    check_on_policy,
    edge_log_probs,
)
from treegrpo.testing.numerics import assert_close_up_to_rounding

from .tiny_models import LATENT_SHAPE, text_cond, tiny_sd3

DATA = GaussianData(torch.tensor([1.0, -1.0, 0.5]), torch.eye(3) * 0.3)
TRANSITION = FlowSDE(FlowTimesteps.linear(8, shift=3.0), 0.7)


def _env(reward_fn=None, prompts=None):
    return DenoisingEnv(TRANSITION, latent_shape=(3,), num_prompts=prompts, reward_fn=reward_fn)


def test_check_env_specs_passes_with_and_without_a_batch():
    env = _env(reward_fn=lambda x, c: x.sum(-1), prompts=2)
    env.set_seed(0)
    check_env_specs(env)
    batched = env.reset(TensorDict({"cond_index": torch.tensor([0, 1, 1])}, batch_size=[3]))
    assert batched["latent"].shape == (3, 3) and batched["step"].tolist() == [0, 0, 0]
    assert torch.equal(batched["t"], TRANSITION.model_time(torch.zeros(3, dtype=torch.long)).double())
    assert env.observation_spec.is_in(env.reset().exclude("done", "terminated"))


def _trajectories(model, transition, cond, prompts, group, latent_shape, sde_steps):
    noise = torch.randn(prompts * group, *latent_shape, generator=torch.Generator().manual_seed(0))
    engine = TrajectorySampler(model, transition, group_size=group, sde_steps=sde_steps).sample(
        cond, noise=noise, num_prompts=prompts, generator=torch.Generator().manual_seed(1))
    env = DenoisingEnv(transition, latent_shape=latent_shape, reward_fn=lambda x, c: x.flatten(1).sum(1))
    policy = DenoisingPolicy(model, transition, cond, sde_steps=sde_steps if sde_steps != "all" else "all",
                             generator=torch.Generator().manual_seed(1))
    start = env.reset(TensorDict({"latent": noise, "cond_index": torch.arange(prompts).repeat_interleave(group)},
                                 batch_size=[prompts * group]))
    with torch.no_grad():
        torchrl = env.rollout(transition.num_steps, policy, auto_reset=False, tensordict=start)
    return engine, torchrl


def _by_depth(engine):
    """The engine's stored log-probs as ``[trajectory, SDE step]``, like a TorchRL rollout's."""
    tree = engine.tree  # level-major: level D holds every trajectory's D-th SDE sample
    return tree.log_prob[tree.parent >= 0].view(tree.max_depth, -1).T


@pytest.mark.parametrize("sde_steps", ["all", (2, 3, 4)])
def test_torchrl_rollout_equals_the_engine_exactly_for_the_same_noise(sde_steps):
    engine, torchrl = _trajectories(DATA.velocity_model(), TRANSITION, None, 2, 3, (3,), sde_steps)
    assert torch.equal(torchrl["next", "latent"][:, -1], engine.final)
    steps = list(range(8)) if sde_steps == "all" else list(sde_steps)
    assert torch.equal(torchrl["log_prob"][:, steps], _by_depth(engine))
    assert torch.count_nonzero(torchrl["log_prob"][:, [i for i in range(8) if i not in steps]]) == 0
    assert torch.equal(torchrl["next", "reward"][:, -1, 0], engine.final.sum(1))
    assert torch.count_nonzero(torchrl["next", "reward"][:, :-1]) == 0
    assert torchrl["next", "done"][:, -1].all() and not torchrl["next", "done"][:, :-1].any()


def test_torchrl_rollout_equals_the_engine_for_an_sd3_transformer(tmp_path):
    model = SD3Denoiser(tiny_sd3(tmp_path))
    transition = FlowSDE(FlowTimesteps.linear(5, shift=3.0), 0.7)
    engine, torchrl = _trajectories(model, transition, text_cond(2), 2, 2, LATENT_SHAPE, "all")
    torch.testing.assert_close(torchrl["next", "latent"][:, -1], engine.final, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torchrl["log_prob"], _by_depth(engine), rtol=1e-5, atol=1e-6)


def test_a_node_branches_from_any_mid_trajectory_state():
    """ODE to step 5 through the env, then expand the state 3 ways: the tree sampler's window at 5."""
    model, noise = DATA.velocity_model(), torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    env, ode = _env(), DenoisingPolicy(model, TRANSITION, sde_steps=())
    state = env.reset(TensorDict({"latent": noise}, batch_size=[2]))
    with torch.no_grad():
        for _ in range(5):
            state = env.step(ode(state))["next"]
        sde = DenoisingPolicy(model, TRANSITION, generator=torch.Generator().manual_seed(4))
        children = sde.branch(sde.distribution(state), 3)
    assert children["step"].tolist() == [5] * 6
    tree = TreeSampler(model, TRANSITION, branching=3, depth=1).sample(
        None, noise=noise, num_prompts=2, window_start=5, generator=torch.Generator().manual_seed(4)).tree
    first_level = tree.depth == 1
    assert torch.equal(children["action"], tree.payload["sample"][first_level])
    assert torch.equal(children["log_prob"], tree.log_prob[first_level])


def test_rows_at_different_steps_share_one_batch():
    model = DATA.velocity_model()
    env, policy = _env(), DenoisingPolicy(model, TRANSITION, sde_steps=(1, 6))
    latent = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    state = env.reset(TensorDict({"latent": latent, "step": torch.tensor([0, 1, 6, 7])}, batch_size=[4]))
    with torch.no_grad():
        together = policy.distribution(state.clone())
        alone = [policy.distribution(state[i:i + 1].clone()) for i in range(4)]
        nxt = env.step(policy.draw(together))["next"]
    for key in ("loc", "scale", "ode"):
        assert_close_up_to_rounding(together[key], torch.cat([row[key] for row in alone]))  # 4 rows against 1
    assert nxt["step"].tolist() == [1, 2, 7, 8] and nxt["done"].flatten().tolist() == [False, False, False, True]
    # the SDE rows (steps 1 and 6) drew noise, the ODE rows (0 and 7) took the ODE update exactly
    assert torch.equal(nxt["latent"][[0, 3]], together["ode"][[0, 3]])
    assert not torch.equal(nxt["latent"][[1, 2]], together["ode"][[1, 2]])
    assert together["log_prob"][[0, 3]].tolist() == [0.0, 0.0] and (together["log_prob"][[1, 2]] != 0).all()


def test_results_do_not_depend_on_the_micro_batch():
    model = DATA.velocity_model()
    noise = torch.randn(6, 3, generator=torch.Generator().manual_seed(6))
    rollouts = [TreeSampler(model, TRANSITION, branching=3, depth=2, max_batch=size).sample(
        None, noise=noise, num_prompts=6, window_start=2, generator=torch.Generator().manual_seed(7))
        for size in (None, 1, 5)]
    for other in rollouts[1:]:
        assert_close_up_to_rounding(other.final, rollouts[0].final)  # other micro-batches, other rounding
        assert_close_up_to_rounding(other.tree.log_prob, rollouts[0].tree.log_prob)
    assert [rows for _, rows in rollouts[1].calls[:3]] == [1, 1, 1]


def test_engine_trees_pass_the_on_policy_check_and_convert_to_torchrl_and_back():
    model = DATA.velocity_model()
    rollout = TreeSampler(model, TRANSITION, branching=2, depth=3).sample(
        None, num_prompts=2, latent_shape=(3,), window_start=3, generator=torch.Generator().manual_seed(8))
    assert check_on_policy(rollout, model, TRANSITION, None, max_batch=3).is_rounding  # up to rounding
    rescored = edge_log_probs(model, TRANSITION, rollout.tree, None)
    edges = rollout.tree.parent >= 0
    assert_close_up_to_rounding(rescored[edges], rollout.tree.log_prob[edges])  # one call against per-step calls
    back = from_torchrl(to_torchrl(rollout.tree))
    assert torch.equal(back.parent, rollout.tree.parent) and torch.equal(back.log_prob, rollout.tree.log_prob)
    assert torch.equal(back.payload["latent"], rollout.tree.payload["latent"])
    leaf = treeadv.leaf_advantages(-rollout.final.square().sum(1), rollout.tree.group[rollout.tree.leaves()])
    assert torch.equal(treeadv.backup(back, back.scatter_leaves(leaf)),
                       treeadv.backup(rollout.tree, rollout.tree.scatter_leaves(leaf)))


def test_the_env_refuses_a_latent_of_the_wrong_shape():
    with pytest.raises(ValueError, match="^latent: "):
        _env().reset(TensorDict({"latent": torch.zeros(2, 4)}, batch_size=[2]))
