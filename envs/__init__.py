"""treegrpo.envs: denoising models, stochastic transitions, window schedules and samplers.

Importable as ``treegrpo.envs`` (the source lives in the top-level ``envs/`` folder).
Samplers return :class:`treeadv.Tree` forests whose edges are SDE steps, the one format every
loss in :mod:`treegrpo.algos` reads; :class:`DenoisingEnv` is the TorchRL-native path.
"""

from __future__ import annotations

from treegrpo.envs.analytic import GaussianData
from treegrpo.envs.edges import (
    OnPolicyError,
    check_ode_limit,
    check_on_policy,
    edge_log_probs,
    importance_ratios,
    tree_edges,
)
from treegrpo.envs.env import DenoisingEnv, DenoisingPolicy
from treegrpo.envs.gaussian import (
    dance_sde_mean_std,
    ddim_mean_std,
    flow_cps_mean_std,
    flow_euler_step,
    flow_sde_mean_std,
    flow_sde_step,
    gaussian_kl,
    gaussian_log_prob,
)
from treegrpo.envs.models import CallableDenoiser, Denoiser, GuidedDenoiser, SD3Denoiser, UNetDenoiser
from treegrpo.envs.precision import model_precision
from treegrpo.envs.sampler import Rollout, TrajectorySampler, TreeSampler, concat_rollouts, sample_forest, tree_nfe
from treegrpo.envs.timesteps import DDIMTimesteps, FlowTimesteps
from treegrpo.envs.transitions import DDIM, DanceSDE, FlowCPS, FlowSDE, Transition, flow_transition
from treegrpo.envs.windows import (
    AdaptiveGeometricWindow,
    FixedWindow,
    GeometricWindow,
    ShiftingWindow,
    WindowSchedule,
    reward_progress_rule,
    truncated_geometric_probs,
)

__all__ = [
    "DDIM",
    "AdaptiveGeometricWindow",
    "CallableDenoiser",
    "DDIMTimesteps",
    "DanceSDE",
    "Denoiser",
    "DenoisingEnv",
    "DenoisingPolicy",
    "FixedWindow",
    "FlowCPS",
    "FlowSDE",
    "FlowTimesteps",
    "GaussianData",
    "GeometricWindow",
    "GuidedDenoiser",
    "OnPolicyError",
    "Rollout",
    "SD3Denoiser",
    "ShiftingWindow",
    "TrajectorySampler",
    "Transition",
    "TreeSampler",
    "UNetDenoiser",
    "WindowSchedule",
    "check_ode_limit",
    "check_on_policy",
    "concat_rollouts",
    "dance_sde_mean_std",
    "ddim_mean_std",
    "edge_log_probs",
    "flow_cps_mean_std",
    "flow_euler_step",
    "flow_sde_mean_std",
    "flow_sde_step",
    "flow_transition",
    "gaussian_kl",
    "gaussian_log_prob",
    "importance_ratios",
    "model_precision",
    "reward_progress_rule",
    "sample_forest",
    "tree_edges",
    "tree_nfe",
    "truncated_geometric_probs",
]
