"""How far an importance ratio moves from rounding alone, and the statistics that tell rounding from a bug.

Sampling and the loss evaluate the same model on the same rows, but rarely in the same batch: the
sampler steps a whole frontier, the loss a minibatch of parents. CPU kernels may or may not give a
row the same bits in both; cuBLAS and cuDNN pick other kernels for other shapes, and TF32 and bf16
round at ``2^-10`` and ``2^-7`` (their float spacing at 1). So the ratio of an edge is 1 before any update only up to rounding.

Derivation (docs/algos.md, "On-policy statistics on real hardware"). The loss's mean at a parent is
``mu + delta``, where ``delta`` is what rounding changed. To first order the edge's log-ratio is

    log rho = score(x; mu + delta) - score(x; mu) ~= sum_i g_i delta_i,   g_i = d score / d mu_i at the child x.

Rounding does not know the child's noise: ``x = mu + std z`` with ``z`` drawn after ``mu`` was
computed, so whatever the pattern of ``delta`` (correlated or not), the log-ratio has spread
``sqrt(sum_i g_i^2 delta_i^2)``. With a per-element error of ``u a_i`` (``u`` one ulp of the
arithmetic at 1: a result that rounds differently is off by about that; ``a_i`` the size of the
numbers element ``i`` is computed from) the spread is ``u * S`` with the edge's **sensitivity**

    S = sqrt(sum_i (g_i a_i)^2)      (Gaussian density, mean over D dimensions: S ~= rms(a) / (std sqrt(D))).

Two roundings meet in the mean (:func:`edge_sensitivity`): the model's output, at the run's
arithmetic (``a_i = |mu_i - mu_0,i|``, its contribution to the mean), and the step math, always
float32 (``a_i = |mu_0,i| + |mu_i - mu_0,i|``); their spreads add in quadrature.

``S`` grows as ``1/std`` (the last flow-SDE step is the most sensitive) and falls as ``1/sqrt(D)``
(why a 16x64x64 latent absorbs rounding that a 2-d toy cannot). Each edge's ``z = |log rho| / (u S)``
is then about a standard normal times (actual error / ``u``): rounding keeps the largest ``z`` of a
batch within :data:`ROUNDING_Z`; a wrong model, dropout left on, or inputs the loss does not see
move the mean by far more than rounding does. Edges outside the clip range before any update are
reported separately: rounding can put them there when the clip range is below the rounding noise
(bf16 with clip 1e-4), and PPO then treats them as off-policy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from treegrpo.errors import TreegrpoWarning

if TYPE_CHECKING:
    from treegrpo.envs.transitions import Transition

UNIT_ROUNDOFF: dict[str, float] = {"fp32": 2.0**-23, "tf32": 2.0**-10, "fp16": 2.0**-10, "bf16": 2.0**-7}
"""``u`` of each arithmetic a policy forward may run in: the spacing of its floats at 1 (one ulp, twice
the unit roundoff), the size of a last-bit difference between two kernels."""

ROUNDING_Z = 30.0
"""Largest ``|log rho| / (u S)`` still called rounding: a standard normal's maximum over 10^6 edges is
about 5, which leaves room for kernels whose error is several ulps (deep accumulations). Measured
by ``benchmarks/onpolicy_numerics.py``: at most 6.2 under simulated TF32 and bf16 rounding, on
digits, toy2d and SD3.5-sized latents."""

class OnPolicyWarning(TreegrpoWarning):
    """Sampling and the loss disagree beyond rounding, or rounding exceeds the clip range (``train.check_on_policy=warn``)."""


LOG_PROB_ULPS = 4.0
"""Ulps of its own size a float32 log-prob (a reduction over the latent) may be off by."""

Z_CAP = 1e12  # rounding_z is reported up to this (finite, so it can go into JSON and checkpoints)

_assumed: list[float] = []  # units declared by assume_rounding (innermost last)


@contextlib.contextmanager
def assume_rounding(unit: float) -> Iterator[None]:
    """Declare that policy forwards round at ``unit`` (relative) on top of what the precision implies:
    what a GPU's kernels, or :func:`treegrpo.testing.simulated_gpu_numerics`, do. The on-policy
    statistics then measure deviations against it."""
    if not (unit > 0 and math.isfinite(unit)):
        raise ValueError(f"unit: expected a finite number > 0, got {unit!r}")
    _assumed.append(float(unit))
    try:
        yield
    finally:
        _assumed.pop()


def arithmetic(precision: str, device: torch.device | str) -> str:
    """The arithmetic a policy forward under ``precision`` runs in on ``device``: ``bf16`` under
    bf16 autocast; on CUDA, ``tf32`` for fp32 when TF32 is allowed for matmuls or convolutions
    (cuDNN allows it by default); otherwise ``fp32``."""
    if precision == "bf16":
        return "bf16"
    if torch.device(device).type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
        or torch.get_float32_matmul_precision() != "highest"):
        return "tf32"
    return "fp32"


def rounding_unit(precision: str, device: torch.device | str) -> float:
    """``u`` for the on-policy statistics: the arithmetic's unit roundoff, or a larger declared one."""
    return max([UNIT_ROUNDOFF[arithmetic(precision, device)], *_assumed])


def autocast_precision(device: torch.device | str) -> str:
    """The precision a forward on ``device`` runs under right now: ``bf16``/``fp16`` inside autocast, else ``fp32``.
    Samplers record it so a loss scoring under another precision is named, not guessed."""
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        return "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(torch.get_autocast_dtype(device_type), "fp32")


def _score_and_gradient(transition: Transition, sample: Tensor, mean: Tensor,
                        std: Tensor | float) -> tuple[Tensor, Tensor]:
    """Each child's score ``[M, K]`` and its derivative by its parent's mean ``[M, K, ...]`` (float64, detached)."""
    std = torch.as_tensor(std, device=mean.device).detach().to(torch.float64)
    std = std.unsqueeze(1) if std.dim() > 0 else std  # [M, 1, ...] against the children
    with torch.enable_grad():
        mu = mean.detach().to(torch.float64).unsqueeze(1).expand_as(sample).clone().requires_grad_(True)  # [M, K, ...]
        scored = transition.score(sample.detach().to(torch.float64), mu, std, batch_dims=2)  # [M, K]
        (gradient,) = torch.autograd.grad(scored.sum(), mu)  # one mean per child: its own derivative
    return scored.detach(), gradient


def _sensitivity(gradient: Tensor, sizes: Tensor) -> Tensor:
    """``sqrt(sum_i (gradient_i * a_i)^2)`` per child: ``gradient [M, K, ...]``, ``sizes [M, 1, ...]``."""
    return (gradient * sizes).flatten(2).square().sum(-1).sqrt()


def ratio_sensitivity(transition: Transition, sample: Tensor, mean: Tensor, std: Tensor | float,
                      scale: Tensor | None = None) -> Tensor:
    """``[M, K]`` sensitivity ``S = sqrt(sum_i (d score / d mu_i * a_i)^2)`` of each child's score
    (``transition.score``: the density, CPS's squared error, sum or mean reduced) to a relative
    rounding of its parent's mean ``[M, ...]``, element ``i`` rounded at the size ``a_i``
    (``scale [M, ...]`` or ``[M, ..., n]`` for ``n`` scales at once, giving ``[M, K, n]``; default
    ``|mean|``); float64, no gradient reaches the inputs."""
    _, gradient = _score_and_gradient(transition, sample, mean, std)
    sizes = (mean if scale is None else scale).detach().to(torch.float64).unsqueeze(1)  # [M, 1, ...(, n)]
    if scale is None:
        return _sensitivity(gradient, sizes.abs())
    if scale.dim() == mean.dim() + 1:
        return torch.stack([_sensitivity(gradient, size) for size in sizes.unbind(-1)], -1)
    return _sensitivity(gradient, sizes)


def edge_sensitivity(transition: Transition, latent: Tensor, sample: Tensor, mean: Tensor, std: Tensor | float,
                     step: Tensor) -> Tensor:
    """``[M, K, 2]``: each child's :func:`ratio_sensitivity` to rounding of the model's output
    (its part of the mean, ``mu - mu_0``, ``mu_0`` the mean at a zero output) and to rounding of
    the float32 step math (``|mu_0| + |mu - mu_0|``, and the log-prob's own value: a float32 mean
    of ``D`` terms is off by a few ulps of itself, :data:`LOG_PROB_ULPS`). The mean is affine in
    the model output (every shipped transition), so ``mu - mu_0`` is exactly where the model's
    rounding enters, scaled by the step; the step math itself runs in float32 whatever the model's
    precision. The children are scored once, for both the derivative and the value."""
    latent64 = latent.detach().to(torch.float64)
    base, _ = transition.mean_std(latent64, torch.zeros_like(latent64), step)
    model_part = (mean.detach().to(torch.float64) - base).abs()
    scored, gradient = _score_and_gradient(transition, sample, mean, std)
    model = _sensitivity(gradient, model_part.unsqueeze(1))
    step_math = _sensitivity(gradient, (base.abs() + model_part).unsqueeze(1))
    return torch.stack([model, torch.hypot(step_math, LOG_PROB_ULPS * scored.abs())], -1)


def rounding_spread(sensitivity: Tensor, unit: float) -> Tensor:
    """``[...]`` the log-ratio spread rounding makes: ``u S`` for one sensitivity, and for
    :func:`edge_sensitivity`'s pair ``sqrt((u S_model)^2 + (u_fp32 S_step)^2)``."""
    sensitivity = sensitivity.to(torch.float64)
    if sensitivity.shape[-1:] == (2,) and sensitivity.dim() >= 3:
        return torch.hypot(unit * sensitivity[..., 0], UNIT_ROUNDOFF["fp32"] * sensitivity[..., 1])
    return unit * sensitivity


@dataclass(frozen=True)
class OnPolicyStats:
    """Ratio statistics of the edges scored before any update.

    ``max_deviation``: largest ``|rho - 1|``; ``ratio_std``: std of ``rho`` over the edges;
    ``clipped_fraction``: share of edges outside the clip range (``nan`` without one);
    ``rounding_z``: largest ``|log rho| / (u S)`` (``nan`` without sensitivities); ``unit``: the
    ``u`` used; ``edges``: how many edges were seen.
    """

    max_deviation: float
    ratio_std: float
    clipped_fraction: float
    rounding_z: float
    unit: float
    edges: int

    @property
    def is_rounding(self) -> bool:
        """Whether every deviation is within what rounding at ``unit`` makes (unknown counts as yes)."""
        return not self.rounding_z > ROUNDING_Z

    def metrics(self) -> dict[str, float]:
        """The ``onpolicy/*`` scalars logged each iteration."""
        out = {"onpolicy/max_deviation": self.max_deviation, "onpolicy/ratio_std": self.ratio_std}
        for name, value in (("rounding_z", self.rounding_z), ("clipped_fraction", self.clipped_fraction)):
            if not math.isnan(value):  # unknown without sensitivities or a clip range
                out[f"onpolicy/{name}"] = value
        return out


def on_policy_stats(log_ratio: Tensor, mask: Tensor, sensitivity: Tensor | None, unit: float,
                    clip: tuple[float, float] | None = None) -> OnPolicyStats:
    """Statistics of ``log_ratio [M, K]`` over the real edges ``mask``; ``clip = (low, high)`` bounds
    ``rho`` to ``[1 - low, 1 + high]``; ``sensitivity`` from :func:`ratio_sensitivity`."""
    log_ratio = log_ratio.detach().to(torch.float64)[mask]
    if log_ratio.numel() == 0:
        return OnPolicyStats(0.0, 0.0, 0.0 if clip else math.nan, 0.0, unit, 0)
    ratio = log_ratio.clamp(max=700.0).exp()  # finite even for a wild bug (float64 overflows past 709)
    clipped = math.nan
    if clip is not None:
        clipped = float(((ratio < 1 - clip[0]) | (ratio > 1 + clip[1])).double().mean())
    z = math.nan
    if sensitivity is not None:
        scale = rounding_spread(sensitivity.detach(), unit)[mask]
        # an edge with no sensitivity (a zero mean) can only deviate by a bug: any deviation counts as beyond rounding
        z = float(torch.where(scale > 0, log_ratio.abs() / scale.clamp(min=1e-300),
                              torch.where(log_ratio == 0, 0.0, Z_CAP)).clamp(max=Z_CAP).max())
    return OnPolicyStats(max_deviation=float((ratio - 1).abs().max()), ratio_std=float(ratio.std(unbiased=False)),
                         clipped_fraction=clipped, rounding_z=z, unit=unit, edges=int(log_ratio.numel()))


def active_dropout(model: nn.Module) -> list[str]:
    """Names of dropout modules with ``p > 0`` in train mode under ``model``: each makes the loss's
    forward differ from the sampler's (which runs in eval mode)."""
    return [name or type(model).__name__ for name, module in model.named_modules()
            if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0]


def diagnose(stats: OnPolicyStats, *, precision: str, sampled_precision: str | None = None,
             dropout: Sequence[str] = (), other_model: str | None = None,
             where: str = "before any update") -> str | None:
    """One line naming the likely cause when the statistics are not rounding, else ``None``.

    A structural cause is named whatever the size of the deviation (the rollout was sampled under
    another precision than the loss scores under; ``other_model``: the loss scores with another
    module than the sampler's; dropout active in the loss's forward). Otherwise the size of the deviation
    decides: within bf16 rounding in an IEEE fp32 run points to a precision mismatch somewhere
    (autocast, TF32, bf16 weights); beyond it, to another model or other inputs. The message
    starts with the finding's name and a colon.
    """
    seen = (f"max |ratio - 1| = {stats.max_deviation:.3g} {where}, {stats.rounding_z:.3g} times the rounding scale "
            f"of {precision} arithmetic (u = {stats.unit:.2g}; rounding stays within {ROUNDING_Z:g})")
    if sampled_precision is not None and sampled_precision != precision:
        return (f"precision mismatch: the rollout was sampled under {sampled_precision} and is scored under "
                f"precision={precision} ({seen}); sample and score inside one model_precision context")
    if other_model is not None:
        return f"other weights: {other_model} ({seen})"
    if dropout:
        shown = ", ".join(dropout[:3]) + (f" and {len(dropout) - 3} more" if len(dropout) > 3 else "")
        return (f"dropout active in the loss's forward ({shown}; {seen}); sampling runs in eval mode, so set "
                "their p to 0 or keep the model in eval mode for the update")
    if stats.is_rounding:
        return None
    if stats.unit < UNIT_ROUNDOFF["tf32"] and stats.rounding_z * stats.unit <= ROUNDING_Z * UNIT_ROUNDOFF["bf16"]:
        return (f"likely a precision mismatch: deviations of the size TF32 or bf16 rounding makes in an IEEE fp32 "
                f"run ({seen}); something samples or scores in lower precision (autocast, TF32, bf16 weights)")
    return (f"sampling and the loss disagree: {seen}; another model or other weights, or inputs the loss "
            "does not see (conditioning, timesteps, latents)")
