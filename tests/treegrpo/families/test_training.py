"""One TreeGRPO iteration end to end on tiny SD3, FLUX.1 and SD1.5 pipelines, LoRA and full fine-tuning,
and the trained weights loading back into stock diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from treegrpo.algos.trainer import Trainer
from treegrpo.cli import main
from treegrpo.config import Config
from treegrpo.envs import FluxDenoiser
from treegrpo.families.pipelines import load_pipeline
from treegrpo.problems import build_problem
from treegrpo.problems.lora import LORA_FILE, fuse_lora

REPO = Path(__file__).resolve().parents[3]
CONFIGS = {"sd3": REPO / "configs" / "sd35_medium.yaml", "flux": REPO / "configs" / "flux_dev.yaml",
           "sd15": REPO / "configs" / "sd15.yaml"}


def tiny_overrides(path: Path, prompts: Path, out: Path, lora: bool, rewards: Path) -> list[str]:
    """The paper configs, shrunk to a 16-pixel CPU run: 4 steps, k=2, d=2, 2 prompts, 1 iteration,
    HPSv2 (the configs' reward) from a tiny random-weight checkpoint."""
    return [f"model.reward_dir={rewards}",
        f"model.path={path}", f"model.prompts={prompts}", "model.image_size=16",
        *(["model.max_sequence_length=16"] if path.name in ("sd3", "flux") else []),
        f"model.embedding_cache={out / 'embeddings'}", "model.eval_count=2", "sampling.num_steps=4",
        "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2", "sampling.max_batch=0",
        "train.iterations=1", "train.device=cpu", "train.precision=fp32", f"train.out_dir={out}",
        "optim.lr=1e-3", "loss.clip_range=0.2", "train.minibatch_parents=4",
        *([] if lora else ["train.lora_rank=0", "train.gradient_checkpointing=false"]),
    ]


def network_output(network: torch.nn.Module, kind: str) -> torch.Tensor:
    """The network's prediction on fixed random inputs (a fingerprint of its weights)."""
    g = torch.Generator().manual_seed(0)
    if kind == "flux":  # through the adapter: packed 16-channel latents, ids, distilled guidance 3.5
        cond = TensorDict({"encoder_hidden_states": torch.randn(2, 7, 32, generator=g),
                           "pooled_projections": torch.randn(2, 16, generator=g)}, batch_size=[2])
        return FluxDenoiser(network)(torch.randn(2, 16, 8, 8, generator=g), torch.tensor([500.0, 900.0]), cond)
    x = torch.randn(2, 4, 8, 8, generator=g)
    if kind == "sd3":
        return network(hidden_states=x, timestep=torch.tensor([500.0, 900.0]),
                       encoder_hidden_states=torch.randn(2, 7, 32, generator=g),
                       pooled_projections=torch.randn(2, 32, generator=g), return_dict=False)[0]
    return network(x, torch.tensor([500, 900]), encoder_hidden_states=torch.randn(2, 7, 16, generator=g),
                   return_dict=False)[0]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("kind", ["sd3", "flux", "sd15"])
def test_one_iteration_trains_and_exports_what_diffusers_loads(pipelines, prompt_file, reward_root, tmp_path, kind,
                                                               lora):
    from diffusers import (
        FluxPipeline,
        FluxTransformer2DModel,
        ModelMixin,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    config = Config.from_yaml(CONFIGS[kind]).override(tiny_overrides(pipelines[kind], prompt_file, tmp_path, lora,
                                                                                     reward_root))
    problem = build_problem(config)
    trainer = Trainer(problem, config)
    network = next(m for m in problem.model.modules() if isinstance(m, ModelMixin))  # inside the CFG wrapper
    before = network_output(network, kind).detach()
    metrics = trainer.step()
    trained = network_output(network, kind).detach()
    assert metrics["images"] == 2 * 2**2 and metrics["nfe_sampled"] > 0 and metrics["optimizer_steps"] >= 1
    assert metrics["edges_trained"] == 2 * (2 + 4)  # 2 prompts x (k + k^2) window edges
    assert not torch.allclose(trained, before), "one update must change the policy"
    exported = problem.export(tmp_path / "final")

    stock_class = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline, "sd15": StableDiffusionPipeline}[kind]
    stock = stock_class.from_pretrained(pipelines[kind], local_files_only=True)
    stock_network = stock.unet if kind == "sd15" else stock.transformer
    torch.testing.assert_close(network_output(stock_network, kind), before, rtol=1e-5, atol=1e-5)
    if lora:
        assert exported == [tmp_path / "final" / LORA_FILE]
        stock.load_lora_weights(tmp_path / "final")  # a stock diffusers pipeline, nothing of ours
        torch.testing.assert_close(network_output(stock_network, kind), trained, rtol=1e-4, atol=1e-5)
        fused = load_pipeline(pipelines[kind], max_sequence_length=16)  # and `model.lora` folds it in
        fuse_lora(fused, tmp_path / "final")
        torch.testing.assert_close(network_output(fused.network, kind), trained, rtol=1e-4, atol=1e-5)
    else:
        folder = "unet" if kind == "sd15" else "transformer"
        assert exported == [tmp_path / "final" / folder]
        network_class = {"sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel, "sd15": UNet2DConditionModel}[kind]
        reloaded = network_class.from_pretrained(tmp_path / "final" / folder)
        torch.testing.assert_close(network_output(reloaded, kind), trained, rtol=1e-5, atol=1e-6)


def test_cli_runs_the_readme_command_with_bf16_and_guidance(pipelines, prompt_file, reward_root, tmp_path, capsys):
    """`treegrpo train --config configs/sd35_medium.yaml --model.path ... --model.prompts ...`, shrunk."""
    overrides = tiny_overrides(pipelines["sd3"], prompt_file, tmp_path, lora=True, rewards=reward_root)
    overrides = [o for o in overrides if not o.startswith("train.precision")]
    overrides += ["train.precision=bf16", "sampling.window=fixed", "sampling.window_start=1",
                  "model.precompute_embeddings=true"]
    flags = []
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        flags += {"true": [f"--{key}"], "false": [f"--no-{key}"]}.get(value, [f"--{key}", value])
    assert main(["train", "--config", str(CONFIGS["sd3"]), *flags]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["sampling"]["guidance_scale"] == 4.5
    assert summary["config"]["train"]["gradient_checkpointing"] is True
    assert summary["training"]["images_generated"] == 8 and "eval/hpsv2" in summary["after"]
    # per prompt: 1 prefix row, window rows 1 and 2, then 4 leaves x 1 step; guidance doubles every row
    assert summary["training"]["nfe_sampled"] == 2 * (1 + 1 + 2 + 4 * 1) * 2
    assert (tmp_path / "final" / LORA_FILE).is_file()
    cached = list((tmp_path / "embeddings").rglob("*.safetensors"))
    assert len(cached) == 4 + 2 + 1  # training and held-out prompts, and the empty negative prompt
    assert "trained weights:" in capsys.readouterr().out


def test_cli_missing_weights_is_one_line(tmp_path, prompt_file, capsys):
    code = main(["train", "--model.kind", "sd3", "--model.path", str(tmp_path / "nowhere"),
                 "--model.prompts", str(prompt_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("treegrpo: error: model.path:") and "nowhere" in err


@pytest.mark.parametrize("algorithm", ["flow_grpo", "dance_grpo", "mix_grpo", "branch_grpo"])
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_each_peer_recipe_trains_a_tiny_pipeline_from_the_command_line(pipelines, prompt_file, reward_root, tmp_path,
                                                                       kind, algorithm):
    """`treegrpo train --model.kind K --loss.algorithm X`: the recipe's sampler, advantage and loss on a
    real pipeline (4 steps; BranchGRPO split at steps 0 and 2)."""
    flags = ["--model.kind", kind, "--model.path", str(pipelines[kind]), "--model.prompts", str(prompt_file),
             "--model.reward_dir", str(reward_root), "--model.image_size", "16", "--model.max_sequence_length", "16",
             "--model.eval_count", "1", "--eval.samples_per_prompt", "1", "--sampling.num_steps", "4",
             "--sampling.prompts_per_iteration", "2", "--train.iterations", "1", "--train.out_dir", str(tmp_path),
             "--optim.lr", "1e-3", "--train.minibatch_parents", "8", "--no-eval.diversity", "--loss.algorithm", algorithm]
    if algorithm == "branch_grpo":
        flags += ["--sampling.split_steps", "0,2"]
    else:
        flags += ["--sampling.group_size", "2"]
    if algorithm == "mix_grpo":
        flags += ["--sampling.depth", "2"]
    assert main(["train", *flags]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected_images = 2 * (4 if algorithm == "branch_grpo" else 2)
    assert summary["config"]["loss"]["algorithm"] == algorithm
    assert summary["training"]["images_generated"] == expected_images
    assert summary["training"]["edges_trained"] > 0
