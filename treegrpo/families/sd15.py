"""Stable Diffusion 1.5-style UNets (``model.kind = sd15``): epsilon prediction, sampled with DDIM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from treegrpo.envs.models import UNetDenoiser
from treegrpo.envs.timesteps import DDIMTimesteps
from treegrpo.envs.transitions import DDIM, Transition
from treegrpo.families.base import ModelFamily, register_family

if TYPE_CHECKING:
    from treegrpo.families.pipelines import TextToImageModel


def encode(pipeline: Any, prompts: list[str], device: torch.device, max_sequence_length: int) -> dict[str, Tensor]:
    """CLIP's last hidden states ``[B, 77, D]`` (no pooled vector, no CFG branch)."""
    embeds, _ = pipeline.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": embeds}


def transition(model: TextToImageModel, name: str, num_steps: int, noise_level: float, shift: float,
               schedule: str, cps_scoring: str, image_size: int | None) -> Transition:
    """DDIM with ``eta = noise_level`` on the pipeline's own schedule (``shift`` and ``schedule`` do not apply)."""
    from diffusers import DDIMScheduler

    if name != "ddim":
        raise ValueError(f"sampling.transition: an SD1.5-style model samples with 'ddim', got {name!r}")
    # SD1.5 ships clip_sample=false; the DDIM transition never clips the predicted x0, so neither may the schedule.
    scheduler = DDIMScheduler.from_config(model.pipeline.scheduler.config, clip_sample=False)
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"scheduler.prediction_type: the DDIM transition needs 'epsilon', got "
                         f"{scheduler.config.prediction_type!r}")
    return DDIM(DDIMTimesteps.from_scheduler(scheduler, num_steps), eta=noise_level)


def load_options(t5: bool) -> dict[str, Any]:
    """No safety checker: the policy's samples are scored by rewards, not filtered."""
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


SD15 = register_family(ModelFamily(
    name="sd15",
    title="SD1.5",
    pipeline="StableDiffusionPipeline",
    network="unet",
    network_class="UNet2DConditionModel",
    required=("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    denoiser=UNetDenoiser,
    encode=encode,
    transition=transition,
    load_options=load_options,
    preset=("model.rewards=hpsv2", "model.image_size=512", "sampling.prompts_per_iteration=32",
            "sampling.transition=ddim", "sampling.noise_level=1.0", "train.out_dir=runs/sd15"),
    reads=("model", "pipeline"),
))
