"""Adapters for diffusers denoisers, classifier-free guidance, and sampling real (tiny) networks."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from treegrpo.envs import (
    DDIM,
    CallableDenoiser,
    FlowSDE,
    FlowTimesteps,
    GaussianData,
    GuidedDenoiser,
    SD3Denoiser,
    TreeSampler,
    UNetDenoiser,
    check_on_policy,
    tree_nfe,
)
from treegrpo.testing.numerics import assert_close_up_to_rounding

from .tiny_models import LATENT_SHAPE, text_cond, tiny_sd3, tiny_unet


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return tiny_unet(tmp_path_factory.mktemp("unet"))


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
def test_sd3_adapter_is_the_transformer_call(sd3):
    cond = text_cond(3)
    x, t = torch.randn(3, *LATENT_SHAPE), torch.tensor([900.0, 500.0, 10.0])
    with torch.no_grad():
        expected = sd3(hidden_states=x, timestep=t, encoder_hidden_states=cond["encoder_hidden_states"],
                       pooled_projections=cond["pooled_projections"]).sample
        torch.testing.assert_close(SD3Denoiser(sd3)(x, t, cond), expected)


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
def test_unet_adapter_is_the_unet_call(unet):
    cond = text_cond(2, pooled=False)
    x, t = torch.randn(2, *LATENT_SHAPE), torch.tensor([999, 20])
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
        torch.testing.assert_close(UNetDenoiser(unet)(x, t, cond), expected)


def test_adapter_names_a_missing_conditioning_key(sd3):
    with pytest.raises(ValueError, match="pooled_projections"):
        SD3Denoiser(sd3)(torch.randn(2, *LATENT_SHAPE), torch.ones(2), text_cond(2, pooled=False))


@pytest.mark.exact_numerics  # against an independent reference computed at the same shapes
def test_guidance_combines_conditional_and_unconditional_in_one_call():
    data = GaussianData(torch.zeros(2), torch.eye(2))
    calls = []

    def velocity(x, t, cond):
        calls.append(x.shape[0])
        return data.velocity(x, t, cond)

    base = CallableDenoiser(velocity)
    uncond, cond = torch.zeros(1, 2), torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    x, t = torch.randn(2, 2), torch.tensor([700.0, 300.0])
    guided = GuidedDenoiser(base, 4.0, uncond)
    u, c = data.velocity(x, t, uncond.expand(2, 2)), data.velocity(x, t, cond)
    torch.testing.assert_close(guided(x, t, cond), u + 4.0 * (c - u))
    assert calls == [4]
    torch.testing.assert_close(GuidedDenoiser(base, 1.0, uncond)(x, t, cond), c)


def test_guidance_counts_two_evaluations_per_row(sd3):
    cond = text_cond(2)
    guided = GuidedDenoiser(SD3Denoiser(sd3), 4.5, text_cond(1, seed=9))
    sampler = TreeSampler(guided, FlowSDE(FlowTimesteps.linear(6, shift=3.0)), branching=2, depth=2)
    with torch.no_grad():
        rollout = sampler.sample(cond, latent_shape=LATENT_SHAPE, window_start=1, generator=torch.Generator().manual_seed(0))
    assert rollout.nfe == 2 * 2 * tree_nfe(6, 2, 2, 1)


def test_tree_sampling_an_sd3_transformer_is_on_policy_and_batch_independent(sd3):
    cond = text_cond(2)
    transition = FlowSDE(FlowTimesteps.linear(6, shift=3.0), 0.7)
    model = SD3Denoiser(sd3)
    finals = []
    with torch.no_grad():
        for max_batch in (None, 3):
            sampler = TreeSampler(model, transition, branching=3, depth=2, trees_per_prompt=2, max_batch=max_batch)
            rollout = sampler.sample(cond, latent_shape=LATENT_SHAPE, window_start=2, generator=torch.Generator().manual_seed(0))
            finals.append(rollout)
        assert check_on_policy(finals[0], model, transition, cond, max_batch=4).is_rounding  # up to rounding
    assert_close_up_to_rounding(finals[1].final, finals[0].final)  # micro-batches of 3: other rounding
    assert_close_up_to_rounding(finals[1].tree.log_prob, finals[0].tree.log_prob)


def test_tree_sampling_a_unet_with_ddim_is_on_policy(unet):
    scheduler = DDIMScheduler(clip_sample=False)
    transition = DDIM.from_scheduler(scheduler, 8, eta=1.0)
    cond = text_cond(2, pooled=False)
    model = UNetDenoiser(unet)
    with torch.no_grad():
        sampler = TreeSampler(model, transition, branching=2, depth=3)
        rollout = sampler.sample(cond, latent_shape=LATENT_SHAPE, window_start=4, generator=torch.Generator().manual_seed(0))
        assert check_on_policy(rollout, model, transition, cond).is_rounding  # up to rounding
    assert rollout.final.shape == (2 * 8, *LATENT_SHAPE)


def test_bf16_model_keeps_latents_and_log_probs_in_float32(sd3):
    import copy

    model = SD3Denoiser(copy.deepcopy(sd3).to(torch.bfloat16))
    transition = FlowSDE(FlowTimesteps.linear(4, shift=3.0))
    with torch.no_grad():
        rollout = TreeSampler(model, transition, branching=2, depth=2).sample(
            text_cond(1), latent_shape=LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    assert rollout.final.dtype == torch.float32 and rollout.tree.log_prob.dtype == torch.float32
    assert torch.isfinite(rollout.final).all() and torch.isfinite(rollout.tree.log_prob).all()
