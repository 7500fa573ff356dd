"""``treegrpo.algos``: losses (TreeGRPO, trajectory GRPO, MixGRPO, DDPO-PPO, REINFORCE) and the trainer.

Installed as ``treegrpo.algos`` (the folder is ``algos/`` at the repository root). Losses read a
parent batch (:func:`parent_batch`) carrying per-edge advantages from :mod:`treeadv`; they never
walk a tree. :class:`Trainer` runs any of them, on one process or under ``torchrun``
(:mod:`treegrpo.algos.distributed`); :mod:`treegrpo.algos.cli` is the ``treegrpo`` command.
"""

from __future__ import annotations

from treegrpo.algos.advantages import GroupAdvantage, PerPromptStatTracker, clip_advantages, combine_rewards
from treegrpo.algos.batch import count_edges, parent_batch, select_steps
from treegrpo.algos.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from treegrpo.algos.config import Config, ConfigError
from treegrpo.algos.distributed import Ranks, gather_rows, init_distributed, wrap_for_training
from treegrpo.algos.losses import (
    DDPOLoss,
    EdgeLoss,
    GRPOLoss,
    PPOClipLoss,
    ReinforceLoss,
    TreeGRPOLoss,
    ppo_clip_objective,
    total_loss,
)
from treegrpo.algos.model_setup import adapters_disabled, apply_lora, compile_model, enable_gradient_checkpointing
from treegrpo.algos.problem import Problem, toy2d_problem
from treegrpo.algos.recipes import build_advantage, build_loss, build_sampler, build_window
from treegrpo.algos.trainer import NonFiniteTrainingError, Trainer

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DDPOLoss",
    "EdgeLoss",
    "GRPOLoss",
    "GroupAdvantage",
    "NonFiniteTrainingError",
    "PPOClipLoss",
    "PerPromptStatTracker",
    "Problem",
    "Ranks",
    "ReinforceLoss",
    "Trainer",
    "TreeGRPOLoss",
    "adapters_disabled",
    "apply_lora",
    "build_advantage",
    "build_loss",
    "build_sampler",
    "build_window",
    "clip_advantages",
    "combine_rewards",
    "compile_model",
    "count_edges",
    "enable_gradient_checkpointing",
    "gather_rows",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "parent_batch",
    "ppo_clip_objective",
    "save_checkpoint",
    "select_steps",
    "total_loss",
    "toy2d_problem",
    "wrap_for_training",
]
