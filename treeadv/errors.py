"""Exceptions raised by :mod:`treeadv` for malformed trees, rewards and estimators."""

from __future__ import annotations


class TreeError(ValueError):
    """A forest's structure or per-node field is malformed (bad parent index, cycle, shape)."""


class NonFiniteError(ValueError):
    """Rewards, advantages or log-probs contain NaN or inf where finite values are required."""


class EstimatorError(ValueError):
    """An estimator name, option or output is not valid."""


def format_indices(indices, limit: int = 5) -> str:
    """The first ``limit`` entries of a 1-D tensor as a list, for error messages."""
    shown = indices[:limit].tolist()
    more = "" if indices.numel() <= limit else f" and {indices.numel() - limit} more"
    return f"{shown}{more}"
