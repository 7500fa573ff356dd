"""Where this process runs: its place in a torchrun job and its device (no process group needed).

Below every package that picks a device (problems, the trainer), so none of them imports the
data-parallel machinery of :mod:`treegrpo.algos.distributed` for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from treegrpo.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes files."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """The ranks torchrun / accelerate put in the environment (one process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def local_device(name: str) -> torch.device:
    """``train.device`` for this process: ``auto`` is CUDA when available, and ``cuda`` (no index)
    is this rank's GPU, ``cuda:LOCAL_RANK``. A CUDA device without CUDA is a :class:`ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use cpu or auto")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks_from_env().local_rank)
    return device
