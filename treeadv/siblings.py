"""One level of the backup: the child edges at depth ``D`` grouped by their parent.

The backup hands an estimator one :class:`Siblings` per level. Edges are a flat ``[E]`` batch and
``index`` says which of the ``P`` parents each belongs to, so per-parent reductions are scatters
(no loop over nodes). The helpers here are what an estimator needs to stay a dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Siblings:
    """Child edges of one level, grouped by parent.

    Attributes:
        index: ``[E]`` int64, the parent slot ``0..P-1`` of each edge.
        num_parents: ``P``, the number of nodes one level up (some may be leaves with no edges).
        advantage: ``[E]`` advantage of each child edge, already backed up from below.
        log_prob: ``[E]`` behaviour log-prob stored on each edge.
        leaf_count: ``[E]`` number of leaves under each child (1 for a leaf).
    """

    index: Tensor
    num_parents: int
    advantage: Tensor
    log_prob: Tensor
    leaf_count: Tensor

    def sum(self, values: Tensor) -> Tensor:
        """``[P]`` per-parent sum of ``[E]`` edge values (0 for parents without children)."""
        out = values.new_zeros(self.num_parents)
        return out.index_add_(0, self.index, values)

    def max(self, values: Tensor) -> Tensor:
        """``[P]`` per-parent maximum of ``[E]`` edge values (-inf for parents without children)."""
        out = values.new_full((self.num_parents,), float("-inf"))
        return out.scatter_reduce_(0, self.index, values, reduce="amax", include_self=True)

    def mean(self, values: Tensor) -> Tensor:
        """``[P]`` per-parent mean of ``[E]`` edge values (0 for parents without children)."""
        return self.sum(values) / self.sum(torch.ones_like(values)).clamp(min=1)

    def broadcast(self, per_parent: Tensor) -> Tensor:
        """``[E]`` copy of a ``[P]`` per-parent value onto each of its edges."""
        return per_parent[self.index]

    @property
    def num_siblings(self) -> Tensor:
        """``[E]`` number of children of each edge's parent (the edge included)."""
        return self.broadcast(self.sum(torch.ones_like(self.advantage)))

    def normalize(self, scores: Tensor) -> Tensor:
        """``[E]`` non-negative scores divided by their per-parent sum, so they sum to one."""
        return scores / self.broadcast(self.sum(scores))

    def softmax(self, logits: Tensor) -> Tensor:
        """``[E]`` softmax of ``logits`` over each parent's children, shifted by the max for stability."""
        shifted = logits - self.broadcast(self.max(logits))
        return self.normalize(shifted.exp())
