"""The denoiser interface, ``f(x, t, cond) -> prediction``, and adapters that fit models to it.

``x`` is a batch of latents ``[B, ...]``; ``t`` is ``[B]`` timesteps exactly as a diffusers
pipeline passes them to the network (``sigma * 1000`` for flow matching, the integer DDPM step for
DDIM); ``cond`` is the batch's conditioning (a tensor or a TensorDict with leading dim ``B``, or
``None``). The prediction is a velocity or an epsilon, as the transition expects.
Samplers count model evaluations through :attr:`Denoiser.evaluations_per_row` (2 with guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from treegrpo.envs._checks import check_float

Cond = Tensor | TensorDictBase | None


class Denoiser(nn.Module):
    """Base class: a module mapping ``(x, t, cond)`` to a prediction with ``x``'s shape."""

    evaluations_per_row: int = 1

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CallableDenoiser(Denoiser):
    """Wrap a plain function or module ``fn(x, t, cond)``: analytic models, test doubles, custom nets."""

    def __init__(self, fn: Callable[[Tensor, Tensor, Cond], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return self.fn(x, t, cond)


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _field(cond: Cond, key: str, adapter: str) -> Tensor:
    if not isinstance(cond, TensorDictBase) or key not in cond.keys():  # noqa: SIM118 - TensorDict has no `in`
        raise ValueError(f"cond: {adapter} needs a TensorDict with key {key!r}, got {type(cond).__name__}")
    return cond[key]


class SD3Denoiser(Denoiser):
    """Adapter for diffusers' ``SD3Transformer2DModel`` (velocity prediction).

    ``cond`` is a TensorDict with ``encoder_hidden_states`` ``[B, S, D]`` and ``pooled_projections``
    ``[B, P]``, as SD3's text encoders produce them. Inputs are cast to the transformer's dtype
    (bf16 on GPU); the transition casts the prediction back to float32.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = _module_dtype(self.transformer)
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t.to(dtype),
            encoder_hidden_states=_field(cond, "encoder_hidden_states", "SD3Denoiser").to(dtype),
            pooled_projections=_field(cond, "pooled_projections", "SD3Denoiser").to(dtype),
            return_dict=False,
        )[0]


class UNetDenoiser(Denoiser):
    """Adapter for diffusers' ``UNet2DConditionModel`` (epsilon or velocity, as it was trained).

    ``cond`` is a TensorDict with ``encoder_hidden_states`` ``[B, S, D]``.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = _module_dtype(self.unet)
        hidden = _field(cond, "encoder_hidden_states", "UNetDenoiser").to(dtype)
        return self.unet(x.to(dtype), t, encoder_hidden_states=hidden, return_dict=False)[0]


class GuidedDenoiser(Denoiser):
    """Classifier-free guidance: ``u + s (c - u)`` from one batched call on ``[uncond; cond]``.

    ``uncond`` is the empty or negative prompt's conditioning with leading dim 1 (broadcast to the
    batch). Each row costs two model evaluations, which samplers count in NFE.
    """

    def __init__(self, model: Denoiser, guidance_scale: float, uncond: Tensor | TensorDictBase) -> None:
        super().__init__()
        self.model = model
        self.guidance_scale = check_float("guidance_scale", guidance_scale, low=0.0)
        if uncond.shape[0] != 1:
            raise ValueError(f"uncond: expected leading dim 1 (one empty prompt), got shape {tuple(uncond.shape)}")
        self.uncond = uncond
        self.evaluations_per_row = 2 * model.evaluations_per_row

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        batch = x.shape[0]
        uncond = self.uncond.to(x.device).expand(batch, *self.uncond.shape[1:])
        both = _cat(uncond, cond)
        prediction = self.model(torch.cat([x, x]), torch.cat([t, t]), both)
        unconditional, conditional = prediction.chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)


def _cat(first: Any, second: Any) -> Any:
    if isinstance(first, TensorDictBase):
        return torch.cat([first.contiguous(), second.contiguous()])
    return torch.cat([first, second])
