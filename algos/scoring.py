"""Scoring off the critical path: sample an iteration's prompts in chunks and score chunk ``j`` on a
worker thread while chunk ``j + 1`` is sampled, as ddpo-pytorch does with its executor.

Every chunk is sampled by the same policy (no update happens in between), so the rollout is as
on-policy as an unchunked one; only the order in which the random stream is consumed changes. The
prompt groups are whole inside a chunk and the advantages are computed on the joined rollout, so
group statistics are the iteration's. Torch releases the GIL in its kernels, so decoding and reward
models run concurrently with sampling; on CUDA the worker uses its own stream, ordered after the
sampling work that produced its latents.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Self

import torch
from torch import Tensor

from treegrpo.envs import Rollout, concat_rollouts

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class BackgroundScorer:
    """Runs ``score(final, prompt_ids)`` on one worker thread; :meth:`submit` returns a future.

    Use as a context manager (or call :meth:`close`) so the worker is joined.
    """

    def __init__(self, score: ScoreFn, device: torch.device | str = "cpu") -> None:
        self.score = score
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treegrpo-scoring")

    def submit(self, final: Tensor, prompt_ids: Tensor) -> Future:
        """Queue the scoring of ``final`` (latents) for ``prompt_ids``; the future yields ``[L]`` or ``[L, m]``."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return self._executor.submit(self._run, final, prompt_ids, ready)

    def _run(self, final: Tensor, prompt_ids: Tensor, ready) -> Tensor:
        with torch.no_grad():
            if self.stream is None:
                return self.score(final, prompt_ids)
            self.stream.wait_event(ready)
            with torch.cuda.stream(self.stream):
                final.record_stream(self.stream)  # the caller's allocator must not reuse it early
                rewards = self.score(final, prompt_ids)
            self.stream.synchronize()  # the result is complete when the future resolves
            return rewards

    def close(self) -> None:
        """Wait for queued work and stop the worker."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chunk_bounds(num_prompts: int, chunks: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` prompt ranges of near-equal size, at most ``chunks`` of them, none empty."""
    chunks = max(1, min(chunks, num_prompts))
    edges = [j * num_prompts // chunks for j in range(chunks + 1)]
    return list(itertools.pairwise(edges))


def sample_and_score(sample_chunk: Callable[[int, int], Rollout], score: ScoreFn, prompt_ids: Tensor, *,
                     chunks: int | Sequence[tuple[int, int]] = 1, background: bool = True,
                     device: torch.device | str = "cpu") -> tuple[Rollout, Tensor]:
    """Sample ``prompt_ids`` in ``chunks`` pieces and score every leaf; returns the joined rollout
    and the rewards aligned with its leaves.

    ``chunks`` is a count (split by :func:`chunk_bounds`) or the consecutive ``[lo, hi)`` ranges
    themselves, covering ``prompt_ids``. ``sample_chunk(lo, hi)`` samples prompts ``lo:hi``
    (numbered from 0 in its rollout). With ``background`` each chunk is scored on a worker thread
    while the next one is sampled.
    """
    num_prompts = int(prompt_ids.shape[0])
    bounds = chunk_bounds(num_prompts, chunks) if isinstance(chunks, int) else list(chunks)
    if not bounds or bounds[0][0] != 0 or bounds[-1][1] != num_prompts or any(
            a[1] != b[0] for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"chunks: expected consecutive ranges covering 0..{num_prompts}, got {bounds}")
    if len(bounds) == 1:  # one piece: nothing to overlap or join
        rollout = sample_chunk(*bounds[0])
        with torch.no_grad():
            return rollout, score(rollout.final, prompt_ids[rollout.leaf_cond_index])
    rollouts, rewards = [], []
    with BackgroundScorer(score, device) if background else nullcontext() as scorer:
        for lo, hi in bounds:
            rollout = sample_chunk(lo, hi)
            rollouts.append(rollout)
            leaf_prompts = prompt_ids[lo:hi][rollout.leaf_cond_index]
            if scorer is None:
                with torch.no_grad():
                    rewards.append(score(rollout.final, leaf_prompts))
            else:
                rewards.append(scorer.submit(rollout.final, leaf_prompts))
        rewards = [r.result() if isinstance(r, Future) else r for r in rewards]
    return concat_rollouts(rollouts, [lo for lo, _ in bounds]), torch.cat(rewards)
