"""BranchGRPO's tree advantages and pruning, node by node in plain Python (tests only).

A transcription of ``fastvideo/train_branchgrpo_flux.py`` (Fredreic1849/BranchGRPO) with the same
arithmetic and the same visiting orders, so that the vectorised toolkit versions can be checked
against it, ties included:

- :class:`PeerNode` and :func:`grow_forest`: the ``TreeNode`` objects ``sample_reference_model_tree``
  makes (one root per prompt at step 0; each step gives every frontier node one child, or two at a
  split step; children remembered in creation order);
- :func:`fuse_rewards`: ``compute_node_rewards_from_leaves`` (``use_prob_weighted`` False: mean of the
  leaves below; True: per-parent softmax of the children's edge log-probs at temperature 1, in float32);
- :func:`advantages_by_depth`: ``compute_hierarchical_advantages_by_depth``;
- :func:`walk_edges`: ``collect_all_transitions``;
- :func:`pruning_applies`, :func:`drop_depths`, :func:`drop_width`: the pruning in ``train_one_step_tree``.

Steps here are BranchGRPO's: ``current_step`` counts training steps from 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class PeerNode:
    """One ``TreeNode``: the state after ``step`` denoising steps, ``depth`` edges below its root."""

    name: str
    step: int
    prompt: int
    parent: PeerNode | None = None
    children: list[PeerNode] = field(default_factory=list)
    log_prob: torch.Tensor | None = None
    reward: torch.Tensor | None = None
    advantage: torch.Tensor | None = None
    order: int = 0  # creation order over the whole forest (level by level, as the sampler makes nodes)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def is_leaf(self) -> bool:
        return not self.children

    def leaves_below(self) -> list[PeerNode]:
        if self.is_leaf():
            return [self]
        return [leaf for child in self.children for leaf in child.leaves_below()]


def grow_forest(num_prompts: int, num_steps: int, split_steps: list[int]) -> tuple[list[PeerNode], list[PeerNode]]:
    """The roots and the leaves (frontier order) of BranchGRPO's rollout trees, without latents."""
    created = 0
    roots = []
    for prompt in range(num_prompts):
        roots.append(PeerNode(f"root_b{prompt}", step=0, prompt=prompt, order=created))
        created += 1
    frontier = list(roots)
    for step in range(num_steps):
        grown = []
        for node in frontier:
            names = [f"{node.name}_s{step}_{k}" for k in range(2)] if step in split_steps else [f"{node.name}_t{step}"]
            for name in names:
                child = PeerNode(name, step=step + 1, prompt=node.prompt, parent=node, order=created)
                created += 1
                node.children.append(child)
                grown.append(child)
        frontier = grown
    return roots, frontier


def all_nodes(root: PeerNode) -> list[PeerNode]:
    """Depth-first, a node before its children (``collect_nodes``)."""
    found = [root]
    for child in root.children:
        found.extend(all_nodes(child))
    return found


def fuse_rewards(root: PeerNode, leaf_rewards: torch.Tensor, leaves: list[PeerNode], *,
                 prob_weighted: bool, dtype: torch.dtype = torch.float32) -> dict[int, list[PeerNode]]:
    """Give every node of ``root``'s tree a reward, bottom-up; returns the nodes by depth.

    ``dtype`` is the precision of the weighted fusion (BranchGRPO casts to float32).
    """
    for i, leaf in enumerate(leaves):
        leaf.reward = leaf_rewards[i]
    nodes = all_nodes(root)
    deepest = max(node.depth for node in nodes)
    by_depth: dict[int, list[PeerNode]] = {depth: [] for depth in range(deepest + 1)}
    for node in nodes:
        by_depth[node.depth].append(node)
    for depth in reversed(range(deepest)):
        for node in by_depth[depth]:
            if node.is_leaf():
                continue
            if not prob_weighted:
                node.reward = torch.stack([leaf.reward for leaf in node.leaves_below()]).mean()
            elif len(node.children) == 1:
                node.reward = node.children[0].reward
            else:
                logits = torch.stack([
                    child.log_prob.squeeze().to(dtype) if child.log_prob is not None else torch.tensor(0.0, dtype=dtype)
                    for child in node.children
                ])
                weights = torch.softmax(1.0 * logits, dim=0)
                values = torch.stack([child.reward.to(dtype) for child in node.children])
                node.reward = torch.sum(weights * values)
    return by_depth


def advantages_by_depth(by_depth: dict[int, list[PeerNode]]) -> dict[str, torch.Tensor]:
    """Standardise rewards among the nodes of one depth (Bessel std); zeros for one node or std < 1e-6."""
    advantage = {}
    for nodes in by_depth.values():
        if len(nodes) <= 1:
            values = [torch.tensor(0.0)] * len(nodes)
        else:
            rewards = torch.stack([node.reward for node in nodes])
            spread = rewards.std()
            if spread < 1e-6:
                values = list(torch.zeros_like(rewards))
            else:
                values = list((rewards - rewards.mean()) / (spread + 1e-8))
        for node, value in zip(nodes, values):
            node.advantage = value
            advantage[node.name] = value
    return advantage


@dataclass(frozen=True)
class PeerEdge:
    """One training sample of ``collect_all_transitions``."""

    parent: PeerNode
    child: PeerNode
    advantage: float

    @property
    def step(self) -> int:
        return self.parent.step

    @property
    def child_depth(self) -> int:
        return self.child.depth


def walk_edges(roots: list[PeerNode], advantage: dict[str, float]) -> list[PeerEdge]:
    """Every edge, depth-first: for each child of a node, its edge, then the child's subtree."""
    edges: list[PeerEdge] = []

    def visit(node: PeerNode) -> None:
        for child in node.children:
            edges.append(PeerEdge(node, child, float(advantage[child.name])))
            visit(child)

    for root in roots:
        visit(root)
    return edges


def pruning_applies(current_step: int, max_steps: int, step_ratio: float) -> bool:
    return current_step <= int(max_steps * step_ratio)


def drop_depths(edges: list[PeerEdge], depths: list[int], current_step: int, *, slide: bool, interval: int,
                stop_depth: int | None, split_steps: list[int]) -> list[PeerEdge]:
    """Depth pruning, with BranchGRPO's sliding window when ``slide``."""
    if not depths:
        return edges
    window = sorted(depths)
    if slide:
        stop = max(split_steps) if split_steps else 0
        if stop_depth is not None:
            stop = stop_depth
        shift = max(0, int(current_step // max(1, interval)))
        shift = min(shift, max(0, window[0] - stop))
        window = [depth - shift for depth in window]
    return [edge for edge in edges if edge.child_depth not in set(window)]


def drop_width(edges: list[PeerEdge], mode: int, ratio: float, split_steps: list[int]) -> list[PeerEdge]:
    """Width pruning of the edges after the last split (mode 1 per last-split branch, mode 2 extremes)."""
    if mode == 0 or not split_steps:
        return edges
    last_split = max(split_steps)
    last_layer = [edge for edge in edges if edge.step > last_split]
    others = [edge for edge in edges if edge.step <= last_split]
    if not last_layer:
        return edges
    if mode == 1:
        groups: dict[str, list[PeerEdge]] = {}
        for edge in last_layer:
            groups.setdefault(_branch_of(edge.parent, last_split + 1), []).append(edge)
        kept = []
        for group in groups.values():
            best_first = sorted(group, key=lambda edge: edge.advantage, reverse=True)
            kept.extend(best_first[:max(1, int(len(group) * ratio))])
        return others + kept
    best_first = sorted(last_layer, key=lambda edge: edge.advantage, reverse=True)
    keep = max(2, int(len(best_first) * ratio))
    best, worst = keep // 2, keep - keep // 2
    return others + best_first[:best] + (best_first[-worst:] if worst > 0 else [])


def _branch_of(node: PeerNode, branch_step: int) -> str:
    """The node at ``branch_step`` on the way up from ``node`` (itself included), else ``unknown_<root>``."""
    current: PeerNode | None = node
    while current is not None:
        if current.step == branch_step:
            return current.name
        if current.parent is None:
            return f"unknown_{current.name}"
        current = current.parent
    raise AssertionError("unreachable")


def tree_advantages(roots: list[PeerNode], node_values: torch.Tensor, log_prob: torch.Tensor, *,
                    prob_weighted: bool, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-tree loop of ``train_one_step_tree`` (without ``use_group``): fused rewards and advantages.

    ``node_values`` and ``log_prob`` are indexed by creation order (only the leaves' values are read);
    returns ``[N]`` fused rewards and ``[N]`` advantages in the same order.
    """
    for root in roots:
        for node in all_nodes(root)[1:]:
            node.log_prob = log_prob[node.order:node.order + 1]
    fused = torch.zeros(node_values.shape, dtype=torch.float64)
    advantage = torch.zeros_like(fused)
    for root in roots:
        leaves = root.leaves_below()
        rewards = torch.stack([node_values[leaf.order] for leaf in leaves])
        by_depth = fuse_rewards(root, rewards, leaves, prob_weighted=prob_weighted, dtype=dtype)
        per_node = advantages_by_depth(by_depth)
        for node in all_nodes(root):
            fused[node.order] = float(node.reward)
            advantage[node.order] = float(per_node[node.name])
    return fused, advantage


def toolkit_tree(num_prompts: int, num_steps: int, split_steps: list[int], log_prob: torch.Tensor | None = None):
    """The same forest as :func:`grow_forest` as a ``treeadv.Tree`` whose node ``i`` is the peer node
    created ``i``-th, with the payload :func:`treegrpo.envs.parent_batch` reads (step = depth)."""
    from tensordict import TensorDict

    from treeadv import Tree

    branching = [2 if step in split_steps else 1 for step in range(num_steps)]
    shape = Tree.regular(num_prompts, branching, depth=num_steps)
    n = shape.num_nodes
    payload = TensorDict({"latent": torch.zeros(n, 1), "sample": torch.zeros(n, 1), "step": shape.depth.clone(),
                          "cond_index": shape.group.clone()}, batch_size=[n])
    return Tree.regular(num_prompts, branching, depth=num_steps, log_prob=log_prob, payload=payload)
