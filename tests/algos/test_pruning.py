"""BranchGRPO's depth and width pruning against a node-by-node transcription of its training step."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.treeadv.branchgrpo_reference import (
    drop_depths,
    drop_width,
    grow_forest,
    pruning_applies,
    toolkit_tree,
    walk_edges,
)
from treegrpo.algos.pruning import prune_edges, pruned_depths, pruning_active
from treegrpo.envs import parent_batch


def _forest(num_prompts: int, num_steps: int, split_steps: list[int], advantage: torch.Tensor):
    """The peer's DFS edge list and the toolkit's parent batch for one forest and per-node advantages."""
    roots, _ = grow_forest(num_prompts, num_steps, split_steps)
    names = {node.name: node.order for root in roots for node in _nodes(root)}
    edges = walk_edges(roots, {name: float(advantage[order]) for name, order in names.items()})
    tree = toolkit_tree(num_prompts, num_steps, split_steps, torch.zeros(len(names), dtype=torch.float64))
    return edges, tree, parent_batch(tree, advantage)


def _nodes(root):
    return [root, *(node for child in root.children for node in _nodes(child))]


def _trained(batch) -> set[tuple[int, int]]:
    row, slot = batch["mask"].nonzero(as_tuple=True)
    return set(zip(batch["node"][row].tolist(), batch["child"][row, slot].tolist()))


def _peer_trained(edges) -> set[tuple[int, int]]:
    return {(edge.parent.order, edge.child.order) for edge in edges}


def _chains_advantage(num_prompts: int = 1) -> torch.Tensor:
    """T=6, splits [0, 2]: each tree's 4 chains after the last split keep one advantage along their
    depths 3..6, as the uniform fusion makes them (every such depth holds the same leaf values);
    the second tree's are 10 higher."""
    tree = toolkit_tree(num_prompts, 6, [0, 2])
    advantage = torch.zeros(tree.num_nodes, dtype=torch.float64)
    chain = torch.tensor([-0.8, -0.6, -0.2, 1.6], dtype=torch.float64)
    for level in tree.levels()[3:]:  # 4 nodes per tree, one per chain, trees in order
        advantage[level] = chain.repeat(num_prompts) + 10.0 * tree.root[level]
    return advantage


def test_pruning_active_counts_steps_from_one():
    # BranchGRPO's current_step = iteration + 1 <= int(max_steps * ratio)
    assert [pruning_active(i, 10, 0.5) for i in range(7)] == [True] * 5 + [False] * 2
    assert not pruning_active(0, 10, 0.0)
    assert pruning_active(9, 10, 1.0)
    assert [pruning_active(i, 100, 0.29) for i in (27, 28)] == [True, False]  # int(28.999...) = 28
    for iterations in range(13):
        for ratio in (0.0, 0.1, 0.29, 0.3, 0.5, 0.7, 1.0):
            assert [pruning_active(i, iterations, ratio) for i in range(iterations + 1)] == [
                pruning_applies(i + 1, iterations, ratio) for i in range(iterations + 1)]


def test_sliding_window_moves_up_to_the_last_split():
    window = [pruned_depths([5, 6], i, slide=True, interval=1, stop_depth=None, split_steps=[0, 2]) for i in range(4)]
    assert window == [{4, 5}, {3, 4}, {2, 3}, {2, 3}]
    slow = [pruned_depths([5, 6], i, slide=True, interval=2, stop_depth=4, split_steps=[0, 2]) for i in range(4)]
    assert slow == [{5, 6}, {4, 5}, {4, 5}, {4, 5}]
    assert pruned_depths([6, 5], 7, slide=False, interval=1, stop_depth=None, split_steps=[0]) == {5, 6}
    assert pruned_depths([], 3, slide=True, interval=1, stop_depth=None, split_steps=[0]) == frozenset()


def test_width_mode_one_keeps_the_first_edge_of_each_tied_chain():
    edges, tree, batch = _forest(1, 6, [0, 2], _chains_advantage())
    pruned = prune_edges(batch, tree, width_mode=1, width_ratio=0.5, split_steps=[0, 2])
    last = {(parent, child) for parent, child in _trained(pruned) if int(tree.depth[parent]) > 2}
    assert last == {(p, p + 4) for p in (5, 6, 7, 8)}  # parent step 3, the first of each branch's 3 edges
    assert _trained(pruned) == _peer_trained(drop_width(edges, 1, 0.5, [0, 2]))
    assert bool(pruned["mask"].any(-1).all()) and pruned.batch_size[0] == 8 + 4  # 8 rows up to the last split; emptied rows dropped


def test_width_mode_two_keeps_the_best_and_worst_chains():
    edges, tree, batch = _forest(1, 6, [0, 2], _chains_advantage())
    pruned = prune_edges(batch, tree, width_mode=2, width_ratio=0.5, split_steps=[0, 2])
    last = {(parent, child) for parent, child in _trained(pruned) if int(tree.depth[parent]) > 2}
    assert last == {(p, p + 4) for p in (8, 12, 16)} | {(p, p + 4) for p in (5, 9, 13)}
    assert _trained(pruned) == _peer_trained(drop_width(edges, 2, 0.5, [0, 2]))


def test_two_prompts_share_mode_two_but_not_mode_one():
    advantage = _chains_advantage(2)
    edges, tree, batch = _forest(2, 6, [0, 2], advantage)
    for mode in (1, 2):
        pruned = prune_edges(batch, tree, width_mode=mode, split_steps=[0, 2])
        assert _trained(pruned) == _peer_trained(drop_width(edges, mode, 0.5, [0, 2]))
    kept_roots = {int(tree.root[p]) for p, _ in _trained(prune_edges(batch, tree, width_mode=2, split_steps=[0, 2]))
                  if int(tree.depth[p]) > 2}
    assert kept_roots == {0, 1}  # the best chains are the second prompt's, the worst the first's


@pytest.mark.parametrize("split_steps", [[0], [0, 2], [1, 3]])
@pytest.mark.parametrize("width_mode", [1, 2])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7, 1.0])
def test_width_pruning_is_the_peers_on_two_prompts(split_steps, width_mode, ratio):
    generator = torch.Generator().manual_seed(len(split_steps) + 10 * width_mode)
    num_nodes = toolkit_tree(2, 6, split_steps).num_nodes
    advantage = torch.randint(-2, 3, (num_nodes,), generator=generator).to(torch.float64) / 2  # many ties
    edges, tree, batch = _forest(2, 6, split_steps, advantage)
    pruned = prune_edges(batch, tree, width_mode=width_mode, width_ratio=ratio, split_steps=split_steps)
    assert _trained(pruned) == _peer_trained(drop_width(edges, width_mode, ratio, split_steps))


@st.composite
def pruning_cases(draw):
    num_prompts = draw(st.integers(1, 2))
    num_steps = draw(st.integers(2, 6))
    split_steps = sorted(draw(st.sets(st.integers(0, num_steps - 1), min_size=1, max_size=3)))
    num_nodes = toolkit_tree(num_prompts, num_steps, split_steps).num_nodes
    values = draw(st.sampled_from([st.sampled_from([-1.0, 0.0, 0.5, 1.0]), st.floats(-2, 2)]))  # ties, or few
    advantage = torch.tensor(draw(st.lists(values, min_size=num_nodes, max_size=num_nodes)), dtype=torch.float64)
    options = {
        "depths": sorted(draw(st.sets(st.integers(1, num_steps), max_size=3))),
        "slide": draw(st.booleans()),
        "interval": draw(st.integers(1, 3)),
        "stop_depth": draw(st.none() | st.integers(0, num_steps)),
        "current_step": draw(st.integers(1, 8)),
        "width_mode": draw(st.integers(0, 2)),
        "width_ratio": draw(st.sampled_from([0.1, 0.25, 0.5, 0.7, 1.0])),
    }
    return (num_prompts, num_steps, split_steps, advantage), options


@given(case=pruning_cases())
def test_trained_edges_are_the_peers(case):
    """Depth then width pruning, called as the trainer calls them, keep exactly the (parent, child)
    edges BranchGRPO trains at its training step ``current_step`` (the toolkit's iteration + 1)."""
    (num_prompts, num_steps, split_steps, advantage), o = case
    edges, tree, batch = _forest(num_prompts, num_steps, split_steps, advantage)
    edges = drop_depths(edges, o["depths"], o["current_step"], slide=o["slide"], interval=o["interval"],
                        stop_depth=o["stop_depth"], split_steps=split_steps)
    edges = drop_width(edges, o["width_mode"], o["width_ratio"], split_steps)
    depths = pruned_depths(o["depths"], o["current_step"] - 1, slide=o["slide"], interval=o["interval"],
                           stop_depth=o["stop_depth"], split_steps=split_steps)
    batch = prune_edges(batch, tree, depths=depths, width_mode=o["width_mode"], width_ratio=o["width_ratio"],
                        split_steps=split_steps)
    assert _trained(batch) == _peer_trained(edges)
    assert int(batch["mask"].sum()) == len(_peer_trained(edges))
    assert bool(batch["mask"].any(-1).all())
    duplicated = len(edges) - len(_peer_trained(edges))
    assert duplicated in (0, 1)  # only mode 2 with one last-layer edge lists it twice (as best and worst)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width_mode": 3}, r"width_mode: expected 0 \(off\), 1 \(best per branch\) or 2 \(best and worst\), got 3"),
    ({"width_mode": 1, "width_ratio": 0.0}, r"width_ratio: expected a fraction in \(0, 1\], got 0.0"),
    ({"width_mode": 1, "width_ratio": 1.5}, r"width_ratio: expected a fraction in \(0, 1\], got 1.5"),
    ({"depths": [0, 3]}, r"depths: expected child depths >= 1 .*got \[0, 3\]"),
    ({"width_mode": 2}, r"split_steps: width_mode 2 prunes the edges after the last split"),
])
def test_prune_edges_rejects_bad_arguments(kwargs, message):
    _, tree, batch = _forest(1, 3, [0], torch.zeros(7, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        prune_edges(batch, tree, **kwargs)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: pruned_depths([2], 0, slide=True, interval=0, stop_depth=None, split_steps=[0]), "interval: expected an int >= 1, got 0"),
    (lambda: pruned_depths([2], -1, slide=True, interval=1, stop_depth=None, split_steps=[0]), "iteration: expected an int >= 0, got -1"),
    (lambda: pruned_depths([2], 0, slide=True, interval=1, stop_depth=-1, split_steps=[0]), "stop_depth: expected an int >= 0, got -1"),
    (lambda: pruned_depths([0], 0, slide=False, interval=1, stop_depth=None, split_steps=[0]), "depths: expected child depths >= 1"),
    (lambda: pruning_active(0, 10, 1.5), r"step_ratio: expected a number in \[0, 1\]"),
])
def test_schedule_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
