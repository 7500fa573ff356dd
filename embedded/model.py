"""The embedded base model: a tiny SD3 MMDiT over 16x16x1 pixels, its text encoder, and sampling.

The transformer is a real ``diffusers.SD3Transformer2DModel`` (rectified flow, velocity
prediction) with a few layers, so everything that drives it (``SD3Denoiser``, ``FlowSDE``, the
samplers, save/load through ``from_pretrained``) is the code path a full-size model uses.
Weights live in ``<root>/base/transformer`` (``save_pretrained``) and ``<root>/base/text_encoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from tensordict import TensorDict
from torch import Tensor

from treegrpo.embedded._files import WEIGHTS_DIR, require
from treegrpo.embedded.text import (
    TEXT_ENCODER_FILES,
    TinyTextEncoder,
    WordTokenizer,
    load_text_encoder,
    save_text_encoder,
)
from treegrpo.envs import FlowSDE, FlowTimesteps, GuidedDenoiser, SD3Denoiser, sample_forest

# Timestep shift of the flow schedule at sampling time (FlowMatchEulerDiscreteScheduler's ``shift``):
# the base's reported quality (MANIFEST.json) is measured with it, and the digits preset uses it.
DEFAULT_SHIFT = 1.0
DEFAULT_NUM_STEPS = 10
TRANSFORMER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def build_transformer(
    *,
    joint_attention_dim: int,
    pooled_projection_dim: int,
    size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 32,
) -> SD3Transformer2DModel:
    """A fresh random-weight SD3 transformer for ``1 x size x size`` pixel latents (patch size 2)."""
    return SD3Transformer2DModel(
        sample_size=size,
        patch_size=2,
        in_channels=1,
        out_channels=1,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=num_heads,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=num_heads * head_dim,
        pooled_projection_dim=pooled_projection_dim,
        pos_embed_max_size=size // 2,
    )


@dataclass
class DigitsBase:
    """The pretrained base: transformer, text encoder (with its tokenizer) and the denoiser adapter."""

    transformer: SD3Transformer2DModel
    text_encoder: TinyTextEncoder
    tokenizer: WordTokenizer
    denoiser: SD3Denoiser

    @classmethod
    def from_parts(cls, transformer: SD3Transformer2DModel, text_encoder: TinyTextEncoder) -> DigitsBase:
        if text_encoder.tokenizer is None:
            raise ValueError("text_encoder: needs a tokenizer")
        return cls(transformer, text_encoder, text_encoder.tokenizer, SD3Denoiser(transformer))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = int(self.transformer.config.sample_size)
        return (int(self.transformer.config.in_channels), size, size)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TensorDict:
        """Text conditioning for ``prompts`` (no gradients)."""
        return self.text_encoder.encode(list(prompts))

    def to(self, device: torch.device | str) -> DigitsBase:
        """Move both networks to ``device`` (in place); returns ``self``."""
        self.transformer.to(device)
        self.text_encoder.to(device)
        return self


def save_base(base: DigitsBase, directory: Path | str) -> None:
    """Write ``directory/transformer`` (``save_pretrained``) and ``directory/text_encoder``."""
    directory = Path(directory)
    base.transformer.save_pretrained(directory / "transformer")
    save_text_encoder(base.text_encoder, directory / "text_encoder")


def load_base(path: Path | str | None = None, device: torch.device | str = "cpu") -> DigitsBase:
    """Load a base saved by :func:`save_base`; ``path=None`` is the shipped ``weights/base``.

    Never downloads: the transformer goes through ``from_pretrained(local_dir, local_files_only=True)``.
    A missing file raises :class:`~treegrpo.embedded._files.MissingWeightsError` naming it and the
    command that makes it. Both networks come back in eval mode.
    """
    directory = Path(path) if path is not None else WEIGHTS_DIR / "base"
    require(directory, tuple(f"transformer/{name}" for name in TRANSFORMER_FILES), "base")
    require(directory, tuple(f"text_encoder/{name}" for name in TEXT_ENCODER_FILES), "base")
    transformer = SD3Transformer2DModel.from_pretrained(directory / "transformer", local_files_only=True)
    text_encoder = load_text_encoder(directory / "text_encoder")
    return DigitsBase.from_parts(transformer.eval(), text_encoder.eval()).to(device)


def sample_images(
    base: DigitsBase,
    prompts: Sequence[str],
    samples_per_prompt: int = 1,
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    shift: float = DEFAULT_SHIFT,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    max_batch: int | None = 256,
) -> Tensor:
    """ODE (Euler) samples as images ``[len(prompts) * n, 1, H, W]`` in ``[0, 1]``, prompt-major.

    ``guidance_scale`` applies classifier-free guidance against the empty prompt (two evaluations
    per row). Noise comes from ``generator`` (on the model's device).
    """
    cond = base.encode(prompts)
    model = base.denoiser
    if guidance_scale is not None:
        model = GuidedDenoiser(model, guidance_scale, base.encode([""]))
    transition = ode_transition(num_steps, shift)
    rollout = sample_forest(
        model, transition, cond, sde_steps=(), branching=(), trees_per_prompt=samples_per_prompt,
        latent_shape=base.latent_shape, generator=generator, max_batch=max_batch, device=cond.device,
    )
    return to_image(rollout.final)


def ode_transition(num_steps: int = DEFAULT_NUM_STEPS, shift: float = DEFAULT_SHIFT):
    """The flow transition the embedded default samples with (``FlowSDE``; its ODE step is plain Euler)."""
    return FlowSDE(FlowTimesteps.linear(num_steps, shift=shift), noise_level=0.0)


def to_image(latents: Tensor) -> Tensor:
    """Pixel latents in ``[-1, 1]`` to images in ``[0, 1]`` (clamped)."""
    return ((latents + 1) / 2).clamp(0, 1)
