"""Chunked sampling with scoring on a worker thread: same rollout layout, overlap, identical training."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import torch

from treegrpo.algos.scoring import chunk_bounds, sample_and_score
from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config
from treegrpo.envs import TreeSampler, check_on_policy, gather_cond
from treegrpo.problems import toy2d_problem


@pytest.mark.parametrize(("prompts", "chunks"), [(7, 3), (4, 4), (2, 5), (9, 1)])
def test_chunks_cover_every_prompt_once_in_near_equal_parts(prompts, chunks):
    bounds = chunk_bounds(prompts, chunks)
    assert bounds[0][0] == 0 and bounds[-1][1] == prompts and len(bounds) == min(prompts, chunks)
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds))
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def _setup():
    problem = toy2d_problem(6, prompts_per_iteration=5)
    sampler = TreeSampler(problem.model, problem.transition, branching=2, depth=2, trees_per_prompt=2)
    prompt_ids = torch.tensor([1, 0, 0, 1, 1])
    generator = torch.Generator().manual_seed(0)

    def sample_chunk(lo, hi):
        return sampler.sample(gather_cond(prompt_ids, torch.arange(lo, hi)), latent_shape=(2,), num_prompts=hi - lo,
                              generator=generator)

    return problem, prompt_ids, sample_chunk


@pytest.mark.parametrize("background", [False, True])
def test_joined_rollout_indexes_the_full_prompt_table(background):
    problem, prompt_ids, sample_chunk = _setup()
    rollout, rewards = sample_and_score(sample_chunk, problem.reward, prompt_ids, chunks=3, background=background)
    tree = rollout.tree
    assert tree.num_nodes == 5 * 2 * (1 + 2 + 4) and rollout.final.shape == (40, 2)
    inner = tree.parent >= 0
    assert torch.equal(tree.depth[inner], tree.depth[tree.parent[inner]] + 1)
    assert torch.equal(tree.root[inner], tree.root[tree.parent[inner]])
    # every node's prompt is its group and its parent's prompt; the rewards belong to the right leaves
    assert torch.equal(tree.group, tree.payload["cond_index"])
    assert torch.equal(tree.payload["cond_index"][inner], tree.payload["cond_index"][tree.parent[inner]])
    assert torch.equal(rollout.leaf_cond_index, torch.arange(5).repeat_interleave(8))
    torch.testing.assert_close(rewards, problem.reward(rollout.final, prompt_ids[rollout.leaf_cond_index]))
    # the stored log-probs are the policy's on the full conditioning table
    check_on_policy(rollout, problem.model, problem.transition, prompt_ids)


def test_a_chunk_is_scored_while_the_next_is_sampled():
    """Scoring chunk 0 waits for sampling of chunk 1 to begin: only concurrent scoring finishes."""
    problem, prompt_ids, sample_chunk = _setup()
    second_chunk_started = threading.Event()

    def sample(lo, hi):
        if lo > 0:
            second_chunk_started.set()
        return sample_chunk(lo, hi)

    def score(final, ids):
        if not second_chunk_started.is_set() and not second_chunk_started.wait(timeout=5):
            raise TimeoutError("chunk 0 was scored before chunk 1 was sampled")
        return problem.reward(final, ids)

    _, rewards = sample_and_score(sample, score, prompt_ids, chunks=2, background=True)
    assert rewards.shape == (40,)
    second_chunk_started.clear()
    with pytest.raises(TimeoutError, match="before chunk 1"):
        sample_and_score(sample, score, prompt_ids, chunks=2, background=False)


def test_an_error_in_the_scorer_reaches_the_caller():
    _, prompt_ids, sample_chunk = _setup()

    def broken(final, ids):
        raise RuntimeError("reward model fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        sample_and_score(sample_chunk, broken, prompt_ids, chunks=2, background=True)


def _fit(out: Path, **settings: object) -> Trainer:
    overrides = {"loss.algorithm": "treegrpo", "train.iterations": 3, "train.out_dir": str(out),
                 "sampling.num_steps": 6, "sampling.prompts_per_iteration": 4, "sampling.depth": 2,
                 "sampling.branching": 2, "train.checkpoint_every": 1000, "train.sample_every": 1000, **settings}
    config = Config().override([f"{key}={value}" for key, value in overrides.items()])
    trainer = Trainer(toy2d_problem(6, prompts_per_iteration=4, seed=0), config)
    trainer.fit(progress=False)
    return trainer


def test_background_scoring_trains_exactly_as_inline_scoring(tmp_path):
    inline = _fit(tmp_path / "inline", **{"sampling.chunks": 2, "sampling.background_scoring": False})
    background = _fit(tmp_path / "background", **{"sampling.chunks": 2, "sampling.background_scoring": True})
    unchunked = _fit(tmp_path / "unchunked")
    for name, value in inline.named_params.items():
        assert torch.equal(value, background.named_params[name]), name
    assert [h["reward_mean"] for h in inline.history] == [h["reward_mean"] for h in background.history]
    for key in ("images", "nfe_sampled", "edges_trained"):
        assert [h[key] for h in background.history] == [h[key] for h in unchunked.history], key
