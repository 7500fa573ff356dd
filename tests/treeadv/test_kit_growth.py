"""The kit's later pieces: the log-prob direction, the float64 reference, per-parent order
statistics on ``Siblings``, and ``assert_catches`` (issue 35, item 8)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treeadv import BackupEstimator, Siblings, Tree, make_estimator
from treeadv.estimators import UNIVERSAL_INVARIANTS
from treeadv.testing import (
    Family,
    InvariantViolation,
    assert_catches,
    check_against_reference,
    check_estimator,
    forest_cases,
    reference_backup,
)

PAPER_CLAIMS = make_estimator("logprob_softmax").invariants


@dataclass(frozen=True)
class SoftmaxOfNegativeLogProb(BackupEstimator):
    """The sign error: convex and shift-invariant, but favours the less likely child."""

    invariants: ClassVar[frozenset[str]] = PAPER_CLAIMS

    def weights(self, siblings):
        return siblings.softmax(-siblings.log_prob)


# --- 1. logprob_monotone -------------------------------------------------------------------------------


def test_the_paper_estimator_claims_the_log_prob_direction():
    assert "logprob_monotone" in PAPER_CLAIMS


def test_the_sign_error_keeps_every_other_paper_invariant():
    """Why the new invariant is needed: without it the sign error passes the paper's claims."""
    tree = Tree.from_parents(torch.tensor([-1, 0, 0, 0]), torch.tensor([0.0, 0.3, -0.4, 1.1], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    others = set(PAPER_CLAIMS) - {"logprob_monotone", "device"}
    report = check_estimator(SoftmaxOfNegativeLogProb(), tree, leaf_adv, invariants=others)
    assert set(report.values()) == {"passed"}


def test_the_kit_catches_softmax_of_negative_log_prob_and_names_the_node():
    violation = assert_catches(SoftmaxOfNegativeLogProb(), "logprob_monotone", max_examples=100)
    message = str(violation).splitlines()[0]
    assert message.startswith("logprob_monotone: node ")
    assert "has a higher log-prob than its sibling" in message


def test_the_kit_catches_the_sign_error_on_a_hand_built_forest():
    tree = Tree.from_parents(torch.tensor([-1, 0, 0]), torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    with pytest.raises(InvariantViolation, match=r"^logprob_monotone: node 1 has a higher log-prob than its sibling 2 "):
        check_estimator(SoftmaxOfNegativeLogProb(), tree, leaf_adv, invariants={"logprob_monotone"})


@pytest.mark.parametrize("temperature", [0.01, 100.0])  # 1.0 runs in test_estimator_properties.py
@settings(max_examples=50)
@given(case=forest_cases())
def test_logprob_softmax_is_monotone_at_any_temperature(temperature, case):
    estimator = make_estimator("logprob_softmax", temperature=temperature)
    assert check_estimator(estimator, case.tree, case.leaf_adv, invariants={"logprob_monotone"}) == {
        "logprob_monotone": "passed"}


# --- 2. the float64 reference --------------------------------------------------------------------------


def _softmax(family: Family, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(family.log_prob / temperature, 0)


def _uniform(family: Family) -> list[float]:
    return [1.0 / len(family.advantage)] * len(family.advantage)


def _best(family: Family) -> torch.Tensor:
    best = (family.advantage == family.advantage.max()).double()
    return best / best.sum()


def _by_leaves(family: Family) -> torch.Tensor:
    return family.leaf_count / family.leaf_count.sum()


CLOSED_FORMS = {"logprob_softmax": _softmax, "mean": _uniform, "max": _best, "leaf": _by_leaves}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@settings(max_examples=100)
@given(case=forest_cases())
def test_shipped_estimators_match_the_reference(name, case):
    check_against_reference(make_estimator(name), CLOSED_FORMS[name], case.tree, case.leaf_adv)


def test_reference_backup_by_hand():
    # Root 0 -> {1, 2}, node 1 -> {3, 4}: mean gives node 1 = (3 + 5) / 2 and root = (4 + 1) / 2.
    tree = Tree.from_parents(torch.tensor([-1, 0, 0, 1, 1]))
    leaf_adv = torch.tensor([9.0, 9.0, 1.0, 3.0, 5.0], dtype=torch.float64)
    result = reference_backup(tree, leaf_adv, _uniform)
    assert result.advantage.tolist() == [2.5, 4.0, 1.0, 3.0, 5.0]
    assert result.weight.tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]


def test_the_reference_catches_the_sign_error_and_names_the_node():
    tree = Tree.from_parents(torch.tensor([-1, 0, 0]), torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64))
    leaf_adv = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    with pytest.raises(InvariantViolation, match=r"^reference: the weight of the edge into a node differs at node 1: "):
        check_against_reference(SoftmaxOfNegativeLogProb(), _softmax, tree, leaf_adv)


def test_a_weight_function_of_the_wrong_length_is_named():
    tree = Tree.from_parents(torch.tensor([-1, 0, 0]))
    with pytest.raises(ValueError, match=r"^weight_fn: expected 2 weights for node 0's children, got \(1,\)$"):
        reference_backup(tree, torch.zeros(3, dtype=torch.float64), lambda family: [1.0])


# --- 3. per-parent sort, rank and quantile -------------------------------------------------------------


@st.composite
def sibling_levels(draw):
    """A level of ``E`` edges over ``P`` parents (some childless), with tied values."""
    num_parents = draw(st.integers(1, 6))
    index = draw(st.lists(st.integers(0, num_parents - 1), max_size=20))
    values = draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, 7.25]), min_size=len(index), max_size=len(index)))
    value = torch.tensor(values, dtype=torch.float64)
    return Siblings(torch.tensor(index, dtype=torch.long), num_parents, value, value, torch.ones_like(value))


def _families(siblings: Siblings) -> list[list[tuple[float, int]]]:
    """Plain Python: each parent's (value, edge) pairs, sorted by value then edge."""
    out: list[list[tuple[float, int]]] = [[] for _ in range(siblings.num_parents)]
    for edge, (p, v) in enumerate(zip(siblings.index.tolist(), siblings.advantage.tolist())):
        out[p].append((v, edge))
    return [sorted(family) for family in out]


@given(siblings=sibling_levels())
def test_sort_is_per_parent_and_stable(siblings):
    ordered = siblings.sort(siblings.advantage)
    want = [edge for family in _families(siblings) for _, edge in family]
    assert ordered.order.tolist() == want
    assert ordered.values.tolist() == siblings.advantage[want].tolist()


@given(siblings=sibling_levels())
def test_rank_counts_the_siblings_before_an_edge(siblings):
    want = [0] * siblings.index.numel()
    for family in _families(siblings):
        for position, (_, edge) in enumerate(family):
            want[edge] = position
    assert siblings.rank(siblings.advantage).tolist() == want


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 1.0])
@given(siblings=sibling_levels())
def test_quantile_interpolates_like_torch(q, siblings):
    got = siblings.quantile(siblings.advantage, q).tolist()
    for p, family in enumerate(_families(siblings)):
        if not family:
            assert math.isnan(got[p])
            continue
        want = torch.quantile(torch.tensor([v for v, _ in family], dtype=torch.float64), q)
        assert got[p] == pytest.approx(float(want), abs=1e-12)


@pytest.mark.parametrize("q", [-0.1, 1.5, "half"])
def test_quantile_rejects_a_q_outside_zero_one(q):
    siblings = Siblings(torch.tensor([0]), 1, torch.zeros(1), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"^q: expected a number in \[0, 1\], got "):
        siblings.quantile(siblings.advantage, q)


@dataclass(frozen=True)
class Median(BackupEstimator):
    """The median child (the two middle children share the weight when there is an even number)."""

    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {"affine", "logprob_shift", "logprob_scale"}

    def weights(self, siblings):
        middle = (siblings.num_siblings - 1) / 2  # [E] the median's position among the sorted siblings
        distance = (siblings.rank(siblings.advantage).to(middle.dtype) - middle).abs()
        return siblings.normalize((1 - distance).clamp(min=0))


@settings(max_examples=50)
@given(case=forest_cases())
def test_a_median_estimator_in_three_lines_keeps_its_claims_and_matches_its_closed_form(case):
    check_estimator(Median(), case.tree, case.leaf_adv)
    check_against_reference(Median(), lambda family: _median_weights(family.advantage), case.tree, case.leaf_adv)


def _median_weights(advantage: torch.Tensor) -> torch.Tensor:
    """Closed form: weight 1 on the middle order statistic, or 1/2 on each of the two middle ones."""
    k = len(advantage)
    order = sorted(range(k), key=lambda i: (float(advantage[i]), i))
    weights = torch.zeros(k, dtype=torch.float64)
    for i in {order[(k - 1) // 2], order[k // 2]}:
        weights[i] += 0.5 if k % 2 == 0 else 1.0
    return weights


# --- 4. assert_catches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NegativeAndUnnormalised(BackupEstimator):
    """Breaks ``convex`` at two different checks (a negative weight, a wrong sum): two distinct bugs."""

    def weights(self, siblings):
        return torch.where(siblings.log_prob > 0, -0.5, 0.9).to(siblings.advantage.dtype)


def test_a_plain_given_reports_the_two_bugs_as_an_exception_group():
    """What ``pytest.raises(InvariantViolation)`` around a ``@given`` test would meet."""

    @settings(max_examples=100, derandomize=True, database=None)
    @given(case=forest_cases())
    def search(case):
        check_estimator(NegativeAndUnnormalised(), case.tree, case.leaf_adv, invariants={"convex"})

    with pytest.raises(BaseExceptionGroup) as group:
        search()
    messages = [str(error) for error in group.value.exceptions]
    assert any(m.startswith("convex: negative weight") for m in messages), messages
    assert any(m.startswith("convex: a weight sum differs") for m in messages), messages


def test_assert_catches_returns_one_violation_where_a_plain_given_raises_a_group():
    violation = assert_catches(NegativeAndUnnormalised(), "convex", max_examples=100)
    assert isinstance(violation, InvariantViolation)
    assert str(violation).startswith("convex: ")


def test_assert_catches_says_when_nothing_is_caught():
    with pytest.raises(AssertionError, match=r"^assert_catches: Mean kept 'logprob_monotone' on 20 forests; "):
        assert_catches(make_estimator("mean"), "logprob_monotone", max_examples=20)


def test_assert_catches_lists_the_known_invariants():
    with pytest.raises(ValueError, match=r"^invariant: unknown name 'monotone'; known: \["):
        assert_catches(make_estimator("mean"), "monotone")
