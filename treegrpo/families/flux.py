"""FLUX.1 (``model.kind = flux``): a flow transformer over packed 2x2 latent patches, prompted through T5
and CLIP's pooled vector, with distilled guidance (dev) or none (schnell).

Latents stay unpacked like SD3's; :class:`~treegrpo.envs.flux.FluxDenoiser` packs them for the
transformer. The ``scheduler`` schedule is FluxPipeline's own, whose shift depends on the image's
token count, so the transition needs the image size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from treegrpo.envs.flux import FluxDenoiser, has_distilled_guidance
from treegrpo.families.base import ModelFamily, register_family
from treegrpo.families.flow import token_shifted_transition


def encode(pipeline: Any, prompts: list[str], device: torch.device, max_sequence_length: int) -> dict[str, Tensor]:
    """T5 tokens ``[B, S, 4096]`` and CLIP's pooled output ``[B, 768]`` (the text ids are zeros)."""
    embeds, pooled, _ = pipeline.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                               max_sequence_length=max_sequence_length)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


transition = token_shifted_transition("FLUX.1")
"""FluxPipeline's resolution-shifted schedule (``scheduler``), or a named one with ``shift``."""


FLUX = register_family(ModelFamily(
    name="flux",
    title="FLUX.1",
    pipeline="FluxPipeline",
    network="transformer",
    network_class="FluxTransformer2DModel",
    required=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    denoiser=FluxDenoiser,
    encode=encode,
    transition=transition,
    pack=2,
    t5="required",
    t5_folders=("text_encoder_2", "tokenizer_2"),
    distilled_guidance=has_distilled_guidance,
    guided=FluxDenoiser,
    preset=("model.rewards=hpsv2", "model.image_size=512", "model.max_sequence_length=512",
            "sampling.prompts_per_iteration=32", "sampling.guidance_scale=3.5", "train.out_dir=runs/flux"),
    reads=("model", "flow_schedule", "pipeline", "t5", "sequence", "true_cfg"),
    # FLUX.1 samples on its scheduler's own shift: sampling.shift is read only with DanceGRPO's schedule
    uses=((("sampling.shift",), lambda c: c.sampling.schedule == "dancegrpo",
           ("a model.kind other than flux, or sampling.schedule=dancegrpo (FLUX.1 samples on its scheduler's own "
            "shift)"), "schedule"),),
))
