"""The digits problem: what the trainer gets, and that TreeGRPO on it learns from the shipped base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config, ConfigError, preset_config
from treegrpo.embedded.data import digits_prompts
from treegrpo.embedded.model import load_base, to_image
from treegrpo.embedded.rewards import DIGITS_REWARDS, ClassifierReward, aesthetic_proxy
from treegrpo.envs import DanceSDE, FlowSDE, GuidedDenoiser, SD3Denoiser
from treegrpo.problems import build_problem
from treegrpo.problems.digits import digits_problem


def test_problem_draws_training_prompts_and_scores_every_reward_column(tiny_weights: Path) -> None:
    problem = digits_problem(prompts_per_iteration=6, rewards=("classifier", "aesthetic_proxy"), weights=tiny_weights)
    assert isinstance(problem.model, SD3Denoiser) and isinstance(problem.transition, FlowSDE)
    assert problem.latent_shape == (1, 16, 16) and tuple(problem.reward_names) == ("classifier", "aesthetic_proxy")
    cond, ids = problem.prompts(0, torch.Generator().manual_seed(0))
    assert ids.shape == (6,) and ids.unique().numel() == 6 and int(ids.max()) < 80
    base = load_base(tiny_weights / "base")
    texts = [digits_prompts("train").texts[i] for i in ids.tolist()]
    assert torch.allclose(cond["pooled_projections"], base.encode(texts)["pooled_projections"], atol=1e-6)
    final = torch.randn(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    leaf_ids = ids.repeat_interleave(2)
    rewards = problem.reward(final, leaf_ids)
    labels = digits_prompts("train").labels[leaf_ids]
    expected_classifier = ClassifierReward(path=tiny_weights / "classifier")(to_image(final), labels)
    assert rewards.shape == (12, 2)
    assert torch.allclose(rewards[:, 0], expected_classifier) and torch.allclose(rewards[:, 1], aesthetic_proxy(to_image(final)))


def test_evaluation_uses_the_heldout_templates_and_every_reward(tiny_weights: Path) -> None:
    problem = digits_problem(weights=tiny_weights)
    cond, ids = problem.eval_prompts()
    assert cond.shape == (40,) and torch.equal(ids, torch.arange(40))
    assert tuple(problem.eval_reward_names) == DIGITS_REWARDS
    final = torch.zeros(40, 1, 16, 16)
    assert problem.eval_reward(final, ids).shape == (40, len(DIGITS_REWARDS))


def test_only_the_transformer_trains_and_options_reach_the_problem(tiny_weights: Path) -> None:
    problem = digits_problem(weights=tiny_weights, guidance_scale=3.0, transition="dance_sde", noise_level=0.3,
                             num_steps=6, shift=2.0)
    assert isinstance(problem.model, GuidedDenoiser) and problem.model.guidance_scale == 3.0
    assert isinstance(problem.transition, DanceSDE) and problem.transition.num_steps == 6
    trainable = {name for name, p in problem.model.named_parameters() if p.requires_grad}
    assert trainable and all(".transformer." in f".{name}" for name in trainable)


def test_bad_options_give_one_line_errors(tiny_weights: Path) -> None:
    with pytest.raises(ValueError, match="rewards: unknown reward 'hps'"):
        digits_problem(weights=tiny_weights, rewards=("hps",))
    with pytest.raises(ValueError, match="prompts_per_iteration: expected 1..80, got 81"):
        digits_problem(weights=tiny_weights, prompts_per_iteration=81)
    with pytest.raises(ValueError, match="transition: a flow model takes one of"):
        digits_problem(weights=tiny_weights, transition="ddim")
    with pytest.raises(ConfigError, match="sampling.transition: the digits model is a flow model"):
        build_problem(Config().override([f"model.path={tiny_weights}", "sampling.transition=ddim"]))


def test_config_builds_the_problem_from_model_path(tiny_weights: Path) -> None:
    config = preset_config("digits").override([f"model.path={tiny_weights}"])
    problem = build_problem(config)
    assert tuple(problem.reward_names) == ("classifier", "aesthetic_proxy")
    assert problem.transition.num_steps == config.sampling.num_steps == 10


def test_treegrpo_raises_the_heldout_classifier_reward_of_the_shipped_base(tmp_path: Path) -> None:
    """A dozen TreeGRPO iterations of the digits preset (classifier reward only, lr 1e-4) lift the held-out
    probability of the prompted digit by more than 0.08, on the same held-out noise before and after."""
    config = preset_config("digits").override([
        "train.iterations=12", f"train.out_dir={tmp_path}", "train.checkpoint_every=100", "train.sample_every=100",
        "model.rewards=classifier", "loss.reward_weights=", "optim.lr=1e-4",
    ])
    trainer = Trainer(build_problem(config), config)
    before = trainer.evaluate(samples_per_prompt=4)["eval/classifier"]
    trainer.fit(progress=False)
    after = trainer.evaluate(samples_per_prompt=4)["eval/classifier"]
    assert 0.65 < before < 0.9
    assert after > before + 0.08, (before, after)
