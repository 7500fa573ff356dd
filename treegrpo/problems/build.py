"""``build_problem(config)``: the problem ``model.kind`` names, checked before any weights load.

Each kind registers, in one :func:`register_problem` call, a builder ``(config, **options) -> Problem``,
its preset (declared next to its problem) and the kind-specific options it reads; the built-in ones are
``digits``, one per registered diffusers family (:func:`treegrpo.families.families`, each with the preset
and options its :class:`~treegrpo.families.ModelFamily` declares) and ``toy2d``. Registering a kind makes
its name a value of ``model.kind`` (:data:`treegrpo.kinds.KINDS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from treegrpo.config import Config
from treegrpo.devices import local_device
from treegrpo.envs.transitions import FLOW_TRANSITIONS, Transition
from treegrpo.errors import ConfigError, renamed_fields
from treegrpo.families import ModelFamily, families
from treegrpo.kinds import FLOW_SCHEDULE, KINDS, MODEL_OPTIONS, OPTION_GROUPS, KindOptions, ModelKind
from treegrpo.problems.base import SAMPLING_ARGUMENTS, Problem
from treegrpo.problems.digits import PRESET as DIGITS_PRESET
from treegrpo.problems.toy2d import PRESET as TOY2D_PRESET
from treegrpo.uses import Use

ProblemBuilder = Callable[..., Problem]
"""``(config, *, fuse_model_lora=True) -> Problem`` (``fuse_model_lora``: pipelines fuse ``model.lora``
unless ``treegrpo eval`` scores the weights without it first; other kinds ignore it)."""


def register_problem(kind: str, builder: ProblemBuilder, *, preset: tuple[str, ...] = (),
                     reads: tuple[KindOptions, ...] = (), uses: tuple[Use, ...] = (),
                     replace: bool = False) -> ProblemBuilder:
    """Make ``model.kind = kind`` build its problem with ``builder(config, **options)``: ``kind``
    becomes a value of ``model.kind``, starting from ``preset`` (``section.field=value`` assignments
    over ``Config()``), and reading the kind-specific option groups ``reads`` (and ``uses``, options
    it reads only under a condition); see :class:`treegrpo.kinds.ModelKind`. Registering a kind again
    with another builder needs ``replace=True``."""
    KINDS.add(kind, ModelKind(kind, builder, tuple(preset), tuple(reads), tuple(uses)), replace=replace)
    return builder


def build_problem(config: Config, **options: Any) -> Problem:
    """The problem named by ``model.kind``; its step count is ``sampling.num_steps`` by construction.

    ``options`` go to the kind's builder (``fuse_model_lora=False`` for pipelines: see
    :func:`~treegrpo.problems.text_to_image.build_pipeline_problem`).

    Examples:
        >>> from treegrpo.config import Config
        >>> from treegrpo.problems import build_problem
        >>> problem = build_problem(Config().override(["model.kind=toy2d", "sampling.num_steps=8"]))
        >>> problem.transition.num_steps, problem.latent_shape
        (8, (2,))
        >>> build_problem(Config().override(["model.kind=nowhere"]))
        Traceback (most recent call last):
        ...
        treegrpo.errors.ConfigError: model.kind: expected one of ...
    """
    config.validate()
    kind = config.model.kind
    if kind not in KINDS or KINDS[kind].builder is None:
        raise ConfigError(f"model.kind: expected one of {', '.join(map(repr, KINDS.names()))}, got {kind!r}")
    check_step_numbers(config)  # before any weights load
    return KINDS[kind].builder(config, **options)


def check_flow_transition(config: Config, model: str) -> None:
    """Flow models take a flow transition (``ddim`` is for DDPM-trained models)."""
    name = config.sampling.transition
    if name not in FLOW_TRANSITIONS:
        raise ConfigError(f"sampling.transition: the {model} model is a flow model; expected one of "
                          f"{', '.join(FLOW_TRANSITIONS)}, got {name!r}")


def check_step_numbers(config: Config, transition: Transition | None = None) -> None:
    """Refuse settings whose SDE steps are not finite numbers (a huge noise level, a shift so small
    that ``t`` underflows), before any model loads: the steps of ``transition``, or of the one the
    config describes on a default scheduler, are evaluated at ``x = v = 1``."""
    s = config.sampling
    if transition is None:
        from treegrpo.envs import DDIM, DDIMTimesteps, FlowTimesteps, flow_transition

        if s.transition == "ddim":
            from diffusers import DDIMScheduler

            transition = DDIM(DDIMTimesteps.from_scheduler(DDIMScheduler(), s.num_steps), eta=s.noise_level)
        else:
            timesteps = FlowTimesteps.named(s.schedule, s.num_steps, shift=s.shift)
            transition = flow_transition(s.transition, timesteps, s.noise_level, cps_scoring=s.cps_scoring)
    step = torch.arange(transition.num_steps)
    ones = torch.ones(step.shape[0], 4)
    mean, std = transition.mean_std(ones, ones, step)
    std = torch.as_tensor(std).expand(step.shape[0], 1) if torch.as_tensor(std).dim() else torch.as_tensor(std)
    bad = ~(torch.isfinite(mean).all(-1) & torch.isfinite(std).reshape(step.shape[0], -1).all(-1))
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        raise ConfigError(f"sampling.noise_level: {s.noise_level} with sampling.shift={s.shift} gives a non-finite SDE "
                          f"step at step {first} of sampling.transition={s.transition} (its std or mean overflows); "
                          "use a noise level near 1 (Flow-GRPO: 0.7) and a shift near 1-3")


SHARED_FIELDS = {**{name: option for option, name in SAMPLING_ARGUMENTS.items()}, "eval_num_steps": "eval.num_steps",
                 "prompts_per_iteration": "sampling.prompts_per_iteration"}
"""The Python builders' arguments to the options they are read from (errors name the option)."""
DIGITS_FIELDS = {**SHARED_FIELDS, "rewards": "model.rewards", "eval_rewards": "eval.rewards",
                 "guidance_scale": "sampling.guidance_scale", "weights": "model.path", "eval_count": "model.eval_count"}


def _toy2d(config: Config, *, fuse_model_lora: bool = True) -> Problem:
    from treegrpo.problems.toy2d import toy2d_problem
    from treegrpo.rewards import check_reward_names

    s = config.sampling
    check_flow_transition(config, "toy2d")
    check_reward_names(config.eval.rewards, "eval.rewards", kind="toy2d")
    with renamed_fields(SHARED_FIELDS):
        return toy2d_problem(s.num_steps, s.noise_level, prompts_per_iteration=s.prompts_per_iteration,
                             seed=config.train.seed, eval_num_steps=config.eval.num_steps, shift=s.shift,
                             transition=s.transition, schedule=s.schedule)


def _digits(config: Config, *, fuse_model_lora: bool = True) -> Problem:
    from treegrpo.problems.digits import digits_problem

    s = config.sampling
    check_flow_transition(config, "digits")
    with renamed_fields(DIGITS_FIELDS):
        return digits_problem(num_steps=s.num_steps, noise_level=s.noise_level, shift=s.shift,
                              transition=s.transition, prompts_per_iteration=s.prompts_per_iteration,
                              rewards=config.model.rewards, guidance_scale=s.guidance_scale,
                              weights=config.model.path or None, eval_rewards=config.eval.rewards,
                              eval_num_steps=config.eval.num_steps, eval_count=config.model.eval_count,
                              schedule=s.schedule, cps_scoring=s.cps_scoring,
                              device=local_device(config.train.device))


def _pipeline(config: Config, *, fuse_model_lora: bool = True) -> Problem:
    from treegrpo.problems.text_to_image import build_pipeline_problem

    return build_pipeline_problem(config, fuse_model_lora=fuse_model_lora)


register_problem("digits", _digits, preset=DIGITS_PRESET, reads=(MODEL_OPTIONS, FLOW_SCHEDULE))
def register_family_kind(family: ModelFamily, *, replace: bool = False) -> ProblemBuilder:
    """Register ``model.kind = family.name`` with the preset, option groups and conditional options the
    family declares, its samples scored by the rewards of its modality."""
    from treegrpo.rewards import declare_modality

    unknown = [name for name in family.reads if name not in OPTION_GROUPS]
    if unknown:
        raise ValueError(f"{family.name}: reads names an unknown option group {unknown[0]!r}; expected one of "
                         f"{', '.join(OPTION_GROUPS)}")
    declare_modality(family.name, family.modality)
    return register_problem(family.name, _pipeline, preset=family.preset,
                            reads=tuple(OPTION_GROUPS[name] for name in family.reads),
                            uses=tuple(Use(*use) for use in family.uses), replace=replace)


for _family in families():  # one kind per registered family, with the preset and options it declares
    register_family_kind(_family)
register_problem("toy2d", _toy2d, preset=TOY2D_PRESET, reads=(FLOW_SCHEDULE,))
