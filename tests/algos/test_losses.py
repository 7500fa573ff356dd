"""Losses and batches: the clipped objective by hand, gradients against REINFORCE, the KL in
closed form against torch.distributions, the parent layout, and DDPO's tracker."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from tests.envs.tiny_models import reference_edges
from treegrpo.algos.advantages import PerPromptStatTracker
from treegrpo.algos.batch import count_edges, select_steps
from treegrpo.algos.losses import EdgeBatchError, PPOClipLoss, ReinforceLoss, ppo_clip_objective, total_loss
from treegrpo.envs import FlowSDE, FlowTimesteps, TrajectorySampler, TreeSampler, parent_batch
from treegrpo.problems import toy2d_problem
from treegrpo.testing.numerics import assert_close_up_to_rounding


def test_ppo_clip_objective_by_hand():
    new = torch.log(torch.tensor([[1.5, 0.5], [1.0, 2.0]]))
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 3.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = ppo_clip_objective(new, old, adv, mask, clip_range=0.2)
    # per edge max(-A r, -A clip(r)): (1.5,A=1) -> -1.2; (0.5,A=1) -> -0.5; (1.0,A=-1) -> 1.0
    torch.testing.assert_close(out["loss_objective"], torch.tensor((-1.2 - 0.5 + 1.0) / 3))
    torch.testing.assert_close(out["clip_fraction"], torch.tensor(2 / 3))
    # the loss's batch of parents has other shapes than sampling's frontiers: 1 up to kernel rounding
    assert_close_up_to_rounding(out["ratio_mean"], torch.tensor(1.0))


def test_asymmetric_clip_bounds_by_hand():
    new = torch.log(torch.tensor([[1.25, 0.75, 1.35]]))
    old, adv, mask = torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool)
    out = ppo_clip_objective(new, old, adv, mask, clip_range=0.2, clip_high=0.3)
    # max(-A r, -A clip(r, 0.8, 1.3)) with A = 1: 1.25 -> -1.25 (inside); 0.75 -> -0.75; 1.35 -> -1.3 (clipped)
    torch.testing.assert_close(out["loss_objective"], torch.tensor((-1.25 - 0.75 - 1.3) / 3))
    torch.testing.assert_close(out["clip_fraction"], torch.tensor(2 / 3))  # 0.75 < 0.8 and 1.35 > 1.3
    symmetric = ppo_clip_objective(new, old, adv, mask, clip_range=0.2)
    torch.testing.assert_close(symmetric["loss_objective"], torch.tensor((-1.2 - 0.75 - 1.2) / 3))
    with pytest.raises(ValueError, match="clip_high: expected a number > 0 or None"):
        PPOClipLoss(torch.nn.Linear(1, 1), None, clip_high=0.0)


def test_a_loss_reads_renamed_keys_and_names_missing_ones_in_one_line():
    problem, _, _, batch = _tree_batch()
    loss = PPOClipLoss(problem.model, problem.transition, clip_range=0.1)
    expected = loss(batch)["loss_objective"]
    renamed = batch.as_loss_input().rename_key_("sample", "child_latent")  # a plain TensorDict, keys renamed
    with pytest.raises(EdgeBatchError, match=r"^PPOClipLoss: the batch lacks sample \(it has "):
        loss(renamed)
    loss.set_keys(sample="child_latent")
    assert "child_latent" in loss.in_keys
    torch.testing.assert_close(loss(renamed)["loss_objective"], expected)
    no_cond = renamed.exclude("cond_table")
    with pytest.raises(EdgeBatchError, match="the batch has no conditioning"):
        loss(no_cond)


def _tree_batch(num_prompts=2, k=3, d=2):
    problem = toy2d_problem(num_steps=6)
    sampler = TreeSampler(problem.model, problem.transition, branching=k, depth=d, trees_per_prompt=2)
    cond = torch.arange(num_prompts) % 2
    rollout = sampler.sample(cond, latent_shape=(2,), window_start=1, generator=torch.Generator().manual_seed(0))
    advantage = torch.randn(rollout.tree.num_nodes, generator=torch.Generator().manual_seed(1))
    batch = parent_batch(rollout.tree, advantage, cond)  # the loss gathers cond rows from the table
    return problem, rollout, advantage, batch


def test_parent_batch_groups_every_edge_under_its_parent():
    _, rollout, advantage, batch = _tree_batch()
    edges = reference_edges(rollout.tree)
    assert batch.batch_size == (4 * (1 + 3),) and count_edges(batch) == edges["node"].shape[0]
    # each real slot holds exactly one edge, with its sample, log-prob and advantage
    flat = batch["mask"].flatten()
    parents = batch["node"].repeat_interleave(3)[flat]
    order = torch.argsort(edges["parent"] * 1000 + edges["node"])
    assert torch.equal(parents, edges["parent"][order])
    assert torch.equal(batch["sample"].flatten(0, 1)[flat], edges["sample"][order])
    assert torch.equal(batch["log_prob"].flatten()[flat], edges["log_prob"][order])
    assert torch.equal(batch["advantage"].flatten()[flat], advantage[edges["node"][order]])


def test_trajectory_batch_with_shared_noise_splits_the_wide_root_instead_of_padding():
    problem = toy2d_problem(num_steps=4)
    sampler = TrajectorySampler(problem.model, problem.transition, group_size=3, shared_noise=True)
    rollout = sampler.sample(torch.tensor([0]), latent_shape=(2,), generator=torch.Generator().manual_seed(0))
    advantage = torch.randn(rollout.tree.num_nodes, generator=torch.Generator().manual_seed(2))
    batch = parent_batch(rollout.tree, advantage)
    assert batch["mask"].shape == (3 + 3 * 3, 1) and bool(batch["mask"].all())  # K = 1: no padded slots
    root = int(rollout.tree.roots()[0])
    assert batch["node"].tolist().count(root) == 3  # the shared root: one row per child
    edges = reference_edges(rollout.tree)
    order = torch.argsort(edges["parent"] * 1000 + edges["node"])
    torch.testing.assert_close(batch["sample"].flatten(0, 1), edges["sample"][order])
    torch.testing.assert_close(batch["advantage"].flatten(), advantage[edges["node"][order]])


def test_a_parent_with_more_children_than_the_rest_takes_several_rows():
    from treeadv import Tree

    parent = torch.tensor([-1, 0, 0, 0, 0, 0, 1, 1, 2, 2])  # the root has 5 children, two nodes have 2 each
    tree = Tree.from_parents(parent, torch.zeros(10))
    tree.payload = tree.payload.__class__({"latent": torch.arange(10.0).unsqueeze(-1),
                                           "step": torch.zeros(10, dtype=torch.long),
                                           "sample": torch.arange(10.0).unsqueeze(-1),
                                           "cond_index": torch.zeros(10, dtype=torch.long)}, batch_size=[10])
    batch = parent_batch(tree, torch.arange(10.0))
    assert batch["mask"].shape[1] == 2 and batch["node"].tolist() == [0, 0, 0, 1, 2]
    assert batch["mask"].sum(1).tolist() == [2, 2, 1, 2, 2]
    assert sorted(batch["advantage"][batch["mask"]].tolist()) == list(range(1, 10))


def test_loss_is_on_policy_before_any_update_and_one_forward_serves_k_edges():
    problem, _, _, batch = _tree_batch()
    rows = []
    forward = problem.model.forward
    problem.model.forward = lambda x, t, c: rows.append(x.shape[0]) or forward(x, t, c)
    out = PPOClipLoss(problem.model, problem.transition, clip_range=0.1)(batch)
    assert rows == [batch.batch_size[0]]
    # the loss's batch of parents has other shapes than sampling's frontiers: 1 up to kernel rounding
    assert_close_up_to_rounding(out["ratio_mean"], torch.tensor(1.0))
    assert float(out["clip_fraction"]) == 0.0


def test_ppo_gradient_at_ratio_one_equals_the_reinforce_gradient():
    problem, _, _, batch = _tree_batch()
    params = [p for p in problem.model.parameters() if p.requires_grad]
    with torch.no_grad():  # move off the zero-initialised output so gradients reach every layer
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    batch = batch.clone()
    with torch.no_grad():
        batch.set("log_prob", PPOClipLoss(problem.model, problem.transition).log_probs(batch)[0] * batch["mask"])
    grads = []
    for loss in (PPOClipLoss(problem.model, problem.transition), ReinforceLoss(problem.model, problem.transition)):
        problem.model.zero_grad()
        total_loss(loss(batch)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert grads[0].abs().sum() > 0


def test_grpo_kl_is_the_closed_form_gaussian_kl():
    problem, _, _, batch = _tree_batch()
    reference = toy2d_problem(num_steps=6, seed=3).model
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1)
    loss = PPOClipLoss(problem.model, problem.transition, clip_range=0.1, kl_coef=0.5, reference=reference)
    out = loss(batch)
    mean, std = loss.policy_mean_std(batch)
    ref_mean, _ = loss.policy_mean_std(batch, reference)
    p = Normal(mean.double(), std.double().expand_as(mean))
    q = Normal(ref_mean.double(), std.double().expand_as(mean))
    expected = kl_divergence(p, q).mean()
    torch.testing.assert_close(out["kl"].double(), expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out["loss_kl"].double(), 0.5 * expected, rtol=1e-5, atol=1e-8)


def test_kl_needs_a_reference():
    problem = toy2d_problem()
    with pytest.raises(ValueError, match="^reference: "):
        PPOClipLoss(problem.model, problem.transition, kl_coef=0.1)
    with pytest.raises(ValueError, match="^clip_range: "):
        PPOClipLoss(problem.model, problem.transition, clip_range=0.0)


def test_per_prompt_tracker_matches_a_python_reference():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    generator = torch.Generator().manual_seed(0)
    history: dict[int, list[float]] = {}
    for _ in range(5):
        ids = torch.randint(3, (6,), generator=generator)
        rewards = torch.randn(6, generator=generator, dtype=torch.float64)
        got = tracker.update(ids, rewards)
        for prompt in set(ids.tolist()):
            history.setdefault(prompt, []).extend(rewards[ids == prompt].tolist())
            history[prompt] = history[prompt][-4:]
        for i, prompt in enumerate(ids.tolist()):
            values = torch.tensor(history[prompt] if len(history[prompt]) >= 3 else rewards.tolist(), dtype=torch.float64)
            expected = (rewards[i] - values.mean()) / (values.std(unbiased=False) + 1e-6)
            torch.testing.assert_close(got[i], expected)
    restored = PerPromptStatTracker(buffer_size=4, min_count=3)
    restored.load_state_dict(tracker.state_dict())
    ids, rewards = torch.tensor([0, 1, 2]), torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(restored.update(ids, rewards), tracker.update(ids, rewards))


def test_select_steps_keeps_whole_steps():
    transition = FlowSDE(FlowTimesteps.linear(10))
    problem = toy2d_problem(num_steps=10)
    rollout = TrajectorySampler(problem.model, transition, group_size=2).sample(
        torch.tensor([0, 1]), latent_shape=(2,), generator=torch.Generator().manual_seed(0))
    batch = parent_batch(rollout.tree, torch.zeros(rollout.tree.num_nodes))
    kept = select_steps(batch, 0.3, torch.Generator().manual_seed(0))
    steps = torch.unique(kept["step"])
    assert steps.numel() == 3 and kept.batch_size[0] == 3 * 4
    with pytest.raises(ValueError, match="^fraction: "):
        select_steps(batch, 0.0)


def _trajectory_batch(shared_noise: bool = False):
    transition = FlowSDE(FlowTimesteps.linear(10))
    problem = toy2d_problem(num_steps=10)
    rollout = TrajectorySampler(problem.model, transition, group_size=3, shared_noise=shared_noise).sample(
        torch.tensor([0, 1]), latent_shape=(2,), generator=torch.Generator().manual_seed(0))
    return parent_batch(rollout.tree, torch.zeros(rollout.tree.num_nodes))


def _kept_by_trajectory(batch, kept) -> dict[int, list[int]]:
    """Trajectory (numbered by its leaf, ascending) -> sorted steps of ``batch`` that ``kept`` holds,
    walking ``batch``'s child links row by row."""
    row_of = {int(n): r for r, n in enumerate(batch["node"].tolist())}
    leaf_of_edge = {}  # (parent, first child) names a row; a shared root has one row per child
    for r in range(batch.batch_size[0]):
        at = r
        while int(batch["child"][at, 0]) in row_of:
            at = row_of[int(batch["child"][at, 0])]
        leaf_of_edge[int(batch["node"][r]), int(batch["child"][r, 0])] = int(batch["child"][at, 0])
    leaves = sorted(set(leaf_of_edge.values()))
    out: dict[int, list[int]] = {i: [] for i in range(len(leaves))}
    for node, child, step in zip(kept["node"].tolist(), kept["child"][:, 0].tolist(), kept["step"].tolist(),
                                 strict=True):
        out[leaves.index(leaf_of_edge[node, child])].append(step)
    return {i: sorted(v) for i, v in out.items()}


@pytest.mark.parametrize("fraction", [0.35, 0.99, 0.5])
def test_first_steps_are_flow_grpos(fraction) -> None:
    """Flow-GRPO ``scripts/train_sd3.py:345,864``, transcribed: the first ``int(T * f)`` steps of every sample."""
    batch = _trajectory_batch()
    num_steps = 10
    num_train_timesteps = int(num_steps * fraction)
    train_timesteps = [step_index for step_index in range(num_train_timesteps)]
    kept = select_steps(batch, fraction, torch.Generator().manual_seed(0), "first")
    assert _kept_by_trajectory(batch, kept) == {i: train_timesteps for i in range(6)}


@pytest.mark.parametrize("shared_noise", [False, True])
def test_per_sample_steps_are_dance_grpos(shared_noise) -> None:
    """DanceGRPO ``fastvideo/train_grpo_flux.py:551-570``, transcribed: one ``randperm`` of the steps per
    sample, of which the first ``int(len * timestep_fraction)`` are trained."""
    batch = _trajectory_batch(shared_noise)
    timestep_fraction, batch_size, steps = 0.6, 6, 10
    generator = torch.Generator().manual_seed(7)
    perms = torch.stack([torch.randperm(steps, generator=generator) for _ in range(batch_size)])
    train_timesteps = int(steps * timestep_fraction)
    want = {i: sorted(perms[i, :train_timesteps].tolist()) for i in range(batch_size)}
    kept = select_steps(batch, timestep_fraction, torch.Generator().manual_seed(7), "per_sample")
    assert _kept_by_trajectory(batch, kept) == want
    assert len({tuple(v) for v in want.values()}) > 1  # the samples do differ
    assert kept.batch_size[0] == batch_size * train_timesteps


def test_step_selections_keep_at_least_one_step_and_refuse_unknown_names() -> None:
    batch = _trajectory_batch()
    for selection in ("random", "first", "per_sample"):
        assert select_steps(batch, 1.0, None, selection) is batch
        kept = select_steps(batch, 0.05, torch.Generator().manual_seed(0), selection)
        assert {len(v) for v in _kept_by_trajectory(batch, kept).values()} == {1}, selection
    with pytest.raises(ValueError, match=r"^selection: expected one of random, first, per_sample, got 'last'$"):
        select_steps(batch, 0.5, None, "last")


def test_reward_and_advantage_level_aggregation_differ_as_defined() -> None:
    """Advantage level: normalise each reward, then weight; reward level: weight, then normalise (float64 reference)."""
    import treeadv
    from treegrpo.algos.advantages import GroupAdvantage

    tree = treeadv.Tree.regular(2, 2, 2, group=[0, 0])
    rewards = torch.tensor([[0.1, 10.0], [0.3, 30.0], [0.2, 50.0], [0.9, 20.0],
                            [0.5, 40.0], [0.4, 60.0], [0.8, 70.0], [0.6, 80.0]], dtype=torch.float64)
    weights = [0.8, 0.2]

    def normalise(x):
        return (x - x.mean()) / (x.std(unbiased=False) + 1e-6)

    by_advantage = GroupAdvantage("leaf", reward_weights=weights)(tree, rewards).advantage[tree.leaves()]
    by_reward = GroupAdvantage("leaf", reward_weights=weights, aggregate="reward")(tree, rewards).advantage[tree.leaves()]
    torch.testing.assert_close(by_advantage, 0.8 * normalise(rewards[:, 0]) + 0.2 * normalise(rewards[:, 1]))
    torch.testing.assert_close(by_reward, normalise(rewards @ torch.tensor(weights, dtype=torch.float64)))
    assert not torch.allclose(by_advantage, by_reward)


@pytest.mark.parametrize("algorithm", ["treegrpo", "grpo"])
def test_the_configured_spread_reaches_the_trainers_advantages(algorithm) -> None:
    """``loss.advantage_std``/``advantage_eps`` through ``build_advantage``, against DanceGRPO's and Flow-GRPO's
    normalisations transcribed (DanceGRPO ``train_grpo_flux.py:542``; Flow-GRPO ``stat_tracking.py:25-29``)."""
    import treeadv
    from treegrpo.algos.build import build_advantage
    from treegrpo.config import Config

    tree = treeadv.Tree.regular(2, 2, 2, group=[0, 1])
    rewards = torch.tensor([0.1, 0.3, 0.2, 0.9, 0.5, 0.4, 0.8, 0.65], dtype=torch.float64)  # leaves, groups of 4
    base = [f"loss.algorithm={algorithm}", "loss.estimator=leaf"] if algorithm == "treegrpo" else ["loss.algorithm=grpo"]
    groups = rewards.view(2, 4)
    dance = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-8)).flatten()
    flow = ((groups - groups.mean(1, keepdim=True)) / (rewards.std(unbiased=False) + 1e-4)).flatten()
    today = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, unbiased=False, keepdim=True) + 1e-6)).flatten()
    for assignments, want in ((["loss.advantage_std=group_bessel"], dance), (["loss.advantage_std=batch"], flow),
                              ([], today), (["loss.advantage_std=batch", "loss.advantage_eps=0.5"],
                                            flow * (rewards.std(unbiased=False) + 1e-4) / (rewards.std(unbiased=False) + 0.5))):
        advantage = build_advantage(Config().override([*base, *assignments]))(tree, rewards)
        torch.testing.assert_close(advantage.advantage[tree.leaves()], want, rtol=1e-12, atol=1e-12)
