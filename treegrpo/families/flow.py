"""The rectified-flow schedule shared by the flow families (SD3/SD3.5, FLUX.1, and those added after them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.timesteps import FlowTimesteps
from treegrpo.envs.transitions import Transition, flow_transition

if TYPE_CHECKING:
    from treegrpo.families.pipelines import TextToImageModel


def flow_match_transition(model: TextToImageModel, name: str, num_steps: int, noise_level: float, shift: float,
                          schedule: str, cps_scoring: str, image_size: int | None) -> Transition:
    """The stochastic step ``name`` on the pipeline's ``FlowMatchEulerDiscreteScheduler`` shifted by
    ``shift`` (``schedule="scheduler"``), or on a named schedule (``dancegrpo``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.pipeline.scheduler.config, shift=shift)
    timesteps = FlowTimesteps.named(schedule, num_steps, shift=shift, scheduler=scheduler)
    return flow_transition(name, timesteps, noise_level, cps_scoring=cps_scoring)


def token_shifted_transition(title: str) -> Callable[..., Transition]:
    """The transition of a pipeline whose ``scheduler`` schedule shifts with the image's token count, as
    FluxPipeline computes its sigmas and ``mu`` (QwenImagePipeline computes them the same way), on the
    pipeline's own scheduler config; a named schedule (``dancegrpo``) takes ``shift`` instead. ``title``
    names the family in the error for a missing image size."""

    def transition(model: TextToImageModel, name: str, num_steps: int, noise_level: float, shift: float,
                   schedule: str, cps_scoring: str, image_size: int | None) -> Transition:
        if schedule != "scheduler":
            return flow_match_transition(model, name, num_steps, noise_level, shift, schedule, cps_scoring,
                                         image_size)
        from diffusers import FlowMatchEulerDiscreteScheduler

        if image_size is None:
            raise ArgumentError(f"image_size: {title}'s schedule shifts with the image's token count; pass "
                                "transition(..., image_size=model.image_size)")
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.pipeline.scheduler.config)
        timesteps = FlowTimesteps.flux(scheduler, num_steps, image_seq_len=model.image_tokens(image_size))
        return flow_transition(name, timesteps, noise_level, cps_scoring=cps_scoring)

    return transition
