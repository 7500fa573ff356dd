"""Property-test kit for tree advantage estimators (needs ``hypothesis``).

Typical use, which gives a new estimator the same suite as the shipped ones::

    from hypothesis import given
    from treeadv.testing import check_estimator, forest_cases

    @given(forest_cases())
    def test_my_estimator(case):
        check_estimator(MyEstimator(), case.tree, case.leaf_adv)

:func:`check_against_reference` compares the estimator with a node-by-node float64
:func:`reference_backup` of its closed-form weights, and :func:`assert_catches` asserts that a
deliberately broken estimator is caught (one violation back, never an ``ExceptionGroup``).
"""

from __future__ import annotations

from treeadv.testing.invariants import INVARIANTS, InvariantViolation, check_estimator
from treeadv.testing.reference import Family, WeightFn, check_against_reference, reference_backup
from treeadv.testing.search import assert_catches
from treeadv.testing.strategies import ForestCase, forest_cases, forests

__all__ = [
    "INVARIANTS",
    "Family",
    "ForestCase",
    "InvariantViolation",
    "WeightFn",
    "assert_catches",
    "check_against_reference",
    "check_estimator",
    "forest_cases",
    "forests",
    "reference_backup",
]
