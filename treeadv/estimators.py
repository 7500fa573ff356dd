"""Backup estimators: how a parent edge's advantage is made from its children's.

Every estimator here returns *weights*: ``[E]`` non-negative numbers that sum to one over each
parent's children, and the parent's advantage is ``sum_e w_e A_e`` (docs/concepts.md, "Backing advantages up the tree"). Keeping
to convex combinations gives every estimator the same checkable contract (bounds, effective
sample size) and lets the backup log the weights.

Add an estimator in a dozen lines::

    @register_estimator("softmin")
    @dataclass(frozen=True)
    class SoftMin(BackupEstimator):
        beta: float = 1.0
        invariants = BackupEstimator.invariants | {"logprob_shift"}

        def weights(self, siblings: Siblings) -> Tensor:
            return siblings.softmax(-siblings.advantage / self.beta)

and check it with :func:`treeadv.testing.check_estimator`.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from torch import Tensor

from treeadv.errors import EstimatorError
from treeadv.registry import Registry
from treeadv.siblings import Siblings

#: Invariants every convex-weight estimator satisfies; see :mod:`treeadv.testing`.
UNIVERSAL_INVARIANTS = frozenset(
    {
        "leaf_identity",
        "convex",
        "ess_bounds",
        "single_child",
        "permutation",
        "tree_locality",
        "dtype",
        "device",
    }
)


class BackupEstimator(ABC):
    """Base class: turn one level's child edges into per-edge weights.

    Subclasses are small frozen dataclasses whose fields are the estimator's options, and list in
    ``invariants`` the properties of :mod:`treeadv.testing` they claim, so the test kit checks
    exactly those.
    """

    name: ClassVar[str] = ""
    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS

    @abstractmethod
    def weights(self, siblings: Siblings) -> Tensor:
        """``[E]`` non-negative weights summing to one over each parent's children."""


_REGISTRY: Registry[type[BackupEstimator]] = Registry("estimator")
EstimatorType = TypeVar("EstimatorType", bound=type[BackupEstimator])


def register_estimator(name: str, *, replace: bool = False) -> Callable[[EstimatorType], EstimatorType]:
    """Class decorator: make an estimator available to :func:`treeadv.backup` by ``name``.

    A taken name raises :class:`~treeadv.registry.RegistryError` unless ``replace=True`` or the class is a
    re-definition of the registered one (the rule of :mod:`treeadv.registry`).

    Examples:
        >>> import torch
        >>> from dataclasses import dataclass
        >>> from treeadv import BackupEstimator, Tree, backup, register_estimator
        >>> @register_estimator("by_leaf_count")
        ... @dataclass(frozen=True)
        ... class ByLeafCount(BackupEstimator):
        ...     def weights(self, siblings):
        ...         count = siblings.leaf_count.to(siblings.advantage.dtype)
        ...         return count / siblings.sum(count)[siblings.index]
        >>> tree = Tree.regular(1, 2, 1)
        >>> backup(tree, torch.tensor([0.0, 1.0, -3.0]), "by_leaf_count")
        tensor([-1.,  1., -3.])
    """

    def register(cls: EstimatorType) -> EstimatorType:
        _REGISTRY.add(name, cls, replace=replace)
        cls.name = name
        return cls

    return register


def registered_estimators() -> list[str]:
    """Names accepted by :func:`make_estimator`, sorted."""
    return _REGISTRY.names()


def make_estimator(estimator: str | BackupEstimator, **options: object) -> BackupEstimator:
    """An estimator instance from a registered name and its options, or the instance itself."""
    if isinstance(estimator, BackupEstimator):
        if options:
            raise EstimatorError(
                f"options {sorted(options)}: pass options to the estimator's constructor, not with an instance"
            )
        return estimator
    if estimator not in _REGISTRY:
        raise EstimatorError(
            f"estimator: unknown name {estimator!r}; registered: {registered_estimators()}"
        )
    cls = _REGISTRY[estimator]
    allowed = sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EstimatorError(f"estimator {estimator!r}: unknown options {unknown}; allowed: {allowed}")
    return cls(**options)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise EstimatorError(f"{name}: expected a finite number > 0, got {value!r}")


@register_estimator("logprob_softmax")
@dataclass(frozen=True)
class LogProbSoftmax(BackupEstimator):
    """The paper's backup: ``w_e = softmax_e(l_e / temperature)`` over the children's stored log-probs.

    Siblings share their parent's Gaussian, so child ``e``'s behaviour log-prob is
    ``-|eps_e|^2 / (2 D) + c`` (mean-reduced over ``D`` dimensions) or ``-|eps_e|^2 / 2 + c``
    (sum-reduced), with ``eps_e`` its standard normal draw and ``c`` shared by the siblings. The
    weights are therefore a function of the drawn noise alone, not of the policy or the reward. The
    siblings' log-probs differ by about ``1 / sqrt(2 D)`` (mean) or ``sqrt(D / 2)`` (sum), so at
    temperature 1 the weights are uniform to 0.3% at SD3.5's 16x64x64 with the mean (the backup is
    ``mean``) and nearly one-hot on the smallest noise norm with the sum; a temperature only moves between
    those two (docs/treeadv.md). ``temperature`` -> inf gives ``mean``.
    """

    temperature: float = 1.0

    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {"affine", "logprob_shift", "equal_logprob_mean", "logprob_monotone"}

    def __post_init__(self) -> None:
        _check_positive("temperature", self.temperature)

    def weights(self, siblings: Siblings) -> Tensor:
        return siblings.softmax(siblings.log_prob / self.temperature)


@register_estimator("mean")
@dataclass(frozen=True)
class Mean(BackupEstimator):
    """Uniform weights: each parent edge gets the plain mean of its children's advantages."""

    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {
        "affine", "logprob_shift", "logprob_scale", "equal_logprob_mean"}

    def weights(self, siblings: Siblings) -> Tensor:
        return 1.0 / siblings.num_siblings


@register_estimator("max")
@dataclass(frozen=True)
class Max(BackupEstimator):
    """Optimistic backup: each parent edge takes its best child's advantage (ties share the weight)."""

    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {"positive_affine", "logprob_shift", "logprob_scale"}

    def weights(self, siblings: Siblings) -> Tensor:
        best = siblings.broadcast(siblings.max(siblings.advantage))
        return siblings.normalize((siblings.advantage == best).to(siblings.advantage.dtype))


@register_estimator("leaf")
@dataclass(frozen=True)
class LeafMean(BackupEstimator):
    """Trajectory-level credit: each edge gets the mean advantage of the leaves below it.

    The weight of a child is its share of the parent's leaves; on a regular tree this equals ``mean``.
    """

    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {"affine", "logprob_shift", "logprob_scale"}

    def weights(self, siblings: Siblings) -> Tensor:
        return siblings.normalize(siblings.leaf_count)
