"""The speed benchmark's hand-written scatter backup agrees with treeadv.backup, the script writes its
ratio, and the backup's fast paths (one sum for the finiteness check, in-place softmax, scatters
straight into the parents) keep the behaviour of the plain ones. No timing is asserted here."""

from __future__ import annotations

import json

import pytest
import torch

from tests.treeadv.reference import reference_backup
from treeadv import BackupEstimator, NonFiniteError, Tree, backup, backup_with_weights
from treeadv.siblings import Siblings
from treegrpo.benchmarks import backup_speed


def _forest(seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tree, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tree = backup_speed.branching_forest(300, generator, "cpu")
    tree.log_prob = tree.log_prob.to(dtype)
    return tree, torch.randn(tree.num_nodes, generator=generator, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_minimal_backup_agrees_with_treeadv_backup(dtype):
    tree, leaf_adv = _forest(1, dtype)
    got = backup(tree, leaf_adv)
    want = backup_speed.minimal_backup(tree.parent, tree.depth, tree.log_prob, tree.is_leaf, leaf_adv)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_both_agree_with_the_node_by_node_oracle_where_leaves_sit_at_several_depths():
    # root 0 -> {1, 2, 3}; 1 -> {4, 5}; 2 -> {6}; 3 is a leaf one level up; level-major order.
    parent = [-1, 0, 0, 0, 1, 1, 2]
    log_prob = [0.0, 0.2, -0.3, 0.1, -1.0, 0.5, 0.7]
    leaf_adv = [0.0, 0.0, 0.0, -2.0, 0.5, 1.5, 3.0]
    tree = Tree.from_parents(torch.tensor(parent), torch.tensor(log_prob, dtype=torch.float64))
    adv = torch.tensor(leaf_adv, dtype=torch.float64)
    want = torch.tensor(reference_backup(parent, log_prob, leaf_adv, "logprob_softmax"), dtype=torch.float64)
    torch.testing.assert_close(backup(tree, adv), want, rtol=1e-12, atol=1e-12)
    minimal = backup_speed.minimal_backup(tree.parent, tree.depth, tree.log_prob, tree.is_leaf, adv)
    torch.testing.assert_close(minimal, want, rtol=1e-12, atol=1e-12)


def test_the_script_runs_tiny_and_writes_the_ratio(tmp_path):
    out = tmp_path / "backup_speed.json"
    result = backup_speed.main(
        ["--sizes", "100", "--repeats", "1", "--compare-nodes", "200", "--compare-repeats", "2", "--out", str(out)]
    )
    written = json.loads(out.read_text())
    assert written == result
    comparison = written["comparison"]
    assert written["ratio"] == comparison["ratio"] > 0
    assert comparison["allclose"] is True and comparison["estimator"] == "logprob_softmax"
    assert comparison["backup_ms"] > 0 and comparison["minimal_ms"] > 0 and comparison["nodes"] > 100
    assert {row["shape"] for row in written["rows"]} == {"regular", "irregular"}
    assert written["meta"]["command"].endswith(str(out))


def test_backup_and_backup_with_weights_give_the_same_advantages_on_a_shuffled_forest():
    tree, leaf_adv = _forest(2)
    perm = torch.randperm(tree.num_nodes, generator=torch.Generator().manual_seed(3))
    shuffled = tree.relabel(perm)  # node i of `shuffled` is node perm[i] of `tree`: the index-tensor path
    plain = backup(tree, leaf_adv)
    result = backup_with_weights(shuffled, leaf_adv[perm])
    torch.testing.assert_close(result.advantage, plain[perm], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.weight, backup_with_weights(tree, leaf_adv).weight[perm], rtol=1e-12, atol=0)
    assert torch.equal(backup(shuffled, leaf_adv[perm]), result.advantage)


def test_a_non_finite_leaf_is_named_but_internal_values_and_large_finite_leaves_are_accepted():
    tree = Tree.from_parents(torch.tensor([-1, 0, 0, 1, 1]))
    leaf_adv = torch.tensor([float("nan"), float("inf"), 3e38, 3e38, 3e38])  # the leaves' sum overflows
    assert torch.isfinite(backup(tree, leaf_adv)[2:]).all()
    leaf_adv[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"1 leaves .*nodes \[?3"):
        backup(tree, leaf_adv)


def test_weights_of_another_dtype_are_cast_as_before():
    class Float32Uniform(BackupEstimator):
        def weights(self, siblings: Siblings) -> torch.Tensor:
            return (1.0 / siblings.num_siblings).float()

    tree, leaf_adv = _forest(4)
    got = backup_with_weights(tree, leaf_adv, Float32Uniform())
    want = backup_with_weights(tree, leaf_adv, "mean")
    assert got.advantage.dtype == torch.float64 and got.weight.dtype == torch.float64
    torch.testing.assert_close(got.advantage, want.advantage, rtol=1e-6, atol=1e-6)


def test_softmax_keeps_its_gradient_and_values_with_and_without_grad():
    index = torch.tensor([0, 0, 1, 1, 1, 3])
    logits = torch.tensor([0.5, -1.0, 2.0, 2.0, 0.0, 7.0], dtype=torch.float64, requires_grad=True)
    siblings = Siblings(index, 4, logits.detach(), logits.detach(), torch.ones(6, dtype=torch.float64))
    weights = siblings.softmax(logits)
    want = torch.cat([torch.softmax(logits[:2], 0), torch.softmax(logits[2:5], 0), torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(weights, want)
    (weights * torch.arange(6.0, dtype=torch.float64)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(siblings.softmax(logits.detach()), want.detach())
    assert siblings.num_siblings.tolist() == [2, 2, 3, 3, 3, 1]
    assert siblings.mean(logits.detach()).tolist() == pytest.approx([-0.25, 4 / 3, 0.0, 7.0])
