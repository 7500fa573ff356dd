"""How one iteration's prompts are split over ranks and chunks, and joined back for the advantages.

The prompts are cut into ``world_size x sampling.chunks`` **pieces** of whole prompt groups; rank
``r`` samples its own pieces, each from its own generator, so ``W`` ranks with ``c`` chunks compute
exactly what one process with ``W c`` chunks computes (:mod:`treegrpo.algos.distributed` explains
the data-parallel side). A piece is also the unit of minibatch stratification. One process with one
chunk has one piece, which uses the run's generators directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

import treeadv
from treegrpo.algos.distributed import gather_rows
from treegrpo.algos.scoring import chunk_bounds
from treegrpo.devices import Ranks
from treegrpo.envs import ParentBatch, gather_cond


@dataclass(frozen=True)
class Shard:
    """This rank's prompts ``[lo, hi)`` of ``total``, as ``pieces`` (ranges relative to ``lo``);
    ``first_piece`` is the index of its first piece among all ``num_pieces``."""

    lo: int
    hi: int
    total: int
    pieces: tuple[tuple[int, int], ...]
    first_piece: int
    num_pieces: int

    def rows(self, cond: Any) -> Any:
        """This shard's rows of a conditioning table of ``total`` rows."""
        return prompt_rows(cond, self.lo, self.hi, self.total)


def shard_prompts(num_prompts: int, ranks: Ranks, chunks: int) -> Shard:
    """Rank ``ranks.rank``'s shard: ``world_size`` equal shards, each cut into ``chunks`` pieces."""
    shards = chunk_bounds(num_prompts, ranks.world_size)
    by_rank = [[(lo + a, lo + b) for a, b in chunk_bounds(hi - lo, chunks)] for lo, hi in shards]
    mine = by_rank[ranks.rank]
    lo, hi = mine[0][0], mine[-1][1]
    return Shard(lo, hi, num_prompts, tuple((a - lo, b - lo) for a, b in mine),
                 sum(map(len, by_rank[:ranks.rank])), sum(map(len, by_rank)))


def prompt_rows(cond: Any, lo: int, hi: int, total: int) -> Any:
    """Rows ``lo:hi`` of a conditioning table of ``total`` rows (the table itself when that is all of it)."""
    return cond if (lo, hi) == (0, total) else gather_cond(cond, torch.arange(lo, hi))


def piece_seed(generator: torch.Generator, num_pieces: int) -> int | None:
    """With several pieces, one draw from the shared ``generator`` seeds piece ``j``'s generator as
    ``seed + j`` (the same draw on every rank); ``None`` for a single piece, which uses the stream itself."""
    if num_pieces == 1:
        return None
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def gather_forest(ranks: Ranks, tree: treeadv.Tree, rewards: Tensor, leaf_prompts: Tensor, first_prompt: int,
                  ) -> tuple[treeadv.Tree, Tensor, Tensor, int]:
    """Every rank's trees (structure, log-probs and steps), leaf rewards and prompt ids, joined in
    rank order, and this rank's first node in the join. One process gets its own back."""
    if not ranks.distributed:
        return tree, rewards, leaf_prompts, 0
    counts = gather_rows(torch.tensor([tree.num_nodes], device=tree.parent.device))
    first_node = int(counts[: ranks.rank].sum())
    fields = {
        "parent": gather_rows(torch.where(tree.parent >= 0, tree.parent + first_node, -1)),
        "log_prob": gather_rows(tree.log_prob),
        "depth": gather_rows(tree.depth),
        "root": gather_rows(tree.root + first_node),
        "group": gather_rows(tree.group + first_prompt),
        "is_leaf": gather_rows(tree.is_leaf.to(torch.uint8)).bool(),
    }
    size = [fields["parent"].shape[0]]
    payload = TensorDict({"step": gather_rows(tree.payload["step"])}, batch_size=size)
    forest = treeadv.Tree(**fields, payload=payload, batch_size=size)
    return forest, gather_rows(rewards), gather_rows(leaf_prompts), first_node


def minibatch_rows(batch: ParentBatch, shard: Shard, size: int, epochs: int, generator: torch.Generator
                   ) -> list[list[Tensor]]:
    """Row indices of every minibatch of every inner epoch, in order.

    One piece: a shuffle of all parents by ``generator``, cut into minibatches of ``size``. Several
    pieces: each piece's parents are shuffled by the piece's own generator and every minibatch takes
    ``ceil(size / pieces)`` parents from each piece, so a minibatch is the union of what the ranks
    train on together.
    """
    seed = piece_seed(generator, shard.num_pieces)
    if seed is None:  # one piece: every parent, shuffled by the run's own stream
        rows, generators = [torch.arange(batch.batch_size[0])], [generator]
    else:
        starts = torch.tensor([a for a, _ in shard.pieces])
        piece = torch.bucketize(batch.cond_index.cpu(), starts, right=True) - 1
        rows = [torch.nonzero(piece == j).squeeze(-1) for j in range(len(shard.pieces))]
        generators = [torch.Generator().manual_seed(seed + shard.first_piece + j) for j in range(len(shard.pieces))]
    per_piece = -(-size // shard.num_pieces)
    out = []
    for _ in range(epochs):
        orders = [r[torch.randperm(r.numel(), generator=g)] for r, g in zip(rows, generators, strict=True)]
        count = max(-(-o.numel() // per_piece) for o in orders)
        out.append([torch.cat([o[i * per_piece:(i + 1) * per_piece] for o in orders]) for i in range(count)])
    return out
