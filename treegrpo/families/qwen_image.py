"""Qwen-Image (``model.kind = qwen_image``): an MMDiT over packed 2x2 latent patches, prompted through
the last hidden states of a Qwen2.5-VL language model, with true classifier-free guidance.

What differs from FLUX.1, each as ``QwenImagePipeline.__call__`` does it:

- conditioning: ``prompt_embeds [B, S, D]`` (the hidden states after the chat template's 34 tokens)
  and ``prompt_embeds_mask [B, S]``; :func:`encode` pads both to ``max_sequence_length`` tokens so
  embeddings of any prompt stack and cache, and :class:`QwenImageDenoiser` drops the columns no row
  uses before each forward (padding is masked out of attention and sits after every text position,
  so the velocity is the pipeline's);
- the transformer packs the 2x2 patches itself in its config (``patch_size = 2``, ``in_channels = 4C``):
  the family's ``pack`` is 1 and ``patch_size`` counts the packing; the adapter packs as FLUX's does
  and passes ``img_shapes = [(1, H/2, W/2)]`` per row for the rotary positions;
- the VAE is video-style (``AutoencoderKLQwenImage``): latents are ``[B, C, 1, H, W]`` and normalised
  by the per-channel ``latents_mean`` / ``latents_std`` instead of a scaling factor (:func:`decode`);
  its spatial factor is ``2^len(temperal_downsample)`` (:func:`latent_shape`);
- the ``scheduler`` schedule is FluxPipeline's algorithm (``linspace(1, 1/T, T)`` shifted by ``mu``
  from the image's token count) on Qwen-Image's scheduler config (exponential time shift, shifts
  0.5 .. 0.9 over 256 .. 8192 tokens, ``shift_terminal``), read from the pipeline folder;
- guidance: ``sampling.guidance_scale`` is the pipeline's ``true_cfg_scale`` (two forwards per row
  against the negative prompt), with its per-token rescaling of the guided velocity to the norm of
  the conditional one (:class:`QwenImageCFG`). The network takes no guidance embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.flux import pack_latents, unpack_latents
from treegrpo.envs.models import Cond, Denoiser, GuidedDenoiser, _cat, _field, _module_dtype
from treegrpo.families.base import ModelFamily, register_family
from treegrpo.families.flow import token_shifted_transition
from treegrpo.families.video_vae import decode_video_latents

if TYPE_CHECKING:
    from treegrpo.families.pipelines import TextToImageModel

__all__ = ["QWEN_IMAGE", "QwenImageCFG", "QwenImageDenoiser", "decode", "encode", "latent_shape", "transition"]

TIME_SCALE = 1000.0
"""QwenImagePipeline passes ``timestep / 1000`` to the transformer."""
MAX_PROMPT_TOKENS = 1024
"""The longest ``max_sequence_length`` QwenImagePipeline accepts."""


def _text_columns(mask: Tensor) -> tuple[int, Tensor | None]:
    """How many leading text columns any row uses, and the mask over them (``None`` when every
    kept token is valid, as the pipeline passes it)."""
    valid = mask.detach().to("cpu", torch.bool)  # one transfer: the shapes below are Python ints
    used = valid.any(0).nonzero()
    columns = int(used.max()) + 1 if used.numel() else 1
    kept = mask[:, :columns].to(torch.bool)
    return columns, None if bool(valid[:, :columns].all()) else kept


class QwenImageDenoiser(Denoiser):
    """Adapter for diffusers' ``QwenImageTransformer2DModel`` (velocity) on unpacked latents ``[B, C, H, W]``.

    ``cond`` is a TensorDict with ``prompt_embeds [B, S, D]`` and ``prompt_embeds_mask [B, S]``
    (1 for a prompt token, 0 for padding), as :func:`encode` gives them. Text columns no row uses are
    dropped before the forward; inputs are cast to the transformer's dtype, the timestep divided by
    1000 as the pipeline does; the transition casts the velocity back to float32.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = _module_dtype(self.transformer)
        batch, _, height, width = x.shape
        embeds = _field(cond, "prompt_embeds", "QwenImageDenoiser")
        columns, mask = _text_columns(_field(cond, "prompt_embeds_mask", "QwenImageDenoiser"))
        velocity = self.transformer(
            hidden_states=pack_latents(x).to(dtype),  # [B, (H/2)(W/2), 4C]
            timestep=t.to(dtype) / TIME_SCALE,
            guidance=None,
            encoder_hidden_states=embeds[:, :columns].to(dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, height // 2, width // 2)]] * batch,
            return_dict=False,
        )[0]
        return unpack_latents(velocity, height, width)  # [B, C, H, W]


class QwenImageCFG(GuidedDenoiser):
    """QwenImagePipeline's true classifier-free guidance: ``g = u + s (c - u)``, then each packed
    token (a 2x2 patch of all channels) of ``g`` rescaled to the norm of the same token of ``c``.

    One batched call on ``[uncond; cond]`` (two model evaluations per row); ``uncond`` is the
    negative prompt's conditioning with leading dim 1.
    """

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        uncond = self.uncond.to(x.device).expand(x.shape[0], *self.uncond.shape[1:])
        both = _cat(uncond, cond)
        unconditional, conditional = self.model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        height, width = x.shape[-2:]
        guided = pack_latents(unconditional + self.guidance_scale * (conditional - unconditional))
        target = pack_latents(conditional).norm(dim=-1, keepdim=True)
        return unpack_latents(guided * (target / guided.norm(dim=-1, keepdim=True)), height, width)


class QwenImageFamily(ModelFamily):
    """:class:`ModelFamily` with Qwen-Image's guidance: its true CFG, rescaled (:class:`QwenImageCFG`)."""

    def guided_denoiser(self, model: TextToImageModel, guidance_scale: float, uncond: Callable[[], Cond],
                        true_cfg_scale: float = 1.0) -> Denoiser:
        """``guidance_scale`` is QwenImagePipeline's ``true_cfg_scale`` (none at 1)."""
        if true_cfg_scale != 1.0:
            raise ArgumentError(f"true_cfg_scale: {true_cfg_scale} given, but Qwen-Image's true CFG scale is "
                                "guidance_scale here (sampling.guidance_scale; its network takes no distilled guidance)")
        if guidance_scale == 1.0:
            return model.denoiser
        return QwenImageCFG(model.denoiser, guidance_scale, uncond())


def encode(pipeline: Any, prompts: list[str], device: torch.device, max_sequence_length: int) -> dict[str, Tensor]:
    """The text encoder's hidden states ``[B, S, D]`` after the chat template and their mask ``[B, S]``
    (int64), zero-padded to ``S = max_sequence_length`` so every prompt's row has one shape."""
    if max_sequence_length > MAX_PROMPT_TOKENS:
        raise ArgumentError(f"model.max_sequence_length: Qwen-Image reads at most {MAX_PROMPT_TOKENS} prompt tokens, "
                            f"got {max_sequence_length}")
    embeds, mask = pipeline.encode_prompt(prompt=prompts, device=device, max_sequence_length=max_sequence_length)
    if mask is None:  # the pipeline drops an all-ones mask
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    pad = max_sequence_length - embeds.shape[1]
    embeds = torch.nn.functional.pad(embeds, (0, 0, 0, pad))
    mask = torch.nn.functional.pad(mask.long(), (0, pad))
    return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}


transition = token_shifted_transition("Qwen-Image")
"""QwenImagePipeline's resolution-shifted schedule (``scheduler``), or a named one with ``shift``."""


def latent_shape(model: TextToImageModel, image_size: int) -> tuple[int, ...]:
    """``(C, H, W)`` unpacked latents: ``C = in_channels / 4``, the side divided by the VAE's factor
    (``2^len(temperal_downsample)``); the side must be a multiple of twice that factor (2x2 packing)."""
    factor = int(model.pipeline.vae_scale_factor)
    multiple = 2 * factor
    if image_size % multiple:
        raise ArgumentError(f"model.image_size: expected a multiple of {multiple} for this pipeline, got {image_size}")
    side = image_size // factor
    return (int(model.network.config.in_channels) // 4, side, side)


def decode(model: TextToImageModel, latents: Tensor) -> Tensor:
    """Images ``[B, 3, H, W]`` in ``[0, 1]``: the latents decoded as one-frame videos ``[B, C, 1, H, W]``."""
    return decode_video_latents(model, latents[:, :, None])[:, :, 0]


QWEN_IMAGE = register_family(QwenImageFamily(
    name="qwen_image",
    title="Qwen-Image",
    pipeline="QwenImagePipeline",
    network="transformer",
    network_class="QwenImageTransformer2DModel",
    required=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    denoiser=QwenImageDenoiser,
    encode=encode,
    transition=transition,
    pack=1,  # the transformer's patch_size (2) already counts the 2x2 packing
    text_encoders=("text_encoder",),
    modality="image",
    latent_shape=latent_shape,
    decode=decode,
    preset=("model.rewards=hpsv2", "model.image_size=512", "sampling.guidance_scale=4.0",
            "train.out_dir=runs/qwen_image"),
    reads=("model", "flow_schedule", "pipeline", "sequence"),
    # like FLUX.1, the scheduler schedule shifts with the image's token count: sampling.shift only with dancegrpo
    uses=((("sampling.shift",), lambda c: c.sampling.schedule == "dancegrpo",
           ("a model.kind other than qwen_image, or sampling.schedule=dancegrpo (Qwen-Image samples on its "
            "scheduler's own shift)"), "schedule"),),
))
