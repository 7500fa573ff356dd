"""Denoising as a TorchRL environment: the TorchRL-native path next to the fast samplers.

The observation is ``(latent, step, t, cond_index)``: the current latent, its step index, the
timestep the denoiser receives, and the prompt (row of the policy's conditioning table, kept out
of the observation so rollouts do not copy text embeddings ``T`` times). The action is the next
latent; the reward is terminal. :class:`DenoisingPolicy` wraps a denoiser and a transition as a
TensorDict module, so ``env.rollout(T, policy)`` produces the same latents and log-probs as
:class:`~treegrpo.envs.sampler.TrajectorySampler` for the same noise and generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase
from treegrpo.envs._checks import check_int
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.sampler import gather_cond
from treegrpo.envs.transitions import Transition

RewardFn = Callable[[Tensor, Tensor], Tensor]  # (final latents [B, ...], cond_index [B]) -> [B]


class DenoisingEnv(EnvBase):
    """``batch_size`` latents denoised in lock-step over ``transition.num_steps`` steps.

    ``reset`` draws standard-normal latents from the env's generator (``set_seed``) unless the
    input TensorDict carries ``latent``; ``cond_index`` defaults to ``arange(B) // (B // P)``
    (prompt-major groups, as the samplers lay them out). ``reward_fn`` scores the final latents
    at the terminal step; every other reward is 0.
    """

    def __init__(
        self,
        transition: Transition,
        *,
        latent_shape: Sequence[int],
        batch_size: int,
        num_prompts: int = 1,
        reward_fn: RewardFn | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        check_int("batch_size", batch_size, minimum=1)
        check_int("num_prompts", num_prompts, minimum=1, maximum=batch_size)
        if batch_size % num_prompts:
            raise ValueError(f"batch_size: {batch_size} is not a multiple of num_prompts={num_prompts}")
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.transition = transition
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.num_prompts = num_prompts
        self.reward_fn = reward_fn
        self.generator = torch.Generator(device=self.device)
        b, steps = batch_size, transition.num_steps
        self.observation_spec = Composite(
            latent=Unbounded(shape=(b, *self.latent_shape), dtype=torch.float32, device=self.device),
            step=Bounded(low=0, high=steps, shape=(b,), dtype=torch.long, device=self.device),
            t=Unbounded(shape=(b,), dtype=torch.float64, device=self.device),
            cond_index=Bounded(low=0, high=num_prompts - 1, shape=(b,), dtype=torch.long, device=self.device),
            shape=(b,),
            device=self.device,
        )
        self.action_spec = Unbounded(shape=(b, *self.latent_shape), dtype=torch.float32, device=self.device)
        self.reward_spec = Unbounded(shape=(b, 1), dtype=torch.float32, device=self.device)

    def _observation(self, latent: Tensor, step: Tensor, cond_index: Tensor) -> TensorDict:
        t = self.transition.model_time(step.clamp(max=self.transition.num_steps - 1)).to(torch.float64)
        t = torch.where(step >= self.transition.num_steps, torch.zeros_like(t), t)
        return TensorDict(
            {"latent": latent, "step": step, "t": t, "cond_index": cond_index},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDict:
        b = self.batch_size[0]
        given = tensordict if tensordict is not None else TensorDict({}, batch_size=self.batch_size)
        if "latent" in given.keys():  # noqa: SIM118 - TensorDict has no `in`
            latent = given["latent"].to(self.device, torch.float32)
            if tuple(latent.shape) != (b, *self.latent_shape):
                raise ValueError(f"latent: expected shape {(b, *self.latent_shape)}, got {tuple(latent.shape)}")
        else:
            latent = torch.randn((b, *self.latent_shape), generator=self.generator, device=self.device)
        if "cond_index" in given.keys():  # noqa: SIM118 - TensorDict has no `in`
            cond_index = given["cond_index"].to(self.device, torch.long)
        else:
            cond_index = torch.arange(b, device=self.device) // (b // self.num_prompts)
        step = torch.zeros(b, dtype=torch.long, device=self.device)
        out = self._observation(latent, step, cond_index)
        out.set("done", torch.zeros(b, 1, dtype=torch.bool, device=self.device))
        out.set("terminated", torch.zeros(b, 1, dtype=torch.bool, device=self.device))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        latent = tensordict["action"].to(torch.float32)
        step = tensordict["step"] + 1
        cond_index = tensordict["cond_index"]
        done = (step >= self.transition.num_steps).unsqueeze(-1)
        reward = torch.zeros(self.batch_size[0], 1, dtype=torch.float32, device=self.device)
        if self.reward_fn is not None and bool(done.all()):
            reward = self.reward_fn(latent, cond_index).to(torch.float32).reshape(-1, 1)
        out = self._observation(latent, step, cond_index)
        out.update({"reward": reward, "done": done, "terminated": done.clone()})
        return out

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.generator.manual_seed(seed)


class DenoisingPolicy(TensorDictModuleBase):
    """A denoiser plus a transition as a TorchRL policy: reads ``latent, step, cond_index``,
    writes ``action`` (the next latent) and ``log_prob`` (0 on ODE steps).

    ``sde_steps`` picks the stochastic steps (``"all"`` or a collection of indices); SDE noise
    comes from ``generator`` in the same order the samplers draw it.
    """

    in_keys: ClassVar[list[str]] = ["latent", "step", "cond_index"]
    out_keys: ClassVar[list[str]] = ["action", "log_prob"]

    def __init__(
        self,
        model: Denoiser,
        transition: Transition,
        cond: Cond = None,
        *,
        sde_steps: str | Sequence[int] = "all",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.model, self.transition, self.cond = model, transition, cond
        steps = range(transition.num_steps) if sde_steps == "all" else sde_steps
        self.sde_steps = frozenset(int(s) for s in steps)
        self.generator = generator

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, step = tensordict["latent"], tensordict["step"]
        if bool((step != step[0]).any()):
            raise ValueError(f"step: the batch must move in lock-step, got steps {sorted(set(step.tolist()))}")
        prediction = self.model(x, self.transition.model_time(step), gather_cond(self.cond, tensordict["cond_index"]))
        if int(step[0]) in self.sde_steps:
            action, log_prob = self.transition.sde_step(x, prediction, step, generator=self.generator)
        else:
            action = self.transition.ode_step(x, prediction, step)
            log_prob = torch.zeros(x.shape[0], dtype=action.dtype, device=x.device)
        tensordict.set("action", action.to(x.dtype))
        tensordict.set("log_prob", log_prob.to(x.dtype))
        return tensordict
