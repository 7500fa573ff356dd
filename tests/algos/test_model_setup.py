"""LoRA (peft), gradient checkpointing, torch.compile and sample grids, through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tensordict import TensorDict

from tests.algos.test_training import _config
from tests.envs.tiny_models import LATENT_SHAPE, text_cond, tiny_sd3
from treegrpo.algos.checkpoint import latest_checkpoint
from treegrpo.algos.losses import PPOClipLoss
from treegrpo.algos.model_setup import adapters_disabled, apply_lora, enable_gradient_checkpointing, has_adapters
from treegrpo.algos.trainer import Trainer
from treegrpo.envs import FlowSDE, FlowTimesteps, SD3Denoiser
from treegrpo.problems import Problem, toy2d_problem


def _toy_trainer(tmp_path: Path, iterations: int, **extra: object) -> Trainer:
    config = _config("treegrpo", tmp_path, iterations, **{"train.deterministic": True, **extra})
    return Trainer(toy2d_problem(8, prompts_per_iteration=4, seed=0), config)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_lora_trains_only_the_adapters_and_checkpoints_only_them(tmp_path):
    trainer = _toy_trainer(tmp_path, 12, **{"train.lora_rank": 4, "train.lora_alpha": 8, "optim.lr": 1e-2})
    before = _params(trainer)
    assert set(trainer.named_params) == {n for n in before if ".lora_" in n}
    assert set(trainer.setup["lora_modules"]) == {"net.0", "net.2", "out"}
    history = trainer.fit(progress=False)
    after = _params(trainer)
    frozen = [n for n in before if ".lora_" not in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in trainer.named_params)
    mean = lambda part: sum(h["reward_mean"] for h in part) / len(part)
    assert mean(history[-3:]) > mean(history[:3]) + 0.2, (mean(history[:3]), mean(history[-3:]))
    saved = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    assert set(saved) == set(trainer.named_params)


def test_lora_resume_restores_the_adapters(tmp_path):
    extra = {"train.lora_rank": 2, "optim.lr": 1e-2}
    first = _toy_trainer(tmp_path / "run", 3, **extra)
    first.fit(progress=False)
    assert first.save() == first.save()  # saving an iteration again returns its checkpoint
    resumed = _toy_trainer(tmp_path / "run", 3, **extra, **{"train.resume": True})
    assert resumed.iteration == 3
    assert all(torch.equal(p, first.named_params[n]) for n, p in resumed.named_params.items())


def test_disable_adapter_reference_is_the_base_model(tmp_path):
    """The KL to 'disable_adapter' equals the KL to a frozen copy of the base taken before LoRA."""
    problem = toy2d_problem(8, prompts_per_iteration=4, seed=0)
    frozen_base = toy2d_problem(8, prompts_per_iteration=4, seed=0).model.requires_grad_(False)
    apply_lora(problem.model, rank=2, alpha=4.0)
    with torch.no_grad():
        for name, p in problem.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    x, t = torch.randn(6, 2), torch.full((6,), 500.0)
    cond = torch.tensor([0, 1, 0, 1, 0, 1])
    with adapters_disabled(problem.model):
        assert torch.allclose(problem.model(x, t, cond), frozen_base(x, t, cond), atol=1e-6)
    assert not torch.allclose(problem.model(x, t, cond), frozen_base(x, t, cond), atol=1e-3)

    td = TensorDict({"latent": x, "step": torch.full((6,), 3), "cond": cond}, batch_size=[6])
    by_adapter = PPOClipLoss(problem.model, problem.transition, kl_coef=1.0, reference="disable_adapter")
    by_copy = PPOClipLoss(problem.model, problem.transition, kl_coef=1.0, reference=frozen_base)
    mean, std = by_adapter.policy_mean_std(td)
    ref_mean, _ = by_copy.policy_mean_std(td, frozen_base)
    expected = ((mean.double() - ref_mean.double()) ** 2 / (2 * torch.as_tensor(std).double() ** 2)).mean()
    assert float(expected.detach()) > 1e-4
    assert torch.allclose(by_adapter.reference_kl(td, mean, std).double().mean(), expected, rtol=1e-5)
    assert torch.allclose(by_copy.reference_kl(td, mean, std).double().mean(), expected, rtol=1e-5)


def test_kl_with_lora_uses_the_adapter_free_reference(tmp_path):
    one_update = {"train.inner_epochs": 1, "train.minibatch_parents": 1000}
    trainer = _toy_trainer(tmp_path, 2, **{"train.lora_rank": 2, "loss.algorithm": "grpo", "loss.kl_coef": 0.1,
                                           "optim.lr": 1e-2, **one_update})
    assert trainer.loss._reference == "disable_adapter"
    history = trainer.fit(progress=False)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-12)  # B = 0: the adapted model is the base
    assert history[1]["kl"] > 0


def test_gradient_checkpointing_recomputes_and_changes_nothing(tmp_path):
    calls = {"plain": 0, "checkpointed": 0}

    def run(name: str, **extra: object) -> Trainer:
        trainer = _toy_trainer(tmp_path / name, 2, **extra)
        first_layer = trainer.model.net[0]
        forward = first_layer.forward

        def counted(*args):  # module hooks do not fire in the recomputation, so count calls directly
            calls[name] += 1
            return forward(*args)

        first_layer.forward = counted
        trainer.fit(progress=False)
        return trainer

    plain, checkpointed = run("plain"), run("checkpointed", **{"train.gradient_checkpointing": True})
    assert all(torch.equal(p, plain.named_params[n]) for n, p in checkpointed.named_params.items())
    backward_passes = int(sum(h["optimizer_steps"] for h in checkpointed.history))
    assert calls["checkpointed"] - calls["plain"] == backward_passes  # the hidden layers ran again in each backward


def test_gradient_checkpointing_without_support_is_an_error():
    with pytest.raises(ValueError, match=r"^train.gradient_checkpointing: Sequential does not support it"):
        enable_gradient_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compiled_model_trains_like_the_eager_one(tmp_path):
    eager = _toy_trainer(tmp_path / "eager", 2)
    eager.fit(progress=False)
    compiled = _toy_trainer(tmp_path / "compiled", 2, **{"train.compile": True, "train.compile_backend": "aot_eager"})
    assert compiled.setup["compiled"] == "aot_eager"
    compiled.fit(progress=False)
    for name, p in compiled.named_params.items():
        assert torch.allclose(p, eager.named_params[name], atol=1e-5), name


def test_sample_grids_are_written_as_png(tmp_path):
    trainer = _toy_trainer(tmp_path, 4, **{"train.sample_every": 2})
    trainer.fit(progress=False)
    grids = sorted((tmp_path / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["iter-000002.png", "iter-000004.png"]
    with Image.open(grids[0]) as image:
        width, height = image.size
    # 8 samples x the 2 held-out prompts; 32 px renders enlarged to 64 px; 2 px padding.
    assert (width, height) == (8 * 66 + 2, 2 * 66 + 2)


def _tiny_sd3_problem(tmp_path: Path) -> Problem:
    model = SD3Denoiser(tiny_sd3(tmp_path))
    cond = text_cond(4)
    transition = FlowSDE(FlowTimesteps.linear(6, shift=3.0), 0.7)

    def prompts(iteration: int, generator: torch.Generator) -> tuple[TensorDict, torch.Tensor]:
        ids = torch.randperm(4, generator=generator)[:2]
        return cond[ids], ids

    def reward(final: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        return -final.square().mean(dim=(1, 2, 3))

    return Problem(model=model, transition=transition, latent_shape=LATENT_SHAPE, prompts=prompts, reward=reward)


@pytest.mark.parametrize("lora", [True, False])
def test_tiny_sd3_iteration_with_lora_or_full_and_checkpointing(lora, tmp_path):
    problem = _tiny_sd3_problem(tmp_path)
    settings = {"sampling.num_steps": 6, "sampling.depth": 2, "sampling.branching": 2, "sampling.prompts_per_iteration": 2,
                "train.gradient_checkpointing": True, "train.lora_rank": 4 if lora else 0,
                "train.lora_targets": "to_q,to_k,to_v,to_out.0" if lora else ""}
    trainer = Trainer(problem, _config("treegrpo", tmp_path / "run", 1, **settings))
    transformer = problem.model.transformer
    assert transformer.gradient_checkpointing and has_adapters(transformer) == lora
    before = _params(trainer)
    trainer.fit(progress=False)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    if lora:
        assert changed and all(".lora_" in n for n in changed)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainer.named_params} <= {"to_q", "to_k", "to_v", "0"}
    else:
        assert len(changed) > len(before) // 2


def test_lora_targets_that_all_miss_are_refused_and_a_partial_miss_is_a_warning():
    import warnings as _warnings

    from treegrpo.algos.model_setup import check_lora
    from treegrpo.config import ConfigError
    from treegrpo.errors import TreegrpoWarning

    host = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="'to_q' matches no module of Sequential"):
        check_lora(host, 2, ["to_q", "to_k"])
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        check_lora(host, 2, ["0", "to_add_out"])  # a family's list on a smaller model
    assert [w for w in caught if issubclass(w.category, TreegrpoWarning) and "'to_add_out'" in str(w.message)]
