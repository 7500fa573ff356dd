"""Text-to-image and text-to-video training problems: a local pipeline of any registered family
(:mod:`treegrpo.families`), prompts and rewards.

:func:`pipeline_problem` turns a loaded :class:`~treegrpo.families.pipelines.TextToImageModel` into a
:class:`~treegrpo.problems.Problem`: each iteration draws prompts, looks their embeddings up
in a :class:`~treegrpo.families.prompts.PromptEmbeddings` cache, and scores VAE-decoded leaves with
every reward model (one column each). :func:`build_pipeline_problem` does all of it from a
:class:`~treegrpo.config.Config`, as ``treegrpo train --model.kind sd3`` does. A video family's samples
are videos ``[B, F, 3, H, W]``: its rewards are video rewards (:mod:`treegrpo.rewards.video`) and its
held-out diversity is :func:`~treegrpo.rewards.video.video_diversity`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from treegrpo.config import Config
from treegrpo.devices import local_device
from treegrpo.errors import ConfigError
from treegrpo.families.pipelines import (
    TextToImageModel,
    check_image_size,
    check_layout,
    check_true_cfg,
    load_pipeline,
    resolve_model_path,
)
from treegrpo.families.prompts import PromptEmbeddings, load_prompts
from treegrpo.kinds import PIPELINE_OPTIONS, T5_OPTIONS, TRUE_CFG_OPTIONS
from treegrpo.problems.base import Problem
from treegrpo.problems.lora import check_lora_file, export_trained, fuse_lora
from treegrpo.rewards import RewardModel, build_reward, check_reward_names, for_evaluation
from treegrpo.rewards.diversity import ClipDiversity
from treegrpo.rewards.video import video_diversity

__all__ = [
    "build_pipeline_problem",
    "pipeline_problem",
]

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# The option groups the families declare (treegrpo.kinds), importable from here too.
__all__ += ["PIPELINE_OPTIONS", "T5_OPTIONS", "TRUE_CFG_OPTIONS"]


def pipeline_problem(
    model: TextToImageModel,
    *,
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    rewards: Sequence[RewardModel],
    embeddings: PromptEmbeddings,
    image_size: int,
    transition: str = "flow_sde",
    num_steps: int = 10,
    noise_level: float = 0.7,
    shift: float = 3.0,
    prompts_per_iteration: int = 32,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    eval_rewards: Sequence[RewardModel] = (),
    eval_num_steps: int = 0,
    diversity: ClipDiversity | None = None,
    schedule: str = "scheduler",
    cps_scoring: str = "flow_grpo",
    true_cfg_scale: float = 1.0,
) -> Problem:
    """Train ``model``'s denoiser on ``train_prompts``, scored by ``rewards``.

    The prompt ids the trainer sees index ``train_prompts`` (training) or ``eval_prompts``
    (evaluation); rewards receive the prompt texts. Guidance is the pipeline's own
    (:meth:`TextToImageModel.guided_denoiser`): with ``guidance_scale != 1``, classifier-free guidance
    against ``negative_prompt`` (two model evaluations per row); FLUX.1-dev feeds ``guidance_scale``
    to its guidance embedding instead (one evaluation) and adds true CFG where ``true_cfg_scale != 1``.
    Held-out prompts are scored by ``eval_rewards`` (default: ``rewards``) with each scorer's exact
    official preprocessing (:func:`~treegrpo.rewards.for_evaluation`; training keeps the fast one),
    sampled with ``eval_num_steps`` steps (0: ``num_steps``); ``diversity`` (if given) measures how
    far apart each held-out prompt's images are in CLIP space.
    """
    train_prompts, eval_prompts = list(train_prompts), list(eval_prompts)
    if not rewards:
        raise ValueError("rewards: expected at least one reward model")
    if not 1 <= prompts_per_iteration <= len(train_prompts):
        raise ValueError(f"sampling.prompts_per_iteration: expected 1..{len(train_prompts)} (the number of "
                         f"training prompts), got {prompts_per_iteration}")
    device = model.device
    denoiser = model.guided_denoiser(guidance_scale, lambda: embeddings([negative_prompt]),
                                     true_cfg_scale=true_cfg_scale)
    # FLUX.1's schedule shifts with the image's token count; SD1.5's DDIM reads neither schedule option
    options = {"schedule": schedule, "cps_scoring": cps_scoring, "image_size": image_size}
    step = model.transition(transition, num_steps, noise_level, shift, **options)
    eval_step = model.transition(transition, eval_num_steps, noise_level, shift, **options) if eval_num_steps else None
    eval_rewards = [for_evaluation(r) for r in (list(eval_rewards) or list(rewards))]  # the official preprocessing

    def score(final: Tensor, texts: list[str], scorers: Sequence[RewardModel] = rewards) -> Tensor:
        images = model.decode(final)
        return torch.stack([reward(images, texts).to(device).float() for reward in scorers], dim=-1)

    def prompts(iteration: int, generator: torch.Generator) -> tuple[object, Tensor]:
        ids = torch.randperm(len(train_prompts), generator=generator)[:prompts_per_iteration]
        return embeddings([train_prompts[i] for i in ids.tolist()]), ids.to(device)

    def reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(final, [train_prompts[i] for i in prompt_ids.tolist()])

    def held_out() -> tuple[object, Tensor]:
        return embeddings(eval_prompts), torch.arange(len(eval_prompts), device=device)

    def eval_reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return score(final, [eval_prompts[i] for i in prompt_ids.tolist()], eval_rewards)

    def eval_diversity(final: Tensor, prompt_ids: Tensor) -> dict[str, Tensor]:
        samples = model.decode(final)
        if getattr(getattr(model, "family", None), "modality", "image") == "video":  # ClipDiversity reads images: the videos' mean frame embeddings
            return {diversity.name: video_diversity(samples, prompt_ids, diversity.embed, batch=diversity.batch)}
        return {diversity.name: diversity(samples, prompt_ids)}

    def export(directory: Path) -> list[Path]:
        return export_trained(model, directory)

    def apply_lora(path: str) -> None:
        fuse_lora(model, path)

    return Problem(model=denoiser, transition=step, latent_shape=model.latent_shape(image_size), prompts=prompts,
                   reward=reward, reward_names=tuple(r.name for r in rewards), decode=model.decode,
                   eval_prompts=held_out, eval_reward=eval_reward, eval_reward_names=tuple(r.name for r in eval_rewards),
                   eval_transition=eval_step, eval_diversity=eval_diversity if diversity is not None else None,
                   apply_lora=apply_lora, device=device, export=export)


def _eval_prompts(config: Config, train: list[str]) -> list[str]:
    """``model.eval_prompts``, else the test split of ``model.prompts``, else (with a warning) training prompts."""
    m = config.model
    try:
        texts = load_prompts(m.eval_prompts or m.prompts, "test")
    except (FileNotFoundError, ValueError):  # no test split: fall back to the training prompts
        if m.eval_prompts:
            raise
        texts = train
    if texts == train:
        warnings.warn("model.eval_prompts: no held-out prompts given; evaluating on training prompts", stacklevel=2)
    return texts[: m.eval_count] if m.eval_count else texts


def build_pipeline_problem(config: Config, *, fuse_model_lora: bool = True) -> Problem:
    """The problem a config describes for a registered family (``model.kind``): weights, prompts and
    rewards from local paths.

    ``model.lora`` is fused in unless ``fuse_model_lora`` is false (``treegrpo eval`` scores the
    weights without it first, then fuses it with ``problem.apply_lora``).
    """
    m, s, t = config.model, config.sampling, config.train
    if not m.path:
        raise ConfigError(f"model.path: model.kind={m.kind} needs the local pipeline folder (diffusers layout)")
    if not m.prompts:
        raise ConfigError(f"model.prompts: model.kind={m.kind} needs a prompt file (.txt, .json) or HPDv2 folder")
    device = local_device(t.device)
    # Everything a user can get wrong is checked before the pipeline loads (minutes at SD3.5 size).
    root = resolve_model_path(m.path)
    check_layout(root, m.kind, t5=m.t5)
    check_image_size(root, m.kind, m.image_size)
    check_true_cfg(root, m.kind, s.true_cfg_scale)
    train_prompts = load_prompts(m.prompts, "train")
    if len(train_prompts) < s.prompts_per_iteration:
        raise ConfigError(f"sampling.prompts_per_iteration: {s.prompts_per_iteration} is more than the "
                          f"{len(train_prompts)} training prompts in {m.prompts}; use at most {len(train_prompts)}")
    eval_prompts = _eval_prompts(config, train_prompts)
    if m.lora:
        check_lora_file(m.lora)
    built: dict[str, RewardModel] = {}  # one instance per name, shared by training and evaluation

    def reward_models(names: Sequence[str], field: str) -> list[RewardModel]:
        check_reward_names(names, field, kind=m.kind)
        for name in names:
            if name not in built:
                built[name] = build_reward(name, kind=m.kind, root=m.reward_dir or None, device=device)
        return [built[name] for name in names]

    rewards = reward_models(m.rewards, "model.rewards")
    eval_rewards = reward_models(config.eval.rewards, "eval.rewards")
    diversity = None
    if config.eval.diversity:
        name = config.eval.diversity_model  # an open_clip model (its reward folder's), a reward of any modality's
        if name not in built:
            built[name] = build_reward(name, root=m.reward_dir or None, device=device)
        clip = built[name]
        diversity = ClipDiversity(clip.image_embeddings, batch=m.vae_batch)
    lora_base_in_bf16 = t.lora_rank > 0 and t.precision == "bf16"
    model = load_pipeline(root, m.kind, t5=m.t5, frozen_dtype=DTYPES[m.frozen_precision],
                          denoiser_dtype=torch.bfloat16 if lora_base_in_bf16 else torch.float32, device=device,
                          max_sequence_length=m.max_sequence_length, vae_batch=m.vae_batch, num_frames=m.num_frames)
    if m.lora and fuse_model_lora:
        fuse_lora(model, m.lora)
    embeddings = PromptEmbeddings(model.encode, model.identity(), cache_dir=m.embedding_cache or None,
                                  max_in_memory=m.embedding_memory, device=device,
                                  can_encode=lambda: model.can_encode)
    if m.precompute_embeddings:
        embeddings.precompute([*train_prompts, *eval_prompts, m.negative_prompt], progress=True)
        model.release_text_encoders()
    return pipeline_problem(
        model, train_prompts=train_prompts, eval_prompts=eval_prompts, rewards=rewards,
        embeddings=embeddings, image_size=m.image_size, transition=s.transition, num_steps=s.num_steps,
        noise_level=s.noise_level, shift=s.shift, prompts_per_iteration=s.prompts_per_iteration,
        guidance_scale=s.guidance_scale, negative_prompt=m.negative_prompt,
        eval_rewards=eval_rewards, eval_num_steps=config.eval.num_steps,
        diversity=diversity, schedule=s.schedule, cps_scoring=s.cps_scoring, true_cfg_scale=s.true_cfg_scale)
