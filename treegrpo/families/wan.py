"""Wan2.1 text-to-video (``model.kind = wan``): a 3-D flow transformer over video latents, prompted through UMT5.

Latents are ``x [B, C, F, H, W]``: ``C = 16`` VAE channels, ``F = (num_frames - 1) / 4 + 1`` latent
frames (the VAE's causal 4x temporal compression keeps the first frame on its own), ``H, W`` the
pixel sides over 8. The samplers see them as any other ``[B, *latent_shape]`` tensor: the
transitions and log-densities reduce over every non-batch dimension, so the trees, losses and
on-policy checks run unchanged.

Schedule: Wan2.1 ships a ``UniPCMultistepScheduler`` on flow sigmas (``flow_shift`` 3 at 480p, 5 at
720p), a multistep solver with no one-step transition density. As Flow-GRPO trains Wan2.1
(``scripts/train_wan2_1.py``: its SDE step reads ``pipeline.scheduler.sigmas``), the stochastic step is
the flow SDE/ODE step (:func:`~treegrpo.envs.transitions.flow_transition`) on the sigmas and timesteps
of the pipeline's own scheduler, so on its shift (``sampling.shift`` is read only with
``sampling.schedule=dancegrpo``); see :func:`scheduler_timesteps` for UniPC's first sigma. With a
``FlowMatchEulerDiscreteScheduler`` in the pipeline the ODE step is exactly that scheduler's Euler step,
which the tests compare with ``WanPipeline.__call__``.

Decoding de-normalises the latents by the VAE's ``latents_mean``/``latents_std`` as the pipeline does
and returns videos ``[B, F, 3, H, W]`` in ``[0, 1]`` (``modality = "video"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.models import Cond, Denoiser, _field, _module_dtype
from treegrpo.envs.timesteps import FlowTimesteps
from treegrpo.envs.transitions import Transition, flow_transition
from treegrpo.families.base import ModelFamily, register_family
from treegrpo.families.video_vae import decode_video_latents

if TYPE_CHECKING:
    from treegrpo.families.pipelines import TextToImageModel

__all__ = ["WAN", "WanDenoiser", "check_wan21", "decode", "encode", "latent_shape", "pipeline_shift",
           "scheduler_timesteps", "transition"]


class WanDenoiser(Denoiser):
    """Adapter for diffusers' ``WanTransformer3DModel`` (velocity prediction) on ``x [B, C, F, H, W]``.

    ``cond`` is a TensorDict with ``encoder_hidden_states [B, S, D]`` (UMT5 tokens, zero past each
    prompt's end, as :meth:`TextToImageModel.encode` gives them for ``kind="wan"``). The latents and
    the text are cast to the transformer's dtype as ``WanPipeline`` does; the timestep goes in as
    float32 (the pipeline passes the scheduler's value, which the time embedding reads as float32).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        dtype = _module_dtype(self.transformer)
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t.to(torch.float32),
            encoder_hidden_states=_field(cond, "encoder_hidden_states", "WanDenoiser").to(dtype),
            return_dict=False,
        )[0]


def encode(pipeline: Any, prompts: list[str], device: torch.device, max_sequence_length: int) -> dict[str, Tensor]:
    """UMT5 tokens ``[B, S, D]`` through ``WanPipeline.encode_prompt`` (no CFG branch)."""
    embeds, _ = pipeline.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=device,
                                       max_sequence_length=max_sequence_length)
    return {"encoder_hidden_states": embeds}


def pipeline_shift(scheduler: Any) -> float:
    """The shift of a Wan pipeline's scheduler: ``flow_shift`` (UniPC on flow sigmas, as Wan2.1 ships)
    or ``shift`` (``FlowMatchEulerDiscreteScheduler``)."""
    config = scheduler.config
    return float(config.get("flow_shift") or config.get("shift") or 1.0)


def scheduler_timesteps(scheduler: Any, num_steps: int) -> FlowTimesteps:
    """The sigmas and model timesteps of the pipeline's own scheduler at ``num_steps`` steps (Wan2.1's UniPC:
    ``linspace(1, 1/1000, T + 1)[:-1]`` shifted by ``flow_shift``, integer timesteps), its first sigma put
    back to 1 where UniPC moved it to ``1 - 1e-6`` (a guard of its multistep solver's ``log alpha``): there
    the flow SDE's noise scale ``a sqrt(t / (1 - t))`` would be about ``1000 a`` instead of its ``t = 1`` rule."""
    if scheduler.config.get("use_flow_sigmas") is False:
        raise ArgumentError(f"model.path: the pipeline's {type(scheduler).__name__} does not run on flow sigmas "
                            "(use_flow_sigmas=false); Wan2.1 ships UniPCMultistepScheduler with use_flow_sigmas=true")
    timesteps = FlowTimesteps.from_scheduler(scheduler, num_steps)
    sigmas = timesteps.sigmas.clone()
    if 1 - 1e-5 < float(sigmas[0]) < 1:
        sigmas[0] = 1.0
    return FlowTimesteps(sigmas=sigmas, model_times=timesteps.model_times)


def check_wan21(pipeline: Any) -> None:
    """Refuse, in one line, a Wan2.2 pipeline: a second low-noise expert (``boundary_ratio``) or per-token
    timesteps (``expand_timesteps``, TI2V) are not the one-network denoiser this family samples."""
    config = pipeline.config
    if config.get("boundary_ratio") is not None or getattr(pipeline, "transformer_2", None) is not None:
        raise ArgumentError("model.path: a Wan2.2 pipeline with two experts (transformer_2, boundary_ratio) is not "
                            "supported; model.kind=wan trains Wan2.1's single transformer")
    if config.get("expand_timesteps"):
        raise ArgumentError("model.path: a Wan2.2 TI2V pipeline (expand_timesteps=true) is not supported; "
                            "model.kind=wan trains Wan2.1's single transformer")


def transition(model: TextToImageModel, name: str, num_steps: int, noise_level: float, shift: float,
               schedule: str, cps_scoring: str, image_size: int | None) -> Transition:
    """The step ``name`` on the pipeline scheduler's own schedule and shift (``schedule="scheduler"``, as
    Flow-GRPO samples Wan2.1: :func:`scheduler_timesteps`), or on a named schedule with ``shift`` (``dancegrpo``)."""
    check_wan21(model.pipeline)
    if schedule == "scheduler":
        timesteps = scheduler_timesteps(model.pipeline.scheduler, num_steps)
    else:
        timesteps = FlowTimesteps.named(schedule, num_steps, shift=shift)
    return flow_transition(name, timesteps, noise_level, cps_scoring=cps_scoring)


def latent_frames(model: TextToImageModel) -> int:
    """Latent frames of ``model.num_frames``-frame videos: ``(num_frames - 1) / temporal + 1``."""
    temporal = int(model.pipeline.vae_scale_factor_temporal)
    frames = model.num_frames
    if frames < 1 or (frames - 1) % temporal:
        suggestion = max(1, (frames - 1) // temporal * temporal + 1)
        raise ArgumentError(f"model.num_frames: {frames} is not 1 + a multiple of {temporal} (the Wan VAE's "
                            f"temporal compression); use e.g. {suggestion}")
    return (frames - 1) // temporal + 1


def latent_shape(model: TextToImageModel, image_size: int) -> tuple[int, ...]:
    """``(C, F, H, W)`` of one ``image_size``-pixel square, ``model.num_frames``-frame video's latents."""
    spatial = int(model.pipeline.vae_scale_factor_spatial)
    patch = tuple(int(p) for p in model.network.config.patch_size)  # (frames, rows, columns)
    multiple = spatial * max(patch[1], patch[2], 2)  # WanPipeline also asks for multiples of 16
    if image_size % multiple:
        raise ArgumentError(f"model.image_size: expected a multiple of {multiple} for this pipeline (its VAE's "
                            f"{spatial}x times its {patch[1]}x{patch[2]} patches), got {image_size}")
    side = image_size // spatial
    return (int(model.network.config.in_channels), latent_frames(model), side, side)


def decode(model: TextToImageModel, latents: Tensor) -> Tensor:
    """Videos ``[B, F, 3, H, W]`` float32 in ``[0, 1]`` (:func:`~treegrpo.families.video_vae.decode_video_latents`)."""
    return decode_video_latents(model, latents).permute(0, 2, 1, 3, 4)


WAN = register_family(ModelFamily(
    name="wan",
    title="Wan2.1",
    pipeline="WanPipeline",
    network="transformer",
    network_class="WanTransformer3DModel",
    required=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    denoiser=WanDenoiser,
    encode=encode,
    transition=transition,
    t5="required",
    t5_folders=("text_encoder", "tokenizer"),
    text_encoders=("text_encoder",),
    modality="video",
    latent_shape=latent_shape,
    decode=decode,
    preset=("model.rewards=hpsv2_frames", "model.image_size=480", "model.num_frames=81",
            "model.max_sequence_length=512", "train.out_dir=runs/wan"),
    reads=("model", "flow_schedule", "pipeline", "t5", "sequence", "video"),
))
"""Wan2.1 text-to-video, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``."""
