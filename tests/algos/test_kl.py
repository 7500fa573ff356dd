"""The KL to the reference, for every loss: the closed form against torch.distributions, per edge,
its effect on the gradient, and a reference that training never moves."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from treegrpo.algos.losses import PPOClipLoss, ReinforceLoss, total_loss
from treegrpo.algos.model_setup import adapters_disabled, apply_lora
from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config
from treegrpo.envs import FlowSDE, FlowTimesteps, TrajectorySampler, TreeSampler, parent_batch
from treegrpo.envs.gaussian import gaussian_kl
from treegrpo.problems import toy2d_problem

LOSSES = (PPOClipLoss, ReinforceLoss)


def _kwargs(cls, **kl):
    return kl if cls is ReinforceLoss else {"clip_range": 0.1, **kl}


@pytest.mark.parametrize("reduce", ["none", "mean", "sum"])
def test_gaussian_kl_is_torch_distributions_kl_elementwise(reduce):
    generator = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(5, 3, 4, generator=generator), torch.randn(5, 3, 4, generator=generator)
    std = torch.rand(5, 1, 1, generator=generator) + 0.1
    expected = kl_divergence(Normal(mean.double(), std.double().expand_as(mean)),
                             Normal(ref.double(), std.double().expand_as(mean)))
    expected = {"none": expected, "mean": expected.mean((1, 2)), "sum": expected.sum((1, 2))}[reduce]
    torch.testing.assert_close(gaussian_kl(mean.double(), ref.double(), std.double(), reduce), expected)


def test_gaussian_kl_of_a_point_mass_is_zero_not_infinite():
    out = gaussian_kl(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([[0.0], [1.0]]))
    assert out.tolist() == [0.0, 0.5]


def _perturbed(model, scale=0.1, seed=3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())))
    return model


def _batch(sampler_cls=TreeSampler):
    problem = toy2d_problem(num_steps=6)
    _perturbed(problem.model, 0.05, seed=11)
    if sampler_cls is TreeSampler:
        sampler = TreeSampler(problem.model, problem.transition, branching=3, depth=2)
        rollout = sampler.sample(torch.tensor([0, 1]), latent_shape=(2,), window_start=2,
                                 generator=torch.Generator().manual_seed(0))
    else:
        sampler = TrajectorySampler(problem.model, problem.transition, group_size=3, shared_noise=True)
        rollout = sampler.sample(torch.tensor([0, 1]), latent_shape=(2,), generator=torch.Generator().manual_seed(0))
    advantage = torch.randn(rollout.tree.num_nodes, generator=torch.Generator().manual_seed(1))
    batch = parent_batch(rollout.tree, advantage, torch.tensor([0, 1]))
    return problem, batch


@pytest.mark.parametrize("cls", LOSSES)
def test_every_loss_adds_the_per_edge_kl_against_torch_distributions(cls):
    problem, batch = _batch(TrajectorySampler)  # uneven children: a root with 3, the rest with 1
    reference = _perturbed(toy2d_problem(num_steps=6).model)
    loss = cls(problem.model, problem.transition, **_kwargs(cls, kl_coef=0.5, reference=reference))
    out = loss(batch)
    mean, std = loss.policy_mean_std(batch)
    ref_mean, _ = loss.policy_mean_std(batch, reference)
    per_parent = kl_divergence(Normal(mean.double(), std.double().expand_as(mean)),
                               Normal(ref_mean.double(), std.double().expand_as(mean))).mean(-1)
    children = batch["mask"].sum(1).double()
    expected = (per_parent * children).sum() / children.sum()  # every trained edge carries its parent's KL
    torch.testing.assert_close(out["kl"].double(), expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out["loss_kl"].double(), 0.5 * expected, rtol=1e-5, atol=1e-9)


def _gradient(loss, batch, params):
    for p in params:
        p.grad = None
    total_loss(loss(batch)).backward()
    return torch.cat([p.grad.flatten() for p in params])


@pytest.mark.parametrize("cls", LOSSES)
def test_kl_coef_changes_the_gradient_and_zero_does_not(cls):
    problem, batch = _batch()
    params = [p for p in problem.model.parameters() if p.requires_grad]
    reference = _perturbed(toy2d_problem(num_steps=6).model)
    plain = _gradient(cls(problem.model, problem.transition, **_kwargs(cls)), batch, params)
    zero = _gradient(cls(problem.model, problem.transition, **_kwargs(cls, kl_coef=0.0, reference=reference)),
                     batch, params)
    with_kl = _gradient(cls(problem.model, problem.transition, **_kwargs(cls, kl_coef=1.0, reference=reference)),
                        batch, params)
    assert torch.equal(plain, zero)
    assert (with_kl - plain).norm() > 1e-3 * plain.norm()


def test_the_kl_term_pulls_the_policy_towards_the_reference():
    problem, batch = _batch()
    reference = _perturbed(toy2d_problem(num_steps=6).model)
    loss = PPOClipLoss(problem.model, problem.transition, clip_range=0.1, kl_coef=1.0, reference=reference)
    before = float(loss(batch)["kl"])
    optimizer = torch.optim.SGD([p for p in problem.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        loss(batch)["loss_kl"].backward()
        optimizer.step()
    assert float(loss(batch)["kl"]) < 0.5 * before


def _config(tmp_path, **extra):
    settings = {"model.kind": "toy2d", "sampling.num_steps": 6, "sampling.shift": 1.0, "train.iterations": 3,
                "train.out_dir": str(tmp_path), "optim.lr": 3e-3, "loss.clip_range": 0.2, "loss.kl_coef": 0.1,
                "train.checkpoint_every": 1000, "train.sample_every": 1000, "sampling.prompts_per_iteration": 2,
                **extra}
    return Config().override([f"{key}={value}" for key, value in settings.items()])


def test_full_fine_tuning_trains_against_a_frozen_copy_that_never_moves(tmp_path):
    problem = toy2d_problem(6, prompts_per_iteration=2)
    trainer = Trainer(problem, _config(tmp_path))
    reference = trainer.loss._reference
    assert isinstance(reference, torch.nn.Module) and reference is not problem.model
    assert not any(p.requires_grad for p in reference.parameters())
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    history = trainer.fit(progress=False)
    assert all(h["kl"] >= 0 for h in history) and history[-1]["kl"] > 0
    moved = sum(float((p.detach() - start[name]).abs().sum()) for name, p in problem.model.named_parameters())
    assert moved > 0
    assert all(torch.equal(p, start[name]) for name, p in reference.named_parameters())


def test_lora_trains_against_the_adapter_free_base_and_no_copy(tmp_path):
    problem = toy2d_problem(6, prompts_per_iteration=2)
    _perturbed(problem.model.out, 0.05)
    x, t, cond = torch.randn(4, 2), torch.full((4,), 500.0), torch.tensor([0, 1, 0, 1])
    base_output = problem.model(x, t, cond).detach()
    trainer = Trainer(problem, _config(tmp_path, **{"train.lora_rank": 4, "optim.lr": 3e-2}))
    assert trainer.loss._reference == "disable_adapter"
    history = trainer.fit(progress=False)
    assert history[-1]["kl"] > 0
    assert not torch.allclose(problem.model(x, t, cond), base_output)  # the adapters moved the policy
    with adapters_disabled(problem.model):
        torch.testing.assert_close(problem.model(x, t, cond), base_output)  # the reference did not move


def test_no_reference_is_built_without_kl(tmp_path):
    trainer = Trainer(toy2d_problem(6, prompts_per_iteration=2), _config(tmp_path, **{"loss.kl_coef": 0.0}))
    assert trainer.loss._reference is None and trainer.loss.kl_coef == 0


def test_apply_lora_leaves_the_reference_function_unchanged():
    problem = toy2d_problem(6)
    _perturbed(problem.model.out, 0.05)
    x, t, cond = torch.randn(3, 2), torch.full((3,), 300.0), torch.tensor([0, 1, 1])
    expected = problem.model(x, t, cond).detach()
    apply_lora(problem.model, 4, 8.0)
    torch.testing.assert_close(problem.model(x, t, cond), expected)  # B = 0 at the start


def test_ported_flow_grpo_coefficient_conversion():
    """Flow-GRPO's KL divides by sigma_t^2 without the step size: theirs = ours * |dt| per step."""
    transition = FlowSDE(FlowTimesteps.linear(10, shift=3.0), noise_level=0.7)
    step = torch.arange(1, 9)
    t, t_next = transition.timesteps.times(step)
    x, v, v_ref = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
    mean, std = transition.mean_std(x, v, step)
    ref_mean, _ = transition.mean_std(x, v_ref, step)
    ours = gaussian_kl(mean, ref_mean, std)
    sigma_t = std.flatten() / torch.sqrt(t - t_next).to(std.dtype)  # the Flow-GRPO std_dev_t
    theirs = ((mean - ref_mean) ** 2).mean(-1) / (2 * sigma_t**2)
    torch.testing.assert_close(theirs, ours * (t - t_next).to(ours.dtype))
