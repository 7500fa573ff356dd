"""Assert that the kit catches a given bug: one hypothesis search, one :class:`InvariantViolation` back.

A test that expects a broken estimator to fail would naturally wrap a ``@given`` test in
``pytest.raises(InvariantViolation)``. When the bug fails one check at two different lines (or
several claimed invariants), hypothesis reports every distinct failure together as an
``ExceptionGroup``, and ``pytest.raises`` does not match it. :func:`assert_catches` runs the search
with ``report_multiple_bugs=False``, so exactly one (shrunk) violation comes back.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from treeadv.estimators import BackupEstimator
from treeadv.testing.invariants import INVARIANTS, InvariantViolation, check_estimator
from treeadv.testing.strategies import ForestCase, forest_cases


def assert_catches(
    estimator: BackupEstimator,
    invariant: str,
    *,
    cases: st.SearchStrategy[ForestCase] | None = None,
    max_examples: int = 200,
    shrink: bool = True,
) -> InvariantViolation:
    """Search forests until ``invariant`` fails for ``estimator``, and return that violation.

    Only ``invariant`` is checked, whether or not the estimator claims it, so another broken claim
    cannot hide it. The search is derandomised and writes no example database; ``cases`` defaults to
    :func:`~treeadv.testing.forest_cases`. With ``shrink`` the returned violation is on the smallest
    forest hypothesis finds. Raises ``AssertionError`` when ``max_examples`` forests all pass, and
    lets any other exception from the estimator through.
    """
    if invariant not in INVARIANTS:
        raise ValueError(f"invariant: unknown name {invariant!r}; known: {sorted(INVARIANTS)}")
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    search_settings = settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        report_multiple_bugs=False,
        phases=phases,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @search_settings
    @given(cases if cases is not None else forest_cases())
    def search(case: ForestCase) -> None:
        check_estimator(estimator, case.tree, case.leaf_adv, invariants={invariant})

    try:
        search()
    except InvariantViolation as violation:
        return violation
    raise AssertionError(
        f"assert_catches: {type(estimator).__name__} kept {invariant!r} on {max_examples} forests; "
        "the bug is not caught (raise max_examples, or narrow cases to forests that show it)"
    )
