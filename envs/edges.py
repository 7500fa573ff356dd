"""From sampled trees to trainable edges: re-scoring stored samples and the on-policy self-checks.

An edge is the SDE step into a non-root node: the parent's ``latent`` at the parent's ``step``, the
child's ``sample``, and the behaviour ``log_prob`` stored on the child. :func:`edge_log_probs`
re-scores every edge with one model row per parent (its children share the Gaussian), which is
what a TreeGRPO loss does with gradients on, and what the self-checks do without.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor
from treegrpo.envs.env import DenoisingPolicy
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.precision import model_precision
from treegrpo.envs.rollout import Rollout
from treegrpo.envs.sampler import sample_forest
from treegrpo.envs.transitions import Transition

from treeadv import Tree
from treegrpo.errors import TreegrpoError


class OnPolicyError(TreegrpoError, AssertionError):
    """A self-check found sampling and re-scoring out of agreement."""


def tree_edges(tree: Tree) -> TensorDict:
    """One row per edge (non-root node): parent ``latent`` and ``step``, child ``sample``, ``log_prob``.

    Also ``node`` and ``parent`` (row indices in ``tree``), ``group`` and ``cond_index``. Parent
    latents are gathered, so memory grows with the edge count; losses that want one forward per
    parent should use :func:`edge_log_probs` on the tree instead.
    """
    node = torch.nonzero(tree.parent >= 0).squeeze(-1)
    parent = tree.parent[node]
    payload = tree.payload
    return TensorDict(
        {
            "latent": payload["latent"][parent],
            "step": payload["step"][parent],
            "sample": payload["sample"][node],
            "cond_index": payload["cond_index"][node],
            "log_prob": tree.log_prob[node],
            "group": tree.group[node],
            "node": node,
            "parent": parent,
        },
        batch_size=[node.numel()],
    )


def edge_log_probs(
    model: Denoiser, transition: Transition, tree: Tree, cond: Cond, *, max_batch: int | None = None
) -> Tensor:
    """Log-prob ``[N]`` of each node's stored ``sample`` under ``model`` (0 at roots).

    The model runs once per internal node; each node's children are scored against that one
    Gaussian. Gradients flow to the model when enabled.
    """
    payload = tree.payload
    internal = torch.nonzero(~tree.is_leaf).squeeze(-1)
    child = torch.nonzero(tree.parent >= 0).squeeze(-1)
    slot = torch.full((tree.num_nodes,), -1, dtype=torch.long, device=internal.device)
    slot[internal] = torch.arange(internal.numel(), device=internal.device)
    latent, step = payload["latent"][internal], payload["step"][internal]
    prediction = DenoisingPolicy(model, transition, cond, max_batch=max_batch).predict(
        latent, step, payload["cond_index"][internal])
    mean, std = transition.mean_std(latent, prediction, step)
    parent_slot = slot[tree.parent[child]]
    std = std[parent_slot] if std.dim() > 0 and std.shape[0] == internal.numel() else std
    scored = transition.score(payload["sample"][child], mean[parent_slot], std)
    out = torch.zeros(tree.num_nodes, dtype=scored.dtype, device=scored.device)
    return out.index_copy(0, child, scored)


def importance_ratios(
    model: Denoiser, transition: Transition, tree: Tree, cond: Cond, *, max_batch: int | None = None
) -> Tensor:
    """``exp(log pi(sample) - stored log_prob)`` per edge, in the order of :func:`tree_edges`."""
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
    atol: float = 1e-5,
    max_batch: int | None = None,
    precision: str = "fp32",
) -> float:
    """Assert that re-scoring the stored edges with unchanged parameters gives ratio 1.

    Re-scores under ``precision`` (:func:`~treegrpo.envs.precision.model_precision`): it must be
    the one the rollout was sampled under and the loss will score under, or the ratios are off 1
    before any update. Returns the largest ``|ratio - 1|``; raises :class:`OnPolicyError` above
    ``atol``. Cheap enough (one forward per internal node, no grad) to run before every update.
    """
    device = rollout.tree.parent.device
    with model_precision(precision, device):
        ratios = importance_ratios(model, transition, rollout.tree, cond, max_batch=max_batch)
    if ratios.numel() == 0:
        return 0.0
    worst = float((ratios - 1).abs().max())
    if not worst <= atol:
        edge = int((ratios - 1).abs().argmax())
        raise OnPolicyError(
            f"importance ratio: max |ratio - 1| = {worst:.3g} > {atol:g} at edge {edge} before any update; "
            f"the stored log-probs do not match the sampler's Gaussian re-scored under precision={precision} "
            "(was the rollout sampled under another precision or model?)"
        )
    return worst


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
    flow SDEs and DDIM, rounding for CPS, whose zero-noise mean is written differently).
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
