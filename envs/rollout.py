"""Tree rollouts: the environment and the policy denoise a batch of prompts into a ``treeadv.Tree``.

:func:`tree_rollout` is the one sampling engine. It resets the stateless environment on every
tree's initial noise and walks the ``T`` steps with the whole frontier of every tree of every
prompt in one TensorDict: the policy evaluates the denoiser once per frontier row (in
micro-batches of ``max_batch``); outside the SDE steps every row takes the ODE update; at an SDE
step each row is branched, its TensorDict expanded ``k`` ways with one Gaussian draw per child
(one model row serves ``k`` edges, shared prefixes are computed once); the environment steps every
row to its next state. Noise is drawn for the whole frontier before the micro-batches, so results
do not depend on ``max_batch``. A trajectory is the ``k = 1`` case and MixGRPO's sliding window a
choice of SDE steps; :class:`~treegrpo.envs.sampler.TreeSampler` and
:class:`~treegrpo.envs.sampler.TrajectorySampler` configure this engine.

Tree layout (level-major, :meth:`treeadv.Tree.regular`): the roots are the states at the first SDE
step; level ``D`` holds the children sampled at the ``D``-th SDE step; the deepest level holds the
leaves. Node payload:

- ``latent``: the node's state where its own SDE step applies (internal nodes), or the final
  latent after the ODE tail (leaves);
- ``step``: the step index of ``latent`` (``T`` at leaves);
- ``sample``: the latent the incoming SDE step drew (the root's ``latent`` at roots);
- ``cond_index``: the prompt (row of ``cond``) the node belongs to; the tree's ``group`` equals it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict
from torch import Tensor

from treeadv import Tree
from treegrpo.envs._checks import check_int
from treegrpo.envs.env import DenoisingEnv, DenoisingPolicy
from treegrpo.envs.numerics import autocast_precision

NODE_KEYS = ("latent", "sample", "step", "cond_index", "log_prob")
DECODES = ("sample", "x0")
"""What a leaf's final latent is after an SDE last step (:func:`tree_rollout`'s ``decode``)."""


@dataclass
class Rollout:
    """What a rollout returns: the tree and the cost of producing it."""

    tree: Tree
    sde_steps: tuple[int, ...]
    nfe: int = 0  # model evaluations (rows x evaluations per row; guidance counts two)
    calls: list[tuple[int, int]] = field(default_factory=list)  # (step, rows) of each model call
    env: DenoisingEnv | None = field(default=None, repr=False)  # the environment that stepped it
    precision: str | None = None  # the autocast precision it was sampled under (None: not recorded)

    @property
    def final(self) -> Tensor:
        """Final latents of the leaves, in the order of ``tree.leaves()``."""
        return self.tree.payload["latent"][self.tree.is_leaf]

    @property
    def leaf_cond_index(self) -> Tensor:
        """Prompt of each leaf, aligned with :attr:`final`."""
        return self.tree.payload["cond_index"][self.tree.is_leaf]


def concat_rollouts(rollouts: Sequence[Rollout], prompt_offsets: Sequence[int]) -> Rollout:
    """One rollout from rollouts of consecutive prompt chunks (all sampled in the same epoch).

    Chunk ``j`` numbered its prompts from 0; its ``cond_index`` and groups are shifted by
    ``prompt_offsets[j]`` so they index the full conditioning table and groups stay per prompt.
    """
    if len(rollouts) != len(prompt_offsets) or not rollouts:
        raise ValueError(f"prompt_offsets: expected one offset per rollout ({len(rollouts)}), got {len(prompt_offsets)}")
    if len({r.sde_steps for r in rollouts}) > 1:
        raise ValueError(f"rollouts: chunks of one iteration must share their SDE steps, got {[r.sde_steps for r in rollouts]}")
    trees = []
    for rollout, offset in zip(rollouts, prompt_offsets):
        tree = rollout.tree.clone(recurse=False)
        tree.group = rollout.tree.group + offset
        tree.payload = rollout.tree.payload.clone(recurse=False)
        tree.payload["cond_index"] = rollout.tree.payload["cond_index"] + offset
        trees.append(tree)
    return Rollout(tree=Tree.concat(trees, distinct_groups=False), sde_steps=rollouts[0].sde_steps,
                   nfe=sum(r.nfe for r in rollouts), calls=[call for r in rollouts for call in r.calls],
                   precision=rollouts[0].precision)


def tree_nfe(num_steps: int, branching: int, depth: int, window_start: int) -> int:
    """Model evaluations for one tree: ``s + (1 + k + .. + k^(d-1)) + k^d (T - s - d)`` (docs/envs.md)."""
    internal = sum(branching**j for j in range(depth))
    return window_start + internal + branching**depth * (num_steps - window_start - depth)


@torch.no_grad()
def tree_rollout(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    *,
    sde_steps: Sequence[int],
    branching: Sequence[int],
    num_prompts: int,
    trees_per_prompt: int = 1,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    decode: str = "sample",
) -> Rollout:
    """Denoise ``trees_per_prompt`` trees per prompt, branching ``branching[j]`` ways at ``sde_steps[j]``.

    Args:
        env: the stateless denoising environment (its transition sets ``T``).
        policy: the denoiser and transition (holding the conditioning table, one row per prompt);
            its generator draws the SDE noise.
        sde_steps: strictly increasing step indices in ``[0, T)`` where the frontier branches.
        branching: children per node at each SDE step (same length as ``sde_steps``).
        num_prompts: prompts (rows of the policy's ``cond``); trees are prompt-major.
        noise: initial noise ``[num_prompts * trees_per_prompt, *latent_shape]``; drawn from
            ``generator`` (on ``env.device``) when omitted.
        decode: what a leaf's final ``latent`` is when the last step is an SDE step: ``"sample"``
            (the sampled latent) or ``"x0"`` (that step's ODE update to ``t = 0``, the model's clean
            prediction, as BranchGRPO decodes its images: the last edge is sampled, stored and
            trained, but its noise never reaches the image).

    Runs without gradients: behaviour samples are data; losses re-score them with gradients.
    """
    num_steps = env.transition.num_steps
    steps = check_sde_steps(sde_steps, num_steps)
    if decode not in DECODES:
        raise ValueError(f"decode: expected one of {', '.join(DECODES)}, got {decode!r}")
    per_step = [check_int(f"branching[{j}]", int(k), minimum=1) for j, k in enumerate(branching)]
    if len(per_step) != len(steps):
        raise ValueError(f"branching: expected {len(steps)} entries (one per SDE step), got {len(per_step)}")
    check_int("trees_per_prompt", trees_per_prompt, minimum=1)
    check_int("num_prompts", num_prompts, minimum=1)
    num_trees = num_prompts * trees_per_prompt
    precision = autocast_precision(env.device)
    x = initial_noise(noise, env.latent_shape, num_trees, generator, env.device)
    cond_index = torch.arange(num_prompts, device=x.device).repeat_interleave(trees_per_prompt)
    state = env.reset(TensorDict({"latent": x, "cond_index": cond_index}, batch_size=[num_trees], device=x.device))
    state.set("sample", x)
    state.set("log_prob", torch.zeros(num_trees, dtype=x.dtype, device=x.device))
    calls_before = len(policy.calls)
    branch_at = dict(zip(steps, per_step))
    levels = []
    for i in range(num_steps):
        clean_image = decode == "x0" and i == num_steps - 1 and i in branch_at
        policy.distribution(state, step_index=i, sde=i in branch_at, ode=i not in branch_at or clean_image)
        if i in branch_at:
            levels.append(state.select(*NODE_KEYS))
            ode = state["ode"].repeat_interleave(branch_at[i], 0) if clean_image else None
            state = policy.branch(state, branch_at[i])
            state.set("sample", state["action"])
        else:
            state.set("action", state["ode"])
        nxt = env.advance(state)  # the environment's dynamics, without TorchRL's per-call bookkeeping
        nxt.update({"sample": state["sample"], "log_prob": state["log_prob"]})
        if clean_image:
            nxt.set("latent", ode.to(nxt["latent"].dtype))
        state = nxt
    levels.append(state.select(*NODE_KEYS))

    columns = {key: torch.cat([level[key] for level in levels]) for key in NODE_KEYS}
    edge_log_prob = columns.pop("log_prob")
    tree = Tree.regular(
        num_trees,
        per_step,
        log_prob=edge_log_prob,
        group=torch.arange(num_prompts, device=x.device).repeat_interleave(trees_per_prompt),
        device=x.device,
        payload=TensorDict(columns, batch_size=[edge_log_prob.shape[0]], device=x.device),
    )
    calls = policy.calls[calls_before:]
    nfe = sum(rows for _, rows in calls) * policy.model.evaluations_per_row
    return Rollout(tree=tree, sde_steps=steps, nfe=nfe, calls=list(calls), env=env, precision=precision)


def check_sde_steps(sde_steps: Sequence[int], num_steps: int) -> tuple[int, ...]:
    """``sde_steps`` as a tuple of strictly increasing indices in ``[0, num_steps)`` (one-line errors)."""
    steps = tuple(int(s) for s in sde_steps)
    if any(s < 0 or s >= num_steps for s in steps):
        raise ValueError(f"sde_steps: every step must lie in [0, {num_steps}), got {list(steps)}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"sde_steps: expected strictly increasing steps, got {list(steps)}")
    return steps


def initial_noise(noise: Tensor | None, latent_shape: Sequence[int], num_trees: int,
                  generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """The trees' initial noise: ``noise`` checked against ``[num_trees, *latent_shape]``, or a fresh draw."""
    if noise is None:
        return torch.randn((num_trees, *latent_shape), generator=generator, device=device, dtype=torch.float32)
    if noise.dim() < 2 or noise.shape[0] != num_trees:
        raise ValueError(
            f"noise: expected shape [num_prompts * trees_per_prompt = {num_trees}, ...], got {tuple(noise.shape)}")
    if tuple(noise.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"noise: latent shape {tuple(noise.shape[1:])} differs from latent_shape {tuple(latent_shape)}")
    return noise.to(device) if device is not None else noise
