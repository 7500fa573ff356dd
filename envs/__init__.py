"""treegrpo.envs: denoising models, stochastic transitions, window schedules and samplers.

Importable as ``treegrpo.envs`` (the source lives in the top-level ``envs/`` folder).
Denoising is a stateless TorchRL environment (:class:`DenoisingEnv`) driven by a denoiser and its
transition as the policy (:class:`DenoisingPolicy`); :func:`tree_rollout` is the one sampling
engine, and the samplers configure it. They return :class:`treeadv.Tree` forests whose edges are
SDE steps; :func:`parent_batch` groups their edges by parent into a :class:`ParentBatch`, the one
contract every loss in :mod:`treegrpo.algos` and its trainer read.
"""

from __future__ import annotations

from treegrpo.envs.analytic import GaussianData
from treegrpo.envs.edges import (
    OnPolicyError,
    check_ode_limit,
    check_on_policy,
    edge_log_probs,
    importance_ratios,
    parent_batch,
    rescore_children,
)
from treegrpo.envs.env import DenoisingEnv, DenoisingPolicy, gather_cond
from treegrpo.envs.flux import FluxDenoiser
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
from treegrpo.envs.numerics import (
    OnPolicyStats,
    assume_rounding,
    on_policy_stats,
    ratio_sensitivity,
    rounding_unit,
)
from treegrpo.envs.parent_batch import CondTable, ParentBatch
from treegrpo.envs.precision import model_precision
from treegrpo.envs.rollout import Rollout, concat_rollouts, tree_nfe, tree_rollout
from treegrpo.envs.sampler import BranchSampler, TrajectorySampler, TreeSampler, sample_forest
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
    "BranchSampler",
    "CallableDenoiser",
    "CondTable",
    "DDIMTimesteps",
    "DanceSDE",
    "Denoiser",
    "DenoisingEnv",
    "DenoisingPolicy",
    "FixedWindow",
    "FlowCPS",
    "FlowSDE",
    "FlowTimesteps",
    "FluxDenoiser",
    "GaussianData",
    "GeometricWindow",
    "GuidedDenoiser",
    "OnPolicyError",
    "OnPolicyStats",
    "ParentBatch",
    "Rollout",
    "SD3Denoiser",
    "ShiftingWindow",
    "TrajectorySampler",
    "Transition",
    "TreeSampler",
    "UNetDenoiser",
    "WindowSchedule",
    "assume_rounding",
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
    "gather_cond",
    "gaussian_kl",
    "gaussian_log_prob",
    "importance_ratios",
    "model_precision",
    "on_policy_stats",
    "parent_batch",
    "ratio_sensitivity",
    "rescore_children",
    "reward_progress_rule",
    "rounding_unit",
    "sample_forest",
    "tree_nfe",
    "tree_rollout",
    "truncated_geometric_probs",
]
