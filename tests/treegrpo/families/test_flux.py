"""FLUX.1 (`model.kind = flux`) on a tiny random-weight FluxPipeline: loading, packing, the
resolution-shifted schedule, ODE sampling equal to diffusers' own call (distilled and true CFG),
on-policy trees and trajectories, TreeGRPO raising a toy reward, and the LoRA loading into stock
`FluxPipeline.load_lora_weights`."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from treegrpo.envs import FluxDenoiser, TrajectorySampler, TreeSampler, check_on_policy, sample_forest
from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.flux import has_distilled_guidance, latent_image_ids, pack_latents, unpack_latents
from treegrpo.envs.timesteps import FlowTimesteps, resolution_shift_mu
from treegrpo.families.pipelines import (
    PipelineLayoutError,
    check_image_size,
    check_true_cfg,
    detect_kind,
    load_pipeline,
)
from treegrpo.testing.pipelines import save_tiny_flux_pipeline

STEPS = 4
SIZE = 16  # pixels: 8 x 8 latents of 16 channels, 16 packed tokens
PROMPTS = ["a red cat", "two small birds"]
ITERATIONS = 20
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def flux_path(tmp_path_factory):
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "flux")


@pytest.fixture(scope="module")
def flux(flux_path):
    """The tiny pipeline in float32 throughout (the comparisons with diffusers run at fp32 tolerance)."""
    return load_pipeline(flux_path, "flux", frozen_dtype=torch.float32, max_sequence_length=16)


def test_components_dtypes_shapes_and_conditioning(flux_path):
    model = load_pipeline(flux_path, max_sequence_length=16)  # kind read from model_index.json
    assert model.kind == "flux" == detect_kind(flux_path) and type(model.pipeline).__name__ == "FluxPipeline"
    for name in ("vae", "text_encoder", "text_encoder_2"):
        component = getattr(model.pipeline, name)
        assert component.dtype == torch.bfloat16 and not any(p.requires_grad for p in component.parameters())
    assert model.network.dtype == torch.float32 and all(p.requires_grad for p in model.denoiser.parameters())
    assert isinstance(model.denoiser, FluxDenoiser) and model.denoiser.guidance_scale == 3.5
    assert model.latent_shape(SIZE) == (16, 8, 8) and model.image_tokens(SIZE) == 16
    with pytest.raises(ArgumentError, match="model.image_size: expected a multiple of 4"):
        model.latent_shape(18)  # VAE x2, packing x2
    with pytest.raises(ArgumentError, match="is not a multiple of 4"):
        check_image_size(flux_path, "flux", 18)
    cond = model.encode(PROMPTS)
    assert cond["encoder_hidden_states"].shape == (2, 16, 32)  # T5 tokens only
    assert cond["pooled_projections"].shape == (2, 16)  # CLIP's pooled output
    assert "t5=True" in model.identity()


def test_layout_errors(flux_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(flux_path, copy)
    shutil.rmtree(copy / "text_encoder_2")
    with pytest.raises(PipelineLayoutError, match=r"text_encoder_2 is missing; expected a diffusers FluxPipeline "
                                                  r"folder.*FLUX.1's T5, which it cannot run without"):
        load_pipeline(copy, "flux")
    with pytest.raises(PipelineLayoutError, match="declares 'FluxPipeline'; model.kind=sd3 expects"):
        load_pipeline(flux_path, "sd3")
    with pytest.raises(ArgumentError, match="model.t5: false, but FLUX.1 reads prompts through its T5"):
        load_pipeline(flux_path, "flux", t5=False)


def test_packing_is_diffusers_permutation(flux):
    x = torch.randn(3, 16, 6, 10)
    tokens = pack_latents(x)
    assert tokens.shape == (3, 15, 64)
    stock = type(flux.pipeline)
    torch.testing.assert_close(tokens, stock._pack_latents(x, 3, 16, 6, 10), rtol=0, atol=0)
    assert torch.equal(unpack_latents(tokens, 6, 10), x)
    # the tokens hold the same entries: a Gaussian density over x equals the one over the packed latent
    assert torch.equal(tokens.flatten().sort().values, x.flatten().sort().values)
    torch.testing.assert_close(latent_image_ids(3, 5), stock._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32))


def test_resolution_shift_matches_flux_pipeline(flux):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    # 512 px: 1024 tokens, mu = 0.5 + 0.65 * 768 / 3840 = 0.63; 1024 px: 4096 tokens, mu = max_shift
    assert resolution_shift_mu(1024) == calculate_shift(1024) and math.isclose(resolution_shift_mu(1024), 0.63)
    assert math.isclose(resolution_shift_mu(4096), 1.15)
    timesteps = FlowTimesteps.flux(flux.pipeline.scheduler, 10, image_seq_len=1024)
    grid = torch.linspace(1, 0.1, 10, dtype=torch.float64)
    expected = math.exp(0.63) / (math.exp(0.63) + 1 / grid - 1)  # time_shift(mu, 1, sigmas)
    torch.testing.assert_close(timesteps.sigmas[:-1], expected, rtol=1e-6, atol=1e-6)
    assert timesteps.sigmas[-1] == 0 and torch.equal(timesteps.model_times, (timesteps.sigmas[:-1].float() * 1000).double())
    with pytest.raises(ArgumentError, match="image_size: FLUX.1's schedule shifts with the image's token count"):
        flux.transition("flow_sde", STEPS, 0.7)
    dance = flux.transition("dance_sde", STEPS, 0.3, schedule="dancegrpo")  # DanceGRPO's FLUX schedule: shift 3
    torch.testing.assert_close(dance.timesteps.sigmas, FlowTimesteps.dancegrpo(STEPS, shift=3.0).sigmas)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
@pytest.mark.parametrize("true_cfg", [1.0, 2.0], ids=["distilled", "true-cfg"])
def test_ode_samples_equal_the_stock_pipeline(flux, true_cfg):
    """Our ODE sampler on unpacked latents reproduces FluxPipeline on the packed ones, then the images."""
    cond, negative = flux.encode(PROMPTS), flux.encode([""])
    noise = torch.randn(2, *flux.latent_shape(SIZE), generator=torch.Generator().manual_seed(0))
    denoiser = flux.guided_denoiser(3.5, lambda: negative, true_cfg_scale=true_cfg)
    transition = flux.transition("flow_sde", STEPS, 0.7, image_size=SIZE).deterministic()
    ours = sample_forest(denoiser, transition, cond, sde_steps=(), branching=(), noise=noise, num_prompts=2).final

    extra = {}
    if true_cfg != 1.0:
        extra = {"true_cfg_scale": true_cfg, "negative_prompt_embeds": negative["encoder_hidden_states"].expand(2, -1, -1),
                 "negative_pooled_prompt_embeds": negative["pooled_projections"].expand(2, -1)}
    call = {"prompt_embeds": cond["encoder_hidden_states"], "pooled_prompt_embeds": cond["pooled_projections"],
            "num_inference_steps": STEPS, "guidance_scale": 3.5, "height": SIZE, "width": SIZE, **extra}
    stock = flux.pipeline(latents=pack_latents(noise), output_type="latent", **call).images
    torch.testing.assert_close(pack_latents(ours), stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flux.pipeline.scheduler.sigmas.double(), transition.timesteps.sigmas)
    images = flux.pipeline(latents=pack_latents(noise), output_type="pt", **call).images
    torch.testing.assert_close(flux.decode(ours), images.float(), rtol=1e-4, atol=2e-5)
    # the distilled guidance reaches the transformer
    other = sample_forest(flux.guided_denoiser(1.0, lambda: negative, true_cfg_scale=true_cfg), transition, cond,
                          sde_steps=(), branching=(), noise=noise, num_prompts=2).final
    assert not torch.allclose(other, ours)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
def test_schnell_samples_on_its_own_static_shift_and_equals_the_stock_pipeline(tmp_path):
    """FLUX.1-schnell's structure: no guidance embedding, a static scheduler shift of 1 (no dynamic
    shifting); sampling.shift's default 3 must not replace it."""
    import json

    path = save_tiny_flux_pipeline(tmp_path / "schnell", guidance_embeds=False)
    config_file = path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "use_dynamic_shifting": False, "shift": 1.0}))
    schnell = load_pipeline(path, "flux", frozen_dtype=torch.float32, max_sequence_length=16)
    transition = schnell.transition("flow_sde", STEPS, 0.7, shift=3.0, image_size=SIZE).deterministic()
    expected = torch.cat([torch.linspace(1, 1 / STEPS, STEPS, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(transition.timesteps.sigmas, expected)

    cond = schnell.encode(PROMPTS)
    denoiser = schnell.guided_denoiser(1.0, lambda: schnell.encode([""]))
    assert denoiser.evaluations_per_row == 1 and denoiser.guidance_scale is None
    noise = torch.randn(2, *schnell.latent_shape(SIZE), generator=torch.Generator().manual_seed(0))
    ours = sample_forest(denoiser, transition, cond, sde_steps=(), branching=(), noise=noise, num_prompts=2).final
    stock = schnell.pipeline(latents=pack_latents(noise), output_type="latent", prompt_embeds=cond["encoder_hidden_states"],
                             pooled_prompt_embeds=cond["pooled_projections"], num_inference_steps=STEPS,
                             height=SIZE, width=SIZE).images
    torch.testing.assert_close(pack_latents(ours), stock, rtol=1e-5, atol=1e-5)
    check_true_cfg(path, "flux", 1.0)
    with pytest.raises(ArgumentError, match="sampling.true_cfg_scale: 2.0 given, but only a FLUX.1 model with distilled"):
        check_true_cfg(path, "flux", 2.0)  # read from transformer/config.json, before any weights load


def test_guidance_rules(flux):
    from diffusers import FluxTransformer2DModel

    def no_negative():
        raise AssertionError("distilled guidance needs no negative prompt")

    assert flux.guided_denoiser(3.5, no_negative).evaluations_per_row == 1
    schnell = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                     axes_dims_rope=(4, 6, 6))
    assert FluxDenoiser(schnell).guidance_scale is None
    assert has_distilled_guidance(flux.network.config) and not has_distilled_guidance(schnell.config)
    assert not has_distilled_guidance({})  # a config.json without the key: no guidance embedding
    with pytest.raises(ArgumentError, match="has no guidance embedding"):
        FluxDenoiser(schnell, guidance_scale=3.5)


def test_tree_and_trajectory_samples_are_on_policy(flux):
    cond = flux.encode(PROMPTS)
    transition = flux.transition("flow_sde", STEPS, 0.9, image_size=SIZE)
    generator = torch.Generator().manual_seed(1)
    tree = TreeSampler(flux.denoiser, transition, branching=2, depth=2).sample(
        cond, window_start=1, latent_shape=flux.latent_shape(SIZE), generator=generator)
    trajectories = TrajectorySampler(flux.denoiser, transition, group_size=2).sample(
        cond, latent_shape=flux.latent_shape(SIZE), generator=generator)
    for rollout in (tree, trajectories):
        assert check_on_policy(rollout, flux.denoiser, transition, cond).is_rounding  # up to rounding


class Brightness:
    """A toy reward: the mean pixel value of each image."""

    name = "brightness"

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@pytest.mark.filterwarnings("ignore:model.eval_prompts")
def test_treegrpo_raises_a_toy_reward_and_the_lora_loads_in_flux_pipeline(flux_path, tmp_path, monkeypatch):
    """configs/flux_dev.yaml, shrunk to a CPU run, through the user's path (config -> build_problem ->
    Trainer) with a toy reward registered for ``model.kind=flux``."""
    from diffusers import FluxPipeline

    from treegrpo.algos.trainer import Trainer
    from treegrpo.config import Config
    from treegrpo.problems import build_problem
    from treegrpo.problems.lora import LORA_FILE, fuse_lora
    from treegrpo.rewards import REWARDS, register_reward

    monkeypatch.delitem(REWARDS, "brightness", raising=False)  # the registration is undone after the test
    register_reward("brightness", lambda **_: Brightness(), kinds=("flux",))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = Config.from_yaml(REPO / "configs" / "flux_dev.yaml").override([
        f"model.path={flux_path}", f"model.prompts={prompts}",
        "model.rewards=brightness", f"model.image_size={SIZE}", "model.max_sequence_length=16",
        "model.frozen_precision=fp32", f"model.embedding_cache={tmp_path / 'embeddings'}", "eval.diversity=false",
        f"sampling.num_steps={STEPS}", "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2",
        "sampling.window=fixed", "sampling.window_start=0", "sampling.max_batch=0", "sampling.noise_level=0.9",
        "loss.clip_range=0.2", "optim.lr=3e-3", "train.lora_rank=4", "train.lora_alpha=8",
        "train.lora_targets=",  # every linear layer: the config's attention/MLP targets move this toy too slowly
        "train.precision=fp32", "train.gradient_checkpointing=false", "train.device=cpu",
        f"train.out_dir={tmp_path / 'run'}", "train.inner_epochs=2", "train.minibatch_parents=6",
        "train.checkpoint_every=1000", "train.sample_every=1000",
    ])
    problem = build_problem(config)
    trainer = Trainer(problem, config)
    rewards = [trainer.step()["reward_mean"] for _ in range(ITERATIONS)]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.03, rewards  # one iteration's images differ by about 0.01

    embeddings = problem.prompts(0, torch.Generator().manual_seed(0))[0]
    g = torch.Generator().manual_seed(0)
    probe = (torch.randn(2, 16, 8, 8, generator=g), torch.tensor([500.0, 900.0]), embeddings)
    with torch.no_grad():
        trained = FluxDenoiser(problem.model.transformer)(*probe)
    assert problem.export(tmp_path / "final") == [tmp_path / "final" / LORA_FILE]
    stock = FluxPipeline.from_pretrained(flux_path, local_files_only=True)
    stock.load_lora_weights(tmp_path / "final")  # stock diffusers, nothing of ours
    with torch.no_grad():
        torch.testing.assert_close(FluxDenoiser(stock.transformer)(*probe), trained, rtol=1e-4, atol=1e-5)
        fused = load_pipeline(flux_path, "flux", max_sequence_length=16)
        fuse_lora(fused, tmp_path / "final")
        torch.testing.assert_close(fused.denoiser(*probe), trained, rtol=1e-4, atol=1e-5)
