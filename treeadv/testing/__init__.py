"""Property-test kit for tree advantage estimators (needs ``hypothesis``).

Typical use, which gives a new estimator the same suite as the shipped ones::

    from hypothesis import given
    from treeadv.testing import check_estimator, forest_cases

    @given(forest_cases())
    def test_my_estimator(case):
        check_estimator(MyEstimator(), case.tree, case.leaf_adv)
"""

from __future__ import annotations

from treeadv.testing.invariants import INVARIANTS, InvariantViolation, check_estimator
from treeadv.testing.strategies import ForestCase, forest_cases, forests

__all__ = ["INVARIANTS", "ForestCase", "InvariantViolation", "check_estimator", "forest_cases", "forests"]
