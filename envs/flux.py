"""FLUX.1 (diffusers' ``FluxTransformer2DModel``) as a :class:`~treegrpo.envs.models.Denoiser`.

The project keeps FLUX's latents unpacked, ``x [B, C, H, W]`` with ``C = 16`` VAE channels, as for
SD3; the adapter packs them into the transformer's token sequence and unpacks the velocity. Packing
only permutes entries, so every Gaussian log-density over ``x`` equals the one over the packed
latent, and the transitions, trees and losses run unchanged.

Notation (diffusers' ``FluxPipeline`` name in brackets):

- ``x [B, C, H, W]``: the latent at time ``t``; ``tokens [B, (H/2)(W/2), 4C]``: its 2x2 patches in
  row-major order, channel-major inside a patch (``_pack_latents``);
- ``img_ids [(H/2)(W/2), 3]``: per token ``(0, row, column)`` (``_prepare_latent_image_ids``);
  ``txt_ids [S, 3]``: zeros for the ``S`` T5 tokens (``encode_prompt``'s ``text_ids``);
- ``t``: the project's model time ``1000 sigma``; the transformer receives ``sigma = t / 1000`` and
  scales it back by 1000 itself (``timestep / 1000``);
- ``g``: FLUX.1-dev's distilled guidance, the scale fed to its guidance embedding (``guidance``), one
  forward per row; FLUX.1-schnell has no guidance embedding (``guidance_embeds = False``).
  True classifier-free guidance, when wanted, wraps this adapter in
  :class:`~treegrpo.envs.models.GuidedDenoiser` (two forwards per row, FluxPipeline's ``true_cfg_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from treegrpo.envs._checks import ArgumentError, check_float
from treegrpo.envs.models import Cond, Denoiser, _field, _module_dtype

__all__ = ["DISTILLED_GUIDANCE", "FluxDenoiser", "has_distilled_guidance", "latent_image_ids", "pack_latents",
           "text_ids", "unpack_latents"]

DISTILLED_GUIDANCE = 3.5
"""FluxPipeline's default ``guidance_scale`` for FLUX.1-dev (and Flow-GRPO's and DanceGRPO's)."""

TIME_SCALE = 1000.0
"""FluxPipeline passes ``timestep / 1000`` to the transformer, which multiplies it back."""


def has_distilled_guidance(transformer_config: Mapping) -> bool:
    """Whether a ``FluxTransformer2DModel`` config (loaded, or read from its ``config.json``) has a
    guidance embedding (``guidance_embeds``: FLUX.1-dev yes, FLUX.1-schnell no)."""
    return bool(transformer_config.get("guidance_embeds", False))


def pack_latents(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, (H/2)(W/2), 4C]``: each 2x2 patch becomes one token (a permutation)."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ArgumentError(f"latents: FLUX packs 2x2 patches, so H and W must be even, got {height} x {width}")
    patches = x.reshape(batch, channels, height // 2, 2, width // 2, 2)  # [B, C, H/2, 2, W/2, 2]
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # [B, H/2, W/2, C, 2, 2]
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`pack_latents`: ``[B, (H/2)(W/2), 4C] -> [B, C, H, W]``."""
    batch, count, features = tokens.shape
    if count != (height // 2) * (width // 2) or features % 4:
        raise ArgumentError(f"tokens: shape {tuple(tokens.shape)} does not pack a {height} x {width} latent")
    patches = tokens.reshape(batch, height // 2, width // 2, features // 4, 2, 2)  # [B, H/2, W/2, C, 2, 2]
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # [B, C, H/2, 2, W/2, 2]
    return patches.reshape(batch, features // 4, height, width)


def latent_image_ids(rows: int, columns: int, device: torch.device | str | None = None) -> Tensor:
    """``[rows * columns, 3]`` float32 position ids of the packed tokens: ``(0, row, column)``."""
    grid = torch.zeros(rows, columns, 3, device=device)
    grid[..., 1] = torch.arange(rows, device=device, dtype=torch.float32)[:, None]
    grid[..., 2] = torch.arange(columns, device=device, dtype=torch.float32)[None, :]
    return grid.reshape(rows * columns, 3)


def text_ids(length: int, device: torch.device | str | None = None) -> Tensor:
    """``[length, 3]`` zeros: FLUX.1 gives every text token the same position."""
    return torch.zeros(length, 3, device=device)


class FluxDenoiser(Denoiser):
    """Adapter for diffusers' ``FluxTransformer2DModel`` (velocity prediction) on unpacked latents.

    ``cond`` is a TensorDict with ``encoder_hidden_states [B, S, 4096]`` (T5) and
    ``pooled_projections [B, 768]`` (CLIP's pooled output), as :meth:`TextToImageModel.encode`
    gives them for ``kind="flux"``. ``guidance_scale`` is the distilled guidance ``g`` of a
    transformer with a guidance embedding (default :data:`DISTILLED_GUIDANCE`); a transformer
    without one (FLUX.1-schnell) refuses it. Inputs are cast to the transformer's dtype; the
    transition casts the velocity back to float32.
    """

    def __init__(self, transformer: nn.Module, guidance_scale: float | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        distilled = has_distilled_guidance(transformer.config)
        if guidance_scale is not None and not distilled:
            raise ArgumentError(f"guidance_scale: {guidance_scale} given, but this FLUX transformer has no guidance "
                                "embedding (guidance_embeds=false, as FLUX.1-schnell); use classifier-free guidance "
                                "(GuidedDenoiser) or none")
        if distilled:
            guidance_scale = DISTILLED_GUIDANCE if guidance_scale is None else guidance_scale
            guidance_scale = check_float("guidance_scale", guidance_scale, low=0.0)
        self.guidance_scale: float | None = guidance_scale

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = _module_dtype(self.transformer)
        batch, _, height, width = x.shape
        hidden = _field(cond, "encoder_hidden_states", "FluxDenoiser")
        pooled = _field(cond, "pooled_projections", "FluxDenoiser")
        guidance = None
        if self.guidance_scale is not None:
            guidance = torch.full((batch,), self.guidance_scale, device=x.device, dtype=torch.float32)
        velocity = self.transformer(
            hidden_states=pack_latents(x).to(dtype),  # [B, (H/2)(W/2), 4C]
            timestep=t.to(dtype) / TIME_SCALE,
            guidance=guidance,
            pooled_projections=pooled.to(dtype),
            encoder_hidden_states=hidden.to(dtype),
            txt_ids=text_ids(hidden.shape[1], x.device),
            img_ids=latent_image_ids(height // 2, width // 2, x.device),
            return_dict=False,
        )[0]
        return unpack_latents(velocity, height, width)  # [B, C, H, W]

    def extra_repr(self) -> str:
        return f"guidance_scale={self.guidance_scale}"
