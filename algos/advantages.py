"""From leaf rewards to per-edge advantages, the way each algorithm defines them.

:class:`GroupAdvantage` is the GRPO family (TreeGRPO, Flow-GRPO, DanceGRPO, MixGRPO): normalise
within the prompt's group of leaves, then back up the tree with a :mod:`treeadv` estimator (the
``leaf`` estimator gives every edge its trajectory's advantage). :class:`PerPromptStatTracker` is
DDPO's: normalise by running statistics of each prompt across iterations.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

import treeadv
from treeadv import Tree
from treegrpo.errors import TreegrpoWarning

AGGREGATIONS = ("advantage", "reward")


def combine_rewards(rewards: Tensor, weights: Sequence[float] | None) -> Tensor:
    """``[L]`` from ``[L]`` or ``[L, m]`` raw rewards: the weighted sum (equal weights by default)."""
    if rewards.dim() == 1:
        return rewards
    w = torch.full((rewards.shape[1],), 1 / rewards.shape[1]) if not weights else torch.as_tensor(weights)
    if w.numel() != rewards.shape[1]:
        raise ValueError(f"reward_weights: expected {rewards.shape[1]} weights, got {w.numel()}")
    return rewards @ w.to(rewards)


def constant_groups(rewards: Tensor, group: Tensor) -> tuple[int, int]:
    """``(constant, groups)``: how many groups of ``[L]``/``[L, m]`` rewards (by ``[L]`` group ids)
    hold one value in every reward column, out of how many groups. Such a group's normalised
    advantages are all 0: it teaches the policy nothing."""
    values = rewards.detach().reshape(rewards.shape[0], -1).double()  # [L, m]
    _, inverse = torch.unique(group, return_inverse=True)
    count = int(inverse.max()) + 1 if inverse.numel() else 0
    index = inverse.to(values.device)[:, None].expand_as(values)
    low = values.new_full((count, values.shape[1]), float("inf")).scatter_reduce(0, index, values, "amin")
    high = values.new_full((count, values.shape[1]), float("-inf")).scatter_reduce(0, index, values, "amax")
    return int((high == low).all(1).sum()), count


def warn_if_nothing_to_learn(rewards: Tensor, group: Tensor) -> None:
    """One line when the rewards are constant within every group of an iteration (groups of more than
    one leaf): every advantage is then 0, so the iteration trains nothing."""
    constant, count = constant_groups(rewards, group)
    if count and constant == count and rewards.shape[0] > count:
        warnings.warn(f"rewards are constant within all {count} groups of this iteration ({constant} of {count}), so "
                      "every advantage is 0 and nothing is learned; check that the reward varies with the image",
                      TreegrpoWarning, stacklevel=3)


def clip_advantages(advantage: Tensor, limit: float | None) -> Tensor:
    """Clamp to ``[-limit, limit]`` (peers use 5); ``None`` or 0 leaves them as they are."""
    return advantage.clamp(-limit, limit) if limit else advantage


class GroupAdvantage:
    """Group-normalised leaf advantages backed up by ``estimator``.

    Several rewards combine at the advantage level (the paper: normalise each reward within the
    group, then take the weighted sum) or, with ``aggregate="reward"``, at the reward level (the
    weighted sum of raw rewards, then one normalisation; MixGRPO offers both). ``std`` and ``eps``
    choose the spread each group is divided by (:func:`treeadv.leaf_advantages`: ``group``,
    ``group_bessel`` or ``batch``; ``eps=None`` is that spread's peer's).
    """

    def __init__(
        self,
        estimator: str | treeadv.BackupEstimator = "logprob_softmax",
        *,
        reward_weights: Sequence[float] | None = None,
        aggregate: str = "advantage",
        eps: float | None = None,
        std: str = "group",
        **options: Any,
    ) -> None:
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"loss.reward_aggregation: expected one of {list(AGGREGATIONS)}, got {aggregate!r}")
        self.estimator = treeadv.make_estimator(estimator, **options) if isinstance(estimator, str) else estimator
        self.reward_weights = list(reward_weights) if reward_weights else None
        self.aggregate = aggregate
        self.eps, self.std = eps, std

    def __call__(self, tree: Tree, rewards: Tensor, prompt_ids: Tensor | None = None) -> treeadv.BackupResult:
        """``[N]`` edge advantages (and backup weights) from ``[L]``/``[L, m]`` rewards in leaf order."""
        group = tree.group[tree.leaves()]
        warn_if_nothing_to_learn(rewards, group)
        if self.aggregate == "reward":
            rewards = combine_rewards(rewards, self.reward_weights)
        leaf = treeadv.leaf_advantages(rewards, group, weights=self.reward_weights if rewards.dim() > 1 else None,
                                       eps=self.eps, std=self.std)
        return treeadv.backup_with_weights(tree, tree.scatter_leaves(leaf), self.estimator)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class DepthNormalizedAdvantage(GroupAdvantage):
    """BranchGRPO's advantage: leaves fused up the tree by ``estimator`` (its uniform fusion is
    ``leaf``, its probability-weighted one ``logprob_softmax``), then every node's value normalised
    against the other nodes at its depth in its tree (:func:`treeadv.depth_normalize`); an edge
    trains with its child's value.

    BranchGRPO fuses raw rewards; this fuses group-normalised ones. The fusions are weighted means,
    so a positive affine map of a tree's rewards passes through them, and the depth normalisation
    removes it: both give the same advantages (up to the normalisations' ``eps``).
    """

    def __call__(self, tree: Tree, rewards: Tensor, prompt_ids: Tensor | None = None) -> treeadv.BackupResult:
        fused = super().__call__(tree, rewards, prompt_ids)
        return treeadv.BackupResult(treeadv.depth_normalize(tree, fused.advantage), fused.weight)


class PerPromptStatTracker:
    """DDPO's advantage: ``(r - mean_p) / (std_p + eps)`` over the last ``buffer_size`` rewards of
    prompt ``p``, falling back to the batch's statistics until ``min_count`` rewards are seen.

    The tracker's buffers are part of the training state and go into checkpoints.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16, *, reward_weights: Sequence[float] | None = None,
                 eps: float = 1e-6, estimator: str = "leaf") -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size/min_count: expected ints >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.reward_weights = list(reward_weights) if reward_weights else None
        self.estimator = treeadv.make_estimator(estimator)
        self.buffers: dict[int, deque[float]] = {}

    def update(self, prompt_ids: Tensor, rewards: Tensor) -> Tensor:
        """Record ``[L]`` rewards under their prompts and return their ``[L]`` advantages."""
        values = rewards.detach().to(torch.float64).cpu()
        ids = prompt_ids.cpu().tolist()
        advantage = torch.empty_like(values)
        batch_mean, batch_std = values.mean(), values.std(unbiased=False)
        for prompt in sorted(set(ids)):
            rows = torch.tensor([i for i, p in enumerate(ids) if p == prompt])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                history = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = history.mean(), history.std(unbiased=False)
            advantage[rows] = (values[rows] - mean) / (std + self.eps)
        return advantage.to(rewards.dtype).to(rewards.device)

    def __call__(self, tree: Tree, rewards: Tensor, prompt_ids: Tensor | None = None) -> treeadv.BackupResult:
        """``[N]`` edge advantages: tracker-normalised leaves, each edge taking its subtree's leaves."""
        if prompt_ids is None:
            raise ValueError("prompt_ids: the per-prompt tracker needs each leaf's prompt id")
        warn_if_nothing_to_learn(rewards, torch.zeros_like(prompt_ids))  # the tracker's group: the whole batch
        leaf = self.update(prompt_ids, combine_rewards(rewards, self.reward_weights))
        return treeadv.backup_with_weights(tree, tree.scatter_leaves(leaf), self.estimator)

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": {int(k): list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffers = {int(k): deque(v, maxlen=self.buffer_size) for k, v in state["buffers"].items()}
