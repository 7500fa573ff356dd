"""A test suite every loss runs, the built-in and registered ones here and a user's own alike.

``check_loss(make)`` takes a factory ``make(problem, kl_coef) -> EdgeLoss`` and runs, on the
``toy2d`` problem (a CPU, seconds):

- **terms**: the output holds finite scalar ``loss_*`` terms, and ``in_keys`` are batch keys;
- **set_keys**: with every batch key renamed and the loss told so by ``set_keys``, the terms are
  unchanged, for a renamed TensorDict and for the :class:`~treegrpo.envs.ParentBatch` itself;
- **gradient**: at the behaviour policy (ratio 1) the gradient is the policy gradient,
  ``-mean A grad log pi`` over the real edges, computed independently here (skip for a loss that
  means something else, such as a pairwise preference: ``policy_gradient=False``);
- **KL on and off**: no ``loss_kl`` at ``kl_coef=0``; at ``kl_coef > 0`` with the starting weights
  as reference, ``loss_kl`` is 0 and adds no gradient, and it grows once the policy moves;
- **sign**: trained a few iterations by the :class:`~treegrpo.algos.Trainer`, the loss raises the
  reward, and the same loss fed negated advantages lowers it (a sign error is caught).

::

    from treegrpo.testing.losses import check_loss
    check_loss(lambda problem, kl: MyLoss(problem.model, problem.transition, kl_coef=kl,
                                          reference=kl_reference(problem.model) if kl else None))
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

import treeadv
from treegrpo.algos import Config, EdgeLoss, Trainer, build_advantage, build_sampler, total_loss
from treegrpo.algos.interfaces import masked_mean
from treegrpo.envs import ParentBatch, parent_batch
from treegrpo.problems import Problem, toy2d_problem

LossFactory = Callable[[Problem, float], EdgeLoss]
"""``(problem, kl_coef) -> loss`` on ``problem.model``; with ``kl_coef > 0`` the loss needs a reference
(:func:`treegrpo.algos.kl_reference` of the model as it is when the factory runs)."""

STEPS, PROMPTS = 8, 4


def toy_config(*overrides: str) -> Config:
    """The ``toy2d`` configuration the suite trains and samples with (TreeGRPO's tree sampler)."""
    return Config().override([
        "model.kind=toy2d", f"sampling.num_steps={STEPS}", f"sampling.prompts_per_iteration={PROMPTS}",
        "optim.lr=3e-3", "train.minibatch_parents=64", "train.checkpoint_every=1000", "train.sample_every=1000",
        *overrides], check_used=False)


def toy_problem(seed: int = 0) -> Problem:
    """A fresh ``toy2d`` problem (its own model: every check starts from the same weights)."""
    return toy2d_problem(num_steps=STEPS, prompts_per_iteration=PROMPTS, seed=seed)


def toy_parent_batch(problem: Problem, seed: int = 0) -> ParentBatch:
    """One forest of ``problem`` with its backed-up advantages, as the parent batch a loss reads."""
    generator = torch.Generator().manual_seed(seed)
    cond, prompt_ids = problem.prompts(0, generator)
    with torch.no_grad():
        rollout = build_sampler(toy_config(), problem).sample(cond, num_prompts=len(prompt_ids),
                                                              latent_shape=problem.latent_shape, generator=generator)
    tree = rollout.tree
    rewards = problem.reward(rollout.final, prompt_ids[rollout.leaf_cond_index])
    leaf = treeadv.leaf_advantages(rewards, tree.group[tree.leaves()])
    return parent_batch(tree, treeadv.backup(tree, tree.scatter_leaves(leaf)), cond)


def _gradient(loss: EdgeLoss, value: torch.Tensor) -> list[torch.Tensor]:
    parameters = [p for p in loss.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]


def _close(left: list[torch.Tensor], right: list[torch.Tensor], rtol: float = 1e-4) -> bool:
    scale = max(float(torch.cat([g.flatten() for g in right]).abs().max()), 1e-12)
    return all(torch.allclose(a, b, rtol=rtol, atol=rtol * scale) for a, b in zip(left, right, strict=True))


def check_terms(make: LossFactory) -> None:
    """Finite scalar ``loss_*`` terms, at least one; ``in_keys`` present in the batch."""
    problem = toy_problem()
    loss, batch = make(problem, 0.0), toy_parent_batch(problem)
    terms = loss(batch)
    losses = {key: value for key, value in terms.items() if key.startswith("loss_")}
    assert losses, f"{type(loss).__name__}: no loss_* term in {list(terms.keys())}"
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), f"{type(loss).__name__}: {key} = {value}"
    missing = [key for key in loss.in_keys if key not in loss.loss_input(batch).keys(include_nested=True)]
    assert not missing, f"{type(loss).__name__}: in_keys {missing} are not batch keys"


def renamed(batch: ParentBatch | TensorDictBase, prefix: str = "renamed_") -> tuple[TensorDict, dict[str, str]]:
    """``batch`` with every key renamed ``prefix + key``, and the ``set_keys`` mapping that follows it."""
    if isinstance(batch, ParentBatch):
        batch = batch.as_loss_input()
    out = TensorDict({}, batch_size=batch.batch_size)
    keys = list(batch.keys())  # iterating a TensorDict itself walks its batch dimension
    for key in keys:
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            out.set(prefix + key, value)
        else:  # the conditioning table, stored once for the batch
            out.set_non_tensor(prefix + key, batch.get_non_tensor(key))
    return out, {key: prefix + key for key in keys}


def rename_every_key(loss: EdgeLoss, prefix: str = "renamed_") -> dict[str, str]:
    """Rename every key the loss accepts (each field of its ``_AcceptedKeys``) to ``prefix + name``
    with ``set_keys``; returns the mapping."""
    mapping = {name: prefix + name for name in vars(loss.tensor_keys)}
    loss.set_keys(**mapping)
    return mapping


def check_set_keys(make: LossFactory) -> None:
    """Renaming every batch key, and telling the loss with ``set_keys``, leaves its terms unchanged;
    so does handing the renamed loss the :class:`~treegrpo.envs.ParentBatch` itself."""
    problem = toy_problem()
    loss, batch = make(problem, 0.0), toy_parent_batch(problem)
    expected = loss(batch)
    other, mapping = renamed(batch)
    accepted = {name: mapping[name] for name in vars(loss.tensor_keys) if name in mapping}
    loss.set_keys(**accepted)
    for got in (loss(other), loss(batch)):
        for key, value in expected.items():
            if key.startswith("loss_"):
                assert torch.allclose(got[key], value), f"{type(loss).__name__}: {key} changed under set_keys"


def check_policy_gradient(make: LossFactory) -> None:
    """At the behaviour policy the gradient is ``-mean A grad log pi`` over the real edges."""
    problem = toy_problem()
    loss, batch = make(problem, 0.0), toy_parent_batch(problem)
    got = _gradient(loss, total_loss(loss(batch)))
    new_log_prob, _, _ = loss.log_probs(batch)
    reference = -masked_mean(batch.advantage * new_log_prob, batch.mask)
    want = _gradient(loss, reference)
    assert any(float(g.abs().max()) > 0 for g in want), "the toy batch gave a zero policy gradient"
    assert _close(got, want), f"{type(loss).__name__}: the gradient at ratio 1 is not -mean A grad log pi"


def check_kl(make: LossFactory, kl_coef: float = 0.5) -> None:
    """No KL term at 0; at ``kl_coef`` it is 0 with no gradient at the start and grows as the policy moves."""
    problem = toy_problem()
    batch = toy_parent_batch(problem)
    off = make(problem, 0.0)(batch)
    assert "loss_kl" not in off.keys() or float(off["loss_kl"]) == 0, "loss_kl at kl_coef=0"  # noqa: SIM118
    loss = make(problem, kl_coef)
    terms = loss(batch)
    assert "loss_kl" in terms.keys(), f"{type(loss).__name__}: no loss_kl at kl_coef={kl_coef}"  # noqa: SIM118
    value = float(terms["loss_kl"].detach())
    assert abs(value) < 1e-10, f"loss_kl {value} against an identical reference"
    assert all(float(g.abs().max()) < 1e-8 for g in _gradient(loss, terms["loss_kl"])), "KL gradient at the start"
    with torch.no_grad():
        for parameter in loss.model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    assert float(loss(batch)["loss_kl"].detach()) > 0, f"{type(loss).__name__}: loss_kl stayed 0 after the policy moved"


class _Negated:
    """An advantage whose results are the negation of ``inner``'s: the flipped-sign control."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, tree: treeadv.Tree, rewards: torch.Tensor, prompt_ids: torch.Tensor) -> treeadv.BackupResult:
        result = self.inner(tree, rewards, prompt_ids)
        return result._replace(advantage=-result.advantage)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def trained_reward(make: LossFactory, *, flipped: bool, iterations: int = 8, seed: int = 0) -> tuple[float, float]:
    """``(first, last)`` training reward (last: the mean of the final 3 iterations) of ``iterations``
    of TreeGRPO on ``toy2d`` with this loss; ``flipped`` negates every advantage."""
    with tempfile.TemporaryDirectory(prefix="treegrpo-loss-suite-") as folder:
        config = toy_config(f"train.iterations={iterations}", f"train.seed={seed}", f"train.out_dir={folder}")
        problem = toy_problem(seed)
        advantage = build_advantage(config)
        trainer = Trainer(problem, config, loss=make(problem, 0.0),
                          advantage=_Negated(advantage) if flipped else advantage)
        history = trainer.fit(progress=False)
    return history[0]["reward_mean"], sum(h["reward_mean"] for h in history[-3:]) / 3


def check_sign(make: LossFactory, margin: float = 0.1) -> None:
    """The loss raises the reward, and with negated advantages lowers it."""
    first, last = trained_reward(make, flipped=False)
    assert last > first + margin, f"the loss did not raise the reward: {first:.3f} -> {last:.3f}"
    first, last = trained_reward(make, flipped=True)
    assert last < first - margin, f"with negated advantages the reward did not fall: {first:.3f} -> {last:.3f}"


def check_loss(make: LossFactory, *, policy_gradient: bool = True, kl: bool = True, sign: bool = True) -> None:
    """Every check of this module (see its docstring); ``AssertionError`` names the first that fails."""
    check_terms(make)
    check_set_keys(make)
    if policy_gradient:
        check_policy_gradient(make)
    if kl:
        check_kl(make)
    if sign:
        check_sign(make)


__all__ = ["LossFactory", "check_kl", "check_loss", "check_policy_gradient", "check_set_keys", "check_sign",
           "check_terms", "rename_every_key", "renamed", "toy_config", "toy_parent_batch", "toy_problem", "trained_reward"]
