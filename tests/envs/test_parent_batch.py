"""ParentBatch, the typed batch samplers write and losses read: rows, joins, devices, key names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

import treeadv
from treegrpo.envs import CondTable, DenoisingEnv, DenoisingPolicy, ParentBatch, parent_batch, tree_rollout
from treegrpo.envs.parent_batch import FIELDS
from treegrpo.problems import toy2d_problem


def _batch() -> ParentBatch:
    problem = toy2d_problem(num_steps=6)
    env = DenoisingEnv(problem.transition, latent_shape=(2,))
    cond = torch.tensor([0, 1])
    policy = DenoisingPolicy(problem.model, problem.transition, cond, generator=torch.Generator().manual_seed(0))
    rollout = tree_rollout(env, policy, sde_steps=[1, 2, 4], branching=[3, 2, 1], num_prompts=2,
                           generator=torch.Generator().manual_seed(1))
    advantage = torch.randn(rollout.tree.num_nodes, generator=torch.Generator().manual_seed(2))
    return parent_batch(rollout.tree, advantage, cond)


def _equal(left: ParentBatch, right: ParentBatch) -> None:
    assert left.batch_size == right.batch_size
    for name in FIELDS:
        if name == "cond_table":
            assert left.cond_table is right.cond_table
        else:
            assert torch.equal(getattr(left, name), getattr(right, name)), name


def test_parent_batch_is_typed_with_one_shared_conditioning_table():
    batch = _batch()
    assert isinstance(batch, ParentBatch) and isinstance(batch.cond_table, CondTable)
    rows = batch.batch_size[0]
    assert batch.mask.shape == batch.log_prob.shape == batch.advantage.shape == batch.child.shape
    assert batch.mask.dtype == torch.bool and batch.mask.shape[0] == rows
    assert batch.latent.shape == (rows, 2) and batch.sample.shape == (rows, batch.mask.shape[1], 2)
    assert batch["mask"] is batch.mask  # a field by name, for code written against the TensorDict
    with pytest.raises(KeyError, match="no field 'cond'"):
        batch["cond"]


def test_indexing_selects_rows_and_keeps_the_table():
    batch = _batch()
    by_index = batch[torch.tensor([2, 0])]
    by_mask = batch[batch.step == batch.step.max()]
    assert isinstance(by_index, ParentBatch) and by_index.batch_size == (2,)
    assert torch.equal(by_index.node, batch.node[torch.tensor([2, 0])])
    assert by_index.cond_table is batch.cond_table and by_mask.cond_table is batch.cond_table
    assert bool((by_mask.step == batch.step.max()).all())
    empty = batch[torch.zeros(batch.batch_size[0], dtype=torch.bool)]
    assert empty.batch_size == (0,) and empty.cond_table is batch.cond_table


def test_minibatches_join_back_into_the_batch():
    batch = _batch()
    order = torch.randperm(batch.batch_size[0], generator=torch.Generator().manual_seed(0))
    parts = [batch[rows] for rows in order.split(3)]
    joined = torch.cat(parts)
    assert isinstance(joined, ParentBatch)
    _equal(joined, batch[order])


def test_to_device_and_clone_keep_the_fields():
    batch = _batch()
    moved = batch.to("cpu")
    _equal(moved, batch)
    copied = batch.clone(recurse=False)
    copied.set("mask", torch.zeros_like(batch.mask))  # what pruning does: one field replaced
    assert bool(batch.mask.any()) and not bool(copied.mask.any())


def test_loss_input_round_trip_under_renamed_keys():
    batch = _batch()
    plain = batch.as_loss_input()
    assert isinstance(plain, TensorDict) and set(plain.keys()) == set(FIELDS)
    assert plain.get("latent") is batch.latent  # shared, not copied
    assert plain.get_non_tensor("cond_table") is batch.cond_table
    keys = SimpleNamespace(latent="x_t", log_prob="old_log_prob", mask="valid", cond_table="table", cond="cond")
    renamed = batch.as_loss_input(keys)
    assert {"x_t", "old_log_prob", "valid", "table", "node", "sample"} <= set(renamed.keys())
    assert not {"latent", "log_prob", "mask", "cond_table", "cond"} & set(renamed.keys())
    _equal(ParentBatch.from_loss_input(renamed, keys), batch)
    _equal(ParentBatch.from_loss_input(plain), batch)


def test_a_renamed_field_wins_over_a_field_of_that_name():
    batch = _batch()
    renamed = batch.as_loss_input(SimpleNamespace(latent="node"))  # the loss reads the latent as "node"
    assert renamed.get("node") is batch.latent and "latent" not in renamed.keys()  # noqa: SIM118


def test_an_empty_tree_gives_an_empty_batch():
    tree = treeadv.Tree.regular(2, 1, 0, payload={"latent": torch.zeros(2, 2), "step": torch.zeros(2, dtype=torch.long),
                                                  "sample": torch.zeros(2, 2),
                                                  "cond_index": torch.zeros(2, dtype=torch.long)})
    batch = parent_batch(tree)
    assert isinstance(batch, ParentBatch) and batch.batch_size == (0,)


def test_the_rollout_resets_the_environment_through_its_public_reset(monkeypatch):
    calls = []
    reset = DenoisingEnv.reset

    def counted(self, *args, **kwargs):
        calls.append(args)
        return reset(self, *args, **kwargs)

    monkeypatch.setattr(DenoisingEnv, "reset", counted)
    batch = _batch()
    assert len(calls) == 1 and batch.batch_size[0] > 0
