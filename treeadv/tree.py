"""A batch of rooted trees (a forest) stored as one flat table of nodes.

Each row is a node; the edge *into* a node carries the behaviour log-probability of the
transition that created it. Structure is a parent pointer per node, so every operation is a
gather or scatter over ``[N]`` tensors and works the same on CPU and GPU.

Notation (docs/concepts.md, "The denoising tree" to "Backing advantages up the tree"): ``N`` nodes, ``L`` leaves, ``k`` branching
factor, ``d`` window depth. A node at depth ``D`` has ``D`` edges between it and its root.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDict, tensorclass
from torch import Tensor

from treeadv.errors import NonFiniteError, TreeError
from treeadv.errors import format_indices as _listed


def _as_index_tensor(value: Tensor | Sequence[int], name: str, device: torch.device | None) -> Tensor:
    tensor = torch.as_tensor(value, device=device)
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise TreeError(f"{name}: expected integer node indices, got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise TreeError(f"{name}: expected a 1-D tensor [N], got shape {tuple(tensor.shape)}")
    return tensor.long()


@tensorclass(shadow=True)
class Tree:
    """A forest of rooted trees as a flat table of ``N`` nodes.

    Fields (all with leading dimension ``N``):
        parent: ``[N]`` int64, index of the parent node, ``-1`` for roots.
        log_prob: ``[N]`` float, behaviour log-prob of the edge into the node (ignored at roots).
        depth: ``[N]`` int64, number of edges from the node's root.
        root: ``[N]`` int64, index of the node's root (one tree per root).
        group: ``[N]`` int64, group (prompt) id; every node of a tree shares its root's group,
            and several trees may share a group (several trees per prompt).
        is_leaf: ``[N]`` bool, the node has no children.
        payload: ``TensorDict`` with batch size ``[N]`` for whatever samplers attach (latents,
            timesteps, rewards).

    Build forests with :meth:`from_parents` (any shape) or :meth:`regular` (k-ary, the sampler
    layout). Node order is free; structure lives in ``parent`` only. Indexing a ``Tree`` selects
    rows without re-numbering ``parent``: use :meth:`relabel` or :meth:`concat` to reorder or join
    forests, and ``tree.to(device)`` rather than ``tree.to(dtype)``, which would cast the index
    fields too.

    Examples:
        >>> from treeadv import Tree
        >>> tree = Tree.from_parents([-1, 0, 0, 1, 1])  # a root, two children, two grandchildren
        >>> tree.depth.tolist(), tree.is_leaf.tolist()
        ([0, 1, 1, 2, 2], [False, False, True, True, True])
        >>> Tree.regular(2, 3, 2).num_nodes  # two trees, k=3, d=2: 2 * (1 + 3 + 9)
        26
    """

    parent: Tensor
    log_prob: Tensor
    depth: Tensor
    root: Tensor
    group: Tensor
    is_leaf: Tensor
    payload: TensorDict

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parents(
        cls,
        parent: Tensor | Sequence[int],
        log_prob: Tensor | Sequence[float] | None = None,
        group: Tensor | Sequence[int] | None = None,
        *,
        payload: TensorDict | dict | None = None,
    ) -> Tree:
        """Build a forest of any shape from parent pointers.

        Args:
            parent: ``[N]`` parent index per node, ``-1`` for roots; any node order.
            log_prob: ``[N]`` behaviour log-prob of the edge into each node (roots ignored);
                zeros if omitted. Must be finite at non-root nodes.
            group: ``[N]`` group id per node, equal within a tree; defaults to one group per tree,
                numbered in the order of the roots' indices.
            payload: optional per-node data with leading dimension ``N``.

        Depth and root are found by pointer jumping (``O(N log depth)``, no loop over nodes).
        Raises :class:`TreeError` for out-of-range parents, cycles, or inconsistent groups.
        """
        parent_t = _as_index_tensor(parent, "parent", None)
        device = parent_t.device
        n = parent_t.numel()
        bad = ((parent_t < -1) | (parent_t >= n)).nonzero().squeeze(1)
        if bad.numel():
            raise TreeError(
                f"parent: {bad.numel()} nodes point outside [-1, {n - 1}] "
                f"(nodes {_listed(bad)}, values {_listed(parent_t[bad])}); use -1 for roots"
            )
        depth, root = _depth_and_root(parent_t)
        log_prob_t = _edge_log_prob(log_prob, n, parent_t, device)
        group_t = _group_ids(group, root, n, device)
        return cls._assemble(parent_t, log_prob_t, depth, root, group_t, payload)

    @classmethod
    def regular(
        cls,
        num_trees: int,
        branching: int | Sequence[int],
        depth: int | None = None,
        *,
        log_prob: Tensor | None = None,
        group: Tensor | Sequence[int] | None = None,
        device: torch.device | str | None = None,
        payload: TensorDict | dict | None = None,
    ) -> Tree:
        """Build ``num_trees`` full trees in level-major order, the layout samplers produce.

        ``branching`` is the number of children per node (``k``), with ``depth`` levels below the
        root (``d``), or a sequence giving the branching of each level (``depth`` then defaults to
        its length). Nodes are stored level by level: all roots, then all depth-1 nodes, ...; within
        a level the ``k`` children of a node are contiguous, so level ``D`` is a ``[num_trees,
        k_1, ..., k_D]`` array flattened. ``group`` is one id per *tree* (e.g. ``arange(P)
        .repeat_interleave(trees_per_prompt)``), default one group per tree.
        """
        if isinstance(num_trees, bool) or not isinstance(num_trees, int) or num_trees < 1:
            raise TreeError(f"num_trees: expected an int >= 1, got {num_trees!r}")
        if isinstance(branching, int):
            if depth is None or isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
                raise TreeError(f"depth: expected an int >= 0 with an int branching, got {depth!r}")
            per_level = [branching] * depth
        else:
            per_level = [int(b) for b in branching]
            if depth is not None and depth != len(per_level):
                raise TreeError(f"depth: {depth} disagrees with len(branching) = {len(per_level)}")
        if any(b < 1 for b in per_level):
            raise TreeError(f"branching: every level needs >= 1 child, got {per_level}")

        sizes = [num_trees]
        for b in per_level:
            sizes.append(sizes[-1] * b)
        n = sum(sizes)
        parent_parts = [torch.full((num_trees,), -1, dtype=torch.long, device=device)]
        depth_parts = [torch.zeros(num_trees, dtype=torch.long, device=device)]
        root_parts = [torch.arange(num_trees, device=device)]
        offset = 0
        leaves_per_tree = 1
        for level, b in enumerate(per_level, start=1):
            position = torch.arange(sizes[level], device=device)  # position within the level
            parent_parts.append(offset + position // b)
            depth_parts.append(torch.full((sizes[level],), level, dtype=torch.long, device=device))
            leaves_per_tree *= b
            root_parts.append(position // leaves_per_tree)  # roots occupy indices [0, num_trees)
            offset += sizes[level - 1]
        parent_t = torch.cat(parent_parts)
        root = torch.cat(root_parts)
        if group is None:
            group_t = root.clone()
        else:
            per_tree = _as_index_tensor(group, "group", parent_t.device)
            if per_tree.numel() != num_trees:
                raise TreeError(
                    f"group: Tree.regular takes one id per tree ({num_trees}), got {per_tree.numel()}"
                )
            group_t = per_tree[root]
        log_prob_t = _edge_log_prob(log_prob, n, parent_t, parent_t.device)
        return cls._assemble(parent_t, log_prob_t, torch.cat(depth_parts), root, group_t, payload)

    @classmethod
    def _assemble(
        cls,
        parent: Tensor,
        log_prob: Tensor,
        depth: Tensor,
        root: Tensor,
        group: Tensor,
        payload: TensorDict | dict | None,
    ) -> Tree:
        n = parent.numel()
        num_children = torch.zeros(n, dtype=torch.long, device=parent.device)
        num_children.index_add_(0, parent[parent >= 0], torch.ones_like(parent[parent >= 0]))
        if payload is None:
            payload_td = TensorDict({}, batch_size=[n], device=parent.device)
        else:
            try:
                payload_td = TensorDict(payload, batch_size=[n]) if isinstance(payload, dict) else payload
            except RuntimeError as err:
                raise TreeError(f"payload: every entry needs leading dimension N={n} ({err})") from err
            if tuple(payload_td.batch_size[:1]) != (n,):
                raise TreeError(f"payload: batch size {tuple(payload_td.batch_size)}, expected ({n},)")
        return cls(
            parent=parent,
            log_prob=log_prob,
            depth=depth,
            root=root,
            group=group,
            is_leaf=num_children == 0,
            payload=payload_td,
            batch_size=[n],
        )

    @classmethod
    def concat(cls, trees: Sequence[Tree], *, distinct_groups: bool = True) -> Tree:
        """Join forests into one, re-numbering ``parent`` and ``root``.

        With ``distinct_groups`` the group ids of later forests are offset so that groups of
        different forests never merge; pass ``False`` when the ids are already global (prompt ids).
        """
        if not trees:
            raise TreeError("trees: expected at least one Tree, got an empty sequence")
        parents, roots, groups = [], [], []
        node_offset, group_offset = 0, 0
        for tree in trees:
            parents.append(torch.where(tree.parent >= 0, tree.parent + node_offset, -1))
            roots.append(tree.root + node_offset)
            groups.append(tree.group + group_offset)
            node_offset += tree.num_nodes
            if distinct_groups and tree.num_nodes:
                group_offset += int(tree.group.max()) + 1
        joined = torch.cat(list(trees))  # concatenates every field, payload included
        joined.parent = torch.cat(parents)
        joined.root = torch.cat(roots)
        joined.group = torch.cat(groups)
        return joined

    # ------------------------------------------------------------------ views of the structure
    @property
    def num_nodes(self) -> int:
        """Number of nodes ``N``."""
        return self.batch_size[0]

    @property
    def max_depth(self) -> int:
        """Largest depth in the forest (0 for a forest of lone roots)."""
        return int(self.depth.max()) if self.num_nodes else 0

    def roots(self) -> Tensor:
        """``[R]`` indices of the root nodes, ascending."""
        return (self.parent < 0).nonzero().squeeze(1)

    def leaves(self) -> Tensor:
        """``[L]`` indices of the leaf nodes, ascending; rewards are given in this order."""
        return self.is_leaf.nonzero().squeeze(1)

    def num_children(self) -> Tensor:
        """``[N]`` number of children of each node."""
        has_parent = self.parent >= 0
        counts = torch.zeros(self.num_nodes, dtype=torch.long, device=self.parent.device)
        return counts.index_add_(0, self.parent[has_parent], torch.ones_like(self.parent[has_parent]))

    def children(self, node: int) -> Tensor:
        """Indices of the children of one node, ascending (an ``O(N)`` scan; see :meth:`child_index`)."""
        return (self.parent == node).nonzero().squeeze(1)

    def child_index(self) -> tuple[Tensor, Tensor]:
        """Compressed child lists: ``children[offsets[n]:offsets[n + 1]]`` are node ``n``'s children.

        Returns ``offsets`` ``[N + 1]`` and ``children`` ``[N - R]`` (children in ascending order).
        """
        non_root = (self.parent >= 0).nonzero().squeeze(1)
        order = torch.sort(self.parent[non_root], stable=True).indices
        children = non_root[order]
        offsets = torch.zeros(self.num_nodes + 1, dtype=torch.long, device=self.parent.device)
        offsets[1:] = torch.cumsum(self.num_children(), 0)
        return offsets, children

    def levels(self) -> list[Tensor]:
        """Node indices per depth, ``levels()[D]`` ascending: the forest in level order."""
        return [(self.depth == d).nonzero().squeeze(1) for d in range(self.max_depth + 1)]

    def level_selectors(self) -> list[slice | Tensor]:
        """Per depth, something that indexes that level's nodes: a ``slice`` when the nodes are stored
        level by level (as :meth:`regular` and samplers store them), else an index tensor.

        Slices make per-level reads views instead of gathers, which is what keeps the backup fast.
        """
        depth = self.depth
        if self.num_nodes and bool((depth[1:] >= depth[:-1]).all()):
            ends = torch.cumsum(torch.bincount(depth), 0).tolist()
            return [slice(start, end) for start, end in zip([0, *ends[:-1]], ends)]
        return self.levels()

    def level_order(self) -> Tensor:
        """``[N]`` permutation listing nodes by depth (roots first), ties by index."""
        return torch.cat(self.levels()) if self.num_nodes else self.parent.new_empty(0)

    def paths(self, nodes: Tensor | Sequence[int] | None = None) -> Tensor:
        """Root-to-node paths as a ``[len(nodes), max_depth + 1]`` matrix padded with ``-1``.

        Row ``i`` is ``[root, ..., nodes[i], -1, ...]``; ``nodes`` defaults to the leaves.
        """
        nodes_t = self.leaves() if nodes is None else _as_index_tensor(nodes, "nodes", self.parent.device)
        width = self.max_depth + 1
        ancestors = torch.full((nodes_t.numel(), width), -1, dtype=torch.long, device=self.parent.device)
        node_depth = self.depth[nodes_t]
        current = nodes_t.clone()
        # Walk up max_depth times; the ancestor at step s sits in column depth - s.
        for step in range(width):
            column = node_depth - step
            alive = column >= 0
            ancestors[alive.nonzero().squeeze(1), column[alive]] = current[alive]
            current = torch.where(alive & (current >= 0), self.parent[current.clamp(min=0)], current)
        return ancestors

    # ------------------------------------------------------------------ conversions
    def scatter_leaves(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """Spread ``[L]`` (or ``[L, ...]``) per-leaf values, given in :meth:`leaves` order, over ``[N]`` nodes."""
        leaves = self.leaves()
        if values.shape[:1] != leaves.shape:
            raise TreeError(
                f"values: expected one row per leaf ({leaves.numel()}), got shape {tuple(values.shape)}"
            )
        out = values.new_full((self.num_nodes, *values.shape[1:]), fill)
        out[leaves] = values
        return out

    def relabel(self, order: Tensor | Sequence[int]) -> Tree:
        """The same forest with node ``i`` of the result being node ``order[i]`` of this one."""
        order_t = _as_index_tensor(order, "order", self.parent.device)
        n = self.num_nodes
        if order_t.numel() != n or not torch.equal(order_t.sort().values, torch.arange(n, device=order_t.device)):
            raise TreeError(f"order: expected a permutation of range({n})")
        new_index = torch.empty_like(order_t)
        new_index[order_t] = torch.arange(n, device=order_t.device)
        moved = self[order_t]
        moved.parent = torch.where(moved.parent >= 0, new_index[moved.parent.clamp(min=0)], -1)
        moved.root = new_index[moved.root]
        return moved


def _depth_and_root(parent: Tensor) -> tuple[Tensor, Tensor]:
    """Depth and root of every node by pointer jumping; raises on cycles."""
    n = parent.numel()
    index = torch.arange(n, device=parent.device)
    jump = parent.clone()  # an ancestor of each node, -1 once the root is reached
    dist = (parent >= 0).long()  # edges between the node and `jump` (or its root)
    top = torch.where(parent >= 0, parent, index)  # the farthest ancestor found so far
    for _ in range(math.ceil(math.log2(max(n, 2))) + 2):
        active = jump >= 0
        if not bool(active.any()):
            return dist, top
        hop = jump.clamp(min=0)
        dist = torch.where(active, dist + dist[hop], dist)
        top = torch.where(active, top[hop], top)
        jump = torch.where(active, jump[hop], jump)
    on_cycle = (jump >= 0).nonzero().squeeze(1)
    if not on_cycle.numel():
        return dist, top
    raise TreeError(
        f"parent: {on_cycle.numel()} nodes never reach a root (nodes {_listed(on_cycle)}); "
        "the parent pointers contain a cycle"
    )


def _edge_log_prob(log_prob: Tensor | Sequence[float] | None, n: int, parent: Tensor, device) -> Tensor:
    if log_prob is None:
        return torch.zeros(n, device=device)
    log_prob_t = torch.as_tensor(log_prob, device=device)
    if not log_prob_t.dtype.is_floating_point:
        log_prob_t = log_prob_t.float()
    if log_prob_t.shape != (n,):
        raise TreeError(f"log_prob: expected shape ({n},), got {tuple(log_prob_t.shape)}")
    bad = (~torch.isfinite(log_prob_t) & (parent >= 0)).nonzero().squeeze(1)
    if bad.numel():
        raise NonFiniteError(
            f"log_prob: {bad.numel()} non-root nodes have NaN or inf log-probs (nodes {_listed(bad)})"
        )
    return log_prob_t


def _group_ids(group: Tensor | Sequence[int] | None, root: Tensor, n: int, device) -> Tensor:
    if group is None:
        # One group per tree, numbered by the order of the roots.
        return torch.unique(root, return_inverse=True)[1]
    group_t = _as_index_tensor(group, "group", device)
    if group_t.numel() != n:
        raise TreeError(f"group: expected one id per node ({n}), got {group_t.numel()}")
    mixed = (group_t != group_t[root]).nonzero().squeeze(1)
    if mixed.numel():
        raise TreeError(
            f"group: {mixed.numel()} nodes differ from their root's group (nodes {_listed(mixed)}); "
            "all nodes of one tree must share a group"
        )
    return group_t
