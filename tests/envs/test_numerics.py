"""The rounding scale of an importance ratio, the statistics that judge it, and the GPU-numerics harness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from treegrpo.envs import CallableDenoiser, FlowCPS, FlowSDE, FlowTimesteps, OnPolicyError, TreeSampler, check_on_policy
from treegrpo.envs.numerics import (
    ROUNDING_Z,
    UNIT_ROUNDOFF,
    OnPolicyStats,
    active_dropout,
    assume_rounding,
    autocast_precision,
    diagnose,
    edge_sensitivity,
    on_policy_stats,
    ratio_sensitivity,
    rounding_spread,
    rounding_unit,
)
from treegrpo.envs.precision import model_precision
from treegrpo.testing.numerics import shape_noise, simulated_gpu_numerics

pytestmark = pytest.mark.exact_numerics  # these tests install the harness themselves


def _children(m=5, k=3, d=64, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(m, d, generator=g, dtype=torch.float64)
    std = torch.full((m, 1), std, dtype=torch.float64)
    sample = mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(m, k, d, generator=g, dtype=torch.float64)
    return sample, mean, std


def test_sensitivity_is_the_closed_form_for_the_density_and_for_cps_scoring():
    sample, mean, std = _children()
    density = FlowSDE(FlowTimesteps.linear(10))
    d = mean.shape[-1]
    gradient = (sample - mean.unsqueeze(1)) / (std.unsqueeze(1) ** 2 * d)  # d/dmu of the mean-reduced density
    expected = (gradient * mean.unsqueeze(1)).square().sum(-1).sqrt()
    torch.testing.assert_close(ratio_sensitivity(density, sample, mean, std), expected, rtol=1e-12, atol=0)
    summed = FlowSDE(FlowTimesteps.linear(10), reduce="sum")
    torch.testing.assert_close(ratio_sensitivity(summed, sample, mean, std), expected * d, rtol=1e-12, atol=0)
    cps = FlowCPS(FlowTimesteps.linear(10))  # score -(x - mu)^2, mean-reduced: gradient 2 (x - mu) / D
    expected_cps = (2 * (sample - mean.unsqueeze(1)) / d * mean.unsqueeze(1)).square().sum(-1).sqrt()
    torch.testing.assert_close(ratio_sensitivity(cps, sample, mean, std), expected_cps, rtol=1e-12, atol=0)
    both = ratio_sensitivity(density, sample, mean, std, torch.stack([mean.abs(), 2 * mean.abs()], -1))
    torch.testing.assert_close(both, torch.stack([expected, 2 * expected], -1), rtol=1e-12, atol=0)


def test_edge_sensitivity_splits_the_model_part_from_the_step_math():
    transition = FlowSDE(FlowTimesteps.linear(10), 0.7)
    g = torch.Generator().manual_seed(1)
    latent, velocity = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    step = torch.tensor([0, 3, 6, 9])
    mean, std = transition.mean_std(latent, velocity, step)
    sample = mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(4, 3, 8, generator=g, dtype=torch.float64)
    base, _ = transition.mean_std(latent, torch.zeros_like(velocity), step)
    pair = edge_sensitivity(transition, latent, sample, mean, std, step)
    torch.testing.assert_close(pair[..., 0], ratio_sensitivity(transition, sample, mean, std, (mean - base).abs()))
    step_math = ratio_sensitivity(transition, sample, mean, std, base.abs() + (mean - base).abs())
    value = transition.score_children(sample, mean, std).abs()  # the log-prob's own float32 rounding
    torch.testing.assert_close(pair[..., 1], torch.hypot(step_math, 4.0 * value))
    # the model part is exactly the mean's derivative along the output: mean(v + |v|) - mean(v)
    moved, _ = transition.mean_std(latent, velocity + velocity.abs(), step)
    torch.testing.assert_close((mean - base).abs(), ((moved - mean) / velocity.abs() * velocity).abs())
    spread = rounding_spread(pair, 1e-3)
    torch.testing.assert_close(spread, torch.hypot(1e-3 * pair[..., 0], UNIT_ROUNDOFF["fp32"] * pair[..., 1]))


def test_the_log_ratio_spread_under_relative_rounding_is_unit_times_sensitivity():
    """Monte Carlo against torch.distributions: perturb every parent mean by u |mu| r (r standard
    normal, independent of the children's noise) and the log-ratio's std is u S."""
    sample, mean, std = _children(m=1, k=20000, d=256, std=0.01)
    unit = 1e-4
    g = torch.Generator().manual_seed(3)
    shifted = mean * (1 + unit * torch.randn(mean.shape, generator=g, dtype=torch.float64))
    normal, moved = torch.distributions.Normal(mean.unsqueeze(1), std.unsqueeze(1)), torch.distributions.Normal(
        shifted.unsqueeze(1), std.unsqueeze(1))
    log_ratio = (moved.log_prob(sample) - normal.log_prob(sample)).mean(-1)  # [1, K]
    scale = unit * ratio_sensitivity(FlowSDE(FlowTimesteps.linear(10)), sample, mean, std)
    assert float(log_ratio.std()) == pytest.approx(float(scale.mean()), rel=0.05)


def test_statistics_on_hand_made_ratios():
    log_ratio = torch.tensor([[0.0, 1e-3, -2e-3], [5e-3, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    stats = on_policy_stats(log_ratio, mask, torch.full((2, 3), 1.0), unit=1e-4, clip=(1.5e-3, 4e-3))
    ratios = torch.tensor([0.0, 1e-3, -2e-3, 5e-3, 0.0], dtype=torch.float64).exp()
    assert stats.max_deviation == pytest.approx(math.expm1(5e-3))
    assert stats.ratio_std == pytest.approx(float(ratios.std(unbiased=False)))
    assert stats.clipped_fraction == pytest.approx(2 / 5)  # -2e-3 below 1 - 1.5e-3, 5e-3 above 1 + 4e-3
    assert stats.rounding_z == pytest.approx(5e-3 / 1e-4)
    assert stats.edges == 5 and not stats.is_rounding
    assert on_policy_stats(log_ratio, mask, None, unit=1e-4).is_rounding  # unknown scale: not judged


def _stats(z, unit=UNIT_ROUNDOFF["fp32"]):
    return OnPolicyStats(max_deviation=1e-3, ratio_std=1e-4, clipped_fraction=0.0, rounding_z=z, unit=unit, edges=9)


def test_diagnose_names_each_cause():
    assert diagnose(_stats(ROUNDING_Z / 2), precision="fp32") is None
    assert diagnose(_stats(1.0), precision="fp32", sampled_precision="bf16").startswith("precision mismatch")
    assert diagnose(_stats(1.0), precision="fp32", other_model="a copy").startswith("other weights")
    assert diagnose(_stats(1.0), precision="fp32", dropout=["block.dropout"]).startswith("dropout active")
    bf16_sized = ROUNDING_Z * UNIT_ROUNDOFF["bf16"] / UNIT_ROUNDOFF["fp32"] / 2
    assert diagnose(_stats(bf16_sized), precision="fp32").startswith("likely a precision mismatch")
    assert diagnose(_stats(1e9), precision="fp32").startswith("sampling and the loss disagree")


def test_units_follow_the_precision_and_declared_rounding():
    assert rounding_unit("fp32", "cpu") == 2.0**-23 and rounding_unit("bf16", "cpu") == 2.0**-7
    with assume_rounding(1e-3):
        assert rounding_unit("fp32", "cpu") == 1e-3 and rounding_unit("bf16", "cpu") == 2.0**-7
    assert autocast_precision("cpu") == "fp32"
    with model_precision("bf16", "cpu"):
        assert autocast_precision("cpu") == "bf16"


def test_active_dropout_names_modules_in_train_mode_only():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Dropout(0.0))
    assert active_dropout(model) == ["1"]
    assert active_dropout(model.eval()) == []


def test_the_harness_rounds_by_batch_shape_and_only_denoisers():
    model = CallableDenoiser(lambda x, t, cond: 2 * x)
    plain = nn.Linear(3, 3)
    x = torch.randn(8, 3)
    with simulated_gpu_numerics("tf32") as size:
        assert size == 1e-3 and rounding_unit("fp32", "cpu") == 1e-3
        whole, again = model(x, torch.zeros(8), None), model(x, torch.zeros(8), None)
        part = model(x[:3], torch.zeros(3), None)
        torch.testing.assert_close(plain(x), torch.nn.functional.linear(x, plain.weight, plain.bias), rtol=0, atol=0)
    assert torch.equal(whole, again)  # the same shape: the same numbers
    assert not torch.equal(whole[:3], part)  # another batch shape: other rounding
    relative = ((whole[:3] - part) / (2 * x[:3])).abs().max()
    assert 1e-4 < relative < 1e-2
    torch.testing.assert_close(model(x, torch.zeros(8), None), 2 * x, rtol=0, atol=0)  # removed on exit
    assert shape_noise(torch.Size([2, 3]), torch.float32, torch.device("cpu"), {}).shape == (2, 3)


def _toy_rollout(model, precision="fp32"):
    transition = FlowSDE(FlowTimesteps.linear(8, shift=3.0), 0.7)
    with model_precision(precision, "cpu"):
        rollout = TreeSampler(model, transition, branching=3, depth=2).sample(
            None, num_prompts=4, latent_shape=(16,), window_start=2, generator=torch.Generator().manual_seed(0))
    return rollout, transition


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(17, 64), nn.SiLU(), nn.Linear(64, 16))


def test_the_full_check_passes_gpu_like_rounding_and_names_real_mismatches():
    net = _net()
    model = CallableDenoiser(lambda x, t, cond: net(torch.cat([x, t[:, None].to(x.dtype) / 1000], -1)))
    with simulated_gpu_numerics("tf32"):
        rollout, transition = _toy_rollout(model)
        stats = check_on_policy(rollout, model, transition, None, max_batch=5)  # other batch shapes than sampling's
        assert 0 < stats.max_deviation and stats.is_rounding
        other = _net()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        wrong = CallableDenoiser(lambda x, t, cond: other(torch.cat([x, t[:, None].to(x.dtype) / 1000], -1)))
        with pytest.raises(OnPolicyError, match="sampling and the loss disagree"):
            check_on_policy(rollout, wrong, transition, None)
        with pytest.raises(OnPolicyError, match="precision mismatch: the rollout was sampled under bf16"):
            check_on_policy(_toy_rollout(model, "bf16")[0], model, transition, None)
        dropped = nn.Sequential(net, nn.Dropout(0.1)).train()
        noisy = CallableDenoiser(lambda x, t, cond: dropped(torch.cat([x, t[:, None].to(x.dtype) / 1000], -1)))
        noisy.add_module("net", dropped)
        with pytest.raises(OnPolicyError, match="dropout active"):
            check_on_policy(rollout, noisy, transition, None)
