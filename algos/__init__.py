"""``treegrpo.algos``: losses (PPO-clip for TreeGRPO, GRPO, MixGRPO and DDPO; REINFORCE) and the trainer.

Installed as ``treegrpo.algos`` (the folder is ``algos/`` at the repository root). Losses read a
parent batch (:func:`treegrpo.envs.parent_batch`) carrying per-edge advantages from
:mod:`treeadv`; they never walk a tree. :func:`register_loss` makes a new loss selectable as
``loss.algorithm``. :class:`Trainer` runs any of them, on one process or under ``torchrun``
(:mod:`treegrpo.algos.distributed`); :func:`run` is ``treegrpo train``.
"""

from __future__ import annotations

from treegrpo.algos.advantages import GroupAdvantage, PerPromptStatTracker, clip_advantages, combine_rewards
from treegrpo.algos.batch import count_edges, select_steps
from treegrpo.algos.build import build_advantage, build_loss, build_sampler, build_window
from treegrpo.algos.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from treegrpo.algos.distributed import Ranks, gather_rows, init_distributed, wrap_for_training
from treegrpo.algos.entrypoints import run, run_eval
from treegrpo.algos.interfaces import EdgeBatchError, EdgeLoss
from treegrpo.algos.losses import (
    LOSSES,
    PPOClipLoss,
    ReinforceLoss,
    ppo_clip_objective,
    ratio_diagnostics,
    register_loss,
    total_loss,
)
from treegrpo.algos.model_setup import (
    adapters_disabled,
    apply_lora,
    compile_model,
    enable_gradient_checkpointing,
    kl_reference,
)
from treegrpo.algos.trainer import NonFiniteTrainingError, Trainer
from treegrpo.algos.update import EMA, Optimisation, optimise
from treegrpo.config import Config, ConfigError

__all__ = [
    "EMA",
    "LOSSES",
    "CheckpointError",
    "Config",
    "ConfigError",
    "EdgeBatchError",
    "EdgeLoss",
    "GroupAdvantage",
    "NonFiniteTrainingError",
    "Optimisation",
    "PPOClipLoss",
    "PerPromptStatTracker",
    "Ranks",
    "ReinforceLoss",
    "Trainer",
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
    "kl_reference",
    "latest_checkpoint",
    "load_checkpoint",
    "optimise",
    "ppo_clip_objective",
    "ratio_diagnostics",
    "register_loss",
    "run",
    "run_eval",
    "save_checkpoint",
    "select_steps",
    "total_loss",
    "wrap_for_training",
]
