"""Each algorithm as a recipe: which sampler, which advantage, which loss, from one :class:`Config`.

This is the only place the algorithm name matters; everything downstream reads the same parent
batch. Swapping algorithms is ``loss.algorithm = ...`` in the config, or passing a different loss
object to the trainer.
"""

from __future__ import annotations

from typing import Any

from treegrpo.algos.advantages import GroupAdvantage, PerPromptStatTracker
from treegrpo.algos.config import Config
from treegrpo.algos.losses import DDPOLoss, EdgeLoss, GRPOLoss, ReinforceLoss, TreeGRPOLoss
from treegrpo.algos.problem import Problem
from treegrpo.envs import (
    AdaptiveGeometricWindow,
    FixedWindow,
    GeometricWindow,
    ShiftingWindow,
    TrajectorySampler,
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


def build_sampler(config: Config, problem: Problem) -> TreeSampler | TrajectorySampler:
    """TreeGRPO's tree sampler, or the baselines' trajectory sampler (all steps or a sliding window)."""
    s, algorithm = config.sampling, config.loss.algorithm
    num_steps = problem.transition.num_steps
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
                             max_batch=max_batch, static_shapes=s.static_shapes)


def build_advantage(config: Config) -> GroupAdvantage | PerPromptStatTracker:
    """Group-normalised backup (tree estimator for TreeGRPO, trajectory credit otherwise), or DDPO's tracker."""
    c = config.loss
    weights = c.reward_weights or None
    if c.algorithm == "ddpo":
        return PerPromptStatTracker(c.tracker_buffer, c.tracker_min_count, reward_weights=weights)
    if c.algorithm in TREE_ALGORITHMS:
        options = {"temperature": c.temperature} if c.estimator == "logprob_softmax" else {}
        return GroupAdvantage(c.estimator, reward_weights=weights, aggregate=c.reward_aggregation, **options)
    return GroupAdvantage("leaf", reward_weights=weights, aggregate=c.reward_aggregation)


def build_loss(config: Config, problem: Problem, reference: Any = None) -> EdgeLoss:
    """The objective named by ``loss.algorithm``."""
    c = config.loss
    if c.algorithm == "treegrpo":
        return TreeGRPOLoss(problem.model, problem.transition, clip_range=c.clip_range)
    if c.algorithm in ("grpo", "mixgrpo"):
        return GRPOLoss(problem.model, problem.transition, clip_range=c.clip_range, kl_coef=c.kl_coef,
                        reference=reference if c.kl_coef > 0 else None)
    if c.algorithm == "ddpo":
        return DDPOLoss(problem.model, problem.transition, clip_range=c.clip_range)
    return ReinforceLoss(problem.model, problem.transition)
