"""Swap the objective, keep the tree: TreeGRPO's sampler and tree advantages under five losses.

Part 1 samples one forest on ``toy2d``, backs up its advantages once, and evaluates every loss on
that same parent batch. At the behaviour policy (importance ratio 1), before any update (so the KL
reference still equals the policy), every objective here has the same gradient,
``-mean A grad log pi``. They differ only once the policy has moved (clipping, the KL term), which
part 2 shows by training each with ``Trainer(problem, config, loss=...)`` for the same iterations,
two optimisation passes per iteration. The last loss is a new one written here in a few lines:
PPO-clip with a wider upper bound (DAPO's "clip-higher").

    python examples/swap_loss.py --iterations 12
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable

import torch
from tensordict import TensorDict
from treegrpo.algos import (
    Config,
    EdgeLoss,
    PPOClipLoss,
    ReinforceLoss,
    Trainer,
    build_sampler,
    register_loss,
    total_loss,
)
from treegrpo.envs import parent_batch

import treeadv
from treegrpo.problems import Problem, toy2d_problem


@register_loss("clip_higher", like="treegrpo")  # now `loss.algorithm=clip_higher` trains it as TreeGRPO
class ClipHigherLoss(PPOClipLoss):
    """PPO-clip with a wider upper bound (DAPO's clip-higher): low-probability samples that gained
    reward may grow further before the clip stops them. Defaults to ``clip_high = 1.4 clip_range``."""

    def __init__(self, model, transition, *, clip_range: float = 0.2, clip_high: float | None = None,
                 **kl) -> None:
        super().__init__(model, transition, clip_range=clip_range, clip_high=clip_high or 1.4 * clip_range, **kl)

    @classmethod
    def from_config(cls, config, model, transition, reference=None):
        """From the command line: ``loss.clip_high`` if set, else 1.4 times ``loss.clip_range``."""
        c = config.loss
        return cls(model, transition, clip_range=c.clip_range, clip_high=c.clip_high or None, kl_coef=c.kl_coef,
                   reference=reference if c.kl_coef > 0 else None, kl_form=c.kl_form)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the starting weights: the reference of the KL term."""
    return copy.deepcopy(model).requires_grad_(False)


LOSSES: dict[str, Callable[[Problem], EdgeLoss]] = {
    "ppo-clip (TreeGRPO)": lambda p: PPOClipLoss(p.model, p.transition, clip_range=0.2),
    "ppo-clip + KL (GRPO)": lambda p: PPOClipLoss(p.model, p.transition, clip_range=0.2, kl_coef=0.04,
                                                  reference=frozen(p.model)),
    "ddpo-ppo": lambda p: PPOClipLoss(p.model, p.transition, clip_range=0.2),
    "reinforce": lambda p: ReinforceLoss(p.model, p.transition),
    "clip-higher (custom)": lambda p: ClipHigherLoss(p.model, p.transition, clip_range=0.2),
}


def gradient_norm(loss: EdgeLoss, batch: TensorDict) -> tuple[float, float]:
    """The loss on ``batch`` and the norm of its gradient with respect to the policy."""
    loss.model.zero_grad()
    value = total_loss(loss(batch))
    value.backward()
    norm = torch.sqrt(sum(p.grad.square().sum() for p in loss.model.parameters() if p.grad is not None))
    return float(value.detach()), float(norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = Config().override([
        "model.kind=toy2d", "sampling.num_steps=8", "sampling.prompts_per_iteration=4", "optim.lr=3e-3",
        f"train.iterations={args.iterations}", "train.inner_epochs=2", "train.minibatch_parents=64",
        f"train.seed={args.seed}", "train.checkpoint_every=1000", "train.sample_every=1000",
    ])

    # Part 1: one tree, one batch of tree advantages, every loss.
    problem = toy2d_problem(num_steps=8, prompts_per_iteration=4, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    cond, prompt_ids = problem.prompts(0, generator)
    with torch.no_grad():
        rollout = build_sampler(config, problem).sample(cond, num_prompts=len(prompt_ids), latent_shape=(2,),
                                                        generator=generator)
    tree = rollout.tree
    rewards = problem.reward(rollout.final, prompt_ids[rollout.leaf_cond_index])
    advantage = treeadv.backup(tree, tree.scatter_leaves(treeadv.leaf_advantages(rewards, tree.group[tree.leaves()])))
    batch = parent_batch(tree, advantage, cond)  # everything a loss reads, the conditioning included
    print(f"one forest: {tree.num_nodes} nodes, {batch.batch_size[0]} parents, {int(batch['mask'].sum())} edges")
    for name, make in LOSSES.items():
        value, norm = gradient_norm(make(problem), batch)
        print(f"at the behaviour policy  {name:<22} loss {value:+.5f}  gradient norm {norm:.6f}")

    # Part 2: the same sampler and advantages (loss.algorithm=treegrpo), a different objective each run.
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, make) in enumerate(LOSSES.items()):
            problem = toy2d_problem(num_steps=8, prompts_per_iteration=4, seed=args.seed)
            run = config.override([f"train.out_dir={scratch}/run-{index}"])
            history = Trainer(problem, run, loss=make(problem)).fit(progress=False)
            first, last = history[0]["reward_mean"], sum(h["reward_mean"] for h in history[-3:]) / 3
            print(f"trained  {name:<22} reward {first:+.4f} -> {last:+.4f} (mean of the last 3 iterations)")


if __name__ == "__main__":
    main()
