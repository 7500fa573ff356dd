"""The typed contract between sampling and learning: a tree's edges grouped under the parent they share.

:func:`treegrpo.envs.parent_batch` writes a :class:`ParentBatch`; every loss and the trainer read
it. The trainer reads its fields by attribute (``batch.step``, ``batch.mask``), never by key, and
hands a loss :meth:`ParentBatch.as_loss_input`: a TensorDict whose keys are the loss's own
``tensor_keys`` (TorchRL's ``set_keys`` renames them), so a renamed key cannot break training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tensordict import TensorDict, TensorDictBase, tensorclass
from torch import Tensor

from treegrpo.envs.env import gather_cond
from treegrpo.envs.models import Cond


@dataclass(frozen=True)
class CondTable:
    """The conditioning table a tree was sampled with (``None`` for an unconditional model), carried
    by a parent batch as one non-tensor value that every minibatch shares."""

    cond: Cond

    def rows(self, index: Tensor) -> Cond:
        """Rows ``index`` of the table (``None`` stays ``None``)."""
        return gather_cond(self.cond, index)


@tensorclass(shadow=True)
class ParentBatch:
    """One row per parent (``M`` rows), its ``K`` children padded: everything a loss reads.

    Fields:
        latent: ``[M, ...]`` the parent's state, where its SDE step applies.
        step: ``[M]`` int64, the parent's step index.
        cond_index: ``[M]`` int64, the parent's row of ``cond_table``.
        sample: ``[M, K, ...]`` each child's sampled latent (0 where padded).
        log_prob: ``[M, K]`` behaviour log-prob of each edge (0 where padded).
        advantage: ``[M, K]`` advantage of each edge (0 where padded).
        mask: ``[M, K]`` bool, the real (unpadded, unpruned) edges.
        node: ``[M]`` int64, the parent's row in the tree.
        child: ``[M, K]`` int64, each child's row in the tree (0 where padded).
        depth: ``[M]`` int64, the parent's depth.
        cond_table: the :class:`CondTable` the tree was sampled with, shared by every row.

    Indexing selects rows (``batch[rows]``, boolean or integer), ``torch.cat`` joins batches of
    one table, ``batch.to(device)`` moves it. ``batch["mask"]`` reads a field by name, as code
    written for the TensorDict this replaced does; the trainer reads attributes.
    """

    latent: Tensor
    step: Tensor
    cond_index: Tensor
    sample: Tensor
    log_prob: Tensor
    advantage: Tensor
    mask: Tensor
    node: Tensor
    child: Tensor
    depth: Tensor
    cond_table: CondTable

    def as_loss_input(self, keys: Any = None) -> TensorDict:
        """The batch as a TensorDict under a loss's key names.

        ``keys`` is a loss's ``tensor_keys`` (any object with one attribute per field it renames,
        e.g. ``keys.log_prob == "old_log_prob"``); a field it does not name keeps its own name
        unless a renamed field took that name. ``None``: every field under its own name. The
        tensors are shared, not copied.
        """
        out = TensorDict({}, batch_size=self.batch_size, device=self.device)
        named = {name: getattr(keys, name) for name in FIELDS if keys is not None and hasattr(keys, name)}
        for name in (*named, *(name for name in FIELDS if name not in named)):
            key = named.get(name, name)
            if name not in named and key in out.keys(include_nested=True):
                continue  # a renamed field holds this name
            if name == "cond_table":
                out.set_non_tensor(key, self.cond_table)
            else:
                out.set(key, getattr(self, name))
        return out

    @classmethod
    def from_loss_input(cls, td: TensorDictBase, keys: Any = None) -> ParentBatch:
        """The inverse of :meth:`as_loss_input`: read every field from ``td`` under ``keys``' name for it."""
        def key(name: str) -> Any:
            return getattr(keys, name) if keys is not None and hasattr(keys, name) else name

        fields = {name: td.get(key(name)) for name in FIELDS if name != "cond_table"}
        return cls(**fields, cond_table=td.get_non_tensor(key("cond_table")), batch_size=td.batch_size)


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(ParentBatch))
"""The fields of a :class:`ParentBatch`, in order; ``cond_table`` is the one non-tensor field."""

_rows: Callable[[ParentBatch, Any], ParentBatch] = ParentBatch.__getitem__


def _getitem(self: ParentBatch, index: Any) -> Any:
    """``batch[name]``: the field ``name``; any other index selects rows."""
    if isinstance(index, str):
        if index not in FIELDS:
            raise KeyError(f"ParentBatch has no field {index!r}; its fields are {', '.join(FIELDS)}")
        return getattr(self, index)
    return _rows(self, index)


ParentBatch.__getitem__ = _getitem  # the tensorclass's row indexing, plus reading a field by name

__all__ = ["FIELDS", "CondTable", "ParentBatch"]
