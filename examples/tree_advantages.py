"""Tree advantages on a hand-built forest: rewards at the leaves -> one advantage per edge.

Two prompts, two trees each, branching k=3 over a window of d=2 SDE steps (9 leaves per tree),
scored by two reward models combined 0.8 : 0.2 as in the paper. Run:

    python examples/tree_advantages.py
"""

from __future__ import annotations

import torch

import treeadv

torch.manual_seed(0)
num_prompts, trees_per_prompt, k, d = 2, 2, 3, 2
prompt_of_tree = torch.arange(num_prompts).repeat_interleave(trees_per_prompt)
# Mean-reduced behaviour log-probs of each SDE edge (roots carry none).
num_nodes = num_prompts * trees_per_prompt * sum(k**level for level in range(d + 1))
tree = treeadv.Tree.regular(
    num_prompts * trees_per_prompt, k, d, group=prompt_of_tree, log_prob=0.3 * torch.randn(num_nodes)
)

leaves = tree.leaves()
hps = 0.27 + 0.02 * torch.randn(leaves.numel())  # stand-ins for HPSv2.1 and CLIPScore
clip = 0.40 + 0.01 * torch.randn(leaves.numel())
rewards = torch.stack([hps, clip], dim=1)  # [L, 2]

leaf_adv = treeadv.leaf_advantages(rewards, tree.group[leaves], weights=[0.8, 0.2])
print(f"{tree.num_nodes} nodes, {leaves.numel()} leaves, {int((~tree.is_leaf).sum())} nodes trained\n")

print(f"{'estimator':<16} {'root':>8} {'depth-1 edges of tree 0':>40}")
for name in treeadv.registered_estimators():
    result = treeadv.backup_with_weights(tree, tree.scatter_leaves(leaf_adv), name)
    first_children = tree.children(0)
    edges = " ".join(f"{a:+.3f}" for a in result.advantage[first_children].tolist())
    print(f"{name:<16} {result.advantage[0].item():+8.3f} {edges:>40}")

result = treeadv.backup_with_weights(tree, tree.scatter_leaves(leaf_adv))
stats = treeadv.depth_diagnostics(tree, result)
print("\nlogprob_softmax, per depth:")
print(f"{'depth':>5} {'nodes':>6} {'adv mean':>9} {'adv std':>8} {'ESS mean':>9}")
for depth in range(stats.batch_size[0]):
    row = stats[depth]
    print(
        f"{depth:>5} {int(row['num_nodes']):>6} {row['advantage_mean'].item():>+9.3f} "
        f"{row['advantage_std'].item():>8.3f} {row['ess_mean'].item():>9.3f}"
    )
