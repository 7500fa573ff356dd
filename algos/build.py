"""Each algorithm's recipe (:mod:`treegrpo.recipes`) turned into objects: sampler, advantage, loss.

This is the only place a recipe becomes code; everything downstream reads the same parent batch.
Swapping algorithms is ``loss.algorithm = ...`` in the config, registering a new loss
(:func:`~treegrpo.algos.losses.register_loss`), or passing a different loss object to the trainer.
"""

from __future__ import annotations

from typing import Any

from treegrpo.algos.advantages import DepthNormalizedAdvantage, GroupAdvantage, PerPromptStatTracker
from treegrpo.algos.interfaces import Advantage, EdgeLoss, Sampler
from treegrpo.algos.losses import loss_class
from treegrpo.config import Config, ConfigError
from treegrpo.envs import (
    AdaptiveGeometricWindow,
    BranchSampler,
    FixedWindow,
    GeometricWindow,
    ShiftingWindow,
    TrajectorySampler,
    Transition,
    TreeSampler,
    WindowSchedule,
)
from treegrpo.problems import Problem
from treegrpo.problems.build import check_step_numbers
from treegrpo.recipes import sliding_window, window_start_fixed, windowed


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


def build_sliding_window(config: Config, num_steps: int) -> WindowSchedule:
    """The sliding window of trajectory algorithms: wrapping (``sampling.slide=wrap``) or MixGRPO's,
    which shrinks near the end of its sweep and is empty before it restarts (``mixgrpo``)."""
    s = config.sampling
    if s.slide == "mixgrpo":
        from treegrpo.envs.windows import MixGRPOWindow

        return MixGRPOWindow(num_steps, s.depth, start=s.window_start, shift=s.window_shift, every=s.window_every)
    return ShiftingWindow(num_steps, s.depth, s.window_start, s.window_shift, s.window_every)


def run_transition(config: Config, problem: Problem) -> Transition:
    """The transition samplers and losses use: the problem's, with BranchGRPO's split steps' noise
    widened by ``sampling.split_noise_scale`` (sampled and scored with the wider std)."""
    s = config.sampling
    if config.loss.recipe.sampler != "branch" or s.split_noise_scale == 1:
        return problem.transition
    return problem.transition.with_noise_scale({step: s.split_noise_scale for step in s.split_steps})


def noisy_steps(config: Config, transition: Transition) -> list[int]:
    """The steps where this run may sample an SDE: the transition's noisy steps, less the last step
    when ``sampling.last_step=ode`` makes it deterministic (DanceGRPO, MixGRPO)."""
    last = transition.num_steps - 1
    return [step for step in transition.noisy_steps() if not (config.sampling.last_step == "ode" and step == last)]


def trainable_horizon(config: Config, problem: Problem) -> int:
    """The number of leading steps with noise, where windows of SDE steps may lie (one-line errors
    when there are none, or fewer than the window's depth)."""
    s, transition = config.sampling, problem.transition
    check_step_numbers(config, transition)
    horizon = transition.trainable_horizon()
    if s.last_step == "ode" and horizon == transition.num_steps:
        horizon -= 1  # the last step is an ODE step: never trained (DanceGRPO, MixGRPO)
    if horizon == 0:
        raise ConfigError(f"sampling.noise_level: {s.noise_level} leaves every step of sampling.transition="
                          f"{s.transition} deterministic, so no edge can be trained; use a level > 0 (Flow-GRPO: 0.7)")
    if config.loss.recipe.sampler == "branch":
        noisy = noisy_steps(config, transition)
        silent = [step for step in s.split_steps if step not in noisy]
        if not s.split_steps or silent:
            raise ConfigError(f"sampling.split_steps: {s.split_steps} needs at least one step, each with noise under "
                              f"sampling.transition={s.transition} and sampling.last_step={s.last_step}; the steps "
                              f"with noise are {noisy}")
    if windowed(config) and s.depth > horizon:
        raise ConfigError(f"sampling.depth: {s.depth} SDE steps do not fit in the {horizon} of {transition.num_steps} "
                          f"steps that have noise under sampling.transition={s.transition}; use depth <= {horizon}")
    if window_start_fixed(config) and s.window_start + s.depth > horizon:
        raise ConfigError(f"sampling.window_start: a window of {s.depth} steps from step {s.window_start} reaches a "
                          f"step without noise (only the first {horizon} of {transition.num_steps} have noise); use "
                          f"window_start <= {horizon - s.depth}")
    return horizon


def build_sampler(config: Config, problem: Problem) -> Sampler:
    """TreeGRPO's tree sampler, or the baselines' trajectory sampler (all steps or a sliding window).

    Windows lie in the steps with noise (:func:`trainable_horizon`): a zero-std step, such as CPS
    into ``t = 0``, never carries a trained edge."""
    s = config.sampling
    num_steps = trainable_horizon(config, problem)
    max_batch = s.max_batch or None
    decode = "x0" if s.last_step == "x0" else "sample"
    transition = run_transition(config, problem)
    noisy = noisy_steps(config, transition)
    recipe = config.loss.recipe
    if recipe.sampler == "branch":
        return BranchSampler(problem.model, transition, split_steps=s.split_steps, branching=s.branching,
                             sde_steps=noisy, trees_per_prompt=s.trees_per_prompt, decode=decode,
                             max_batch=max_batch, static_shapes=s.static_shapes)
    if recipe.tree:
        return TreeSampler(problem.model, transition, branching=s.branching, depth=s.depth,
                           trees_per_prompt=s.trees_per_prompt, window=build_window(config, num_steps),
                           max_batch=max_batch, static_shapes=s.static_shapes, decode=decode)
    window: Any = noisy if s.last_step == "ode" else "all"
    if sliding_window(config):
        window = build_sliding_window(config, num_steps)
    return TrajectorySampler(problem.model, transition, group_size=s.group_size, sde_steps=window,
                             shared_noise=s.shared_noise, max_batch=max_batch, static_shapes=s.static_shapes,
                             decode=decode)


def build_advantage(config: Config) -> Advantage:
    """Group-normalised backup (``loss.estimator`` for tree recipes, trajectory credit otherwise), or DDPO's tracker."""
    c = config.loss
    weights = c.reward_weights or None
    kind = c.recipe.advantage
    if kind == "tracker":
        return PerPromptStatTracker(c.tracker_buffer, c.tracker_min_count, reward_weights=weights)
    spread = {"std": c.advantage_std, "eps": None if c.advantage_eps == "auto" else float(c.advantage_eps)}
    if kind == "tree":
        return GroupAdvantage(c.estimator, reward_weights=weights, aggregate=c.reward_aggregation, **spread,
                              **c.estimator_kwargs())
    if kind == "depth":
        return DepthNormalizedAdvantage(c.estimator, reward_weights=weights, aggregate=c.reward_aggregation, **spread,
                                        **c.estimator_kwargs())
    return GroupAdvantage("leaf", reward_weights=weights, aggregate=c.reward_aggregation, **spread)


def build_loss(config: Config, problem: Problem, reference: Any = None) -> EdgeLoss:
    """The loss class of ``loss.algorithm``'s recipe, built by its ``from_config`` (with
    ``loss.kl_coef`` to ``reference`` for every algorithm)."""
    return loss_class(config.loss.algorithm).from_config(config, problem.model, run_transition(config, problem),
                                                         reference)
