"""Loading local pipelines: components, dtypes, layout errors, and sampling equal to diffusers' own."""

from __future__ import annotations

import shutil

import pytest
import torch

from treegrpo.envs import GuidedDenoiser, sample_forest
from treegrpo.families.pipelines import PipelineLayoutError, load_pipeline

STEPS = 4


def test_sd3_components_dtypes_and_trainable_parts(pipelines):
    model = load_pipeline(pipelines["sd3"], max_sequence_length=16)
    assert model.kind == "sd3" and model.t5
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        component = getattr(model.pipeline, name)
        assert component.dtype == torch.bfloat16
        assert not any(p.requires_grad for p in component.parameters())
    assert model.network.dtype == torch.float32
    assert all(p.requires_grad for p in model.denoiser.parameters())
    assert model.latent_shape(16) == (4, 8, 8)
    with pytest.raises(ValueError, match="model.image_size: expected a multiple of 4"):
        model.latent_shape(18)


def test_sd3_without_t5_gives_zero_t5_tokens(pipelines):
    with_t5 = load_pipeline(pipelines["sd3"], frozen_dtype=torch.float32, max_sequence_length=16)
    without = load_pipeline(pipelines["sd3"], t5=False, frozen_dtype=torch.float32, max_sequence_length=16)
    assert without.pipeline.text_encoder_3 is None and not without.t5
    a, b = with_t5.encode(["a red cat"]), without.encode(["a red cat"])
    hidden = b["encoder_hidden_states"]
    assert hidden.shape == a["encoder_hidden_states"].shape == (1, 77 + 16, 32)
    assert torch.equal(hidden[:, 77:], torch.zeros_like(hidden[:, 77:]))  # T5's tokens
    assert torch.equal(hidden[:, :77], a["encoder_hidden_states"][:, :77])  # CLIP's tokens unchanged
    assert torch.equal(a["pooled_projections"], b["pooled_projections"])


def test_sd15_loads_and_converts_its_scheduler_to_ddim(pipelines):
    model = load_pipeline(pipelines["sd15"])
    assert model.kind == "sd15" and type(model.pipeline.scheduler).__name__ == "PNDMScheduler"
    step = model.transition("ddim", STEPS, noise_level=1.0)
    assert step.num_steps == STEPS and step.model_time(torch.arange(STEPS)).tolist() == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="sampling.transition: an SD1.5-style model samples with 'ddim'"):
        model.transition("flow_sde", STEPS, 0.7)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (None, "is not a local folder nor a Hub id"),
        ("model_index.json", "has no model_index.json; expected a diffusers StableDiffusion3Pipeline folder"),
        ("text_encoder_3", "text_encoder_3 is missing.*set model.t5=false"),
        ("vae", "vae is missing; expected a diffusers StableDiffusion3Pipeline"),
    ],
)
def test_layout_errors_name_the_missing_part(pipelines, tmp_path, drop, message):
    path = tmp_path / "copy"
    if drop is not None:
        shutil.copytree(pipelines["sd3"], path)
        victim = path / drop
        shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
    with pytest.raises(PipelineLayoutError, match=message) as caught:
        load_pipeline(path, "sd3")
    assert "\n" not in str(caught.value)


def test_kind_mismatch_is_reported(pipelines):
    with pytest.raises(PipelineLayoutError, match="declares 'StableDiffusionPipeline'; model.kind=sd3 expects"):
        load_pipeline(pipelines["sd15"], "sd3")


def test_uncached_hub_id_is_not_downloaded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineLayoutError, match=r"not a local folder nor a Hub id in the local cache \(HF_HUB_OFFLINE"):
        load_pipeline("someone/not-a-cached-model")


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("kind", ["sd3", "sd15"])
def test_ode_samples_equal_the_stock_pipeline(pipelines, kind, guidance):
    """Our ODE sampler + VAE decode reproduces diffusers' own pipeline call (same initial noise)."""
    from diffusers import DDIMScheduler

    model = load_pipeline(pipelines[kind], frozen_dtype=torch.float32, max_sequence_length=16)
    prompts = ["a red cat", "two small birds"]
    noise = torch.randn(2, *model.latent_shape(16), generator=torch.Generator().manual_seed(0))
    denoiser = model.denoiser
    if guidance != 1.0:
        denoiser = GuidedDenoiser(denoiser, guidance, model.encode([""]))
    name = "flow_sde" if kind == "sd3" else "ddim"
    transition = model.transition(name, STEPS, 0.7, shift=3.0)
    rollout = sample_forest(denoiser, transition, model.encode(prompts), sde_steps=(), branching=(),
                            noise=noise, num_prompts=2)
    ours = model.decode(rollout.final)

    stock = model.pipeline
    extra = {"max_sequence_length": 16} if kind == "sd3" else {}
    if kind == "sd15":
        stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config, clip_sample=False)
        extra["eta"] = 0.0
    reference = stock(prompts, num_inference_steps=STEPS, guidance_scale=guidance, latents=noise.clone(),
                      height=16, width=16, output_type="pt", **extra).images
    torch.testing.assert_close(ours, reference.float(), atol=2e-5, rtol=1e-4)


def test_flow_transitions_by_name_share_one_table(pipelines):
    """SD3 pipelines and the embedded default build flow steps through `envs.flow_transition`."""
    from treegrpo.envs import DanceSDE, FlowCPS, FlowSDE, FlowTimesteps, flow_transition
    from treegrpo.problems.digits import flow_transition as embedded_flow_transition

    timesteps = FlowTimesteps.linear(4, shift=3.0)
    for name, cls in {"flow_sde": FlowSDE, "dance_sde": DanceSDE, "cps": FlowCPS}.items():
        step = flow_transition(name, timesteps, 0.5)
        assert type(step) is cls and getattr(step, step.noise_attribute) == 0.5
        assert type(embedded_flow_transition(name, 4, 3.0, 0.5)) is cls
    model = load_pipeline(pipelines["sd3"], max_sequence_length=16)
    torch.testing.assert_close(model.transition("cps", 4, 0.5, shift=3.0).timesteps.sigmas, timesteps.sigmas)
    with pytest.raises(ValueError, match=r"sampling.transition: a flow model takes one of \['flow_sde', 'dance_sde', "
                                         r"'cps'\], got 'ddim'"):
        model.transition("ddim", 4, 0.5)


def test_cuda_device_without_cuda_is_a_config_error(monkeypatch):
    from treegrpo.config import ConfigError
    from treegrpo.devices import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: 'cuda:1' requested but CUDA is not available"):
        local_device("cuda:1")
