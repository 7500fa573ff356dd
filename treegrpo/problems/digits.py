"""The embedded default as a training :class:`~treegrpo.problems.base.Problem` (``model.kind=digits``).

The shipped base (a tiny SD3 transformer over 16x16 digits) is the policy; its frozen text
encoder turns each prompt into SD3-shaped conditioning once, up front. Rewards score decoded
images against the prompted digit; evaluation samples the held-out prompt templates and reports
every offline reward, so training on one reward shows what it does to the others.

    problem = digits_problem(rewards=("classifier", "aesthetic_proxy"))
    Trainer(problem, config).fit()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from treegrpo.envs import FlowTimesteps, GuidedDenoiser, Transition, gather_cond
from treegrpo.envs.transitions import flow_transition as make_flow_transition
from treegrpo.errors import renamed_fields
from treegrpo.problems.base import SAMPLING_ARGUMENTS, Problem
from treegrpo.rewards import RewardModel, build_reward, check_reward_names
from treegrpo.rewards.diversity import embedding_diversity, pixel_diversity

# The embedded model (treegrpo.embedded, which imports diffusers and registers the digits rewards) is
# imported by the functions that build the problem, so registering the kind costs no import time.

PRESET: tuple[str, ...] = (
    "model.rewards=classifier,aesthetic_proxy", "loss.reward_weights=0.7,0.3", "sampling.shift=1.0",
    "sampling.prompts_per_iteration=8", "optim.lr=2e-5", "loss.clip_range=1e-2", "loss.kl_coef=0.15",
    "train.iterations=100", "train.out_dir=runs/digits",
)
"""The digits preset (``model.kind=digits``) over ``Config()``: thousands of times smaller than the
paper's SD3.5 setting, it trains for minutes, so it raises the learning rate and the clip range and
sets the run length."""


def flow_transition(name: str, num_steps: int, shift: float, noise_level: float, *, schedule: str = "scheduler",
                    cps_scoring: str = "flow_grpo") -> Transition:
    """The stochastic flow step named ``name`` on ``num_steps`` timesteps of ``schedule`` (``scheduler``:
    a default ``FlowMatchEulerDiscreteScheduler(shift)``; ``dancegrpo``: DanceGRPO's)."""
    timesteps = FlowTimesteps.named(schedule, num_steps, shift=shift)
    return make_flow_transition(name, timesteps, noise_level, cps_scoring=cps_scoring)


def reward_models(names: Sequence[str], weights: Path | None, field: str = "rewards") -> list[RewardModel]:
    """The digits rewards ``names`` from the one registry (``weights``: the folder holding the
    classifier's and the judge's, ``None`` for the shipped ones); ``field`` names the argument in errors."""
    import treegrpo.embedded  # noqa: F401 - registers the digits rewards

    check_reward_names(names, field, kind="digits")
    return [build_reward(name, kind="digits", root=weights) for name in names]


def digits_diversity(judge_weights: Path | None = None) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    """Per-prompt diversity of digit samples: ``pixel`` (the per-pixel std across a prompt's samples,
    averaged) and ``features`` (the mean pairwise distance of the judge's unit-normalised
    penultimate features)."""
    from treegrpo.embedded.judge import load_judge
    from treegrpo.embedded.model import to_image

    judges: dict[torch.device, torch.nn.Module] = {}

    @torch.no_grad()
    def diversity(final: Tensor, prompt_ids: Tensor) -> dict[str, Tensor]:
        images = to_image(final)
        if images.device not in judges:
            judges[images.device] = load_judge(judge_weights, images.device)
        features = judges[images.device].features(images.float())
        return {"pixel": pixel_diversity(images, prompt_ids), "features": embedding_diversity(features, prompt_ids)}

    return diversity


def digits_problem(
    *,
    num_steps: int = 10,  # treegrpo.embedded.model.DEFAULT_NUM_STEPS
    noise_level: float = 0.7,
    shift: float = 1.0,  # treegrpo.embedded.model.DEFAULT_SHIFT
    transition: str = "flow_sde",
    prompts_per_iteration: int = 8,
    rewards: Sequence[str] = ("classifier",),
    guidance_scale: float = 1.0,
    weights: Path | str | None = None,
    device: torch.device | str = "cpu",
    eval_rewards: Sequence[str] = (),
    eval_num_steps: int = 0,
    eval_count: int = 0,
    schedule: str = "scheduler",
    cps_scoring: str = "flow_grpo",
) -> Problem:
    """TreeGRPO's embedded default: align the shipped digits base to offline rewards.

    Args:
        num_steps: denoising steps (NFE of one ODE sample).
        noise_level: SDE noise of the stochastic steps (``a`` of Flow-GRPO's SDE, eta for DanceSDE).
        shift: flow schedule shift.
        transition: ``flow_sde``, ``dance_sde`` or ``cps``.
        prompts_per_iteration: training prompts drawn (without replacement) each iteration out of
            the 80 training prompts (8 templates x 10 digits).
        rewards: reward names registered for ``digits`` in :data:`treegrpo.rewards.REWARDS`, one column each.
        guidance_scale: classifier-free guidance against the empty prompt; 1.0 = off.
        weights: root holding ``base/`` and ``classifier/`` (default: the shipped weights).
        device: where the model, conditioning and rewards live.
        eval_rewards: rewards reported on held-out prompts (default: every offline reward).
        eval_num_steps: denoising steps of evaluation samples (0: ``num_steps``).
        eval_count: held-out prompts evaluated, the first ``eval_count`` of the 40 (0: all).
        schedule: ``scheduler`` (diffusers' shifted schedule) or ``dancegrpo``.
        cps_scoring: how the ``cps`` transition scores samples (``flow_grpo`` or ``density``).
    """
    from treegrpo.embedded._files import WEIGHTS_DIR
    from treegrpo.embedded.data import DigitPrompts, digits_prompts
    from treegrpo.embedded.model import load_base, to_image
    from treegrpo.embedded.rewards import DIGITS_REWARDS

    root = Path(weights) if weights is not None else WEIGHTS_DIR
    rewards = tuple(rewards)
    if not rewards:
        raise ValueError("rewards: expected at least one reward name")
    scorers = reward_models(rewards, root, "rewards")
    every_name = tuple(eval_rewards) or DIGITS_REWARDS
    every_scorer = reward_models(every_name, root, "eval_rewards")
    options = {"schedule": schedule, "cps_scoring": cps_scoring}
    with renamed_fields(SAMPLING_ARGUMENTS):
        step = flow_transition(transition, num_steps, shift, noise_level, **options)
    with renamed_fields({**SAMPLING_ARGUMENTS, "sampling.num_steps": "eval_num_steps", "num_steps": "eval_num_steps"}):
        eval_step = flow_transition(transition, eval_num_steps, shift, noise_level, **options) if eval_num_steps else None

    base = load_base(root / "base", device)
    base.text_encoder.requires_grad_(False)
    base.transformer.requires_grad_(True)
    model = base.denoiser
    if guidance_scale != 1.0:
        model = GuidedDenoiser(model, guidance_scale, base.encode([""]))

    train, heldout = digits_prompts("train"), digits_prompts("heldout")
    if eval_count:
        heldout = DigitPrompts(heldout.split, heldout.texts[:eval_count], heldout.labels[:eval_count])
    if not 1 <= prompts_per_iteration <= len(train.texts):
        raise ValueError(f"prompts_per_iteration: expected 1..{len(train.texts)}, got {prompts_per_iteration}")
    train_cond, heldout_cond = base.encode(train.texts), base.encode(heldout.texts)

    def score(columns: Sequence[RewardModel], final: Tensor, texts: Sequence[str], prompt_ids: Tensor) -> Tensor:
        images = to_image(final)
        prompts = [texts[i] for i in prompt_ids.tolist()]
        return torch.stack([reward(images, prompts) for reward in columns], dim=-1)

    def prompts(iteration: int, generator: torch.Generator) -> tuple[object, Tensor]:
        ids = torch.randperm(len(train.texts), generator=generator)[:prompts_per_iteration].to(device)
        return gather_cond(train_cond, ids), ids

    def reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(scorers, final, train.texts, prompt_ids)

    def eval_prompts() -> tuple[object, Tensor]:
        return heldout_cond, torch.arange(len(heldout.texts), device=device)

    def eval_reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(every_scorer, final, heldout.texts, prompt_ids)

    return Problem(model=model, transition=step, latent_shape=base.latent_shape, prompts=prompts, reward=reward,
                   reward_names=rewards, decode=to_image, eval_prompts=eval_prompts, eval_reward=eval_reward,
                   eval_reward_names=every_name, eval_transition=eval_step, eval_diversity=digits_diversity(root / "judge"),
                   device=device)
