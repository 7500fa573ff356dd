"""Swap the objective, keep the tree: TreeGRPO's sampler and tree advantages under five losses.

Part 1 samples one forest on ``toy2d``, backs up its advantages once, and evaluates every loss on
that same parent batch at the behaviour policy (importance ratio 1), before any update (so the KL
reference still equals the policy). There the first four objectives have the same gradient,
``-mean A grad log pi``; they part ways only once the policy has moved (clipping, the KL term).
The fifth, a preference loss between siblings written here, reads only which sibling did better,
not by how much, so its gradient differs from the start. Part 2 trains each with
``Trainer(problem, config, loss=...)`` for the same iterations, two optimisation passes per iteration.

The two losses written here are registered, so the command line selects them too, with their own
options from ``loss.options``:

    python examples/swap_loss.py --iterations 12
    treegrpo train --plugin examples/swap_loss.py --model.kind toy2d --loss.algorithm sibling_preference --loss.options beta=20
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

import treeadv
from treegrpo.algos import (
    Config,
    EdgeLoss,
    PPOClipLoss,
    ReinforceLoss,
    Trainer,
    build_sampler,
    kl_reference,
    ratio_diagnostics,
    register_loss,
    total_loss,
)
from treegrpo.envs import parent_batch
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
                   reference=reference if c.kl_coef > 0 else None, kl_form=c.kl_form, **cls.options_from(config))


@register_loss("sibling_preference", like="treegrpo")
class SiblingPreferenceLoss(EdgeLoss):
    """A logistic preference loss between siblings: for every pair of children of one parent where
    child ``i`` has the larger advantage, ``-log sigmoid(beta (log_ratio_i - log_ratio_j))``.

    Only the order of the siblings' advantages counts (DPO's pairwise form, with the behaviour
    policy as the reference). ``beta`` is its own option: ``--loss.options beta=20``.
    """

    def __init__(self, model, transition, *, beta: float = 10.0, **kl) -> None:
        super().__init__(model, transition, **kl)
        if not beta > 0:
            raise ValueError(f"beta: expected a number > 0, got {beta!r}")
        self.beta = beta

    def forward(self, td: TensorDictBase) -> TensorDict:
        new_log_prob, old_log_prob, advantage, mask, mean, std = self.edge_terms(td)
        log_ratio = new_log_prob - old_log_prob  # [M, K]
        margin = self.beta * (log_ratio[:, :, None] - log_ratio[:, None, :])  # [M, K, K]: i over j
        better = (advantage[:, :, None] > advantage[:, None, :]) & mask[:, :, None] & mask[:, None, :]
        pairs = F.logsigmoid(margin)[better]
        objective = -pairs.mean() if pairs.numel() else log_ratio.sum() * 0
        terms = {"loss_objective": objective, **ratio_diagnostics(log_ratio.detach(), mask),
                 **self.kl_terms(td, mean, std), **self.rounding_terms(td, mean, std)}
        return TensorDict(terms, batch_size=[])


LOSSES: dict[str, Callable[[Problem], EdgeLoss]] = {
    "ppo-clip (TreeGRPO)": lambda p: PPOClipLoss(p.model, p.transition, clip_range=0.2),
    "ppo-clip + KL (GRPO)": lambda p: PPOClipLoss(p.model, p.transition, clip_range=0.2, kl_coef=0.04,
                                                  reference=kl_reference(p.model)),
    "reinforce": lambda p: ReinforceLoss(p.model, p.transition),
    "clip-higher (custom)": lambda p: ClipHigherLoss(p.model, p.transition, clip_range=0.2),
    "sibling preference (custom)": lambda p: SiblingPreferenceLoss(p.model, p.transition, beta=10.0),
}
SAME_GRADIENT = 4  # the first four: -mean A grad log pi at the behaviour policy


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
        print(f"at the behaviour policy  {name:<27} loss {value:+.5f}  gradient norm {norm:.6f}")

    # Part 2: the same sampler and advantages (loss.algorithm=treegrpo), a different objective each run.
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, make) in enumerate(LOSSES.items()):
            problem = toy2d_problem(num_steps=8, prompts_per_iteration=4, seed=args.seed)
            run = config.override([f"train.out_dir={scratch}/run-{index}"])
            history = Trainer(problem, run, loss=make(problem)).fit(progress=False)
            first, last = history[0]["reward_mean"], sum(h["reward_mean"] for h in history[-3:]) / 3
            print(f"trained  {name:<27} reward {first:+.4f} -> {last:+.4f} (mean of the last 3 iterations)")


if __name__ == "__main__":
    main()
