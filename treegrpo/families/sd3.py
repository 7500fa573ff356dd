"""Stable Diffusion 3 / 3.5 (``model.kind = sd3``): an MMDiT over CLIP-L, CLIP-G and an optional T5."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from treegrpo.envs.models import SD3Denoiser
from treegrpo.families.base import ModelFamily, register_family
from treegrpo.families.flow import flow_match_transition


def encode(pipeline: Any, prompts: list[str], device: torch.device, max_sequence_length: int) -> dict[str, Tensor]:
    """Joint CLIP+T5 tokens ``[B, S, D]`` and the pooled CLIP vectors ``[B, P]`` (no CFG branch)."""
    embeds, _, pooled, _ = pipeline.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=max_sequence_length)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def load_options(t5: bool) -> dict[str, Any]:
    """Without T5 the pipeline loads with no third encoder: its tokens become zeros, as diffusers does."""
    return {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}


SD3 = register_family(ModelFamily(
    name="sd3",
    title="SD3",
    pipeline="StableDiffusion3Pipeline",
    network="transformer",
    network_class="SD3Transformer2DModel",
    required=("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    optional=("text_encoder_3", "tokenizer_3"),
    denoiser=SD3Denoiser,
    encode=encode,
    transition=flow_match_transition,
    t5="optional",
    t5_folders=("text_encoder_3", "tokenizer_3"),
    load_options=load_options,
    # the paper's setting; only what a 16-pixel digits default would get wrong
    preset=("model.rewards=hpsv2", "model.image_size=512", "sampling.prompts_per_iteration=32",
            "train.out_dir=runs/sd3"),
    reads=("model", "flow_schedule", "pipeline", "t5", "sequence"),
))
