"""Qwen-Image (`model.kind = qwen_image`) on a tiny random-weight QwenImagePipeline: loading, the padded
prompt embeddings, the resolution-shifted schedule, ODE sampling equal to diffusers' own call (with and
without its rescaled true CFG), on-policy trees and trajectories, and TreeGRPO raising a toy reward
through the config path, with the LoRA loading into stock `QwenImagePipeline.load_lora_weights`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from treegrpo.envs import TrajectorySampler, TreeSampler, check_on_policy, sample_forest
from treegrpo.envs._checks import ArgumentError
from treegrpo.envs.flux import pack_latents
from treegrpo.envs.timesteps import FlowTimesteps
from treegrpo.families.pipelines import (
    PipelineLayoutError,
    check_image_size,
    check_true_cfg,
    detect_kind,
    load_pipeline,
)
from treegrpo.families.qwen_image import QwenImageCFG, QwenImageDenoiser
from treegrpo.testing.qwen_image import TEMPLATE_TOKENS, save_tiny_qwen_image_pipeline

STEPS = 4
SIZE = 32  # pixels: 8 x 8 latents of 16 channels, 16 packed tokens
TOKENS = 32  # model.max_sequence_length: every prompt's embeddings are padded to it
PROMPTS = ["a red cat", "two small birds"]
ITERATIONS = 20
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny transformer's kernels are far slower when threads contend for a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    return save_tiny_qwen_image_pipeline(tmp_path_factory.mktemp("qwen_image") / "qwen_image")


@pytest.fixture(scope="module")
def qwen(qwen_path):
    """The tiny pipeline in float32 throughout (the comparisons with diffusers run at fp32 tolerance)."""
    return load_pipeline(qwen_path, "qwen_image", frozen_dtype=torch.float32, max_sequence_length=TOKENS)


def test_components_dtypes_shapes_and_conditioning(qwen_path):
    model = load_pipeline(qwen_path, max_sequence_length=TOKENS)  # kind read from model_index.json
    assert model.kind == "qwen_image" == detect_kind(qwen_path)
    assert type(model.pipeline).__name__ == "QwenImagePipeline" and model.family.title == "Qwen-Image"
    for name in ("vae", "text_encoder"):
        component = getattr(model.pipeline, name)
        assert component.dtype == torch.bfloat16 and not any(p.requires_grad for p in component.parameters())
    assert model.network.dtype == torch.float32 and all(p.requires_grad for p in model.denoiser.parameters())
    assert isinstance(model.denoiser, QwenImageDenoiser) and not model.t5
    assert model.latent_shape(SIZE) == (16, 8, 8) and model.image_tokens(SIZE) == 16
    with pytest.raises(ArgumentError, match="model.image_size: expected a multiple of 8"):
        model.latent_shape(36)  # VAE x4, packing x2
    with pytest.raises(ArgumentError, match="is not a multiple of"):
        check_image_size(qwen_path, "qwen_image", 36)

    cond = model.encode(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, TOKENS, 16) and cond["prompt_embeds_mask"].dtype == torch.int64
    stock, stock_mask = model.pipeline.encode_prompt(PROMPTS, device="cpu", max_sequence_length=TOKENS)
    lengths = stock_mask.sum(1)
    assert torch.equal(cond["prompt_embeds_mask"].sum(1), lengths) and lengths.max() < TOKENS
    for row, length in enumerate(lengths.tolist()):  # the pipeline's own embeddings, then zeros
        assert torch.equal(cond["prompt_embeds"][row, :length], stock[row, :length])
        assert not cond["prompt_embeds"][row, length:].any() and not cond["prompt_embeds_mask"][row, length:].any()
    # the template's 34 tokens are dropped: what is kept is the prompt's own (and the template's tail)
    template = model.pipeline.prompt_template_encode
    assert len(model.pipeline.tokenizer(template.split("{}")[0]).input_ids) == TEMPLATE_TOKENS
    with pytest.raises(ArgumentError, match="at most 1024 prompt tokens"):
        model.family.encode(model.pipeline, PROMPTS, model.device, 2048)
    images = model.decode(torch.randn(3, *model.latent_shape(SIZE)))  # the bf16 VAE, vae_batch rows per call
    assert images.shape == (3, 3, SIZE, SIZE) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    model.release_text_encoders()
    assert not model.can_encode


def test_layout_errors(qwen_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(qwen_path, copy)
    shutil.rmtree(copy / "text_encoder")
    with pytest.raises(PipelineLayoutError, match=r"text_encoder is missing; expected a diffusers QwenImagePipeline"):
        load_pipeline(copy, "qwen_image")
    with pytest.raises(PipelineLayoutError, match="declares 'QwenImagePipeline'; model.kind=flux expects"):
        load_pipeline(qwen_path, "flux")


@pytest.mark.exact_numerics  # the same rows at different paddings, compared at fp32 tolerance
def test_padding_is_masked_out(qwen):
    """A row's velocity does not depend on its padding: alone (its own length, no mask), in a batch with
    a longer prompt (masked), and with every padded column kept (the transformer called directly)."""
    cond = qwen.encode(PROMPTS)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, *qwen.latent_shape(SIZE), generator=g), torch.tensor([500.0, 900.0])
    with torch.no_grad():
        batch = qwen.denoiser(x, t, cond)
        alone = qwen.denoiser(x[:1], t[:1], cond[:1])
        padded = qwen.network(hidden_states=pack_latents(x), timestep=t / 1000, img_shapes=[[(1, 4, 4)]] * 2,
                              encoder_hidden_states=cond["prompt_embeds"],
                              encoder_hidden_states_mask=cond["prompt_embeds_mask"], return_dict=False)[0]
    torch.testing.assert_close(alone, batch[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pack_latents(batch), padded, rtol=1e-5, atol=1e-5)


def test_schedule_is_the_pipelines_resolution_shift(qwen):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    config = qwen.pipeline.scheduler.config
    tokens = qwen.image_tokens(512)
    mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"],
                         config["max_shift"])
    scheduler = type(qwen.pipeline.scheduler).from_config(config)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / 10, 10).numpy(), mu=mu)
    transition = qwen.transition("flow_sde", 10, 0.7, image_size=512)
    torch.testing.assert_close(transition.timesteps.sigmas, scheduler.sigmas.double(), rtol=1e-6, atol=1e-7)
    assert abs(float(transition.timesteps.sigmas[-2]) - config["shift_terminal"]) < 1e-6  # Qwen-Image's terminal
    with pytest.raises(ArgumentError, match="image_size: Qwen-Image's schedule shifts with the image's token count"):
        qwen.transition("flow_sde", STEPS, 0.7)
    dance = qwen.transition("dance_sde", STEPS, 0.3, schedule="dancegrpo")
    torch.testing.assert_close(dance.timesteps.sigmas, FlowTimesteps.dancegrpo(STEPS, shift=3.0).sigmas)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
@pytest.mark.parametrize("true_cfg", [1.0, 4.0], ids=["no-cfg", "true-cfg"])
def test_ode_samples_equal_the_stock_pipeline(qwen, true_cfg):
    """Our ODE sampler on unpacked, padded-prompt latents reproduces QwenImagePipeline's own call from
    the prompt texts (batch-padded embeddings, its rescaled true CFG), then its images."""
    cond, negative = qwen.encode(PROMPTS), qwen.encode([" "])
    noise = torch.randn(2, *qwen.latent_shape(SIZE), generator=torch.Generator().manual_seed(0))
    denoiser = qwen.guided_denoiser(true_cfg, lambda: negative)
    transition = qwen.transition("flow_sde", STEPS, 0.7, image_size=SIZE).deterministic()
    ours = sample_forest(denoiser, transition, cond, sde_steps=(), branching=(), noise=noise, num_prompts=2).final

    call = {"prompt": PROMPTS, "true_cfg_scale": true_cfg, "num_inference_steps": STEPS, "height": SIZE,
            "width": SIZE, "max_sequence_length": TOKENS, **({"negative_prompt": [" "] * 2} if true_cfg != 1 else {})}
    stock = qwen.pipeline(latents=pack_latents(noise), output_type="latent", **call).images
    torch.testing.assert_close(pack_latents(ours), stock, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qwen.pipeline.scheduler.sigmas.double(), transition.timesteps.sigmas)
    images = qwen.pipeline(latents=pack_latents(noise), output_type="pt", **call).images
    torch.testing.assert_close(qwen.decode(ours), images.float(), rtol=1e-4, atol=2e-5)


def test_guidance_rules(qwen, qwen_path):
    def no_negative():
        raise AssertionError("no guidance needs no negative prompt")

    assert qwen.guided_denoiser(1.0, no_negative) is qwen.denoiser
    guided = qwen.guided_denoiser(4.0, lambda: qwen.encode([""]))
    assert isinstance(guided, QwenImageCFG) and guided.evaluations_per_row == 2
    with pytest.raises(ArgumentError, match="Qwen-Image's true CFG scale is guidance_scale here"):
        qwen.guided_denoiser(4.0, no_negative, true_cfg_scale=2.0)
    check_true_cfg(qwen_path, "qwen_image", 1.0)
    with pytest.raises(ArgumentError, match="sampling.true_cfg_scale: 2.0 given"):
        check_true_cfg(qwen_path, "qwen_image", 2.0)  # read from transformer/config.json, before any weights load


def test_tree_and_trajectory_samples_are_on_policy(qwen):
    cond = qwen.encode(PROMPTS)
    transition = qwen.transition("flow_sde", STEPS, 0.9, image_size=SIZE)
    generator = torch.Generator().manual_seed(1)
    guided = qwen.guided_denoiser(4.0, lambda: qwen.encode([""]))
    tree = TreeSampler(guided, transition, branching=2, depth=2).sample(
        cond, window_start=1, latent_shape=qwen.latent_shape(SIZE), generator=generator)
    assert check_on_policy(tree, guided, transition, cond).is_rounding  # up to rounding
    trajectories = TrajectorySampler(qwen.denoiser, transition, group_size=2).sample(
        cond, latent_shape=qwen.latent_shape(SIZE), generator=generator)
    assert check_on_policy(trajectories, qwen.denoiser, transition, cond).is_rounding


class Brightness:
    """A toy reward: the mean pixel value of each image."""

    name = "brightness"

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@pytest.fixture
def qwen_kind():
    """A ``brightness`` reward for ``model.kind=qwen_image`` (the kind the family registers), for this
    test only (then removed)."""
    from treegrpo.kinds import model_kinds
    from treegrpo.rewards import REWARDS, register_reward

    assert "qwen_image" in model_kinds()
    before = REWARDS.get("brightness")  # another test's brightness (test_flux.py leaves its own registered)
    register_reward("brightness", lambda **_: Brightness(), kinds=("qwen_image",), replace=True)
    yield
    REWARDS.remove("brightness")
    if before is not None:
        REWARDS.add("brightness", before)


@pytest.mark.filterwarnings("ignore:model.eval_prompts")
def test_treegrpo_raises_a_toy_reward_and_the_lora_loads_in_qwen_image_pipeline(qwen_path, qwen_kind, tmp_path):
    """configs/qwen_image.yaml, shrunk to a CPU run, through the user's path (config -> build_problem -> Trainer)."""
    from diffusers import QwenImagePipeline

    from treegrpo.algos.trainer import Trainer
    from treegrpo.config import Config
    from treegrpo.problems import build_problem
    from treegrpo.problems.lora import LORA_FILE, fuse_lora

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = Config.from_yaml(REPO / "configs" / "qwen_image.yaml").override([
        f"model.path={qwen_path}", f"model.prompts={prompts}",
        "model.rewards=brightness", f"model.image_size={SIZE}", f"model.max_sequence_length={TOKENS}",
        "model.frozen_precision=fp32", f"model.embedding_cache={tmp_path / 'embeddings'}", "eval.diversity=false",
        f"sampling.num_steps={STEPS}", "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2",
        "sampling.window=fixed", "sampling.window_start=0", "sampling.max_batch=0", "sampling.noise_level=0.9",
        "sampling.guidance_scale=1.0",  # no CFG: half the forwards of this CPU run (CFG is checked above)
        "loss.clip_range=0.2", "optim.lr=3e-3", "train.lora_rank=4", "train.lora_alpha=8",
        "train.lora_targets=",  # every linear layer: the config's attention/MLP targets move this toy too slowly
        "train.precision=fp32", "train.gradient_checkpointing=false", "train.device=cpu",
        f"train.out_dir={tmp_path / 'run'}", "train.inner_epochs=4", "train.minibatch_parents=6",
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
        trained = QwenImageDenoiser(problem.model.transformer)(*probe)
    assert problem.export(tmp_path / "final") == [tmp_path / "final" / LORA_FILE]
    stock = QwenImagePipeline.from_pretrained(qwen_path, local_files_only=True)
    stock.load_lora_weights(tmp_path / "final")  # stock diffusers, nothing of ours
    with torch.no_grad():
        torch.testing.assert_close(QwenImageDenoiser(stock.transformer)(*probe), trained, rtol=1e-4, atol=1e-5)
        fused = load_pipeline(qwen_path, "qwen_image", max_sequence_length=TOKENS)
        fuse_lora(fused, tmp_path / "final")
        torch.testing.assert_close(fused.denoiser(*probe), trained, rtol=1e-4, atol=1e-5)
