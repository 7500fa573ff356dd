"""TreeGRPO on every GPU of a node (or several nodes): the same trainer, launched by torchrun.

Every process runs this script; the trainer joins the process group torchrun describes in the
environment, samples its share of each iteration's prompts, gathers the trees and rewards for the
advantages, and shares gradients with DDP (``--parallel fsdp`` shards the weights instead). Rank 0
alone prints, logs and writes checkpoints.

    torchrun --nproc-per-node 8 examples/distributed_training.py --device cuda --iterations 100
    torchrun --nproc-per-node 2 examples/distributed_training.py --device cpu --iterations 2   # gloo, on a laptop

The embedded digits model keeps it self-contained; for SD3.5 pass the overrides of
``docs/pipelines.md`` (``model.kind=sd3``, ``model.path=...``) or use ``treegrpo train`` itself:
``torchrun --nproc-per-node 8 -m treegrpo train --config configs/sd35_medium.yaml``.
"""

from __future__ import annotations

import argparse

from treegrpo.algos.trainer import Trainer
from treegrpo.config import preset_config
from treegrpo.problems import build_problem

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="auto", help="cuda (each rank takes cuda:LOCAL_RANK), cpu or auto")
parser.add_argument("--iterations", type=int, default=100)
parser.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp")
parser.add_argument("--out", default="runs/digits-distributed")
args = parser.parse_args()

config = preset_config("digits").override([
    f"train.device={args.device}", f"train.parallel={args.parallel}", f"train.iterations={args.iterations}",
    f"train.out_dir={args.out}",
    "sampling.prompts_per_iteration=8",  # the global batch: split over the ranks, so a multiple of their number
])
trainer = Trainer(build_problem(config), config)  # joins the process group (WORLD_SIZE, RANK, LOCAL_RANK)
trainer.fit()
scores = trainer.evaluate()  # every rank samples the same held-out images
checkpoint = trainer.save()  # every rank takes part (a collective under FSDP); rank 0 writes
if trainer.ranks.is_main:
    rewards = {name[5:]: round(value, 4) for name, value in scores.items() if name.startswith("eval/")}
    print(f"world size {trainer.ranks.world_size}: {trainer.iteration} iterations, "
          f"{trainer.history[-1]['images']:.0f} images per iteration, held-out {rewards}")
    print(f"checkpoint: {checkpoint}")
