"""The one contract between sampling and learning: the trainer reads the ParentBatch's fields, and a
loss reads it under its own keys, so renaming every key a loss accepts changes nothing."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch
from tensordict import TensorDict

import treeadv
from treegrpo.algos import EdgeLoss, GroupAdvantage, PerPromptStatTracker, PPOClipLoss, ReinforceLoss, Trainer
from treegrpo.algos.advantages import DepthNormalizedAdvantage
from treegrpo.algos.build import build_loss
from treegrpo.algos.interfaces import Advantage
from treegrpo.envs import ParentBatch
from treegrpo.testing.losses import rename_every_key, toy_config, toy_parent_batch, toy_problem

TIMING = ("second", "time_", "_time")
"""History entries that measure wall time, which two runs never share."""


def _history(algorithm: str, *extra: str, rename: bool) -> list[dict[str, float]]:
    """Three iterations of ``algorithm`` on toy2d from seed 0; ``rename``: every key of the loss renamed."""
    with tempfile.TemporaryDirectory(prefix="treegrpo-keys-") as folder:
        config = toy_config("train.iterations=3", f"train.out_dir={folder}", f"loss.algorithm={algorithm}",
                            "train.check_on_policy=strict",
                            *(() if algorithm == "reinforce" else ("loss.clip_range=0.05",)), *extra)
        problem = toy_problem(0)
        loss = build_loss(config, problem)
        if rename:
            mapping = rename_every_key(loss)
            assert all(getattr(loss.tensor_keys, name) == key for name, key in mapping.items())
        with Trainer(problem, config, loss=loss) as trainer:
            return trainer.fit(progress=False)


def _same(left: list[dict[str, float]], right: list[dict[str, float]]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        keys = {k for k in a if not any(part in k for part in TIMING)}
        assert keys == {k for k in b if not any(part in k for part in TIMING)}
        for key in sorted(keys):
            assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-6), (key, a[key], b[key])


@pytest.mark.parametrize(("algorithm", "extra"), [
    ("treegrpo", ()),
    ("treegrpo", ("loss.timestep_fraction=0.5", "train.inner_epochs=2", "train.minibatch_parents=5")),
    ("reinforce", ()),
    ("grpo", ("loss.timestep_selection=per_sample", "loss.timestep_fraction=0.5")),
])
def test_renaming_every_loss_key_trains_exactly_as_the_default_keys(algorithm, extra):
    _same(_history(algorithm, *extra, rename=True), _history(algorithm, *extra, rename=False))


def test_a_renamed_loss_passes_the_full_on_policy_check():
    """``train.rescore_on_policy`` re-scores through the loss's ``log_probs`` under its own keys and
    reads the behaviour log-probs off the batch's field: no literal key of the loss's input."""
    renamed = _history("treegrpo", "train.rescore_on_policy=true", rename=True)
    assert all(any(key.startswith("onpolicy_") for key in h) for h in renamed)
    _same(renamed, _history("treegrpo", "train.rescore_on_policy=true", rename=False))


def test_a_loss_reads_a_parent_batch_and_a_renamed_tensordict_alike():
    problem = toy_problem()
    batch = toy_parent_batch(problem)
    loss = PPOClipLoss(problem.model, problem.transition, clip_range=0.2)
    expected = loss(batch)["loss_objective"]
    mapping = rename_every_key(loss, "my_")
    renamed = batch.as_loss_input(loss.tensor_keys)
    assert {mapping[name] for name in ("latent", "sample", "log_prob", "cond_table")} <= set(renamed.keys())
    assert "latent" not in renamed.keys() and "node" in renamed.keys()  # noqa: SIM118 - a field no key names keeps its name
    torch.testing.assert_close(loss(renamed)["loss_objective"], expected)  # a plain TensorDict, as before
    torch.testing.assert_close(loss(batch)["loss_objective"], expected)  # the ParentBatch, renamed by the loss
    new, _, _ = loss.log_probs(batch)
    torch.testing.assert_close(new, loss.log_probs(renamed)[0])


def test_what_the_trainer_needs_of_a_loss_is_base_class_api():
    problem = toy_problem()
    ppo = PPOClipLoss(problem.model, problem.transition, clip_range=0.1, clip_high=0.3)
    reinforce = ReinforceLoss(problem.model, problem.transition)
    assert ppo.clip_bounds == (0.1, 0.3)
    assert PPOClipLoss(problem.model, problem.transition, clip_range=0.2).clip_bounds == (0.2, 0.2)
    assert reinforce.clip_bounds is None and EdgeLoss.clip_bounds.fget(reinforce) is None
    assert ppo.model is problem.model and reinforce.model is problem.model


@pytest.mark.parametrize("advantage", [GroupAdvantage(), DepthNormalizedAdvantage(), PerPromptStatTracker(4, 2)],
                         ids=lambda advantage: type(advantage).__name__)
def test_every_shipped_advantage_has_a_state(advantage: Advantage):
    tree = treeadv.Tree.regular(4, 2, 1, group=[0, 0, 1, 1])
    rewards = torch.arange(tree.leaves().numel(), dtype=torch.float32)
    advantage(tree, rewards, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    state = advantage.state_dict()
    advantage.load_state_dict(state)
    assert isinstance(state, dict)


def test_the_trainer_hands_an_edge_loss_the_parent_batch_under_its_keys():
    """What ``optimise`` gives the loss: a ParentBatch (the loss's pre-hook renames it), never a
    TensorDict built with the default names."""
    seen: list[TensorDict] = []

    class Recording(ReinforceLoss):
        def forward(self, td):
            seen.append(td)
            return super().forward(td)

    with tempfile.TemporaryDirectory(prefix="treegrpo-keys-") as folder:
        config = toy_config("train.iterations=1", f"train.out_dir={folder}", "loss.algorithm=reinforce")
        problem = toy_problem(0)
        loss = Recording(problem.model, problem.transition)
        rename_every_key(loss, "x_")
        with Trainer(problem, config, loss=loss) as trainer:
            trainer.step()
    assert seen and all(not isinstance(td, ParentBatch) for td in seen)
    assert all("x_mask" in td.keys() and "mask" not in td.keys() for td in seen)  # noqa: SIM118
