"""Every registered estimator against every invariant it claims, via the public test kit."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given

from treeadv import BackupEstimator, EstimatorError, Tree, make_estimator, registered_estimators
from treeadv import backup as treeadv_backup
from treeadv.testing import INVARIANTS, InvariantViolation, check_estimator, forest_cases


@pytest.mark.parametrize("estimator", registered_estimators())
@given(case=forest_cases())
def test_estimator_keeps_every_invariant_it_claims(estimator, case):
    """One generated forest checks every claim of the estimator (the kit names the one that breaks)."""
    chosen = make_estimator(estimator)
    report = check_estimator(chosen, case.tree, case.leaf_adv, invariants=set(chosen.invariants))
    assert set(report) == set(chosen.invariants)
    assert all(outcome == "passed" or outcome.startswith("skipped: no CUDA") for outcome in report.values()), report


def test_the_softmax_weights_depend_on_the_log_prob_scale_and_mean_does_not():
    """Mean- and sum-reduced log-probs of one sample differ by the factor D: the softmax at a fixed
    temperature weights them differently (so it cannot claim ``logprob_scale``), ``mean`` ignores them."""
    tree = Tree.regular(1, 3, 1, log_prob=torch.tensor([0.0, -1.0, 0.0, 2.0], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=torch.float64)
    softmax = make_estimator("logprob_softmax")
    assert "logprob_scale" not in softmax.invariants
    with pytest.raises(InvariantViolation, match="^logprob_scale: "):
        check_estimator(softmax, tree, leaf_adv, invariants={"logprob_scale"})
    assert check_estimator(make_estimator("mean"), tree, leaf_adv, invariants={"logprob_scale"}) == {
        "logprob_scale": "passed"}


@pytest.mark.parametrize("temperature", ["auto", "1", 0.0, -1.0, float("inf"), float("nan"), None])
def test_the_temperature_is_a_finite_positive_number(temperature):
    """``temperature="auto"`` is gone: it softmaxed z-scored noise norms (docs/treeadv.md)."""
    message = rf"^temperature: expected a finite number > 0, got {re.escape(repr(temperature))}$"
    with pytest.raises(EstimatorError, match=message):
        make_estimator("logprob_softmax", temperature=temperature)


def test_a_fixed_temperature_divides_the_log_probs():
    tree = Tree.regular(1, 2, 1, log_prob=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    root = treeadv_backup(tree, leaf_adv, "logprob_softmax", temperature=2.0)[0]
    torch.testing.assert_close(root, torch.softmax(torch.tensor([0.0, 0.5], dtype=torch.float64), 0)[0])


def test_shipped_estimators_claim_what_the_paper_needs():
    softmax = make_estimator("logprob_softmax").invariants
    assert {"convex", "permutation", "single_child", "logprob_shift", "affine", "ess_bounds", "equal_logprob_mean",
            "logprob_monotone"} <= softmax
    assert "positive_affine" in make_estimator("max").invariants
    assert "affine" not in make_estimator("max").invariants
    assert set(INVARIANTS) >= softmax


# --- the kit must catch estimators that break a claim -------------------------------------------------


@dataclass(frozen=True)
class FirstChild(BackupEstimator):
    """All weight on the lowest-numbered child: depends on node order."""

    def weights(self, siblings):
        first = torch.ones_like(siblings.advantage, dtype=torch.bool)
        first[1:] = siblings.index[1:] != siblings.index[:-1]
        return siblings.normalize(first.to(siblings.advantage.dtype))


@dataclass(frozen=True)
class Unnormalised(BackupEstimator):
    def weights(self, siblings):
        return torch.full_like(siblings.advantage, 0.9)


@dataclass(frozen=True)
class SigmoidOfLogProb(BackupEstimator):
    def weights(self, siblings):
        return siblings.normalize(torch.sigmoid(siblings.log_prob))


@dataclass(frozen=True)
class SoftmaxOfAdvantage(BackupEstimator):
    def weights(self, siblings):
        return siblings.softmax(siblings.advantage)


def _case() -> tuple[Tree, torch.Tensor]:
    # Root 0 -> {1, 2, 3}, node 1 -> {4, 5}; leaf advantages differ so every check bites.
    parent = torch.tensor([-1, 0, 0, 0, 1, 1])
    log_prob = torch.tensor([0.0, 0.3, -0.4, 1.1, -2.0, 0.7], dtype=torch.float64)
    leaf_adv = torch.tensor([1e6, 1e6, 1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    return Tree.from_parents(parent, log_prob), leaf_adv


@pytest.mark.parametrize(
    ("estimator", "invariant", "message"),
    [
        (FirstChild(), "permutation", r"permutation: the advantage after renumbering differs at node"),
        (Unnormalised(), "convex", r"convex: a weight sum differs at node"),
        (SigmoidOfLogProb(), "logprob_shift", r"logprob_shift: the advantage after a log-prob shift differs"),
        (SoftmaxOfAdvantage(), "affine", r"affine: backup\(a\*x\+b\) with a=2.5 differs"),
        (SigmoidOfLogProb(), "equal_logprob_mean", None),
    ],
)
def test_kit_catches_a_broken_claim(estimator, invariant, message):
    tree, leaf_adv = _case()
    if message is None:  # sigmoid of equal log-probs is uniform: that claim legitimately holds
        assert check_estimator(estimator, tree, leaf_adv, invariants={invariant}) == {invariant: "passed"}
        return
    with pytest.raises(InvariantViolation, match=message):
        check_estimator(estimator, tree, leaf_adv, invariants={invariant})


def test_unknown_invariant_names_are_listed():
    tree, leaf_adv = _case()
    with pytest.raises(ValueError, match=r"invariants: unknown names \['monotone'\]; known: \["):
        check_estimator(make_estimator("mean"), tree, leaf_adv, invariants={"monotone"})
