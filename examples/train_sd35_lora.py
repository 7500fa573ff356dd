"""Train SD3 / SD3.5 with LoRA from a local diffusers folder (TreeGRPO on HPSv2.1); stock diffusers loads the LoRA.

Nothing is downloaded: ``PIPELINE`` is what ``pipeline.save_pretrained(DIR)`` or
``huggingface-cli download stabilityai/stable-diffusion-3.5-medium --local-dir DIR`` wrote, and the
reward reads ``<reward-dir>/hpsv2/HPS_v2.1_compressed.pt``. The settings start from
``configs/sd35_medium.yaml`` (the paper's: NFE 10, k=3, d=3, 32 prompts per iteration, LoRA rank 32
on the attention projections, bf16, CUDA); ``--set section.field=value`` changes any of them.

    python examples/train_sd35_lora.py /weights/stable-diffusion-3.5-medium --prompts /data/HPDv2 \\
        --reward-dir /weights/rewards --out runs/sd35_lora

This is what ``treegrpo train --config configs/sd35_medium.yaml`` does, written out step by step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from treegrpo.algos import Config, Trainer
from treegrpo.devices import local_device
from treegrpo.families.pipelines import load_pipeline
from treegrpo.families.prompts import PromptEmbeddings, load_prompts
from treegrpo.problems.text_to_image import pipeline_problem
from treegrpo.rewards import build_reward

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sd35_medium.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="local diffusers SD3/SD3.5 pipeline folder")
    parser.add_argument("--prompts", type=Path, required=True, help=".txt, .json, or a folder with train/test splits")
    parser.add_argument("--reward", default="hpsv2", help="reward name (treegrpo.rewards.REWARDS)")
    parser.add_argument("--reward-dir", type=Path, default=None, help="folder holding <reward>/ weights")
    parser.add_argument("--out", type=Path, default=Path("runs/sd35_lora"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a configs/sd35_medium.yaml setting (repeatable)")
    parser.add_argument("--verify", action="store_true",
                        help="reload the pipeline in stock diffusers, load the LoRA, compare (holds a second copy)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = Config.from_yaml(CONFIG).override([f"train.out_dir={args.out}", *args.set])
    m, s, t = config.model, config.sampling, config.train
    device = local_device(t.device)

    # 1. The pipeline. Only the transformer trains; under bf16 LoRA its frozen base weights are bf16 too.
    #    VAE and text encoders are frozen in model.frozen_precision.
    lora_on_bf16 = t.lora_rank > 0 and t.precision == "bf16"
    model = load_pipeline(args.pipeline, "sd3", t5=m.t5, frozen_dtype=DTYPES[m.frozen_precision],
                          denoiser_dtype=torch.bfloat16 if lora_on_bf16 else torch.float32, device=device,
                          max_sequence_length=m.max_sequence_length, vae_batch=m.vae_batch)

    # 2. Prompts, and their embeddings: encoded once, kept in memory and on disk (model.embedding_cache).
    train_prompts = load_prompts(args.prompts, "train")
    eval_prompts = load_prompts(args.prompts, "test")[: m.eval_count or None]
    embeddings = PromptEmbeddings(model.encode, model.identity(), cache_dir=m.embedding_cache or None, device=device)

    # 3. The reward model, and the problem the trainer sees (CFG against the empty prompt when guidance != 1).
    reward = build_reward(args.reward, root=args.reward_dir, device=device)
    problem = pipeline_problem(model, train_prompts=train_prompts, eval_prompts=eval_prompts, rewards=[reward],
                               embeddings=embeddings, image_size=m.image_size, transition=s.transition,
                               num_steps=s.num_steps, noise_level=s.noise_level, shift=s.shift,
                               prompts_per_iteration=s.prompts_per_iteration, guidance_scale=s.guidance_scale)

    # 4. The trainer adds LoRA adapters (train.lora_rank, lora_alpha, lora_targets), gradient checkpointing
    #    and bf16 autocast as configured; everything else in the network stays frozen.
    trainer = Trainer(problem, config)
    trained = sum(p.numel() for p in problem.model.parameters() if p.requires_grad)
    print(f"trainable parameters (LoRA rank {t.lora_rank}): {trained:,}")
    before = trainer.evaluate()
    for metrics in trainer.fit(progress=True):
        print(f"iteration {int(metrics['iteration'])}: reward {metrics['reward_mean']:+.4f}  "
              f"images {int(metrics['images'])}  nfe {int(metrics['nfe_sampled'])}  "
              f"edges {int(metrics['edges_trained'])}  {metrics['seconds']:.1f} s")
    after = trainer.evaluate()
    name = f"eval/{reward.name}"
    print(f"held-out {reward.name}: {before[name]:.4f} before, {after[name]:.4f} after")

    # 5. The LoRA in diffusers' format: any StableDiffusion3Pipeline loads it with load_lora_weights.
    written = problem.export(args.out / "final")
    print("trained weights:", *written)
    if args.verify:
        verify(args.pipeline, args.out / "final", model.network, device)


@torch.no_grad()
def verify(pipeline: Path, lora: Path, trained: torch.nn.Module, device: torch.device) -> None:
    """Stock diffusers plus the exported LoRA must compute what the trained transformer computes."""
    from diffusers import StableDiffusion3Pipeline

    dtype = {} if trained.dtype == torch.float32 else {"torch_dtype": trained.dtype}  # the bf16 LoRA base
    stock = StableDiffusion3Pipeline.from_pretrained(pipeline, text_encoder_3=None, tokenizer_3=None,
                                                     local_files_only=True, **dtype).to(device)
    c = stock.transformer.config
    g = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g),
        "timestep": torch.tensor([500.0, 900.0]),
        "encoder_hidden_states": torch.randn(2, 7, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
    }
    inputs = {key: value.to(device, trained.dtype) for key, value in inputs.items()}
    base = stock.transformer(**inputs, return_dict=False)[0]
    stock.load_lora_weights(lora)
    loaded = stock.transformer(**inputs, return_dict=False)[0]
    ours = trained(**inputs, return_dict=False)[0]
    print(f"stock pipeline + LoRA vs trained transformer: max |difference| {(loaded - ours).abs().max().item():.2e}; "
          f"training moved the output by up to {(ours - base).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
