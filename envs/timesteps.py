"""Discretisations of the denoising time axis, read from diffusers schedulers.

A sampler walks steps ``i = 0 .. T-1``; step ``i`` maps the state at ``i`` to the state at
``i + 1``. These classes hold, per step, what the transitions need (``t`` and ``t_next`` for flow
matching, ``alpha_bar`` and ``alpha_bar_prev`` for DDIM) and the timestep value the diffusers
pipeline passes to the denoiser. Schedules come from the schedulers themselves, so shifted
schedules (SD3's ``shift=3``, DanceGRPO's ``t' = 3t / (1 + 2t)``) need no code here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor
from treegrpo.envs._checks import check_int


def _fresh(scheduler):
    """A private copy, so ``set_timesteps`` leaves the caller's scheduler untouched."""
    return type(scheduler).from_config(scheduler.config) if hasattr(scheduler, "from_config") else copy.deepcopy(scheduler)


@dataclass(frozen=True)
class FlowTimesteps:
    """Rectified-flow times ``sigmas[0] > ... > sigmas[T] = 0`` and the model's timestep per step."""

    sigmas: Tensor  # [T + 1], float64
    model_times: Tensor  # [T], what the pipeline feeds the denoiser (sigma * num_train_timesteps)

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int) -> FlowTimesteps:
        """Read ``num_steps`` steps off a ``FlowMatchEulerDiscreteScheduler`` (any shift)."""
        check_int("num_steps", num_steps, minimum=1)
        scheduler = _fresh(scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        sigmas = scheduler.sigmas.to(torch.float64)
        return cls(sigmas=sigmas[: num_steps + 1], model_times=scheduler.timesteps.to(torch.float64)[:num_steps])

    @classmethod
    def linear(cls, num_steps: int, *, shift: float = 1.0, num_train_timesteps: int = 1000) -> FlowTimesteps:
        """The schedule of a default ``FlowMatchEulerDiscreteScheduler(shift=shift)``."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        return cls.from_scheduler(scheduler, num_steps)

    @property
    def num_steps(self) -> int:
        return self.model_times.numel()

    def times(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """``(t, t_next)`` for a ``[B]`` tensor of step indices."""
        sigmas = self.sigmas.to(step.device)
        return sigmas[step], sigmas[step + 1]


@dataclass(frozen=True)
class DDIMTimesteps:
    """DDPM timesteps with ``alpha_bar`` at each step and at the step it lands on."""

    model_times: Tensor  # [T] integer DDPM timesteps, descending
    alpha_bar: Tensor  # [T], float64
    alpha_bar_prev: Tensor  # [T], float64 (the scheduler's final_alpha_cumprod at the last step)

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int) -> DDIMTimesteps:
        """Read ``num_steps`` steps off a ``DDIMScheduler`` (its spacing and final alpha)."""
        check_int("num_steps", num_steps, minimum=1)
        scheduler = _fresh(scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        timesteps = scheduler.timesteps.long()
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        prev = timesteps - scheduler.config.num_train_timesteps // num_steps
        final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
        alpha_bar_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
        return cls(model_times=timesteps, alpha_bar=alphas[timesteps], alpha_bar_prev=alpha_bar_prev)

    @property
    def num_steps(self) -> int:
        return self.model_times.numel()

    def alphas(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_bar, alpha_bar_prev)`` for a ``[B]`` tensor of step indices."""
        return self.alpha_bar.to(step.device)[step], self.alpha_bar_prev.to(step.device)[step]
