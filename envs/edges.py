"""Edges grouped under the parent they share (:class:`~treegrpo.envs.parent_batch.ParentBatch`), and re-scoring them.

An edge is the SDE step into a non-root node: the parent's ``latent`` at the parent's ``step``, the
child's ``sample``, and the behaviour ``log_prob`` stored on the child. :func:`parent_batch` makes
one row per parent (``latent``, ``step``, ``cond_index``) with its children padded to ``K``:
``sample [M, K, ...]``, ``log_prob`` (behaviour), ``advantage``, ``mask``, and the conditioning
table as ``cond_table``: a :class:`~treegrpo.envs.parent_batch.ParentBatch`. A loss evaluates the policy once per row and scores all ``K`` samples
against it, so minibatches are drawn over parents, never splitting one. :func:`edge_log_probs`
re-scores a tree the same way (what the on-policy self-checks do, without gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from treeadv import Tree
from treegrpo.envs.env import DenoisingPolicy
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.numerics import (
    OnPolicyStats,
    active_dropout,
    diagnose,
    edge_sensitivity,
    on_policy_stats,
    rounding_unit,
)
from treegrpo.envs.parent_batch import CondTable, ParentBatch
from treegrpo.envs.precision import model_precision
from treegrpo.envs.rollout import Rollout
from treegrpo.envs.sampler import sample_forest
from treegrpo.envs.transitions import Transition
from treegrpo.errors import TreegrpoError


class OnPolicyError(TreegrpoError, AssertionError):
    """A self-check found sampling and re-scoring out of agreement."""


def parent_batch(tree: Tree, advantage: Tensor | None = None, cond: Cond | None = None) -> ParentBatch:
    """Group a sampled tree's edges by parent, attaching one advantage per edge: everything a loss reads.

    Args:
        tree: a sampler's tree (payload ``latent``, ``step``, ``sample``, ``cond_index``).
        advantage: ``[N]`` advantage of the edge into each node (roots ignored); ``None``: zeros
            (re-scoring only).
        cond: the conditioning table the tree was sampled with (``cond_index`` indexes its rows;
            ``None`` for an unconditional model), stored once as the non-tensor ``cond_table``
            (a :class:`CondTable`), which a loss gathers per minibatch.

    Returns a :class:`~treegrpo.envs.parent_batch.ParentBatch` ``[M]`` over internal nodes with the
    fields described in the module doc, plus ``node`` (the parent's row in ``tree``), ``child`` (``[M, K]`` node of each child, 0 where
    padded) and ``depth`` (the parent's depth). ``K`` is the commonest number of children; a parent
    with more takes several rows (one forward each).

    Examples:
        >>> import torch
        >>> from treeadv import Tree
        >>> from treegrpo.envs import parent_batch
        >>> tree = Tree.regular(1, 2, 2, payload={"latent": torch.zeros(7, 4), "sample": torch.zeros(7, 4),
        ...                                       "step": torch.tensor([0, 1, 1, 2, 2, 2, 2]),
        ...                                       "cond_index": torch.zeros(7, dtype=torch.long)})
        >>> batch = parent_batch(tree, advantage=torch.arange(7.0))
        >>> batch.batch_size, batch.child.tolist(), batch.advantage.tolist()  # 3 parents x k=2 children
        (torch.Size([3]), [[1, 2], [3, 4], [5, 6]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    """
    if advantage is None:
        advantage = torch.zeros(tree.num_nodes, dtype=tree.log_prob.dtype, device=tree.log_prob.device)
    if advantage.shape != (tree.num_nodes,):
        raise ValueError(f"advantage: expected shape ({tree.num_nodes},), got {tuple(advantage.shape)}")
    offsets, children = tree.child_index()
    counts = offsets[1:] - offsets[:-1]
    parents = torch.nonzero(counts > 0).squeeze(-1)
    # K is the commonest child count (k for a tree, 1 for trajectories); a wider parent, such as the
    # shared first step of a group that starts from one noise, takes several rows of K instead of
    # padding every other row to its width.
    width = int(torch.mode(counts[parents]).values) if parents.numel() else 1
    rows_per_parent = -(-counts[parents] // width)  # [P]
    internal = parents.repeat_interleave(rows_per_parent)  # [M]
    first = torch.cumsum(rows_per_parent, 0) - rows_per_parent
    part = torch.arange(internal.numel(), device=counts.device) - first.repeat_interleave(rows_per_parent)
    slot = torch.arange(width, device=counts.device)
    start = offsets[internal] + part * width  # [M] first child of each row
    mask = (part * width).unsqueeze(-1) + slot < counts[internal].unsqueeze(-1)  # [M, K]
    child = torch.where(mask, children[(start.unsqueeze(-1) + slot).clamp(max=max(children.numel() - 1, 0))], 0)
    payload = tree.payload
    return ParentBatch(
        latent=payload["latent"][internal],
        step=payload["step"][internal],
        cond_index=payload["cond_index"][internal],
        sample=torch.where(_expand(mask, payload["sample"]), payload["sample"][child], 0),
        log_prob=torch.where(mask, tree.log_prob[child], 0),
        advantage=torch.where(mask, advantage[child].to(tree.log_prob.dtype), 0),
        mask=mask,
        node=internal,
        child=child,
        depth=tree.depth[internal],
        cond_table=CondTable(cond),
        batch_size=[internal.numel()],
    )


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(*mask.shape, *([1] * (like.dim() - 1)))


def _score_parents(model: Denoiser, transition: Transition, tree: Tree, cond: Cond,
                   max_batch: int | None) -> tuple[ParentBatch, Tensor, Tensor, Tensor]:
    """The tree's :func:`parent_batch`, the ``[M, K]`` scores of its children, and the parents' ``mean, std``."""
    batch = parent_batch(tree)
    latent, step = batch.latent, batch.step
    prediction = DenoisingPolicy(model, transition, cond, max_batch=max_batch).predict(latent, step, batch.cond_index)
    mean, std = transition.mean_std(latent, prediction, step)
    return batch, transition.score_children(batch.sample, mean, std), mean, std


def rescore_children(
    model: Denoiser, transition: Transition, tree: Tree, cond: Cond, *, max_batch: int | None = None
) -> tuple[ParentBatch, Tensor, Tensor]:
    """Re-score a tree's edges as a loss does: its :func:`parent_batch` ``[M]``, the ``[M, K]``
    log-prob of every child under ``model`` (one model row per parent, its ``K`` children scored
    against that Gaussian by :meth:`Transition.score_children`), and each child's rounding
    sensitivity (:func:`~treegrpo.envs.numerics.ratio_sensitivity`). Gradients flow to the model
    when enabled."""
    batch, scored, mean, std = _score_parents(model, transition, tree, cond, max_batch)
    return batch, scored, edge_sensitivity(transition, batch.latent, batch.sample, mean, std, batch.step)


def edge_log_probs(
    model: Denoiser, transition: Transition, tree: Tree, cond: Cond, *, max_batch: int | None = None
) -> Tensor:
    """Log-prob ``[N]`` of each node's stored ``sample`` under ``model`` (0 at roots), scored as a
    loss scores (:func:`rescore_children`). Gradients flow to the model when enabled."""
    batch, scored, _, _ = _score_parents(model, transition, tree, cond, max_batch)
    mask = batch.mask
    out = torch.zeros(tree.num_nodes, dtype=scored.dtype, device=scored.device)
    return out.index_copy(0, batch.child[mask], scored[mask])


def importance_ratios(
    model: Denoiser, transition: Transition, tree: Tree, cond: Cond, *, max_batch: int | None = None
) -> Tensor:
    """``exp(log pi(sample) - stored log_prob)`` per edge (non-root node, in node order)."""
    child = torch.nonzero(tree.parent >= 0).squeeze(-1)
    with torch.no_grad():
        new = edge_log_probs(model, transition, tree, cond, max_batch=max_batch)[child]
    return torch.exp(new.to(torch.float64) - tree.log_prob[child].to(torch.float64))


def check_on_policy(
    rollout: Rollout,
    model: Denoiser,
    transition: Transition,
    cond: Cond,
    *,
    atol: float | None = None,
    max_batch: int | None = None,
    precision: str = "fp32",
) -> OnPolicyStats:
    """Re-score every stored edge with unchanged parameters and check that the ratios are 1 up to rounding.

    The full check (one no-grad forward per internal node), run when asked: the trainer reads the
    same statistics off its first minibatch at no cost. Re-scores under ``precision``
    (:func:`~treegrpo.envs.precision.model_precision`), which must be the one the rollout was sampled
    under. Raises :class:`OnPolicyError` naming the likely cause (:func:`~treegrpo.envs.numerics.diagnose`)
    when the rollout was sampled under another precision, or when a deviation exceeds what rounding
    in that precision makes (:data:`~treegrpo.envs.numerics.ROUNDING_Z`); ``atol`` instead bounds
    ``|ratio - 1|`` absolutely, which only holds where sampling and re-scoring see the same batch
    shapes (``max_batch=1`` on both sides, or a batch-invariant model). Returns the statistics.
    """
    device = rollout.tree.parent.device
    with torch.no_grad(), model_precision(precision, device):
        batch, scored, sensitivity = rescore_children(model, transition, rollout.tree, cond, max_batch=max_batch)
    stats = on_policy_stats(scored - batch.log_prob, batch.mask, sensitivity, rounding_unit(precision, device))
    problem = diagnose(stats, precision=precision, sampled_precision=rollout.precision,
                       dropout=active_dropout(model), where="on re-scoring")
    if problem is None and atol is not None and not stats.max_deviation <= atol:
        problem = (f"max |ratio - 1| = {stats.max_deviation:.3g} > atol {atol:g} on re-scoring "
                   f"(rounding z {stats.rounding_z:.3g}; an absolute bound holds only for equal batch shapes)")
    if problem is not None:
        raise OnPolicyError(f"importance ratio: {problem}")
    return stats


def check_ode_limit(
    model: Denoiser,
    transition: Transition,
    cond: Cond,
    noise: Tensor,
    *,
    num_prompts: int | None = None,
    atol: float = 0.0,
) -> float:
    """Assert that SDE sampling at zero noise reproduces ODE sampling from the same ``noise``.

    Runs every step as an SDE step under :meth:`Transition.deterministic` and every step as an ODE
    step under ``transition``; returns the largest final-latent difference (exactly 0 for the
    flow SDEs and DDIM, rounding for CPS, whose zero-noise mean is written differently). The
    default ``atol=0`` relies on both runs calling the model on the same batches (one row per
    tree at every step, so the same shapes): kernels chosen by shape then round alike.
    """
    prompts = num_prompts if num_prompts is not None else int(cond.shape[0])
    if noise.shape[0] % prompts:
        raise ValueError(f"noise: {noise.shape[0]} rows do not split evenly over {prompts} prompts")
    common = {"noise": noise, "num_prompts": prompts, "trees_per_prompt": noise.shape[0] // prompts}
    every_step = range(transition.num_steps)
    sde = sample_forest(model, transition.deterministic(), cond, sde_steps=every_step,
                        branching=[1] * transition.num_steps, **common)
    ode = sample_forest(model, transition, cond, sde_steps=(), branching=(), **common)
    worst = float((sde.final - ode.final).abs().max())
    if not worst <= atol:
        raise OnPolicyError(f"noise level 0: SDE and ODE samplers differ by {worst:.3g} > {atol:g}")
    return worst
