"""The trainer's on-policy statistics: no extra forward, rounding tolerated, real mismatches named.

Every test here runs under simulated GPU numerics (tests/conftest.py: each denoiser forward rounds
by batch shape, TF32-sized unless TREEGRPO_GPU_NUMERICS says otherwise); some install bf16-sized
rounding on top.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config
from treegrpo.envs import OnPolicyError
from treegrpo.envs.numerics import ROUNDING_Z, OnPolicyWarning
from treegrpo.problems import toy2d_problem
from treegrpo.testing.numerics import sd35_latent_problem, simulated_gpu_numerics

ALGORITHMS = ("treegrpo", "grpo", "mixgrpo", "ddpo", "reinforce")


def _config(tmp_path, *extra: str) -> Config:
    return Config().override([
        "model.kind=toy2d", "sampling.num_steps=8", "sampling.prompts_per_iteration=4", "train.iterations=3",
        f"train.out_dir={tmp_path}", "train.minibatch_parents=8",
        *([] if "loss.algorithm=reinforce" in extra else ["loss.clip_range=0.01"]),
        "train.checkpoint_every=1000", "train.sample_every=1000", *extra])


def _trainer(tmp_path, *extra: str, conditioned: bool = False) -> Trainer:
    problem = toy2d_problem(8, prompts_per_iteration=4, seed=0)
    if conditioned:  # the residual starts at 0; a non-zero one makes the prompt matter
        with torch.no_grad():
            for p in problem.model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return Trainer(problem, _config(tmp_path, *extra))


def test_the_default_reads_statistics_off_the_first_minibatch_with_no_extra_forward(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnPolicyWarning)  # GPU-like rounding is no finding
        metrics = _trainer(tmp_path / "a").step()
    assert {"onpolicy/max_deviation", "onpolicy/ratio_std", "onpolicy/clipped_fraction",
            "onpolicy/rounding_z"} <= metrics.keys()
    assert "forward_rows_check" not in metrics and metrics["forward_rows"] == metrics["backward_rows"]
    assert 0 < metrics["onpolicy/max_deviation"] < 1e-2 and metrics["onpolicy/rounding_z"] < ROUNDING_Z
    full = _trainer(tmp_path / "b", "train.rescore_on_policy=true").step()
    assert full["forward_rows_check"] == full["forward_rows"]  # one epoch: every parent once more
    off = _trainer(tmp_path / "c", "train.check_on_policy=off").step()
    assert not any(key.startswith("onpolicy/") for key in off)


@pytest.mark.parametrize(("algorithm", "level"), [("treegrpo", "tf32"), *((a, "bf16") for a in ALGORITHMS)])
def test_every_algorithm_trains_in_strict_mode_under_gpu_like_rounding(algorithm, level, tmp_path):
    """The suite's TF32-sized rounding covers every algorithm (tests/algos/test_training.py); here bf16-sized,
    and strict: rounding is never taken for a bug."""
    clip = [] if algorithm == "reinforce" else ["loss.clip_range=0.2"]
    with simulated_gpu_numerics(level):
        trainer = _trainer(tmp_path, "train.check_on_policy=strict", f"loss.algorithm={algorithm}", *clip,
                           f"optim.lr={1e-3 if algorithm == 'reinforce' else 3e-3}", "train.iterations=16")
        history = trainer.fit(progress=False)
    assert sum(h["reward_mean"] for h in history[-4:]) > sum(h["reward_mean"] for h in history[:4]) + 0.3 * 4


def _strict(tmp_path, *extra, conditioned: bool = False):
    return _trainer(tmp_path, "train.check_on_policy=strict", *extra, conditioned=conditioned)


def test_a_loss_with_other_weights_is_named(tmp_path):
    trainer = _strict(tmp_path)
    trainer.loss.model = copy.deepcopy(trainer.model)  # a copy the optimiser updates and the sampler never sees
    before = {name: p.detach().clone() for name, p in trainer.loss.model.named_parameters()}
    with pytest.raises(OnPolicyError, match="other weights: the sampler samples with one"):
        trainer.step()
    assert all(torch.equal(p, before[name]) for name, p in trainer.loss.model.named_parameters())  # no step taken


def test_dropout_in_the_loss_forward_is_named(tmp_path):
    trainer = _strict(tmp_path)
    trainer.model.add_module("dropout", nn.Dropout(0.2))
    forward = trainer.model.forward
    trainer.model.forward = lambda x, t, cond: trainer.model.dropout(forward(x, t, cond))
    with pytest.raises(OnPolicyError, match="dropout active in the loss's forward"):
        trainer.step()


def test_sampling_under_another_precision_is_named(tmp_path):
    trainer = _strict(tmp_path, "train.precision=bf16")
    sample = trainer.sampler.sample

    def sample_in_float32(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return sample(*args, **kwargs)

    trainer.sampler.sample = sample_in_float32
    with pytest.raises(OnPolicyError, match="precision mismatch: the rollout was sampled under fp32"):
        trainer.step()


def test_inputs_the_loss_does_not_see_are_caught_by_size(tmp_path):
    trainer = _strict(tmp_path, conditioned=True)
    conditioning = trainer.loss.conditioning
    trainer.loss.conditioning = lambda td: 1 - conditioning(td)  # every parent scored with the other prompt
    with pytest.raises(OnPolicyError, match="sampling and the loss disagree"):
        trainer.step()


def test_warn_prints_one_line_once_and_training_goes_on(tmp_path):
    trainer = _trainer(tmp_path, conditioned=True)
    conditioning = trainer.loss.conditioning
    trainer.loss.conditioning = lambda td: 1 - conditioning(td)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = [trainer.step() for _ in range(3)]
    found = [w for w in caught if issubclass(w.category, OnPolicyWarning)]
    assert len(found) == 1
    assert "sampling and the loss disagree" in str(found[0].message) and "\n" not in str(found[0].message)
    assert all(h["onpolicy/rounding_z"] > ROUNDING_Z for h in history)


def test_rounding_beyond_the_clip_range_is_a_warning_not_an_error(tmp_path):
    with simulated_gpu_numerics("bf16"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = _strict(tmp_path, "loss.clip_range=1e-6").step()
    assert metrics["onpolicy/clipped_fraction"] > 0 and metrics["onpolicy/rounding_z"] < ROUNDING_Z
    assert any("outside the clip range before any update" in str(w.message) for w in caught)


@pytest.mark.parametrize("level", ["tf32", "bf16"])
def test_sd35_sized_latents_absorb_gpu_rounding_and_still_catch_dropout(level, tmp_path):
    """16x64x64 latents on a one-layer SD3 transformer: the log-prob's mean over 65,536 dimensions."""
    config = Config().override([
        "model.kind=toy2d", "sampling.num_steps=6", "sampling.prompts_per_iteration=1", "sampling.branching=2",
        "sampling.depth=2", "sampling.window=fixed", "sampling.window_start=3", "train.minibatch_parents=2",
        "loss.clip_range=1e-4", "optim.lr=1e-5", "train.check_on_policy=strict", f"train.out_dir={tmp_path}",
        "train.checkpoint_every=1000", "train.sample_every=1000"], check_used=False)
    with simulated_gpu_numerics(level):
        trainer = Trainer(sd35_latent_problem(prompts=1, num_steps=6), config)
        metrics = trainer.step()
        assert 0 < metrics["onpolicy/max_deviation"] and metrics["onpolicy/rounding_z"] < ROUNDING_Z
        for module in trainer.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.1
        with pytest.raises(OnPolicyError, match="dropout active"):
            trainer.step()
