"""Hypothesis strategies for random forests with groups, log-probs, rewards and leaf advantages.

``forests()`` draws a :class:`~treeadv.Tree`; ``forest_cases()`` draws a :class:`ForestCase`
(a tree plus per-node leaf advantages) ready for :func:`treeadv.testing.check_estimator`. Trees
are shuffled into random node order by default, so code that silently assumes the sampler's
level-major layout is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

from treeadv.tree import Tree

#: Log-prob draws: mean-reduced log-probs live near 0 (a grid of 2^-16, finer than a float32 mean-reduced
#: log-prob's spread between siblings, 1e-3 at 65,536 dims); sum-reduced ones are large and far apart.
#: On a grid, siblings either tie exactly or differ by far more than the rounding of any shift or
#: scale the invariants apply, as stored log-probs do; a 1e-45 difference would not survive ``+ 50``.
_LOG_PROB = st.one_of(
    st.integers(-3 * 2**16, 3 * 2**16).map(lambda k: k / 2**16),
    st.integers(-200 * 2**8, 50 * 2**8).map(lambda k: k / 2**8),
)
#: Advantage draws mix a continuum with a few repeated values so that ties occur.
_ADVANTAGE = st.one_of(
    st.floats(-10.0, 10.0, allow_nan=False, width=32),
    st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
)


@dataclass(frozen=True)
class ForestCase:
    """A forest and one advantage per node; only the leaves' values are meaningful.

    Internal nodes hold large junk values so that an estimator reading them is caught.
    """

    tree: Tree
    leaf_adv: Tensor

    def __repr__(self) -> str:  # hypothesis prints this on failure: keep it reproducible by hand
        return (
            f"ForestCase(parent={self.tree.parent.tolist()}, log_prob={self.tree.log_prob.tolist()}, "
            f"group={self.tree.group.tolist()}, leaf_adv={self.leaf_adv.tolist()})"
        )


@st.composite
def forests(
    draw: st.DrawFn,
    *,
    regular: bool | None = None,
    max_trees: int = 4,
    max_depth: int = 4,
    max_branching: int = 4,
    max_nodes: int = 120,
    shuffle: bool = True,
    dtype: torch.dtype = torch.float64,
) -> Tree:
    """A random forest: regular (k-ary per level) or irregular, grouped, with log-probs and rewards.

    Args:
        regular: force regular (True) or irregular (False) trees; drawn when None.
        max_trees: most trees in the forest.
        max_depth: deepest level (edges from a root).
        max_branching: most children of one node.
        max_nodes: most nodes in the forest.
        shuffle: store nodes in a random order rather than level by level.
        dtype: dtype of ``log_prob`` and of ``payload["reward"]``.

    ``payload["reward"]`` holds a reward at each leaf and NaN at internal nodes.
    """
    num_trees = draw(st.integers(1, max_trees))
    is_regular = draw(st.booleans()) if regular is None else regular
    if is_regular:
        parent = _regular_parents(draw, num_trees, max_depth, max_branching, max_nodes)
    else:
        parent = _irregular_parents(draw, num_trees, max_depth, max_branching, max_nodes)
    n = len(parent)
    num_groups = draw(st.integers(1, num_trees))
    tree_group = draw(st.lists(st.integers(0, num_groups - 1), min_size=num_trees, max_size=num_trees))
    log_prob = torch.tensor(draw(st.lists(_LOG_PROB, min_size=n, max_size=n)), dtype=dtype)
    reward = torch.tensor(draw(st.lists(_ADVANTAGE, min_size=n, max_size=n)), dtype=dtype)

    parent_t = torch.tensor(parent, dtype=torch.long)
    tree = Tree.from_parents(parent_t, log_prob)
    tree.group = torch.tensor(tree_group, dtype=torch.long)[tree.group]  # tree number -> group id
    tree.payload["reward"] = torch.where(tree.is_leaf, reward, torch.nan)
    if shuffle:
        tree = tree.relabel(torch.tensor(draw(st.permutations(range(n))), dtype=torch.long))
    return tree


@st.composite
def forest_cases(draw: st.DrawFn, **forest_options: object) -> ForestCase:
    """A :class:`ForestCase`: a :func:`forests` draw plus leaf advantages (junk at internal nodes)."""
    tree = draw(forests(**forest_options))
    n = tree.num_nodes
    values = torch.tensor(draw(st.lists(_ADVANTAGE, min_size=n, max_size=n)), dtype=tree.log_prob.dtype)
    return ForestCase(tree, torch.where(tree.is_leaf, values, 1e6))


def _regular_parents(draw: st.DrawFn, num_trees: int, max_depth: int, max_branching: int, max_nodes: int) -> list[int]:
    branching: list[int] = []
    size, total = num_trees, num_trees
    for _ in range(draw(st.integers(0, max_depth))):
        k = draw(st.integers(1, max_branching))
        if total + size * k > max_nodes:
            break
        branching.append(k)
        size *= k
        total += size
    return Tree.regular(num_trees, branching).parent.tolist()


def _irregular_parents(draw: st.DrawFn, num_trees: int, max_depth: int, max_branching: int, max_nodes: int) -> list[int]:
    """Breadth-first growth where every node draws its own number of children (0 ends a branch)."""
    parent = [-1] * num_trees
    depth = [0] * num_trees
    cursor = 0
    while cursor < len(parent):
        if depth[cursor] < max_depth:
            room = max_nodes - len(parent)
            for _ in range(min(draw(st.integers(0, max_branching)), room)):
                parent.append(cursor)
                depth.append(depth[cursor] + 1)
        cursor += 1
    return parent
