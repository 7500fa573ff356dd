"""Training Wan2.1 (`model.kind = wan`) beyond one process and back into stock diffusers, on the tiny WanPipeline:

- FSDP2 shards the Wan transformer block by block, and 2 ranks under ``torchrun`` (gloo, CPU) end with the
  weights one process computes over the same prompts (the gradients were synchronised);
- one iteration with LoRA, and one with full fine-tuning, exports what stock diffusers loads:
  ``WanPipeline.load_lora_weights`` and ``WanTransformer3DModel.from_pretrained`` give the trained policy's
  predictions.

The training runs build the problem in Python (pipeline_problem with a latent reward, as test_wan.py does)
rather than through the CLI, so the tiny random VAE's nearly constant videos do not leave the updates to
rounding. This file is also the torchrun worker (``python -m torch.distributed.run ... test_wan_training.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

STEPS = 2
PROMPTS = ["a red cat", "two small birds"]


class Brightness:
    """A video reward for pipeline_problem to hold (the mean pixel); the runs swap in :func:`latent_mean`."""

    name = "brightness"

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return videos.mean(dim=(1, 2, 3, 4))


def latent_mean(final: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    """A toy reward on the final video latents ``[L, C, F, H, W]``: their mean (see test_wan.py)."""
    return final.mean(dim=(1, 2, 3, 4))


def wan_problem(path: Path, guidance_scale: float = 1.0):
    """The tiny Wan pipeline's problem in fp32: 2 prompts per iteration, 2 steps, the latent-mean reward."""
    from dataclasses import replace

    from treegrpo.families.pipelines import load_pipeline
    from treegrpo.families.prompts import PromptEmbeddings
    from treegrpo.problems.text_to_image import pipeline_problem
    from treegrpo.testing.wan import IMAGE_SIZE, NUM_FRAMES

    model = load_pipeline(path, "wan", frozen_dtype=torch.float32, max_sequence_length=16, num_frames=NUM_FRAMES)
    problem = pipeline_problem(model, train_prompts=PROMPTS, eval_prompts=PROMPTS, rewards=[Brightness()],
                               embeddings=PromptEmbeddings(model.encode, model.identity()), image_size=IMAGE_SIZE,
                               num_steps=STEPS, noise_level=0.9, prompts_per_iteration=2,
                               guidance_scale=guidance_scale)
    return model, replace(problem, reward=latent_mean, reward_names=("latent_mean",))


def train_config(out_dir: Path, *extra: str):
    """k = d = 2 trees over the 2 steps, one update per iteration, a checkpoint of the trained weights each."""
    from treegrpo.config import Config

    return Config().override([
        f"sampling.num_steps={STEPS}", "sampling.branching=2", "sampling.depth=2", "sampling.prompts_per_iteration=2",
        "sampling.window=fixed", "sampling.window_start=0", "sampling.max_batch=0", "sampling.noise_level=0.9",
        "loss.clip_range=0.2", "optim.lr=1e-3", "train.precision=fp32", "train.gradient_checkpointing=false",
        "train.device=cpu", "train.deterministic=true", f"train.out_dir={out_dir}", "train.minibatch_parents=8",
        "train.checkpoint_every=1", "train.sample_every=1000", "train.keep_checkpoints=20", *extra,
    ])


def train(path: Path, out_dir: Path, iterations: int, *extra: str):
    """Train ``iterations`` iterations, writing the starting weights as iteration 0; returns the trainer."""
    from treegrpo.algos.trainer import Trainer

    model, problem = wan_problem(path)
    config = train_config(out_dir, f"train.iterations={iterations}", *extra)
    trainer = Trainer(problem, config)
    trainer.save()  # every rank (FSDP gathers the shards); rank 0 writes
    trainer.fit(progress=False)
    return model, problem, trainer


# ---------------------------------------------------------------------------------------------
# FSDP2 on the Wan transformer.


@pytest.fixture(scope="module")
def wan_path(tmp_path_factory) -> Path:
    from treegrpo.testing.wan import save_tiny_wan_pipeline

    return save_tiny_wan_pipeline(tmp_path_factory.mktemp("wan") / "wan")


def test_fsdp_units_are_the_wan_transformer_blocks(wan_path):
    """The units ``train.parallel=fsdp`` shards are the transformer's blocks, found through the CFG wrapper
    (the shipped config's guidance 4.5) and the denoiser adapter; with LoRA too (the blocks hold the adapters). The tiny transformer has one block,
    so a 3-block one from its config checks that every block is a unit and nothing inside a block is."""
    from diffusers import WanTransformer3DModel

    from treegrpo.algos.distributed import _outermost_blocks
    from treegrpo.algos.model_setup import prepare_model
    from treegrpo.families.wan import WanDenoiser

    model, problem = wan_problem(wan_path, guidance_scale=4.5)
    assert problem.model is not model.denoiser  # the guided wrapper around it
    assert _outermost_blocks(problem.model) == list(model.network.blocks)
    prepare_model(problem.model, train_config(wan_path.parent / "unused", "train.lora_rank=4").train)
    assert model.network.blocks[0].attn1.to_q.lora_A  # the adapters sit inside the unit
    assert _outermost_blocks(problem.model) == list(model.network.blocks)

    deeper = WanTransformer3DModel.from_config({**model.network.config, "num_layers": 3})
    assert _outermost_blocks(WanDenoiser(deeper)) == list(deeper.blocks) and len(deeper.blocks) == 3


def _torchrun(nproc: int, path: Path, out_dir: Path, iterations: int, *extra: str) -> str:
    """Run this file's worker on ``nproc`` ranks; returns what they printed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, str(path), str(out_dir), str(iterations), *extra]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def _weights(run_dir: Path, iteration: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from treegrpo.algos.checkpoint import checkpoint_dir

    return load_file(str(checkpoint_dir(run_dir, iteration) / "model.safetensors"))


@pytest.mark.exact_numerics  # the ranks run outside this process's simulated GPU rounding; so must the reference
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp_on_two_ranks_trains_the_wan_weights_one_process_trains(wan_path, tmp_path, lora):
    """2 ranks x 1 chunk sample the pieces 1 process x 2 chunks samples (one generator per piece), so the
    FSDP2-sharded transformer (full fine-tuning, or LoRA as the shipped config trains) must end each iteration
    with the one-process weights: a rank that trained on its own half of the trees without the other's
    gradients would not. Only the order of the gradient sum differs (gloo's reduce-scatter of two per-rank
    backwards against one backward over both pieces): float32 rounding, which Adam (an update ~ lr x
    g / sqrt(v)) passes on at full size only where a gradient is itself near rounding. Measured: at most
    4.5e-7 (full) and 1.5e-8 (LoRA) after 2 iterations at lr 1e-3, against 1e-3 to 2e-3 of movement; the
    bound is 1e-5 and 100 x below how far the weights moved, as tests/algos/test_distributed.py asks."""
    adapters = ["train.lora_rank=4", "train.lora_alpha=8", "train.lora_targets=to_q,to_k,to_v,to_out.0"] if lora else []
    printed = _torchrun(2, wan_path, tmp_path / "fsdp", 2, "train.parallel=fsdp", *adapters)
    for rank in (0, 1):  # each rank sharded the root and the transformer's one block, nothing else
        assert f"rank {rank} of 2: FSDP units ['', 'transformer.blocks.0']" in printed, printed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker runs (OMP_NUM_THREADS=1)
    try:
        train(wan_path, tmp_path / "one", 2, "sampling.chunks=2", *adapters)
    finally:
        torch.set_num_threads(threads)
    start = _weights(tmp_path / "one", 0)
    assert any(".blocks.0." in key for key in start)  # the block's weights (or its adapters) are trained
    for iteration in (1, 2):
        ranks, one = _weights(tmp_path / "fsdp", iteration), _weights(tmp_path / "one", iteration)
        assert ranks.keys() == one.keys() == start.keys()
        moved = max(float((one[k] - start[k]).abs().max()) for k in one)
        worst = max(float((ranks[k] - one[k]).abs().max()) for k in one)
        assert worst < 1e-5 and moved > 100 * worst, (iteration, worst, moved)


# ---------------------------------------------------------------------------------------------
# The trained weights in stock diffusers.


def network_output(network: torch.nn.Module) -> torch.Tensor:
    """A Wan transformer's velocity on fixed random video latents ``[2, 16, 2, 4, 4]``, times and text
    (a fingerprint of its weights)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return network(hidden_states=torch.randn(2, 16, 2, 4, 4, generator=g), timestep=torch.tensor([500.0, 900.0]),
                       encoder_hidden_states=torch.randn(2, 7, 32, generator=g), return_dict=False)[0]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_one_iteration_exports_what_stock_diffusers_loads(wan_path, tmp_path, lora):
    """LoRA on the shipped config's targets (the attention projections of every block) or the whole transformer,
    one iteration, exported as treegrpo train writes <out_dir>/final: a stock WanPipeline loads the LoRA with
    load_lora_weights (and model.lora fuses it), WanTransformer3DModel.from_pretrained the full fine-tune, and
    either predicts what the trained policy predicts."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from treegrpo.families.pipelines import load_pipeline
    from treegrpo.problems.lora import LORA_FILE, fuse_lora
    from treegrpo.testing.wan import NUM_FRAMES

    adapters = ["train.lora_rank=4", "train.lora_alpha=8", "train.lora_targets=to_q,to_k,to_v,to_out.0"]
    model, problem, trainer = train(wan_path, tmp_path / "run", 1, *(adapters if lora else []))
    assert trainer.history[0]["edges_trained"] > 0 and trainer.history[0]["optimizer_steps"] >= 1
    trained = network_output(model.network)
    exported = problem.export(tmp_path / "final")

    stock = WanPipeline.from_pretrained(wan_path, local_files_only=True)
    before = network_output(stock.transformer)
    assert float((trained - before).abs().max()) > 100 * 1e-5, "one update must change the policy, well past the tolerance"
    if lora:
        assert exported == [tmp_path / "final" / LORA_FILE]
        assert not any(p.requires_grad and "lora" not in n for n, p in model.network.named_parameters())
        stock.load_lora_weights(tmp_path / "final")  # a stock diffusers pipeline, nothing of ours
        torch.testing.assert_close(network_output(stock.transformer), trained, rtol=1e-5, atol=1e-5)
        fused = load_pipeline(wan_path, "wan", frozen_dtype=torch.float32, max_sequence_length=16,
                              num_frames=NUM_FRAMES)
        fuse_lora(fused, tmp_path / "final")  # model.lora: folded into the weights
        torch.testing.assert_close(network_output(fused.network), trained, rtol=1e-5, atol=1e-5)
    else:
        assert exported == [tmp_path / "final" / "transformer"]
        reloaded = WanTransformer3DModel.from_pretrained(tmp_path / "final" / "transformer")
        torch.testing.assert_close(network_output(reloaded), trained, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":  # a torchrun worker: path out_dir iterations [overrides...]
    from torch.distributed.fsdp import FSDPModule

    torch.set_num_threads(1)
    _, trained_problem, worker = train(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
    units = [name for name, module in trained_problem.model.named_modules() if isinstance(module, FSDPModule)]
    print(f"rank {worker.ranks.rank} of {worker.ranks.world_size}: FSDP units {units}", flush=True)
