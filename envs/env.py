"""Denoising as a stateless TorchRL environment, and a denoiser with its transition as the policy.

The whole state of a denoising trajectory lives in its TensorDict row, as in TorchRL's stateless
pendulum: ``latent`` (the current ``x_t``), ``step`` (its index ``i`` in ``0..T``), ``t`` (the
timestep the denoiser receives at that step) and ``cond_index`` (the prompt: a row of the policy's
conditioning table, so a rollout never copies text embeddings). The action is the next latent. So
any row can be stepped from any state, rows at different steps can share a batch, and a node is
branched by expanding its row ``k`` ways before the policy draws its children.

:class:`DenoisingPolicy` is the policy: it evaluates the denoiser once per row (in micro-batches
of ``max_batch``) to get the step's Gaussian ``(loc, scale)`` and its ODE limit ``ode``, then
writes ``action`` and ``log_prob``: a Gaussian draw on SDE steps (the noise from its generator,
drawn for the whole batch at once), the ODE update elsewhere. With the environment it makes every
sample in the project: :func:`treegrpo.envs.rollout.tree_rollout` drives the two to build trees,
and ``env.rollout(T, policy)`` is the same trajectory through TorchRL's own loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

from treegrpo.envs._checks import check_int
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.transitions import Transition

RewardFn = Callable[[Tensor, Tensor], Tensor]  # (final latents [B, ...], cond_index [B]) -> [B]


def gather_cond(cond: Cond, index: Tensor) -> Cond:
    """Rows ``index`` of a conditioning table (tensor or TensorDict); ``None`` stays ``None``."""
    if cond is None:
        return None
    if isinstance(cond, TensorDictBase):
        return cond[index.to(cond.device)] if cond.device is not None else cond[index]
    return cond[index.to(cond.device)]


class DenoisingEnv(EnvBase):
    """``T`` denoising steps of a transition as a stateless, batch-unlocked TorchRL environment.

    ``reset`` takes ``latent`` (the initial noise) and ``cond_index`` from the input TensorDict,
    drawing a standard-normal latent from the env's generator (``set_seed``) and prompt 0 for
    whatever is missing; rows start at step 0, or at ``step`` when given. ``step`` sets the latent
    to the action and advances the step; ``reward_fn(final, cond_index)`` pays at the terminal
    step (0 elsewhere, and everywhere without a ``reward_fn``).
    """

    batch_locked = False

    def __init__(self, transition: Transition, *, latent_shape: Sequence[int], num_prompts: int | None = None,
                 reward_fn: RewardFn | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__(device=device, batch_size=torch.Size([]))
        self.transition = transition
        self.latent_shape = tuple(check_int("latent_shape", int(s), minimum=1) for s in latent_shape)
        self.num_prompts = check_int("num_prompts", num_prompts, minimum=1) if num_prompts is not None else None
        self.reward_fn = reward_fn
        self._generator = torch.Generator(device=self.device)
        steps = transition.num_steps
        # the model time of every step index, and 0 at the terminal index T: one lookup per step
        times = transition.model_time(torch.arange(steps)).to(torch.float64)
        self._times = torch.cat([times, times.new_zeros(1)]).to(self.device)
        prompts = (Bounded(low=0, high=num_prompts - 1, shape=(), dtype=torch.long, device=self.device)
                   if num_prompts is not None else Unbounded(shape=(), dtype=torch.long, device=self.device))
        self.observation_spec = Composite(
            latent=Unbounded(shape=self.latent_shape, dtype=torch.float32, device=self.device),
            step=Bounded(low=0, high=steps, shape=(), dtype=torch.long, device=self.device),
            t=Unbounded(shape=(), dtype=torch.float64, device=self.device),
            cond_index=prompts,
            shape=(),
            device=self.device,
        )
        self.action_spec = Unbounded(shape=self.latent_shape, dtype=torch.float32, device=self.device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=self.device)

    def model_time(self, step: Tensor) -> Tensor:
        """``[B]`` timestep the denoiser receives at each step (0 once a row is done)."""
        return self._times[step]

    def state(self, latent: Tensor, step: Tensor, cond_index: Tensor) -> TensorDict:
        """The TensorDict of rows at ``step`` holding ``latent`` for prompts ``cond_index`` (a node)."""
        batch = latent.shape[:-len(self.latent_shape)] if self.latent_shape else latent.shape
        return TensorDict({"latent": latent, "step": step, "t": self.model_time(step), "cond_index": cond_index},
                          batch_size=batch)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDict:
        given = tensordict if tensordict is not None else TensorDict({}, batch_size=[])
        batch = given.batch_size
        if "latent" in given.keys():  # noqa: SIM118 - TensorDict has no `in`
            latent = given["latent"].to(self.device, torch.float32)
            if tuple(latent.shape[len(batch):]) != self.latent_shape:
                raise ValueError(f"latent: expected shape [..., {', '.join(map(str, self.latent_shape))}], "
                                 f"got {tuple(latent.shape)}")
        else:
            latent = torch.randn((*batch, *self.latent_shape), generator=self._generator, device=self.device)
        keys = given.keys()
        cond_index = (given["cond_index"].to(self.device, torch.long) if "cond_index" in keys
                      else torch.zeros(batch, dtype=torch.long, device=self.device))
        step = (given["step"].to(self.device, torch.long) if "step" in keys
                else torch.zeros(batch, dtype=torch.long, device=self.device))
        out = self.state(latent, step, cond_index)
        done = (step >= self.transition.num_steps).unsqueeze(-1)
        out.set("done", done)
        out.set("terminated", done.clone())
        return out

    def advance(self, tensordict: TensorDictBase) -> TensorDict:
        """The dynamics alone: the rows' next states (``latent`` = the action, ``step`` + 1, its ``t``),
        without reward and done flags; what :func:`~treegrpo.envs.rollout.tree_rollout` steps with."""
        return self.state(tensordict["action"].to(torch.float32), tensordict["step"] + 1, tensordict["cond_index"])

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        out = self.advance(tensordict)
        latent, step = out["latent"], out["step"]
        done = (step >= self.transition.num_steps).unsqueeze(-1)
        reward = torch.zeros((*tensordict.batch_size, 1), dtype=torch.float32, device=latent.device)
        if self.reward_fn is not None and bool(done.any()):
            paid = self.reward_fn(latent, tensordict["cond_index"]).to(torch.float32).reshape(reward.shape)
            reward = torch.where(done, paid, reward)
        out.update({"reward": reward, "done": done, "terminated": done.clone()})
        return out

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._generator.manual_seed(seed)


class DenoisingPolicy(TensorDictModuleBase):
    """A denoiser and its transition as a TorchRL policy: reads ``latent, step, cond_index``, writes
    ``loc`` and ``scale`` (the SDE step's Gaussian), ``ode`` (the ODE update), ``action`` (the next
    latent) and ``log_prob``.

    ``sde_steps`` picks the stochastic steps (``"all"`` or a collection of indices); every other
    step is the transition's ODE update with ``log_prob`` 0. SDE noise comes from ``generator``,
    drawn for the whole batch in one call, so results do not depend on ``max_batch`` (the most rows
    per model call). ``static_shapes`` pads every model call to ``max_batch`` rows (one shape for
    ``torch.compile``). ``calls`` records ``(step, rows)`` of every model call.
    """

    in_keys: ClassVar[list[str]] = ["latent", "step", "cond_index"]
    out_keys: ClassVar[list[str]] = ["loc", "scale", "ode", "action", "log_prob"]

    def __init__(self, model: Denoiser, transition: Transition, cond: Cond = None, *,
                 sde_steps: str | Collection[int] = "all", generator: torch.Generator | None = None,
                 max_batch: int | None = None, static_shapes: bool = False) -> None:
        super().__init__()
        self.model, self.transition, self.cond = model, transition, cond
        steps = range(transition.num_steps) if sde_steps == "all" else sde_steps
        self.sde_steps = frozenset(int(s) for s in steps)
        # one flag per step (and False for the terminal index), looked up on the device: no host sync
        self._is_sde = torch.tensor([i in self.sde_steps for i in range(transition.num_steps + 1)])
        self.generator = generator
        self.max_batch = check_int("max_batch", max_batch, minimum=1) if max_batch is not None else None
        self.static_shapes = static_shapes
        self.calls: list[tuple[int, int]] = []

    def predict(self, latent: Tensor, step: Tensor, cond_index: Tensor, step_index: int | None = None) -> Tensor:
        """The model's prediction on ``latent [B, ...]`` at ``[B]`` steps, in micro-batches of ``max_batch``
        rows (padded by repeating the last row with ``static_shapes``; the padding is dropped)."""
        size = latent.shape[0] if self.max_batch is None else self.max_batch
        outputs = []
        for lo in range(0, latent.shape[0], size):
            real = min(size, latent.shape[0] - lo)
            index: slice | Tensor = slice(lo, lo + real)
            if self.static_shapes and real < size:
                index = torch.arange(lo, lo + size, device=latent.device).clamp_(max=lo + real - 1)
            prediction = self.model(latent[index], self.transition.model_time(step[index]),
                                    gather_cond(self.cond, cond_index[index]))
            outputs.append(prediction[:real])
            self.calls.append((-1 if step_index is None else step_index, real))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def distribution(self, tensordict: TensorDictBase, step_index: int | None = None, *, sde: bool = True,
                     ode: bool = True) -> TensorDictBase:
        """Write ``loc`` and ``scale`` (the SDE step's Gaussian, one model row per TensorDict row) and
        ``ode`` (the ODE update) for every row; ``step_index`` is the step all rows share, if known.
        A caller that knows every row takes one kind of step skips the other (``sde``, ``ode``)."""
        latent, step = tensordict["latent"], tensordict["step"]
        prediction = self.predict(latent, step, tensordict["cond_index"], step_index)
        if sde:
            loc, scale = self.transition.mean_std(latent, prediction, step)
            tensordict.set("loc", loc)
            tensordict.set("scale", _rows(scale, loc))
        if ode:
            tensordict.set("ode", self.transition.ode_step(latent, prediction, step).to(latent.dtype))
        return tensordict

    def draw(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write ``action`` and ``log_prob`` from ``loc, scale, ode``: a Gaussian draw on the rows at an
        SDE step (noise for the whole batch from ``generator``, none when no row is at one), the ODE
        update on the others."""
        latent, loc, scale = tensordict["latent"], tensordict["loc"], tensordict["scale"]
        sde = self._is_sde.to(latent.device)[tensordict["step"]]  # [B]
        if not bool(sde.any()):  # an ODE step draws no noise, so the stream matches the tree engine's
            tensordict.set("action", tensordict["ode"])
            tensordict.set("log_prob", torch.zeros(latent.shape[0], dtype=latent.dtype, device=latent.device))
            return tensordict
        noise = torch.randn(loc.shape, generator=self.generator, device=loc.device, dtype=loc.dtype)
        drawn = (loc + scale * noise).to(latent.dtype)
        action = torch.where(sde.view(-1, *([1] * (latent.dim() - 1))), drawn, tensordict["ode"])
        scored = self.transition.score_children(drawn.unsqueeze(1), loc, scale)[:, 0]  # k = 1 child per row
        log_prob = torch.where(sde, scored.to(latent.dtype), 0.0)
        tensordict.set("action", action)
        tensordict.set("log_prob", log_prob)
        return tensordict

    def branch(self, tensordict: TensorDictBase, k: int) -> TensorDictBase:
        """Each row's ``k`` children: the row's ``step, t, cond_index`` expanded ``k`` ways (node-major,
        ``[N] -> [N k]``), each with its own Gaussian draw from ``loc, scale`` (noise ``[N, k, ...]`` in
        one call) as ``action`` and its ``log_prob``. At ``k = 1`` this is :meth:`draw` on SDE rows."""
        latent, loc, scale = tensordict["latent"], tensordict["loc"], tensordict["scale"]
        children = (loc.shape[0], k, *loc.shape[1:])  # [N, k, ...]
        noise = torch.randn(children, generator=self.generator, device=loc.device, dtype=loc.dtype)
        drawn = (loc.unsqueeze(1) + scale.unsqueeze(1) * noise).to(latent.dtype)
        log_prob = self.transition.score_children(drawn, loc, scale).to(latent.dtype)  # [N, k]
        index = torch.arange(tensordict.batch_size[0], device=latent.device).repeat_interleave(k)
        return TensorDict({"step": tensordict["step"][index], "t": tensordict["t"][index],
                           "cond_index": tensordict["cond_index"][index], "action": drawn.flatten(0, 1),
                           "log_prob": log_prob.flatten()}, batch_size=[index.shape[0]])

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self.draw(self.distribution(tensordict))


def _rows(scale: Tensor, like: Tensor) -> Tensor:
    """The step's std as ``[B, 1, ..., 1]`` (one value per row, broadcastable against ``like``)."""
    scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
    if scale.dim() == 0:
        return scale.expand(like.shape[0], *([1] * (like.dim() - 1)))
    return scale
