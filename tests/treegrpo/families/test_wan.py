"""Wan2.1 text-to-video (`model.kind = wan`) on a tiny random-weight WanPipeline: loading, 5-D video
latents, ODE sampling equal to diffusers' own call, the decode equal to the pipeline's videos,
on-policy trees and trajectories over video rollouts, and TreeGRPO raising a toy video reward."""

from __future__ import annotations

import shutil

import pytest
import torch

from treegrpo.envs import TrajectorySampler, TreeSampler, check_on_policy, sample_forest
from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.timesteps import FlowTimesteps
from treegrpo.families import family
from treegrpo.families.pipelines import PipelineLayoutError, detect_kind, load_pipeline
from treegrpo.families.wan import WanDenoiser, pipeline_shift, scheduler_timesteps
from treegrpo.testing.wan import FLOW_SHIFT, IMAGE_SIZE, NUM_FRAMES, save_tiny_wan_pipeline

STEPS = 4
SIZE = IMAGE_SIZE  # 32 pixels: 4 x 4 latents of 16 channels
LATENT = (16, 2, 4, 4)  # (C, F, H, W) for 5 frames
PROMPTS = ["a red cat", "two small birds"]
ITERATIONS = 20


@pytest.fixture(scope="module")
def wan_path(tmp_path_factory):
    return save_tiny_wan_pipeline(tmp_path_factory.mktemp("wan") / "wan")


@pytest.fixture(scope="module")
def wan(wan_path):
    """The tiny pipeline in float32 throughout (the comparisons with diffusers run at fp32 tolerance)."""
    return load_pipeline(wan_path, "wan", frozen_dtype=torch.float32, max_sequence_length=16, num_frames=NUM_FRAMES)


def test_loading_shapes_and_conditioning(wan_path):
    model = load_pipeline(wan_path, max_sequence_length=16, num_frames=NUM_FRAMES)  # kind from model_index.json
    assert model.kind == "wan" == detect_kind(wan_path) and type(model.pipeline).__name__ == "WanPipeline"
    assert model.family.modality == "video" and model.family is family("wan")
    for name in ("vae", "text_encoder"):
        component = getattr(model.pipeline, name)
        assert component.dtype == torch.bfloat16 and not any(p.requires_grad for p in component.parameters())
    assert model.network.dtype == torch.float32 and all(p.requires_grad for p in model.denoiser.parameters())
    assert isinstance(model.denoiser, WanDenoiser)
    assert model.latent_shape(SIZE) == LATENT and model.latent_shape(64) == (16, 2, 8, 8)
    with pytest.raises(ArgumentError, match="model.image_size: expected a multiple of 16"):
        model.latent_shape(40)
    model.num_frames = 6
    with pytest.raises(ArgumentError, match="model.num_frames: 6 is not 1 \\+ a multiple of 4.*use e.g. 5"):
        model.latent_shape(SIZE)
    model.num_frames = 81  # Wan2.1's default: 21 latent frames
    assert model.latent_shape(SIZE)[1] == 21
    cond = model.encode(PROMPTS)
    assert cond["encoder_hidden_states"].shape == (2, 16, 32)  # UMT5 tokens, zero past each prompt
    assert "t5=True" in model.identity() and model.can_encode
    videos = model.decode(torch.randn(3, *LATENT, generator=torch.Generator().manual_seed(0)))  # the bf16 VAE
    assert videos.shape == (3, NUM_FRAMES, 3, SIZE, SIZE) and videos.dtype == torch.float32
    assert 0 <= float(videos.min()) <= float(videos.max()) <= 1
    model.release_text_encoders()
    assert not model.can_encode


def test_layout_errors(wan_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(wan_path, copy)
    shutil.rmtree(copy / "text_encoder")
    with pytest.raises(PipelineLayoutError, match=r"text_encoder is missing; expected a diffusers WanPipeline "
                                                  r"folder.*Wan2.1's T5, which it cannot run without"):
        load_pipeline(copy, "wan")
    with pytest.raises(PipelineLayoutError, match="declares 'WanPipeline'; model.kind=flux expects"):
        load_pipeline(wan_path, "flux")
    with pytest.raises(ArgumentError, match="model.t5: false, but Wan2.1 reads prompts through its T5"):
        load_pipeline(wan_path, "wan", t5=False)


def test_schedule_is_the_pipelines_own(wan):
    """Wan2.1's UniPC flow sigmas (shift 3) and integer timesteps, as Flow-GRPO's Wan training reads them off
    pipeline.scheduler, the first sigma put back to 1 (UniPC's 1 - 1e-6 would scale the SDE's first noise by
    about 1000); sampling.shift applies only to DanceGRPO's schedule."""
    import numpy as np

    assert type(wan.pipeline.scheduler).__name__ == "UniPCMultistepScheduler"
    assert pipeline_shift(wan.pipeline.scheduler) == FLOW_SHIFT
    step = wan.transition("flow_sde", STEPS, 0.7, shift=7.0, image_size=SIZE)
    grid = np.linspace(1, 1 / 1000, STEPS + 1)[:-1]  # UniPC's flow grid before the shift
    expected = torch.tensor([*(FLOW_SHIFT * grid / (1 + (FLOW_SHIFT - 1) * grid)), 0.0], dtype=torch.float64)
    torch.testing.assert_close(step.timesteps.sigmas, expected, rtol=1e-6, atol=1e-6)
    assert step.timesteps.sigmas[0] == 1 and step.timesteps.sigmas[-1] == 0
    scheduler = type(wan.pipeline.scheduler).from_config(wan.pipeline.scheduler.config)
    scheduler.set_timesteps(STEPS)
    assert scheduler.sigmas[0] < 1  # UniPC's own guard
    assert torch.equal(step.timesteps.model_times, scheduler.timesteps.double())  # what WanPipeline feeds
    _, std = step.mean_std(torch.zeros(1, *LATENT), torch.zeros(1, *LATENT), torch.tensor([0]))
    assert float(std.max()) < 1  # a sqrt(t_next / (1 - t_next)) sqrt(dt) at t = 1, not ~1000 a
    from diffusers import UniPCMultistepScheduler

    with pytest.raises(ArgumentError, match="does not run on flow sigmas"):
        scheduler_timesteps(UniPCMultistepScheduler(), STEPS)  # a VP-sigma UniPC
    dance = wan.transition("dance_sde", STEPS, 0.3, shift=5.0, schedule="dancegrpo")
    torch.testing.assert_close(dance.timesteps.sigmas, FlowTimesteps.dancegrpo(STEPS, shift=5.0).sigmas)
    wan.pipeline.register_to_config(expand_timesteps=True)  # Wan2.2 TI2V's per-token timesteps
    try:
        with pytest.raises(ArgumentError, match="a Wan2.2 TI2V pipeline .expand_timesteps=true. is not supported"):
            wan.transition("flow_sde", STEPS, 0.7)
    finally:
        wan.pipeline.register_to_config(expand_timesteps=False)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
@pytest.mark.parametrize("guidance", [1.0, 5.0], ids=["no-cfg", "cfg"])
def test_ode_samples_and_videos_equal_the_stock_pipeline(wan, guidance):
    """With no noise our sampler on a FlowMatchEulerDiscreteScheduler (the pipeline's shift, swapped in for
    the comparison: UniPC is a multistep solver, not a one-step Euler transition) reproduces
    WanPipeline.__call__'s latents at the same initial noise, and the family's decode its videos."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    original = wan.pipeline.scheduler
    wan.pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=pipeline_shift(original))
    try:
        cond, negative = wan.encode(PROMPTS), wan.encode([""])
        noise = torch.randn(2, *wan.latent_shape(SIZE), generator=torch.Generator().manual_seed(0))
        denoiser = wan.guided_denoiser(guidance, lambda: negative)
        transition = wan.transition("flow_sde", STEPS, 0.7, image_size=SIZE).deterministic()
        ours = sample_forest(denoiser, transition, cond, sde_steps=(), branching=(), noise=noise, num_prompts=2).final
        call = {"prompt_embeds": cond["encoder_hidden_states"], "num_inference_steps": STEPS, "height": SIZE,
                "width": SIZE, "num_frames": NUM_FRAMES, "guidance_scale": guidance, "max_sequence_length": 16,
                "negative_prompt_embeds": negative["encoder_hidden_states"].expand(2, -1, -1)}
        stock = wan.pipeline(latents=noise.clone(), output_type="latent", **call).frames
        assert ours.shape == stock.shape == (2, *LATENT)
        torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(wan.pipeline.scheduler.sigmas.double(), transition.timesteps.sigmas)
        videos = wan.pipeline(latents=noise.clone(), output_type="pt", **call).frames
        decoded = wan.decode(ours)
        assert decoded.shape == (2, NUM_FRAMES, 3, SIZE, SIZE) and 0 <= decoded.min() <= decoded.max() <= 1
        torch.testing.assert_close(decoded, videos.float(), rtol=1e-4, atol=2e-5)
    finally:
        wan.pipeline.scheduler = original


def test_decode_in_chunks_equals_one_call(wan):
    latents = torch.randn(3, *LATENT, generator=torch.Generator().manual_seed(2))
    whole = wan.decode(latents)
    wan.vae_batch = 1
    try:
        torch.testing.assert_close(wan.decode(latents), whole, rtol=1e-5, atol=1e-6)
    finally:
        wan.vae_batch = 8


def test_tree_and_trajectory_video_rollouts_are_on_policy(wan):
    cond = wan.encode(PROMPTS)
    transition = wan.transition("flow_sde", STEPS, 0.9, image_size=SIZE)
    generator = torch.Generator().manual_seed(1)
    tree = TreeSampler(wan.denoiser, transition, branching=2, depth=2).sample(
        cond, window_start=1, latent_shape=wan.latent_shape(SIZE), generator=generator)
    trajectories = TrajectorySampler(wan.denoiser, transition, group_size=2).sample(
        cond, latent_shape=wan.latent_shape(SIZE), generator=generator)
    for rollout in (tree, trajectories):
        assert check_on_policy(rollout, wan.denoiser, transition, cond).is_rounding  # up to rounding


class Brightness:
    """A toy video reward: the mean pixel value of each video ``[B, F, 3, H, W]``."""

    name = "brightness"

    def __call__(self, videos, prompts):
        assert videos.shape[1:] == (NUM_FRAMES, 3, SIZE, SIZE)
        return videos.mean(dim=(1, 2, 3, 4))


def latent_mean(final: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    """A toy reward on the final video latents ``[L, C, F, H, W]``: their mean. (The tiny random VAE's pixels
    move by about 1e-4 across samples, so its videos' brightness does not change in 20 iterations.)"""
    return final.mean(dim=(1, 2, 3, 4))


@pytest.mark.filterwarnings("ignore:model.eval_prompts")
def test_treegrpo_raises_a_toy_video_reward(wan_path, tmp_path):
    """20 TreeGRPO iterations (k = 2, d = 2, LoRA) over 5-frame video trees raise a latent reward. The problem
    is pipeline_problem's (prompts, embeddings, guidance, transition, decode) with the toy reward swapped in;
    the config carries only the sampling and training options (test_cli_families.py runs model.kind=wan
    through the CLI)."""
    from dataclasses import replace

    from treegrpo.algos.trainer import Trainer
    from treegrpo.config import Config
    from treegrpo.families.prompts import PromptEmbeddings
    from treegrpo.problems.text_to_image import pipeline_problem

    model = load_pipeline(wan_path, "wan", frozen_dtype=torch.float32, max_sequence_length=16, num_frames=NUM_FRAMES)
    embeddings = PromptEmbeddings(model.encode, model.identity())
    problem = pipeline_problem(model, train_prompts=PROMPTS, eval_prompts=PROMPTS, rewards=[Brightness()],
                               embeddings=embeddings, image_size=SIZE, num_steps=STEPS, noise_level=0.9,
                               prompts_per_iteration=2)
    assert problem.latent_shape == LATENT
    assert problem.reward(torch.zeros(2, *LATENT), torch.tensor([0, 1])).shape == (2, 1)  # decoded, then scored
    problem = replace(problem, reward=latent_mean, reward_names=("latent_mean",))
    config = Config().override([
        f"sampling.num_steps={STEPS}", "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2",
        "sampling.window=fixed", "sampling.window_start=0", "sampling.max_batch=0", "sampling.noise_level=0.9",
        "loss.clip_range=0.2", "optim.lr=3e-3", "train.lora_rank=4", "train.lora_alpha=8", "train.lora_targets=",
        "train.precision=fp32", "train.gradient_checkpointing=false", "train.device=cpu",
        f"train.out_dir={tmp_path / 'run'}", "train.inner_epochs=2", "train.minibatch_parents=6",
        "train.checkpoint_every=1000", "train.sample_every=1000",
    ])
    trainer = Trainer(problem, config)
    rewards = [trainer.step()["reward_mean"] for _ in range(ITERATIONS)]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.05, rewards
