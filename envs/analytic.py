"""Exact denoisers for Gaussian data: the ground truth that sampler tests compare against.

For data ``x_0 ~ N(mu, S)`` the optimal predictions are linear in ``x`` and known in closed form,
so a correct sampler must return the data's mean and covariance up to discretisation error.
``mu`` may come per row from ``cond`` (a ``[B, D]`` tensor), which gives prompt-conditional
analytic models for guidance and multi-prompt tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from treegrpo.envs.models import CallableDenoiser, Cond


class GaussianData:
    """``N(mean, cov)`` over flattened latents of dimension ``D``."""

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        dim = self.mean.numel()
        if self.cov.shape != (dim, dim):
            raise ValueError(f"cov: expected shape ({dim}, {dim}), got {tuple(self.cov.shape)}")

    def _mu(self, cond: Cond, batch: int) -> Tensor:
        if cond is None:
            return self.mean.expand(batch, -1)
        return torch.as_tensor(cond, dtype=torch.float64).reshape(batch, -1)

    def velocity(self, x: Tensor, t: Tensor, cond: Cond = None, *, time_scale: float = 1000.0) -> Tensor:
        """``E[eps - x_0 | x_t]`` for ``x_t = (1 - t) x_0 + t eps``; ``t`` arrives scaled by ``time_scale``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        s = (t.to(torch.float64) / time_scale).view(-1, 1, 1)
        eye = torch.eye(flat.shape[1], dtype=torch.float64)
        mu = self._mu(cond, x.shape[0])
        marginal = (1 - s) ** 2 * self.cov + s**2 * eye
        cross = s * eye - (1 - s) * self.cov
        centred = (flat - (1 - s[:, 0]) * mu).unsqueeze(-1)
        v = -mu + (cross @ torch.linalg.solve(marginal, centred)).squeeze(-1)
        return v.reshape(x.shape).to(x.dtype)

    def epsilon(self, x: Tensor, t: Tensor, cond: Cond, alphas_cumprod: Tensor) -> Tensor:
        """``E[eps | x_t]`` for ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` with ``a = alphas_cumprod[t]``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        a = alphas_cumprod.to(torch.float64)[t.long()].view(-1, 1, 1)
        eye = torch.eye(flat.shape[1], dtype=torch.float64)
        mu = self._mu(cond, x.shape[0])
        marginal = a * self.cov + (1 - a) * eye
        centred = (flat - a[:, 0].sqrt() * mu).unsqueeze(-1)
        eps = (1 - a).sqrt() * torch.linalg.solve(marginal, centred)
        return eps.squeeze(-1).reshape(x.shape).to(x.dtype)

    def velocity_model(self, time_scale: float = 1000.0) -> CallableDenoiser:
        """The exact velocity field as a denoiser (for flow transitions)."""
        return CallableDenoiser(lambda x, t, cond: self.velocity(x, t, cond, time_scale=time_scale))

    def epsilon_model(self, alphas_cumprod: Tensor) -> CallableDenoiser:
        """The exact epsilon predictor as a denoiser (for DDIM), given the scheduler's ``alphas_cumprod``."""
        return CallableDenoiser(lambda x, t, cond: self.epsilon(x, t, cond, alphas_cumprod))
