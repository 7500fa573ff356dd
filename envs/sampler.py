"""The samplers: TreeGRPO's trees and the baselines' trajectories, as configurations of one engine.

Both build a :class:`~treegrpo.envs.env.DenoisingEnv` and a :class:`~treegrpo.envs.env.DenoisingPolicy`
for the iteration's conditioning and hand them to :func:`~treegrpo.envs.rollout.tree_rollout`:
:class:`TreeSampler` branches ``k`` ways at each of a window's ``d`` steps, :class:`TrajectorySampler`
draws ``group_size`` trajectories (``k = 1``) with SDE on chosen steps. :func:`sample_forest` is the
engine with explicit SDE steps and branching, for evaluation, sample grids and the self-checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from treegrpo.envs._checks import check_int
from treegrpo.envs.env import DenoisingEnv, DenoisingPolicy
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.rollout import Rollout, check_sde_steps, tree_rollout
from treegrpo.envs.transitions import Transition
from treegrpo.envs.windows import FixedWindow, WindowSchedule


def num_rows(cond: Cond) -> int:
    """Number of prompts in a conditioning table."""
    if cond is None:
        raise ValueError("cond: is None; pass num_prompts")
    return int(cond.shape[0])


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
    env: DenoisingEnv | None = None,
    decode: str = "sample",
) -> Rollout:
    """Denoise ``trees_per_prompt`` trees per prompt, branching ``branching[j]`` ways at ``sde_steps[j]``,
    through the environment and the policy (:func:`~treegrpo.envs.rollout.tree_rollout`); ``env`` is
    reused when it fits (same transition, latent shape and device), else one is made.

    ``cond`` has one row per prompt (tensor, TensorDict, or ``None`` with ``num_prompts``);
    ``noise`` is the trees' initial noise (prompt-major), drawn from ``generator`` when omitted,
    which then needs ``latent_shape``. ``max_batch`` bounds the rows per model call and
    ``static_shapes`` pads every call to it. ``decode="x0"`` makes an SDE last step's leaves hold
    the model's clean prediction rather than the sample (:func:`~treegrpo.envs.rollout.tree_rollout`).
    """
    prompts = num_prompts if num_prompts is not None else num_rows(cond)
    if noise is None and latent_shape is None:
        raise ValueError("latent_shape: required when no initial noise is given")
    shape = tuple(latent_shape) if latent_shape is not None else tuple(noise.shape[1:])
    where = device if device is not None else (noise.device if noise is not None else "cpu")
    if env is None or env.transition is not transition or env.latent_shape != shape or env.device != torch.device(where):
        env = DenoisingEnv(transition, latent_shape=shape, device=where)
    policy = DenoisingPolicy(model, transition, cond, sde_steps=check_sde_steps(sde_steps, transition.num_steps),
                             generator=generator, max_batch=max_batch, static_shapes=static_shapes)
    return tree_rollout(env, policy, sde_steps=sde_steps, branching=branching, num_prompts=prompts,
                        trees_per_prompt=trees_per_prompt, noise=noise, generator=generator, decode=decode)


class PlannedSampler:
    """Base of the samplers whose SDE steps and branching depend on the epoch alone: a subclass says
    what to sample in :meth:`plan`, and :meth:`sample` runs it through :func:`sample_forest`."""

    model: Denoiser
    transition: Transition
    max_batch: int | None
    static_shapes: bool
    decode: str
    env: DenoisingEnv | None

    def plan(self, epoch: int, **choices: int | None) -> tuple[tuple[int, ...], list[int], int]:  # pragma: no cover
        """``(sde_steps, branching per SDE step, trees_per_prompt)`` of ``epoch``."""
        raise NotImplementedError

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
        **choices: int | None,
    ) -> Rollout:
        """Sample ``epoch``'s plan for every prompt of ``cond`` (``choices`` go to :meth:`plan`, such as
        :class:`TreeSampler`'s ``window_start``)."""
        steps, branching, trees = self.plan(epoch, **choices)
        rollout = sample_forest(self.model, self.transition, cond, sde_steps=steps, branching=branching,
                                trees_per_prompt=trees, noise=noise, latent_shape=latent_shape, num_prompts=num_prompts,
                                generator=generator, max_batch=self.max_batch, static_shapes=self.static_shapes,
                                device=device, env=self.env, decode=self.decode)
        self.env = rollout.env
        return rollout


class TreeSampler(PlannedSampler):
    """TreeGRPO's sampler: ODE prefix, a ``depth``-step window branching ``k`` ways, ODE tail.

    ``window`` decides each epoch's window (default: the first ``depth`` steps); it lies in the
    transition's noisy steps. Several trees per prompt share the prompt's group, so leaf
    advantages normalise over all of them.
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
        decode: str = "sample",
    ) -> None:
        self.model, self.transition = model, transition
        self.decode = decode
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
        self.env: DenoisingEnv | None = None  # made at the first sample, reused while it fits

    @property
    def schedule(self) -> WindowSchedule:
        """The window schedule (its state goes into checkpoints; reward-driven ones are updated)."""
        return self.window

    def plan(self, epoch: int, window_start: int | None = None) -> tuple[tuple[int, ...], list[int], int]:
        """The window of ``epoch`` (the schedule's pick, or ``window_start``), branching ``k`` ways at each step."""
        start = self.window.start(epoch) if window_start is None else self.window.check_start(window_start)
        steps = tuple(range(start, start + self.depth))
        self.transition.check_noisy(steps)
        return steps, [self.branching] * self.depth, self.trees_per_prompt


class TrajectorySampler(PlannedSampler):
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
        decode: str = "sample",
    ) -> None:
        self.model, self.transition = model, transition
        self.decode = decode
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
            self.sde_steps = check_sde_steps(sde_steps, transition.num_steps)
            transition.check_noisy(self.sde_steps)
        self.shared_noise = shared_noise
        self.max_batch, self.static_shapes = max_batch, static_shapes
        self.env: DenoisingEnv | None = None  # made at the first sample, reused while it fits

    @property
    def schedule(self) -> WindowSchedule | None:
        """The sliding window schedule, or ``None`` when the SDE steps are fixed."""
        return self.sde_steps if isinstance(self.sde_steps, WindowSchedule) else None

    def steps(self, epoch: int = 0) -> tuple[int, ...]:
        """The SDE steps of ``epoch``."""
        return self.sde_steps.steps(epoch) if isinstance(self.sde_steps, WindowSchedule) else self.sde_steps

    def plan(self, epoch: int) -> tuple[tuple[int, ...], list[int], int]:
        """``(sde_steps, branching, trees_per_prompt)`` of ``epoch``: ``group_size`` trajectories for each
        prompt, or one tree splitting ``group_size`` ways at the first SDE step with ``shared_noise``.
        A schedule's window may be empty, as MixGRPO's is near the end of its sweep: then every step is
        an ODE step and nothing is trained."""
        steps = self.steps(epoch)
        if self.shared_noise and steps:
            return steps, [self.group_size] + [1] * (len(steps) - 1), 1
        return steps, [1] * len(steps), self.group_size


class BranchSampler(PlannedSampler):
    """BranchGRPO's sampler: SDE on every noisy step, every node splitting ``branching`` ways at each
    of ``split_steps`` and continuing as a chain elsewhere.

    With split steps ``[0, 3, 6, 9]`` and ``branching=2`` (BranchGRPO's FLUX script) a prompt's tree
    has 16 leaves whose paths share their first steps; every edge, split or chain, is trained. The
    transition may widen the split steps' noise (:meth:`~treegrpo.envs.transitions.Transition.with_noise_scale`,
    BranchGRPO's ``tree_split_noise_scale``). ``sde_steps`` narrows the stochastic steps
    (BranchGRPO-Mix: a window plus the split steps); ``decode="x0"`` (BranchGRPO's) decodes the last
    step's clean prediction.
    """

    def __init__(
        self,
        model: Denoiser,
        transition: Transition,
        *,
        split_steps: Sequence[int],
        branching: int = 2,
        sde_steps: str | Sequence[int] = "all",
        trees_per_prompt: int = 1,
        decode: str = "x0",
        max_batch: int | None = None,
        static_shapes: bool = False,
    ) -> None:
        self.model, self.transition = model, transition
        self.branching = check_int("branching", branching, minimum=2)
        self.trees_per_prompt = check_int("trees_per_prompt", trees_per_prompt, minimum=1)
        steps = transition.noisy_steps() if sde_steps == "all" else check_sde_steps(sde_steps, transition.num_steps)
        transition.check_noisy(steps)
        splits = check_sde_steps(sorted({int(s) for s in split_steps}), transition.num_steps)
        if not splits:
            raise ValueError("split_steps: expected at least one step where the tree splits, got none")
        missing = [s for s in splits if s not in set(steps)]
        if missing:
            raise ValueError(f"split_steps: {missing} are not SDE steps (the stochastic steps are {list(steps)}); a "
                             "split needs noise")
        self.split_steps, self.sde_steps = splits, tuple(steps)
        self.decode, self.max_batch, self.static_shapes = decode, max_batch, static_shapes
        self.env: DenoisingEnv | None = None  # made at the first sample, reused while it fits

    @property
    def schedule(self) -> None:
        """No window schedule: the split steps are fixed."""
        return None

    @property
    def leaves_per_tree(self) -> int:
        """Images per tree, ``branching ** len(split_steps)``."""
        return self.branching ** len(self.split_steps)

    def plan(self, epoch: int) -> tuple[tuple[int, ...], list[int], int]:
        """``(sde_steps, branching, trees_per_prompt)``: the same every epoch."""
        splits = set(self.split_steps)
        return self.sde_steps, [self.branching if step in splits else 1 for step in self.sde_steps], self.trees_per_prompt
