"""Pure Gaussian transition math: one denoising step as ``(mean, std)`` and its log-density.

Every function takes per-sample times as ``[B]`` tensors (or Python scalars), broadcasts them over
the latent's trailing dimensions, and computes in at least float32 whatever the model's dtype
(bf16 overflows in the ``sigma^2 / t`` terms). Notation follows docs/concepts.md, "Denoising as a decision process":
rectified flow ``x_t = (1 - t) x_0 + t eps`` with velocity ``v = eps - x_0``; time runs from
``t = 1`` (noise) to ``t = 0`` (data), so ``dt = t_next - t < 0``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def step_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the step math runs in: float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def per_sample(value: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or ``[B]`` time to ``[B, 1, ..., 1]`` matching ``like``'s rank and dtype."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        return value
    if value.dim() != 1 or value.shape[0] != like.shape[0]:
        raise ValueError(f"time: expected a scalar or a [B={like.shape[0]}] tensor, got shape {tuple(value.shape)}")
    return value.view(-1, *([1] * (like.dim() - 1)))


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduce: Reduction = "mean", batch_dims: int = 1) -> Tensor:
    """Log-density of ``x`` under ``N(mean, std^2)``, reduced over all but the first ``batch_dims``
    dimensions (``mean`` and ``std`` broadcast against ``x``).

    ``reduce="mean"`` (the peers' convention, and the default) averages the per-dimension
    log-density; ``"sum"`` gives the true joint log-density; ``"none"`` keeps every dimension.
    The mean keeps log-probs on a per-dimension scale so a softmax over siblings stays soft.
    A zero ``std`` is a point mass: log-prob 0 where ``x == mean`` and ``-inf`` elsewhere (the
    samplers never train such an edge: see :meth:`~treegrpo.envs.transitions.Transition.noisy_steps`).
    """
    dtype = step_dtype(x, mean, std)
    x, mean, std = x.to(dtype), mean.to(dtype), torch.as_tensor(std, dtype=dtype, device=x.device)
    # Branch-free (no host sync on the device): a zero std takes the point-mass value, and its
    # Gaussian term is computed with std 1 so no NaN reaches the gradient through torch.where.
    zero = std == 0
    safe_std = torch.where(zero, torch.ones_like(std), std)
    per_dim = -((x - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _HALF_LOG_2PI
    point_mass = torch.where(x == mean, 0.0, -torch.inf).to(dtype)
    per_dim = torch.where(zero, point_mass, per_dim)
    return reduce_dims(per_dim.expand_as(x), reduce, batch_dims)


def reduce_dims(per_dim: Tensor, reduce: Reduction, batch_dims: int = 1) -> Tensor:
    """Reduce per-dimension values over all but the first ``batch_dims`` dimensions by ``mean`` or
    ``sum`` (``none`` keeps them): ``[B, ...] -> [B]``, or ``[M, K, ...] -> [M, K]``."""
    if reduce == "none":
        return per_dim
    dims = tuple(range(batch_dims, per_dim.dim()))
    if reduce == "mean":
        return per_dim.mean(dim=dims)
    if reduce == "sum":
        return per_dim.sum(dim=dims)
    raise ValueError(f"reduce: expected 'mean', 'sum' or 'none', got {reduce!r}")


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor, reduce: Reduction = "mean") -> Tensor:
    """``KL(N(mean, std^2) || N(ref_mean, std^2))`` per dimension, ``(mean - ref_mean)^2 / (2 std^2)``,
    reduced over the non-batch dimensions like :func:`gaussian_log_prob` (``mean`` by default).

    Both Gaussians share the transition's std, so the KL is a scaled squared distance of the means.
    Where ``std`` is 0 (a point mass, no trained edge) the KL is taken as 0 rather than infinite.
    """
    dtype = step_dtype(mean, ref_mean, torch.as_tensor(std))
    mean, ref_mean = mean.to(dtype), ref_mean.to(dtype)
    std = torch.as_tensor(std, dtype=dtype, device=mean.device)
    zero = std == 0
    safe_std = torch.where(zero, torch.ones_like(std), std)
    per_dim = torch.where(zero, 0.0, (mean - ref_mean) ** 2 / (2 * safe_std**2)).to(dtype)
    return reduce_dims(per_dim.expand_as(mean), reduce)


def squared_error_score(x: Tensor, mean: Tensor, reduce: Reduction = "mean", batch_dims: int = 1) -> Tensor:
    """Flow-GRPO's CPS score, ``-(x - mean)^2`` reduced over dimensions: the Gaussian log-density
    without its ``1 / (2 std^2)`` scale and normaliser (so its log-ratios are ``2 std^2`` times the
    density's)."""
    dtype = step_dtype(x, mean)
    return reduce_dims(-((x.to(dtype) - mean.to(dtype)) ** 2).expand_as(x), reduce, batch_dims)


def flow_euler_step(x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """Deterministic Euler step of the probability-flow ODE ``dx = v dt``."""
    dtype = step_dtype(x, v)
    x, v = x.to(dtype), v.to(dtype)
    return x + v * (per_sample(t_next, x) - per_sample(t, x))


def flow_sde_sigma(t: Tensor, t_next: Tensor, noise_level: float) -> Tensor:
    """Flow-GRPO's diffusion coefficient ``a * sqrt(t / (1 - t))``; at ``t = 1`` it uses ``1 - t_next``."""
    denominator = torch.where(t >= 1, 1 - t_next, 1 - t)
    return noise_level * torch.sqrt(t / denominator)


def flow_sde_mean_std(
    x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float, noise_level: float
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama ``(mean, std)`` of the marginal-preserving SDE (Flow-GRPO form).

    ``mean = x + [v + sigma^2 / (2t) (x + (1 - t) v)] dt``, ``std = sigma sqrt(-dt)`` with
    ``sigma = a sqrt(t / (1 - t))``. ``noise_level = 0`` gives the Euler ODE step exactly.
    """
    dtype = step_dtype(x, v)
    x, v = x.to(dtype), v.to(dtype)
    t, t_next = per_sample(t, x), per_sample(t_next, x)
    dt = t_next - t
    sigma = flow_sde_sigma(t, t_next, noise_level)
    drift = v + sigma**2 / (2 * t) * (x + (1 - t) * v)
    return x + drift * dt, sigma * torch.sqrt(-dt)


def dance_sde_mean_std(
    x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float, eta: float
) -> tuple[Tensor, Tensor]:
    """DanceGRPO's constant-noise form: the same drift with ``g^2 = eta^2``, ``std = eta sqrt(-dt)``."""
    dtype = step_dtype(x, v)
    x, v = x.to(dtype), v.to(dtype)
    t, t_next = per_sample(t, x), per_sample(t_next, x)
    dt = t_next - t
    drift = v + eta**2 / (2 * t) * (x + (1 - t) * v)
    return x + drift * dt, eta * torch.sqrt(-dt).expand_as(t)


def flow_cps_mean_std(
    x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float, noise_level: float
) -> tuple[Tensor, Tensor]:
    """Flow-GRPO's coefficient-preserving sampler (CPS).

    ``s = t_next sin(a pi / 2)``; predict ``x0 = x - t v`` and ``x1 = x + (1 - t) v``;
    ``mean = (1 - t_next) x0 + sqrt(t_next^2 - s^2) x1``, ``std = s``.
    """
    dtype = step_dtype(x, v)
    x, v = x.to(dtype), v.to(dtype)
    t, t_next = per_sample(t, x), per_sample(t_next, x)
    std = t_next * math.sin(noise_level * math.pi / 2)
    x0_hat, x1_hat = x - t * v, x + (1 - t) * v
    mean = (1 - t_next) * x0_hat + torch.sqrt(torch.clamp(t_next**2 - std**2, min=0)) * x1_hat
    return mean, std


def ddim_mean_std(
    x: Tensor, eps: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float, eta: float
) -> tuple[Tensor, Tensor]:
    """DDIM step with stochasticity ``eta`` for epsilon prediction (the DDPO form).

    ``sigma^2 = eta^2 (1 - abar') / (1 - abar) (1 - abar / abar')``, ``x0 = (x - sqrt(1 - abar) eps) /
    sqrt(abar)``, ``mean = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps``, ``std = sigma``.
    """
    dtype = step_dtype(x, eps)
    x, eps = x.to(dtype), eps.to(dtype)
    abar, abar_prev = per_sample(alpha_bar, x), per_sample(alpha_bar_prev, x)
    variance = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    std = eta * torch.sqrt(torch.clamp(variance, min=0))
    x0_hat = (x - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
    mean = torch.sqrt(abar_prev) * x0_hat + torch.sqrt(torch.clamp(1 - abar_prev - std**2, min=0)) * eps
    return mean, std


def sample_gaussian(
    mean: Tensor, std: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``mean + std * noise`` (fresh standard noise unless given); returns ``(sample, noise)``."""
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    elif noise.shape != mean.shape:
        raise ValueError(f"noise: expected shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
    return mean + std * noise.to(mean.dtype), noise


def flow_sde_step(
    x: Tensor,
    v: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    noise_level: float,
    noise: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    reduce: Reduction = "mean",
) -> tuple[Tensor, Tensor]:
    """One SDE step of rectified flow: returns ``(x_next, log_prob)`` with ``log_prob`` ``[B]``.

    ``log_prob`` is the density of the sample actually drawn under the step's Gaussian, reduced
    over non-batch dims by ``reduce``. Pass ``noise`` (standard normal, shape of ``x``) to make
    the step deterministic; at ``noise_level = 0`` the log-prob is undefined, use the ODE step.
    """
    mean, std = flow_sde_mean_std(x, v, t, t_next, noise_level)
    x_next, _ = sample_gaussian(mean, std, noise, generator)
    return x_next, gaussian_log_prob(x_next, mean, std, reduce)
