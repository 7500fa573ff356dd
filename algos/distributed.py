"""Data parallelism on ``torch.distributed``: ranks, prompt shards, DDP or FSDP2, gathered statistics.

A run launched by ``torchrun`` (or ``accelerate launch``) finds ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in its environment; :func:`init_distributed` joins the process group they describe
and a single process is simply world size 1. The trainer then:

- samples an iteration's prompts in ``world_size x sampling.chunks`` **pieces** of whole prompt
  groups; rank ``r`` samples pieces ``r c .. r c + c - 1``, each from its own generator, so ``W``
  ranks with ``c`` chunks sample exactly what one process with ``W c`` chunks samples;
- gathers every rank's tree structure and leaf rewards (:func:`gather_rows`, a few kB) so group
  statistics, stateful trackers and logged rewards are the global ones on every rank;
- shares the trained weights with DDP (replicated, gradients averaged) or FSDP2 ``fully_shard``
  (parameters, gradients and optimiser state sharded), see :func:`wrap_for_training`;
- writes checkpoints once, from rank 0, as full tensors, so any world size can resume them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from treegrpo.config import BACKENDS, PARALLEL_MODES
from treegrpo.devices import Ranks, local_device, ranks_from_env

__all__ = [
    "BACKENDS",
    "PARALLEL_MODES",
    "Ranks",
    "all_true",
    "barrier",
    "full_tensor",
    "gather_rows",
    "gradient_sync",
    "init_distributed",
    "is_distributed",
    "local_device",
    "mean_over_ranks",
    "optimizer_state_full",
    "optimizer_state_sharded",
    "ranks_from_env",
    "shard_like",
    "wrap_for_training",
]


def init_distributed(backend: str = "auto", device: torch.device | str = "cpu",
                     timeout_minutes: float = 30.0) -> Ranks:
    """Join the process group described by the environment, once; returns this process's ranks.

    ``backend="auto"`` is NCCL for CUDA devices and gloo on CPU. Without ``WORLD_SIZE > 1`` nothing
    is initialised and the run is one process.
    """
    if backend not in BACKENDS:
        raise ValueError(f"train.dist_backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    ranks = ranks_from_env()
    if not ranks.distributed or dist.is_initialized():
        return ranks
    device = torch.device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes),
                            device_id=device if backend == "nccl" else None)
    return ranks


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order (lengths may differ).

    The result is the same on every rank; a single process gets ``tensor`` back.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.empty_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in lengths]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on every rank (one all-reduce; ``flag`` itself in a single process)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: Mapping[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average each value over ranks (one all-reduce of the vector; keys must match on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    vector = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vector)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, vector.tolist())}


# ---------------------------------------------------------------------------------------------
# Sharing the trained weights.


def wrap_for_training(model: nn.Module, parallel: str, device: torch.device | str) -> nn.Module:
    """The module the loss should call so gradients are shared across ranks.

    ``ddp``: a ``DistributedDataParallel`` wrapper around ``model`` (rank 0's weights broadcast,
    gradients averaged in buckets during the backward pass); sampling keeps calling ``model``
    itself, which needs no communication. ``fsdp``: ``model`` is sharded in place with FSDP2's
    ``fully_shard``, every ``nn.ModuleList`` entry (the transformer blocks) its own unit; the
    model is returned, and every forward, sampling included, gathers parameters on all ranks.
    A single process gets ``model`` back untouched.
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"train.parallel: expected one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    if not is_distributed():
        return model
    device = torch.device(device)
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in _outermost_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _outermost_blocks(model: nn.Module) -> list[nn.Module]:
    """Entries of the outermost ``nn.ModuleList``s (transformer or UNet blocks) that hold trained
    parameters; lists nested inside a chosen block belong to it."""
    blocks: list[nn.Module] = []
    taken: set[int] = set()
    for module in model.modules():  # pre-order: outer lists come before the lists inside them
        if not isinstance(module, nn.ModuleList) or id(module) in taken:
            continue
        for block in module:
            if any(p.requires_grad for p in block.parameters()):
                blocks.append(block)
                taken.update(id(m) for m in block.modules())
    return blocks


@contextmanager
def gradient_sync(policy: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip (``enabled=False``) or allow the gradient communication of the next backward passes;
    accumulation steps skip it and the step that ends an accumulation performs it."""
    if not enabled and hasattr(policy, "no_sync"):  # DDP
        with policy.no_sync():
            yield
    elif not enabled and hasattr(policy, "set_requires_gradient_sync"):  # FSDP2
        policy.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            policy.set_requires_gradient_sync(True)
    else:  # syncing, or a single process: nothing to switch
        yield


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor behind an FSDP2 shard (a collective); other tensors as they are."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` laid out as ``like`` is: this rank's shard when ``like`` is an FSDP2 DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full


def optimizer_state_full(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser ``state_dict`` with every sharded tensor gathered whole (world-size independent)."""
    return {**state, "state": {i: {k: full_tensor(v) if isinstance(v, Tensor) else v for k, v in s.items()}
                               for i, s in state["state"].items()}}


def optimizer_state_sharded(state: dict[str, Any], params: list[Tensor]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_full` for this run's (possibly sharded) ``params``."""
    out = {}
    for i, s in state["state"].items():
        param = params[int(i)]
        out[i] = {k: shard_like(v, param) if isinstance(v, Tensor) and v.shape == param.shape else v
                  for k, v in s.items()}
    return {**state, "state": out}
