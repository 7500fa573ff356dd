"""treeadv: per-edge advantages on denoising trees, usable by any policy-gradient loss.

Pipeline: rewards at the leaves -> :func:`leaf_advantages` (normalised within each prompt's group)
-> :func:`backup` (leaf-to-root, with a pluggable estimator) -> one advantage per edge.
Depends on torch and tensordict only; :mod:`treeadv.testing` adds hypothesis.
"""

from __future__ import annotations

from treeadv.backup import BackupResult, backup, backup_with_weights, tree_advantages
from treeadv.depth import depth_normalize
from treeadv.diagnostics import depth_diagnostics
from treeadv.errors import EstimatorError, NonFiniteError, TreeError
from treeadv.estimators import (
    BackupEstimator,
    LeafMean,
    LogProbSoftmax,
    Max,
    Mean,
    make_estimator,
    register_estimator,
    registered_estimators,
)
from treeadv.leaf import leaf_advantages
from treeadv.siblings import Siblings, SortedSiblings
from treeadv.tree import Tree

__all__ = [
    "BackupEstimator",
    "BackupResult",
    "EstimatorError",
    "LeafMean",
    "LogProbSoftmax",
    "Max",
    "Mean",
    "NonFiniteError",
    "Siblings",
    "SortedSiblings",
    "Tree",
    "TreeError",
    "backup",
    "backup_with_weights",
    "depth_diagnostics",
    "depth_normalize",
    "leaf_advantages",
    "make_estimator",
    "register_estimator",
    "registered_estimators",
    "tree_advantages",
]
