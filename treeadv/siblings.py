"""One level of the backup: the child edges at depth ``D`` grouped by their parent.

The backup hands an estimator one :class:`Siblings` per level. Edges are a flat ``[E]`` batch and
``index`` says which of the ``P`` parents each belongs to, so per-parent reductions are scatters
(no loop over nodes). The helpers here are what an estimator needs to stay a dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class SortedSiblings(NamedTuple):
    """Output of :meth:`Siblings.sort`.

    Attributes:
        values: ``[E]`` the edge values, grouped by parent (parent slots ascending) and ascending
            within each parent; ``values == input[order]``.
        order: ``[E]`` int64 edge indices giving that arrangement; ``index[order]`` is non-decreasing.
    """

    values: Tensor
    order: Tensor


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
        return self.sum(values) / self._counts().to(values.dtype).clamp(min=1)

    def broadcast(self, per_parent: Tensor) -> Tensor:
        """``[E]`` copy of a ``[P]`` per-parent value onto each of its edges."""
        return per_parent.index_select(0, self.index)  # as per_parent[index], without advanced indexing

    @property
    def num_siblings(self) -> Tensor:
        """``[E]`` number of children of each edge's parent (the edge included)."""
        return self.broadcast(self._counts().to(self.advantage.dtype))

    def normalize(self, scores: Tensor) -> Tensor:
        """``[E]`` non-negative scores divided by their per-parent sum, so they sum to one."""
        return scores / self.broadcast(self.sum(scores))

    def softmax(self, logits: Tensor) -> Tensor:
        """``[E]`` softmax of ``logits`` over each parent's children, shifted by the max for stability."""
        shift = self.broadcast(self.max(logits))
        if logits.requires_grad and torch.is_grad_enabled():
            return self.normalize((logits - shift).exp())
        # Each step writes into a tensor made here: two [E] buffers per call rather than five.
        scores = torch.sub(logits, shift, out=shift).exp_()
        return scores.div_(self.broadcast(self.sum(scores)))

    def _counts(self) -> Tensor:
        """``[P]`` int64 number of children of each parent."""
        if self.index.device.type == "cpu":
            return torch.bincount(self.index, minlength=self.num_parents)
        # bincount sizes its output by the largest index, a read back to the host on an accelerator.
        counts = torch.zeros(self.num_parents, dtype=torch.long, device=self.index.device)
        return counts.index_add_(0, self.index, torch.ones_like(self.index, dtype=torch.long))

    def sort(self, values: Tensor) -> SortedSiblings:
        """Sort ``[E]`` edge values within each parent, stably (equal values keep their edge order).

        Edges come out grouped by parent, so parent ``p``'s children occupy one contiguous block,
        starting after the children of parents ``0..p-1``.
        """
        by_value = values.argsort(stable=True)
        order = by_value[self.index[by_value].argsort(stable=True)]  # stable: keeps the value order
        return SortedSiblings(values[order], order)

    def rank(self, values: Tensor) -> Tensor:
        """``[E]`` int64 0-based rank of each edge's value among its siblings (ties by edge order).

        The smallest child of a parent has rank 0 and the largest ``num_siblings - 1``.
        """
        order = self.sort(values).order
        counts = self._counts()  # [P]
        first = torch.cumsum(counts, 0) - counts  # [P] position of each parent's block
        position = torch.arange(values.numel(), device=values.device)
        rank = torch.empty_like(order)
        rank[order] = position - first[self.index[order]]
        return rank

    def quantile(self, values: Tensor, q: float) -> Tensor:
        """``[P]`` per-parent ``q``-quantile of ``[E]`` edge values (NaN for parents without children).

        Linear interpolation between order statistics, as :func:`torch.quantile`: the value at
        position ``q (k - 1)`` of the parent's ``k`` sorted children. ``q = 0.5`` is the median.
        """
        if isinstance(q, bool) or not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
            raise ValueError(f"q: expected a number in [0, 1], got {q!r}")
        missing = values.new_full((self.num_parents,), float("nan"))
        if values.numel() == 0:
            return missing
        ordered = self.sort(values).values
        counts = self._counts()  # [P]
        first = torch.cumsum(counts, 0) - counts  # [P] position of each parent's block
        position = q * (counts - 1).clamp(min=0).to(values.dtype)  # [P] fractional position in the block
        low, high = position.floor().long(), position.ceil().long()
        last = values.numel() - 1  # a childless parent's block is empty: clamp its (unused) reads
        at_low, at_high = ordered[(first + low).clamp(max=last)], ordered[(first + high).clamp(max=last)]
        value = at_low + (position - low.to(values.dtype)) * (at_high - at_low)
        return torch.where(counts > 0, value, missing)
