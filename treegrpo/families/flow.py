"""The rectified-flow schedule shared by the flow families (SD3/SD3.5, FLUX.1, and those added after them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
