"""TreeGRPO from its building blocks, without the Trainer: a TorchRL environment and policy -> tree
advantages -> PPO-clip -> AdamW.

The problem is ``toy2d``: a 2-D flow model whose base samples N(0, I), rewarded by
``-|x - target|^2 / 4`` for its prompt's target, so a working update must raise the reward within
a few iterations. Each iteration rolls the stateless denoising environment out with the current
policy (a TensorDict module: the denoiser and its SDE transition) into one k=3, d=3 tree per
prompt, scores the 27 leaves, normalises the rewards within each prompt's group, backs them up to
every window edge with the paper's ``logprob_softmax`` estimator, and takes one clipped step over
the 13 parent nodes per tree, twice (one forward per parent serves its 3 child edges).

    python examples/compose_treegrpo.py --iterations 25
"""

from __future__ import annotations

import argparse

import torch

import treeadv
from treegrpo import envs
from treegrpo.algos import PPOClipLoss, total_loss
from treegrpo.problems import toy2d_problem

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=25)
parser.add_argument("--inner-epochs", type=int, default=2)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
torch.manual_seed(args.seed)

num_steps, k, d = 8, 3, 3
problem = toy2d_problem(num_steps=num_steps, prompts_per_iteration=4, seed=args.seed)
env = envs.DenoisingEnv(problem.transition, latent_shape=problem.latent_shape)  # stateless: the state is the TensorDict
window = envs.GeometricWindow(num_steps=num_steps, depth=d, alpha=0.5, seed=args.seed)  # truncated-geometric start
loss = PPOClipLoss(problem.model, problem.transition, clip_range=0.2)
optimizer = torch.optim.AdamW(problem.model.parameters(), lr=3e-3)
generator = torch.Generator().manual_seed(args.seed)

for iteration in range(args.iterations):
    cond, prompt_ids = problem.prompts(iteration, generator)  # [P] conditioning rows, [P] prompt ids
    policy = envs.DenoisingPolicy(problem.model, problem.transition, cond, generator=generator)  # the behaviour policy
    start = window.start(iteration)
    rollout = envs.tree_rollout(env, policy, sde_steps=range(start, start + d), branching=[k] * d,
                                num_prompts=len(prompt_ids), generator=generator)  # each window node expands k ways
    tree = rollout.tree  # level-major: P roots, then 3P, 9P and 27P nodes
    rewards = problem.reward(rollout.final, prompt_ids[rollout.leaf_cond_index])  # [L]
    leaf_adv = treeadv.leaf_advantages(rewards, tree.group[tree.leaves()])  # normalised per prompt
    edge_adv = treeadv.backup(tree, tree.scatter_leaves(leaf_adv), "logprob_softmax")  # [N]
    batch = envs.parent_batch(tree, edge_adv, cond)  # [M] window parents, K = 3 child edges each
    for _ in range(args.inner_epochs):  # the first pass has ratio 1; later ones are clipped at 1 +- 0.2
        terms = loss(batch)
        optimizer.zero_grad()
        total_loss(terms).backward()
        optimizer.step()
    print(f"iteration {iteration:3d}  reward {rewards.mean().item():+.4f}  window {rollout.sde_steps}  "
          f"parents {batch.batch_size[0]}  edges {int(batch['mask'].sum())}  nfe {rollout.nfe}  "
          f"last-pass ratio {terms['ratio_mean'].item():.4f} clipped {terms['clip_fraction'].item():.2f}")
