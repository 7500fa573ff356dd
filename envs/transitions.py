"""Transitions: one denoising step as an ODE update or a Gaussian SDE update with its log-prob.

A transition turns ``(x, model_output, step)`` into the next latent. The SDE update returns the
behaviour log-prob of what it sampled; :meth:`Transition.log_prob` re-scores a stored sample under
a new model output, which is all a policy-gradient loss needs. Steps are ``[B]`` integer tensors,
so one call serves a frontier whose nodes sit at different steps.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from treegrpo.envs import gaussian
from treegrpo.envs._checks import check_float
from treegrpo.envs.gaussian import Reduction
from treegrpo.envs.timesteps import DDIMTimesteps, FlowTimesteps

Prediction = Literal["velocity", "epsilon"]


def as_steps(step: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """A ``[B]`` int64 step tensor from an int or a tensor."""
    step = torch.as_tensor(step, dtype=torch.long, device=device)
    return step.expand(batch) if step.dim() == 0 else step


class Transition(ABC):
    """A Gaussian denoising step ``x_next ~ N(mean(x, pred, step), std(step)^2)`` and its ODE limit.

    Subclasses implement :meth:`mean_std` and :meth:`ode_step`; sampling and scoring are shared.
    ``reduce`` sets how per-dimension log-densities become one log-prob per sample (see
    :func:`treegrpo.envs.gaussian.gaussian_log_prob`).
    """

    prediction: ClassVar[Prediction]
    noise_attribute: ClassVar[str]  # the field that scales the injected noise

    def __init__(self, reduce: Reduction = "mean") -> None:
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce: expected 'mean' or 'sum', got {reduce!r}")
        self.reduce: Reduction = reduce
        self.noise_scale: Tensor | None = None  # [T] multipliers of each step's std (see with_noise_scale)

    def with_noise_scale(self, scales: dict[int, float]) -> Transition:
        """A copy whose SDE std at step ``i`` is ``scales[i]`` times this one's (others unchanged).

        BranchGRPO draws its split steps' noise this much wider. The copy samples *and scores*
        with the scaled std, so a stored log-prob is the density of the noise actually drawn (the
        peer scores its scaled noise with the unscaled std)."""
        scale = torch.ones(self.num_steps, dtype=torch.float64)
        for step, value in scales.items():
            check_float(f"noise scale of step {step}", value, low=0.0, low_open=True)
            if not 0 <= int(step) < self.num_steps:
                raise ValueError(f"noise scale: step {step} is not in [0, {self.num_steps})")
            scale[int(step)] = float(value)
        twin = copy.copy(self)
        twin.noise_scale = None if bool((scale == 1).all()) else scale
        twin.__dict__.pop("_noisy", None)
        return twin

    def scaled_std(self, std: Tensor | float, step: Tensor, like: Tensor) -> Tensor | float:
        """``std`` times each row's step noise scale (:meth:`with_noise_scale`), shaped like ``like``'s
        rows; unchanged without a scale."""
        if self.noise_scale is None:
            return std
        scale = self.noise_scale.to(device=step.device)[step]  # [B]
        scale = scale.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return torch.as_tensor(std, dtype=like.dtype, device=like.device) * scale

    @property
    @abstractmethod
    def num_steps(self) -> int:
        """``T``, the number of denoising steps."""

    @abstractmethod
    def model_time(self, step: Tensor) -> Tensor:
        """The timestep value the denoiser receives at each of ``[B]`` steps."""

    @abstractmethod
    def mean_std(self, x: Tensor, model_output: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the SDE transition (float32 or float64)."""

    @abstractmethod
    def ode_step(self, x: Tensor, model_output: Tensor, step: Tensor) -> Tensor:
        """The deterministic update (Euler for flow, DDIM eta=0)."""

    def deterministic(self) -> Transition:
        """A copy with zero noise: its SDE step is this transition's ODE limit (a self-check)."""
        twin = copy.copy(self)
        setattr(twin, self.noise_attribute, 0.0)
        return twin

    def score(self, sample: Tensor, mean: Tensor, std: Tensor, batch_dims: int = 1) -> Tensor:
        """The log-prob of ``sample`` under the step's Gaussian ``(mean, std)``, reduced over all but
        the first ``batch_dims`` dimensions by ``reduce``: every sampler, check and loss scores
        through this one method (a transition may score differently from the density, as
        :class:`FlowCPS` does by default)."""
        return gaussian.gaussian_log_prob(sample, mean, std, self.reduce, batch_dims)

    def score_children(self, sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """``[M, K]`` log-probs of ``K`` children ``sample [M, K, ...]`` of ``M`` parents whose
        Gaussians are ``mean [M, ...]`` and ``std`` (a scalar or ``[M, 1, ...]``): one model row
        per parent serves its ``K`` edges."""
        std = std.unsqueeze(1) if std.dim() > 0 else std
        return self.score(sample, mean.unsqueeze(1), std, batch_dims=2)

    def step_std(self, step: Tensor) -> Tensor:
        """``[B]`` std of the SDE step at each of ``[B]`` steps (it depends on the step alone)."""
        probe = torch.zeros(step.shape[0], 1, dtype=torch.float64, device=step.device)
        _, std = self.mean_std(probe, probe, step)
        return torch.as_tensor(std, dtype=torch.float64, device=step.device).reshape(-1).expand(step.shape[0])

    def noisy_steps(self) -> tuple[int, ...]:
        """Steps whose SDE std is positive: the only ones whose edges can be trained. A zero-std
        step (CPS into ``t = 0``, DDIM onto a final alpha of 1, any step at noise level 0) is a
        point mass: its ``k`` children would be one image and its log-prob carries no gradient."""
        key = (self.num_steps, getattr(self, self.noise_attribute))  # computed once per schedule and noise
        if getattr(self, "_noisy", (None, None))[0] != key:
            std = self.step_std(torch.arange(self.num_steps))
            self._noisy = (key, tuple(int(i) for i in torch.nonzero(std > 0).flatten()))
        return self._noisy[1]

    def trainable_horizon(self) -> int:
        """The number of leading noisy steps: windows of SDE steps must lie in ``[0, horizon)``."""
        noisy = set(self.noisy_steps())
        return next((i for i in range(self.num_steps) if i not in noisy), self.num_steps)

    def check_noisy(self, steps: Sequence[int]) -> None:
        """Refuse SDE steps whose std is zero (their children would be identical)."""
        noisy = set(self.noisy_steps())
        silent = [int(step) for step in steps if int(step) not in noisy]
        if silent:
            raise ValueError(
                f"sde_steps: step(s) {silent} of {type(self).__name__} have zero noise ({self.noise_attribute}="
                f"{getattr(self, self.noise_attribute)}), so their children are one image; SDE steps must lie in "
                f"{list(self.noisy_steps())}")

    def sde_step(
        self,
        x: Tensor,
        model_output: Tensor,
        step: Tensor | int,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sample the next latent; returns ``(x_next, log_prob)`` with ``log_prob`` ``[B]``."""
        mean, std = self.mean_std(x, model_output, as_steps(step, x.shape[0], x.device))
        x_next, _ = gaussian.sample_gaussian(mean, std, noise, generator)
        return x_next, self.score(x_next, mean, std)

    def log_prob(self, x_next: Tensor, x: Tensor, model_output: Tensor, step: Tensor | int) -> Tensor:
        """Log-prob ``[B]`` of a stored ``x_next`` given ``x`` and a (possibly new) model output."""
        mean, std = self.mean_std(x, model_output, as_steps(step, x.shape[0], x.device))
        return self.score(x_next, mean, std)


class _FlowTransition(Transition):
    prediction = "velocity"

    def __init__(self, timesteps: FlowTimesteps, reduce: Reduction = "mean") -> None:
        super().__init__(reduce)
        self.timesteps = timesteps

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int, *args, **kwargs):
        """Build from a ``FlowMatchEulerDiscreteScheduler`` and a step count."""
        return cls(FlowTimesteps.from_scheduler(scheduler, num_steps), *args, **kwargs)

    @property
    def num_steps(self) -> int:
        return self.timesteps.num_steps

    def model_time(self, step: Tensor) -> Tensor:
        return self.timesteps.model_times.to(step.device)[step]

    def ode_step(self, x: Tensor, model_output: Tensor, step: Tensor | int) -> Tensor:
        t, t_next = self.timesteps.times(as_steps(step, x.shape[0], x.device))
        return gaussian.flow_euler_step(x, model_output, t, t_next)


class FlowSDE(_FlowTransition):
    """Flow-GRPO's marginal-preserving SDE, ``sigma_t = a sqrt(t / (1 - t))`` (the default)."""

    noise_attribute = "noise_level"

    def __init__(self, timesteps: FlowTimesteps, noise_level: float = 0.7, reduce: Reduction = "mean") -> None:
        super().__init__(timesteps, reduce)
        self.noise_level = check_float("noise_level", noise_level, low=0.0)

    def mean_std(self, x: Tensor, model_output: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        t, t_next = self.timesteps.times(step)
        mean, std = gaussian.flow_sde_mean_std(x, model_output, t, t_next, self.noise_level)
        return mean, self.scaled_std(std, step, mean)


class DanceSDE(_FlowTransition):
    """DanceGRPO's constant-noise SDE: same drift with ``g = eta``, ``std = eta sqrt(-dt)``."""

    noise_attribute = "eta"

    def __init__(self, timesteps: FlowTimesteps, eta: float = 0.3, reduce: Reduction = "mean") -> None:
        super().__init__(timesteps, reduce)
        self.eta = check_float("eta", eta, low=0.0)

    def mean_std(self, x: Tensor, model_output: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        t, t_next = self.timesteps.times(step)
        mean, std = gaussian.dance_sde_mean_std(x, model_output, t, t_next, self.eta)
        return mean, self.scaled_std(std, step, mean)


CPS_SCORINGS = ("flow_grpo", "density")


class FlowCPS(_FlowTransition):
    """Flow-GRPO's coefficient-preserving sampler, ``std = t_next sin(a pi / 2)``.

    ``scoring="flow_grpo"`` (the default) scores a sample as Flow-GRPO does, ``-(x - mean)^2``
    averaged over dimensions, with no ``1 / (2 std^2)`` and no normaliser, so a clip range ported
    from Flow-GRPO means the same here; ``scoring="density"`` uses the true Gaussian log-density,
    whose log-ratios are ``1 / (2 std^2)`` times larger (about 8,000x at the last noisy step of
    SD3's schedule) and need a clip range that much wider.
    """

    noise_attribute = "noise_level"

    def __init__(self, timesteps: FlowTimesteps, noise_level: float = 0.7, reduce: Reduction = "mean",
                 scoring: str = "flow_grpo") -> None:
        super().__init__(timesteps, reduce)
        self.noise_level = check_float("noise_level", noise_level, low=0.0, high=1.0)
        if scoring not in CPS_SCORINGS:
            raise ValueError(f"scoring: expected one of {', '.join(CPS_SCORINGS)}, got {scoring!r}")
        self.scoring = scoring

    def score(self, sample: Tensor, mean: Tensor, std: Tensor, batch_dims: int = 1) -> Tensor:
        if self.scoring == "density":
            return super().score(sample, mean, std, batch_dims)
        return gaussian.squared_error_score(sample, mean, self.reduce, batch_dims)

    def mean_std(self, x: Tensor, model_output: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        t, t_next = self.timesteps.times(step)
        mean, std = gaussian.flow_cps_mean_std(x, model_output, t, t_next, self.noise_level)
        return mean, self.scaled_std(std, step, mean)


class DDIM(Transition):
    """DDIM with stochasticity ``eta`` for epsilon-prediction diffusion (DDPO's sampler)."""

    noise_attribute = "eta"

    prediction = "epsilon"

    def __init__(self, timesteps: DDIMTimesteps, eta: float = 1.0, reduce: Reduction = "mean") -> None:
        super().__init__(reduce)
        self.timesteps = timesteps
        self.eta = check_float("eta", eta, low=0.0)

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int, *args, **kwargs) -> DDIM:
        """Build from a ``DDIMScheduler`` and a step count."""
        return cls(DDIMTimesteps.from_scheduler(scheduler, num_steps), *args, **kwargs)

    @property
    def num_steps(self) -> int:
        return self.timesteps.num_steps

    def model_time(self, step: Tensor) -> Tensor:
        return self.timesteps.model_times.to(step.device)[step]

    def mean_std(self, x: Tensor, model_output: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        alpha_bar, alpha_bar_prev = self.timesteps.alphas(step)
        mean, std = gaussian.ddim_mean_std(x, model_output, alpha_bar, alpha_bar_prev, self.eta)
        return mean, self.scaled_std(std, step, mean)

    def ode_step(self, x: Tensor, model_output: Tensor, step: Tensor | int) -> Tensor:
        alpha_bar, alpha_bar_prev = self.timesteps.alphas(as_steps(step, x.shape[0], x.device))
        mean, _ = gaussian.ddim_mean_std(x, model_output, alpha_bar, alpha_bar_prev, 0.0)
        return mean


FLOW_TRANSITIONS: dict[str, type[_FlowTransition]] = {"flow_sde": FlowSDE, "dance_sde": DanceSDE, "cps": FlowCPS}


def flow_transition(name: str, timesteps: FlowTimesteps, noise_level: float, *, cps_scoring: str = "flow_grpo") -> Transition:
    """The stochastic flow step named ``name`` (``flow_sde``, ``dance_sde`` or ``cps``) on ``timesteps``
    (``cps_scoring``: how ``cps`` scores its samples, see :class:`FlowCPS`)."""
    if name not in FLOW_TRANSITIONS:
        raise ValueError(f"sampling.transition: a flow model takes one of {list(FLOW_TRANSITIONS)}, got {name!r}")
    if name == "cps":
        return FlowCPS(timesteps, noise_level, scoring=cps_scoring)
    return FLOW_TRANSITIONS[name](timesteps, noise_level)
