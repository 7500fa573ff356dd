"""Conversion to and from :class:`torchrl.data.Tree`, TorchRL's nested tree of tensorclasses.

TorchRL stores a tree recursively (each vertex holds a stack of subtrees), which suits MCTS
inspection and plotting; treeadv stores a flat node table, which suits vectorised backups. A
forest whose every level has one branching factor (what :meth:`Tree.regular` and the samplers
produce) converts with one tensorclass per level; any other forest is converted vertex by vertex,
which is fine for inspecting a few trees but not for training-sized batches. torchrl is imported
only here, so ``treeadv`` itself needs torch and tensordict alone.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from treeadv.tree import Tree

__all__ = ["from_torchrl", "to_torchrl"]

_STRUCTURE_KEYS = ("log_prob", "depth", "group")


def to_torchrl(tree: Tree):
    """The forest as one :class:`torchrl.data.Tree` with batch size ``[R]``, one entry per root.

    Each vertex's ``node_id`` is its index in ``tree`` and its ``node_data`` holds ``log_prob``,
    ``depth``, ``group`` and every ``payload`` entry. Children keep ascending index order.
    """
    from torchrl.data import Tree as TorchRLTree

    node_data = TensorDict(
        {"log_prob": tree.log_prob, "depth": tree.depth, "group": tree.group},
        batch_size=[tree.num_nodes],
    ).update(tree.payload)
    branching = _uniform_branching(tree)
    if branching is not None:
        return _dense_to_torchrl(tree, node_data, branching, TorchRLTree)
    return _sparse_to_torchrl(tree, node_data, TorchRLTree)


def from_torchrl(forest, log_prob_key: str = "log_prob") -> Tree:
    """A :class:`Tree` from a :class:`torchrl.data.Tree` (one tree, batch ``[]``, or a forest, ``[R]``).

    Vertices are numbered by their ``node_id`` when those are exactly ``0..N-1`` (so a round trip
    through :func:`to_torchrl` restores the original order), else in breadth-first order.
    ``log_prob`` is read from ``node_data[log_prob_key]`` (0 where absent); ``group`` is kept when
    present, else one group per tree; other ``node_data`` entries shared by all vertices become
    the payload.
    """
    roots = [forest] if forest.batch_dims == 0 else list(forest.unbind(0))
    vertices, parents, trees_of = [], [], []
    for tree_number, root in enumerate(roots):
        by_path = root.vertices(key_type="path")
        paths = sorted(by_path, key=lambda path: (len(path), path))
        first = len(vertices)
        position = {path: first + i for i, path in enumerate(paths)}
        for path in paths:
            vertices.append(by_path[path])
            parents.append(position[path[:-1]] if path else -1)
            trees_of.append(tree_number)

    order = _node_ids(vertices)
    n = len(vertices)
    parent = torch.tensor(parents, dtype=torch.long)
    if order is not None:  # renumber from breadth-first positions to the stored node ids
        parent = torch.where(parent >= 0, order[parent.clamp(min=0)], -1)
        parent = torch.empty_like(parent).index_copy_(0, order, parent)
        vertices = [vertices[i] for i in torch.argsort(order).tolist()]
    data = [v.node_data if v.node_data is not None else TensorDict() for v in vertices]
    shared = set.intersection(*(set(d.keys(include_nested=True, leaves_only=True)) for d in data)) if data else set()
    log_prob = torch.stack(
        [d.get(log_prob_key).reshape(()).float() if log_prob_key in shared else torch.zeros(()) for d in data]
    ) if n else torch.zeros(0)
    payload_keys = sorted(k for k in shared if k not in _STRUCTURE_KEYS and k != log_prob_key)
    payload = TensorDict(
        {key: torch.stack([d.get(key) for d in data]) for key in payload_keys}, batch_size=[n]
    )
    group = torch.stack([d.get("group").reshape(()) for d in data]).long() if "group" in shared else None
    return Tree.from_parents(parent, log_prob, group, payload=payload)


def _uniform_branching(tree: Tree) -> list[int] | None:
    """Branching factor per level if every node above the deepest level has the same number of
    children and every leaf sits on the deepest level; else None."""
    num_children = tree.num_children()
    max_depth = tree.max_depth
    if bool((tree.is_leaf & (tree.depth != max_depth)).any()):
        return None
    branching = []
    for level in tree.levels()[:-1]:
        counts = num_children[level]
        if not bool((counts == counts[0]).all()):
            return None
        branching.append(int(counts[0]))
    return branching


def _dense_to_torchrl(tree: Tree, node_data: TensorDictBase, branching: list[int], cls):
    offsets, children = tree.child_index()
    level = tree.roots()  # nodes of the current level in nested (row-major) order
    orders = [level]
    for k in branching:
        # each parent's k children sit at children[offsets[p] : offsets[p] + k]
        level = children[offsets[level].unsqueeze(1) + torch.arange(k, device=level.device)].reshape(-1)
        orders.append(level)
    shapes = [orders[0].numel(), *branching]  # level D is a [R, k_1, ..., k_D] array
    built = None
    for depth in range(len(orders) - 1, -1, -1):
        batch = shapes[: depth + 1]
        index = orders[depth]
        built = cls(
            node_id=index.reshape(batch),
            node_data=node_data[index].reshape(batch),
            subtree=built,
            batch_size=batch,
        )
    return built


def _sparse_to_torchrl(tree: Tree, node_data: TensorDictBase, cls):
    offsets, children = tree.child_index()
    made: dict[int, object] = {}
    # Deepest nodes first so that every child exists before its parent (interop only: a loop).
    for node in torch.argsort(tree.depth, descending=True, stable=True).tolist():
        kids = children[offsets[node] : offsets[node + 1]].tolist()
        made[node] = cls(
            node_id=node,
            node_data=node_data[node],
            subtree=TensorDict.lazy_stack([made[c] for c in kids]) if kids else None,
            batch_size=[],
        )
    return TensorDict.lazy_stack([made[r] for r in tree.roots().tolist()])


def _node_ids(vertices: list) -> torch.Tensor | None:
    """``[N]`` stored node ids if they are a permutation of ``0..N-1``, else None."""
    ids = []
    for vertex in vertices:
        node_id = vertex.node_id
        if node_id is None:
            return None
        ids.append(int(node_id))
    ids_t = torch.tensor(ids, dtype=torch.long)
    if ids_t.numel() and torch.equal(ids_t.sort().values, torch.arange(len(ids))):
        return ids_t
    return None
