"""Decoding through a Wan-style video VAE (``AutoencoderKLWan``, ``AutoencoderKLQwenImage``), shared by the
families that use one: Wan2.1 decodes videos, Qwen-Image one-frame videos."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def decode_video_latents(model: Any, latents: Tensor) -> Tensor:
    """``[B, 3, F, H, W]`` float32 in ``[0, 1]`` from latents ``[B, C, F, h, w]`` of ``model``'s pipeline:
    de-normalised by the VAE's per-channel ``latents_mean``/``latents_std`` as ``WanPipeline`` and
    ``QwenImagePipeline`` write it (the reciprocal std taken in the VAE's dtype), ``model.vae_batch`` rows
    per VAE call."""
    vae = model.pipeline.vae
    shape = (1, int(vae.config.z_dim), 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(vae.device, vae.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(vae.device, vae.dtype)
    pixels = [vae.decode(chunk.to(vae.device, vae.dtype) / inverse_std + mean, return_dict=False)[0].float()
              for chunk in latents.split(model.vae_batch)]
    return (torch.cat(pixels) / 2 + 0.5).clamp(0, 1)
