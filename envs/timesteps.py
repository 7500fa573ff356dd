"""Discretisations of the denoising time axis, read from diffusers schedulers.

A sampler walks steps ``i = 0 .. T-1``; step ``i`` maps the state at ``i`` to the state at
``i + 1``. These classes hold, per step, what the transitions need (``t`` and ``t_next`` for flow
matching, ``alpha_bar`` and ``alpha_bar_prev`` for DDIM) and the timestep value the diffusers
pipeline passes to the denoiser. Schedules come from the schedulers themselves (SD3's ``shift=3``
is :meth:`FlowTimesteps.from_scheduler` of the pipeline's scheduler), except DanceGRPO's, which
shifts a plain ``linspace(1, 0)`` and so differs from diffusers' shifted schedule: at 10 steps
and shift 3, diffusers gives ``[1, .960, ..., .278, .0089, 0]`` and DanceGRPO
``[1, .964, ..., .429, .25, 0]`` (:meth:`FlowTimesteps.dancegrpo`). FLUX.1 shifts by resolution:
its scheduler (``use_dynamic_shifting``) maps ``linspace(1, 1/T, T)`` through the exponential shift
``e^mu / (e^mu + 1/t - 1)``, with ``mu`` linear in the image's token count
(:func:`resolution_shift_mu`, :meth:`FlowTimesteps.flux`): 0.63 at 512 px, 1.15 at 1024 px.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from treegrpo.envs._checks import check_int


def _fresh(scheduler):
    """A private copy, so ``set_timesteps`` leaves the caller's scheduler untouched."""
    return type(scheduler).from_config(scheduler.config) if hasattr(scheduler, "from_config") else copy.deepcopy(scheduler)


def resolution_shift_mu(image_seq_len: int, *, base_seq_len: int = 256, max_seq_len: int = 4096,
                        base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX.1's ``mu`` for ``image_seq_len`` image tokens: the line through ``(base_seq_len, base_shift)``
    and ``(max_seq_len, max_shift)``, ``mu = m L + b`` with ``m = (max_shift - base_shift) / (max_seq_len -
    base_seq_len)``, ``b = base_shift - m base_seq_len``, evaluated in that order, as diffusers'
    ``FluxPipeline`` does (so the sigmas agree bit for bit). Defaults: FLUX.1's scheduler config."""
    check_int("image_seq_len", image_seq_len, minimum=1)
    if max_seq_len == base_seq_len:
        raise ValueError(f"scheduler.max_image_seq_len: must differ from base_image_seq_len, both are {max_seq_len}")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


def scheduler_shift_mu(scheduler, image_seq_len: int) -> float:
    """:func:`resolution_shift_mu` with the line read from ``scheduler.config`` (diffusers' defaults where absent)."""
    config = scheduler.config
    return resolution_shift_mu(image_seq_len, base_seq_len=config.get("base_image_seq_len", 256),
                               max_seq_len=config.get("max_image_seq_len", 4096),
                               base_shift=config.get("base_shift", 0.5), max_shift=config.get("max_shift", 1.15))


FLOW_SCHEDULES = ("scheduler", "dancegrpo")
"""Values of ``sampling.schedule``: the pipeline scheduler's (shifted) schedule, or DanceGRPO's."""


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
    def flux(cls, scheduler, num_steps: int, *, image_seq_len: int) -> FlowTimesteps:
        """``FluxPipeline``'s schedule for images of ``image_seq_len`` packed tokens (``(H / 16) (W / 16)``
        pixels): ``sigmas = linspace(1, 1/T, T)`` passed through the scheduler's shift, which for
        FLUX.1 (``use_dynamic_shifting``) is ``time_shift(mu, 1, sigmas)`` with ``mu`` from
        :func:`scheduler_shift_mu`, and a static ``shift`` otherwise; then ``t = 0`` appended."""
        check_int("num_steps", num_steps, minimum=1)
        scheduler = _fresh(scheduler)
        grid = np.linspace(1.0, 1.0 / num_steps, num_steps)  # numpy's float64 grid, as FluxPipeline builds it
        scheduler.set_timesteps(sigmas=grid, mu=scheduler_shift_mu(scheduler, image_seq_len), device="cpu")
        sigmas = scheduler.sigmas.to(torch.float64)
        return cls(sigmas=sigmas[: num_steps + 1], model_times=scheduler.timesteps.to(torch.float64)[:num_steps])

    @classmethod
    def linear(cls, num_steps: int, *, shift: float = 1.0, num_train_timesteps: int = 1000) -> FlowTimesteps:
        """The schedule of a default ``FlowMatchEulerDiscreteScheduler(shift=shift)``."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        return cls.from_scheduler(scheduler, num_steps)

    @classmethod
    def dancegrpo(cls, num_steps: int, *, shift: float = 3.0, num_train_timesteps: int = 1000) -> FlowTimesteps:
        """DanceGRPO's schedule: ``t = linspace(1, 0, T + 1)`` shifted by ``t' = s t / (1 + (s - 1) t)``
        (``s = 3``: ``3t / (1 + 2t)``). The denoiser receives ``int(1000 t')`` computed in float32, as
        DanceGRPO, MixGRPO and BranchGRPO feed it (``fastvideo/train_grpo_flux.py:231,506``): a
        truncated integer, so ``t' = 0.875`` (T = 10, step 3) goes in as 874, not 875."""
        check_int("num_steps", num_steps, minimum=1)
        if not shift > 0:
            raise ValueError(f"shift: expected a number > 0, got {shift!r}")
        t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        sigmas = shift * t / (1 + (shift - 1) * t)
        t32 = torch.linspace(1, 0, num_steps + 1)  # the peers' float32 schedule, for the model's timestep
        sigmas32 = (shift * t32) / (1 + (shift - 1) * t32)
        model_times = torch.trunc(sigmas32[:num_steps] * num_train_timesteps).to(torch.float64)
        return cls(sigmas=sigmas, model_times=model_times)

    @classmethod
    def named(cls, schedule: str, num_steps: int, *, shift: float, scheduler=None) -> FlowTimesteps:
        """The schedule named by ``sampling.schedule``: ``scheduler`` (the pipeline's own scheduler,
        or a default ``FlowMatchEulerDiscreteScheduler(shift)`` when none is given) or ``dancegrpo``."""
        if schedule == "dancegrpo":
            return cls.dancegrpo(num_steps, shift=shift)
        if schedule != "scheduler":
            raise ValueError(f"sampling.schedule: expected one of {', '.join(FLOW_SCHEDULES)}, got {schedule!r}")
        if scheduler is None:
            return cls.linear(num_steps, shift=shift)
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
