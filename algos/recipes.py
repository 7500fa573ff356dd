"""Each algorithm as a recipe: which sampler, which advantage, which loss, from one :class:`Config`.

This is the only place the algorithm name matters; everything downstream reads the same parent
batch. Swapping algorithms is ``loss.algorithm = ...`` in the config, or passing a different loss
object to the trainer.
"""

from __future__ import annotations

from typing import Any

import torch
from treegrpo.algos.advantages import GroupAdvantage, PerPromptStatTracker
from treegrpo.algos.config import Config, ConfigError, number_or_word
from treegrpo.algos.losses import DDPOLoss, EdgeLoss, GRPOLoss, ReinforceLoss, TreeGRPOLoss
from treegrpo.algos.problem import Problem
from treegrpo.envs import (
    AdaptiveGeometricWindow,
    FixedWindow,
    GeometricWindow,
    ShiftingWindow,
    TrajectorySampler,
    Transition,
    TreeSampler,
    WindowSchedule,
)

TREE_ALGORITHMS = frozenset({"treegrpo"})


def build_window(config: Config, num_steps: int) -> WindowSchedule:
    """The SDE window schedule named by ``sampling.window``."""
    s = config.sampling
    if s.window == "fixed":
        return FixedWindow(num_steps, s.depth, s.window_start)
    if s.window == "geometric":
        return GeometricWindow(num_steps, s.depth, s.alpha, seed=config.train.seed)
    if s.window == "adaptive":
        return AdaptiveGeometricWindow(num_steps, s.depth, s.alpha, seed=config.train.seed)
    return ShiftingWindow(num_steps, s.depth, s.window_start, s.window_shift, s.window_every)


def trainable_horizon(config: Config, problem: Problem) -> int:
    """The number of leading steps with noise, where windows of SDE steps may lie (one-line errors
    when there are none, or fewer than the window's depth)."""
    s, transition = config.sampling, problem.transition
    check_step_numbers(config, transition)
    horizon = transition.trainable_horizon()
    if horizon == 0:
        raise ConfigError(f"sampling.noise_level: {s.noise_level} leaves every step of sampling.transition="
                          f"{s.transition} deterministic, so no edge can be trained; use a level > 0 (Flow-GRPO: 0.7)")
    windowed = config.loss.algorithm in TREE_ALGORITHMS or config.loss.algorithm == "mixgrpo" or s.sde_steps == "window"
    if windowed and s.depth > horizon:
        raise ConfigError(f"sampling.depth: {s.depth} SDE steps do not fit in the {horizon} of {transition.num_steps} "
                          f"steps that have noise under sampling.transition={s.transition}; use depth <= {horizon}")
    starts_fixed = (config.loss.algorithm in TREE_ALGORITHMS and s.window in ("fixed", "shifting")) or (
        windowed and config.loss.algorithm not in TREE_ALGORITHMS)
    if starts_fixed and s.window_start + s.depth > horizon:
        raise ConfigError(f"sampling.window_start: a window of {s.depth} steps from step {s.window_start} reaches a "
                          f"step without noise (only the first {horizon} of {transition.num_steps} have noise); use "
                          f"window_start <= {horizon - s.depth}")
    return horizon


def check_step_numbers(config: Config, transition: Transition | None = None) -> None:
    """Refuse settings whose SDE steps are not finite numbers (a huge noise level, a shift so small
    that ``t`` underflows), before any model loads: the steps of ``transition``, or of the one the
    config describes on a default scheduler, are evaluated at ``x = v = 1``."""
    s = config.sampling
    if transition is None:
        from treegrpo.envs import DDIM, DDIMTimesteps, FlowTimesteps, flow_transition

        if s.transition == "ddim":
            from diffusers import DDIMScheduler

            transition = DDIM(DDIMTimesteps.from_scheduler(DDIMScheduler(), s.num_steps), eta=s.noise_level)
        else:
            timesteps = FlowTimesteps.named(s.schedule, s.num_steps, shift=s.shift)
            transition = flow_transition(s.transition, timesteps, s.noise_level, cps_scoring=s.cps_scoring)
    step = torch.arange(transition.num_steps)
    ones = torch.ones(step.shape[0], 4)
    mean, std = transition.mean_std(ones, ones, step)
    std = torch.as_tensor(std).expand(step.shape[0], 1) if torch.as_tensor(std).dim() else torch.as_tensor(std)
    bad = ~(torch.isfinite(mean).all(-1) & torch.isfinite(std).reshape(step.shape[0], -1).all(-1))
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        raise ConfigError(f"sampling.noise_level: {s.noise_level} with sampling.shift={s.shift} gives a non-finite SDE "
                          f"step at step {first} of sampling.transition={s.transition} (its std or mean overflows); "
                          "use a noise level near 1 (Flow-GRPO: 0.7) and a shift near 1-3")


def build_sampler(config: Config, problem: Problem) -> TreeSampler | TrajectorySampler:
    """TreeGRPO's tree sampler, or the baselines' trajectory sampler (all steps or a sliding window).

    Windows lie in the steps with noise (:func:`trainable_horizon`): a zero-std step, such as CPS
    into ``t = 0``, never carries a trained edge."""
    s, algorithm = config.sampling, config.loss.algorithm
    num_steps = trainable_horizon(config, problem)
    max_batch = s.max_batch or None
    if algorithm in TREE_ALGORITHMS:
        return TreeSampler(problem.model, problem.transition, branching=s.branching, depth=s.depth,
                           trees_per_prompt=s.trees_per_prompt, window=build_window(config, num_steps),
                           max_batch=max_batch, static_shapes=s.static_shapes)
    if algorithm == "mixgrpo" or s.sde_steps == "window":
        window: Any = ShiftingWindow(num_steps, s.depth, s.window_start, s.window_shift, s.window_every)
    else:
        window = "all"
    return TrajectorySampler(problem.model, problem.transition, group_size=s.group_size, sde_steps=window,
                             shared_noise=s.shared_noise, max_batch=max_batch, static_shapes=s.static_shapes)


def build_advantage(config: Config) -> GroupAdvantage | PerPromptStatTracker:
    """Group-normalised backup (tree estimator for TreeGRPO, trajectory credit otherwise), or DDPO's tracker."""
    c = config.loss
    weights = c.reward_weights or None
    if c.algorithm == "ddpo":
        return PerPromptStatTracker(c.tracker_buffer, c.tracker_min_count, reward_weights=weights)
    if c.algorithm in TREE_ALGORITHMS:
        options = {"temperature": number_or_word(c.temperature)} if c.estimator == "logprob_softmax" else {}
        return GroupAdvantage(c.estimator, reward_weights=weights, aggregate=c.reward_aggregation, **options)
    return GroupAdvantage("leaf", reward_weights=weights, aggregate=c.reward_aggregation)


def build_loss(config: Config, problem: Problem, reference: Any = None) -> EdgeLoss:
    """The objective named by ``loss.algorithm``, with ``loss.kl_coef`` to ``reference`` for every algorithm."""
    c = config.loss
    kl = {"kl_coef": c.kl_coef, "reference": reference if c.kl_coef > 0 else None}
    if c.algorithm == "treegrpo":
        return TreeGRPOLoss(problem.model, problem.transition, clip_range=c.clip_range, **kl)
    if c.algorithm in ("grpo", "mixgrpo"):
        return GRPOLoss(problem.model, problem.transition, clip_range=c.clip_range, **kl)
    if c.algorithm == "ddpo":
        return DDPOLoss(problem.model, problem.transition, clip_range=c.clip_range, **kl)
    return ReinforceLoss(problem.model, problem.transition, **kl)
