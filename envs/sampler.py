"""Samplers: denoise a batch of prompts into a treeadv ``Tree`` whose edges are SDE steps.

One engine, :func:`sample_forest`, walks the ``T`` steps for every tree at once. Outside the SDE
steps the whole frontier takes the ODE update; at an SDE step each frontier node is evaluated once
and spawns ``k`` children from the same Gaussian, so one model row serves ``k`` edges and shared
prefixes are computed once. The frontier of all prompts goes through the model together, split
into micro-batches of at most ``max_batch`` rows; noise is drawn for the whole frontier before the
split, so results do not depend on ``max_batch``.

Tree layout (level-major, :meth:`treeadv.Tree.regular`): the roots are the states at the first SDE
step; level ``D`` holds the children sampled at the ``D``-th SDE step; the deepest level holds the
leaves. Node payload:

- ``latent``: the node's state where its own SDE step applies (internal nodes), or the final
  latent after the ODE tail (leaves);
- ``step``: the step index of ``latent`` (``T`` at leaves);
- ``sample``: the latent the incoming SDE step drew (the root's ``latent`` at roots);
- ``cond_index``: the prompt (row of ``cond``) the node belongs to; the tree's ``group`` equals it.

:class:`TreeSampler` (TreeGRPO) and :class:`TrajectorySampler` (GRPO baselines) configure it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from treegrpo.envs._checks import check_int
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.transitions import Transition
from treegrpo.envs.windows import FixedWindow, WindowSchedule

from treeadv import Tree


@dataclass
class Rollout:
    """What a sampler returns: the tree and the cost of producing it."""

    tree: Tree
    sde_steps: tuple[int, ...]
    nfe: int = 0  # model evaluations (rows x evaluations per row; guidance counts two)
    calls: list[tuple[int, int]] = field(default_factory=list)  # (step, rows) of each model call

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
                   nfe=sum(r.nfe for r in rollouts), calls=[call for r in rollouts for call in r.calls])


def num_rows(cond: Cond) -> int:
    """Number of prompts in a conditioning table."""
    if cond is None:
        raise ValueError("cond: is None; pass num_prompts")
    return int(cond.shape[0])


def gather_cond(cond: Cond, index: Tensor) -> Cond:
    """Rows ``index`` of a conditioning table (tensor or TensorDict); ``None`` stays ``None``."""
    if cond is None:
        return None
    if isinstance(cond, TensorDictBase):
        return cond[index.to(cond.device)] if cond.device is not None else cond[index]
    return cond[index.to(cond.device)]


def evaluate(
    model: Denoiser,
    transition: Transition,
    x: Tensor,
    step: Tensor,
    cond: Cond,
    cond_index: Tensor,
    max_batch: int | None = None,
    calls: list[tuple[int, int]] | None = None,
    step_index: int | None = None,
    static_shapes: bool = False,
) -> Tensor:
    """The model's prediction on ``x`` at ``[B]`` steps, in micro-batches of ``max_batch`` rows.

    ``calls`` (if given) records ``(step_index, rows)`` per model call; ``step_index`` is the step
    all rows share, passed as a Python int so that recording it never waits for the device. With
    ``static_shapes`` a short micro-batch is padded (by repeating its last row) to ``max_batch``
    rows, so a compiled model sees one shape; the padding's outputs are dropped and not counted.
    """
    size = x.shape[0] if max_batch is None else max_batch
    outputs = []
    for lo in range(0, x.shape[0], size):
        real = min(size, x.shape[0] - lo)
        index: slice | Tensor = slice(lo, lo + real)
        if static_shapes and real < size:  # pad with copies of the last row
            index = torch.arange(lo, lo + size, device=x.device).clamp_(max=lo + real - 1)
        step_rows = step[index]
        prediction = model(x[index], transition.model_time(step_rows), gather_cond(cond, cond_index[index]))
        outputs.append(prediction[:real])
        if calls is not None:
            calls.append((-1 if step_index is None else step_index, real))
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


@torch.no_grad()
def sample_forest(
    model: Denoiser,
    transition: Transition,
    cond: Cond,
    *,
    sde_steps: Sequence[int],
    branching: Sequence[int],
    trees_per_prompt: int = 1,
    noise: Tensor | None = None,
    latent_shape: Sequence[int] | None = None,
    num_prompts: int | None = None,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
    device: torch.device | str | None = None,
    static_shapes: bool = False,
) -> Rollout:
    """Denoise ``trees_per_prompt`` trees per prompt, branching ``branching[j]`` ways at ``sde_steps[j]``.

    Args:
        model: the denoiser; called once per step (per micro-batch) on the whole frontier.
        transition: ODE/SDE update and the step schedule (``T = transition.num_steps``).
        cond: conditioning table with one row per prompt (tensor, TensorDict, or ``None``).
        sde_steps: strictly increasing step indices in ``[0, T)`` where the frontier branches.
        branching: children per node at each SDE step (same length as ``sde_steps``).
        trees_per_prompt: independent initial noises per prompt.
        noise: initial noise ``[num_prompts * trees_per_prompt, *latent_shape]`` (prompt-major);
            drawn from ``generator`` if omitted, which then needs ``latent_shape``.
        max_batch: most rows per model call (``None``: the whole frontier).
        static_shapes: pad every model call to ``max_batch`` rows (one shape for torch.compile).

    Runs without gradients: behaviour samples are data; losses re-score them with gradients.
    """
    num_steps = transition.num_steps
    steps = _check_sde_steps(sde_steps, num_steps)
    per_step = [check_int(f"branching[{j}]", int(k), minimum=1) for j, k in enumerate(branching)]
    if len(per_step) != len(steps):
        raise ValueError(f"branching: expected {len(steps)} entries (one per SDE step), got {len(per_step)}")
    check_int("trees_per_prompt", trees_per_prompt, minimum=1)
    if max_batch is not None:
        check_int("max_batch", max_batch, minimum=1)
    prompts = num_prompts if num_prompts is not None else num_rows(cond)
    check_int("num_prompts", prompts, minimum=1)
    num_trees = prompts * trees_per_prompt
    x = _initial_noise(noise, latent_shape, num_trees, generator, device)
    device = x.device
    cond_index = torch.arange(prompts, device=device).repeat_interleave(trees_per_prompt)

    calls: list[tuple[int, int]] = []
    levels: list[dict[str, Tensor]] = []
    sample = x
    log_prob = torch.zeros(num_trees, dtype=x.dtype, device=device)
    branch_at = dict(zip(steps, per_step))
    for i in range(num_steps):
        step = torch.full((x.shape[0],), i, dtype=torch.long, device=device)
        prediction = evaluate(model, transition, x, step, cond, cond_index, max_batch, calls, step_index=i,
                              static_shapes=static_shapes)
        if i not in branch_at:
            x = transition.ode_step(x, prediction, step).to(x.dtype)
            continue
        levels.append({"latent": x, "sample": sample, "step": step, "cond_index": cond_index, "log_prob": log_prob})
        k = branch_at[i]
        mean, std = transition.mean_std(x, prediction, step)
        children = (mean.shape[0], k, *mean.shape[1:])  # [N, k, ...]: each node's k children, node-major
        drawn = torch.randn(children, generator=generator, device=device, dtype=mean.dtype)
        spread = std.unsqueeze(1) if std.dim() > 0 else std
        children_sample = (mean.unsqueeze(1) + spread * drawn).to(x.dtype)
        log_prob = transition.score_children(children_sample, mean, std).to(x.dtype).flatten()
        sample = x = children_sample.flatten(0, 1)
        cond_index = cond_index.repeat_interleave(k)
    final_step = torch.full((x.shape[0],), num_steps, dtype=torch.long, device=device)
    levels.append({"latent": x, "sample": sample, "step": final_step, "cond_index": cond_index, "log_prob": log_prob})

    columns = {key: torch.cat([level[key] for level in levels]) for key in levels[0]}
    edge_log_prob = columns.pop("log_prob")
    tree = Tree.regular(
        num_trees,
        per_step,
        log_prob=edge_log_prob,
        group=torch.arange(prompts, device=device).repeat_interleave(trees_per_prompt),
        device=device,
        payload=TensorDict(columns, batch_size=[edge_log_prob.shape[0]], device=device),
    )
    nfe = sum(rows for _, rows in calls) * model.evaluations_per_row
    return Rollout(tree=tree, sde_steps=steps, nfe=nfe, calls=calls)


def _check_sde_steps(sde_steps: Sequence[int], num_steps: int) -> tuple[int, ...]:
    steps = tuple(int(s) for s in sde_steps)
    if any(s < 0 or s >= num_steps for s in steps):
        raise ValueError(f"sde_steps: every step must lie in [0, {num_steps}), got {list(steps)}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"sde_steps: expected strictly increasing steps, got {list(steps)}")
    return steps


def _initial_noise(
    noise: Tensor | None,
    latent_shape: Sequence[int] | None,
    num_trees: int,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> Tensor:
    if noise is None:
        if latent_shape is None:
            raise ValueError("latent_shape: required when no initial noise is given")
        shape = (num_trees, *latent_shape)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if noise.dim() < 2 or noise.shape[0] != num_trees:
        raise ValueError(
            f"noise: expected shape [num_prompts * trees_per_prompt = {num_trees}, ...], got {tuple(noise.shape)}"
        )
    if latent_shape is not None and tuple(noise.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"noise: latent shape {tuple(noise.shape[1:])} differs from latent_shape {tuple(latent_shape)}")
    return noise.to(device) if device is not None else noise


def tree_nfe(num_steps: int, branching: int, depth: int, window_start: int) -> int:
    """Model evaluations for one tree (method.md section 3): ``s + (1 + k + .. + k^(d-1)) + k^d (T - s - d)``."""
    internal = sum(branching**j for j in range(depth))
    return window_start + internal + branching**depth * (num_steps - window_start - depth)


class TreeSampler:
    """TreeGRPO's sampler: ODE prefix, a ``depth``-step window branching ``k`` ways, ODE tail.

    ``window`` decides each epoch's window (default: the first ``depth`` steps). Several trees per
    prompt share the prompt's group, so leaf advantages normalise over all of them.
    """

    def __init__(
        self,
        model: Denoiser,
        transition: Transition,
        *,
        branching: int,
        depth: int,
        trees_per_prompt: int = 1,
        window: WindowSchedule | None = None,
        max_batch: int | None = None,
        static_shapes: bool = False,
    ) -> None:
        self.model, self.transition = model, transition
        self.branching = check_int("k", branching, minimum=1)
        self.depth = check_int("d", depth, minimum=1, maximum=transition.num_steps)
        self.trees_per_prompt = check_int("trees_per_prompt", trees_per_prompt, minimum=1)
        horizon = transition.trainable_horizon()
        self.window = window or FixedWindow(horizon, depth, 0)
        if self.window.depth != depth or self.window.num_steps > horizon:
            raise ValueError(
                f"window: built for {self.window.num_steps} steps and d={self.window.depth}; the sampler has d={depth} "
                f"and {horizon} of its {transition.num_steps} steps have noise (build the window on those: "
                "transition.trainable_horizon())"
            )
        self.max_batch, self.static_shapes = max_batch, static_shapes

    def sample(
        self,
        cond: Cond,
        *,
        epoch: int = 0,
        window_start: int | None = None,
        noise: Tensor | None = None,
        latent_shape: Sequence[int] | None = None,
        num_prompts: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Rollout:
        """Sample one forest; the window starts at ``window_start`` or at the schedule's pick for ``epoch``."""
        start = self.window.start(epoch) if window_start is None else self.window.check_start(window_start)
        self.transition.check_noisy(range(start, start + self.depth))
        return sample_forest(
            self.model,
            self.transition,
            cond,
            sde_steps=range(start, start + self.depth),
            branching=[self.branching] * self.depth,
            trees_per_prompt=self.trees_per_prompt,
            noise=noise,
            latent_shape=latent_shape,
            num_prompts=num_prompts,
            generator=generator,
            max_batch=self.max_batch,
            static_shapes=self.static_shapes,
            device=device,
        )


class TrajectorySampler:
    """``group_size`` trajectories per prompt with SDE on chosen steps (GRPO, DDPO, MixGRPO).

    ``sde_steps`` is ``"all"`` (Flow-GRPO, DanceGRPO, DDPO: every step with noise; a zero-std step,
    such as CPS into ``t = 0``, is an ODE step, counted in :attr:`skipped_steps`), an explicit step
    list, or a :class:`WindowSchedule` (MixGRPO's sliding window, over the noisy steps). Each
    trajectory is a tree with one child per node; with ``shared_noise`` the group starts from one
    noise and splits at the first SDE step (a root with ``group_size`` children), so the shared ODE
    prefix is computed once.
    """

    def __init__(
        self,
        model: Denoiser,
        transition: Transition,
        *,
        group_size: int,
        sde_steps: str | Sequence[int] | WindowSchedule = "all",
        shared_noise: bool = False,
        max_batch: int | None = None,
        static_shapes: bool = False,
    ) -> None:
        self.model, self.transition = model, transition
        self.group_size = check_int("group_size", group_size, minimum=1)
        self.skipped_steps: tuple[int, ...] = ()
        if isinstance(sde_steps, str):
            if sde_steps != "all":
                raise ValueError(f"sde_steps: expected 'all', a list of steps or a WindowSchedule, got {sde_steps!r}")
            sde_steps = transition.noisy_steps()
            self.skipped_steps = tuple(i for i in range(transition.num_steps) if i not in set(sde_steps))
        if isinstance(sde_steps, WindowSchedule):
            if sde_steps.num_steps > transition.trainable_horizon():
                raise ValueError(f"sde_steps: the window spans {sde_steps.num_steps} steps but only the first "
                                 f"{transition.trainable_horizon()} of {transition.num_steps} have noise")
            self.sde_steps = sde_steps
        else:
            self.sde_steps = _check_sde_steps(sde_steps, transition.num_steps)
            transition.check_noisy(self.sde_steps)
        self.shared_noise = shared_noise
        self.max_batch, self.static_shapes = max_batch, static_shapes

    def steps(self, epoch: int = 0) -> tuple[int, ...]:
        """The SDE steps of ``epoch``."""
        return self.sde_steps.steps(epoch) if isinstance(self.sde_steps, WindowSchedule) else self.sde_steps

    def sample(
        self,
        cond: Cond,
        *,
        epoch: int = 0,
        noise: Tensor | None = None,
        latent_shape: Sequence[int] | None = None,
        num_prompts: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Rollout:
        """Sample ``group_size`` trajectories for each prompt."""
        steps = self.steps(epoch)
        if self.shared_noise:
            if not steps:
                raise ValueError("sde_steps: shared_noise needs at least one SDE step, or every image is identical")
            trees, branching = 1, [self.group_size] + [1] * (len(steps) - 1)
        else:
            trees, branching = self.group_size, [1] * len(steps)
        return sample_forest(
            self.model,
            self.transition,
            cond,
            sde_steps=steps,
            branching=branching,
            trees_per_prompt=trees,
            noise=noise,
            latent_shape=latent_shape,
            num_prompts=num_prompts,
            generator=generator,
            max_batch=self.max_batch,
            static_shapes=self.static_shapes,
            device=device,
        )
