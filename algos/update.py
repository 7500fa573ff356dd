"""The optimisation half of an iteration: AdamW with warmup, EMA, and the clipped updates over minibatches.

:class:`Optimisation` owns the optimiser, its schedule and the EMA of the trained parameters;
:func:`optimise` runs a loss over an iteration's minibatches of parents (with gradient
accumulation) and returns the averaged loss terms, per-step ratio statistics and work counters.
Non-finite values are handed to a ``guard`` (the trainer's, which saves the last good state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from tensordict import TensorDictBase
from torch import Tensor, nn

from treegrpo.algos.batch import count_edges
from treegrpo.algos.distributed import full_tensor, gradient_sync, shard_like
from treegrpo.algos.interfaces import EdgeLoss
from treegrpo.algos.losses import total_loss
from treegrpo.config import OptimConfig
from treegrpo.envs import ParentBatch

Guard = Callable[[Tensor, str], None]
BeforeUpdate = Callable[[list[tuple[ParentBatch, TensorDictBase]]], None]
"""Called once with the ``(minibatch, loss terms)`` pairs scored before the first optimiser step."""


class EMA:
    """Exponential moving average of the trained parameters (kept on their device)."""

    def __init__(self, named_params: dict[str, nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.params = named_params
        self.shadow = {name: p.detach().clone() for name, p in named_params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        """Whole tensors (gathered from FSDP shards), so any world size can load them."""
        return {name: full_tensor(t).clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in state.items():
            self.shadow[name].copy_(shard_like(t, self.shadow[name]))


class Optimisation:
    """AdamW over ``named_params`` with linear warmup, gradient-norm clipping and an optional EMA.

    :attr:`stepped` says whether an optimiser step has changed the weights since :meth:`begin`
    (the non-finite guard saves the state from before an iteration only when none has).
    """

    def __init__(self, named_params: dict[str, nn.Parameter], optim: OptimConfig, ema_decay: float = 0.0) -> None:
        if not named_params:
            raise ValueError("model: has no parameters with requires_grad=True to train")
        self.named_params, self.grad_clip = named_params, optim.grad_clip
        self.optimizer = torch.optim.AdamW(named_params.values(), lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                           eps=optim.eps, weight_decay=optim.weight_decay)
        warmup = optim.warmup_iterations
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: min(1.0, (it + 1) / warmup) if warmup else 1.0)
        self.ema = EMA(named_params, ema_decay) if ema_decay > 0 else None
        self.stepped = False

    def begin(self) -> None:
        """Start an iteration: no step has changed the weights yet."""
        self.stepped = False

    def set_options(self, optim: OptimConfig) -> None:
        """Set the configured lr, betas, eps and weight decay on every parameter group (after a load)."""
        self.scheduler.base_lrs = [optim.lr for _ in self.optimizer.param_groups]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(lr=optim.lr * factor, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                         weight_decay=optim.weight_decay)

    def apply(self, guard: Guard) -> None:
        """Clip the gradient norm, step, and check the new weights (one device sync each)."""
        params = list(self.named_params.values())
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        guard(full_tensor(norm), "gradient norm")
        self.optimizer.step()
        self.stepped = True
        self.optimizer.zero_grad(set_to_none=True)
        guard(torch.stack([torch.isfinite(p).all() for p in params]).all(), "weights after the optimiser step")
        if self.ema:
            self.ema.update()


def optimise(loss: EdgeLoss | nn.Module, policy: nn.Module, batch: ParentBatch | TensorDictBase, minibatches: Sequence[Tensor],
             optimisation: Optimisation, *, accumulation: int, precision: Callable[[], AbstractContextManager],
             guard: Guard, before_update: BeforeUpdate | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """One pass of ``loss`` over ``minibatches`` (row indices into ``batch``; an
    :class:`~treegrpo.algos.EdgeLoss` reads each under its own keys, :meth:`~treegrpo.algos.EdgeLoss.loss_input`;
    a loss of another kind gets the rows as they are), an optimiser step every
    ``accumulation`` minibatches (the all-reduce of ``policy``'s gradients only then) and after the
    last; each step's gradient is the mean of its minibatches' loss gradients, so a last, partial
    group of ``n < accumulation`` minibatches is divided by ``n``, not ``accumulation``.
    ``before_update`` sees the minibatches scored with the sampling weights, right before the first
    step changes them: their ratios are the run's on-policy statistics, at no extra forward.

    Returns ``(terms, counters)``: the scalar loss terms averaged over minibatches with their sum
    ``loss`` and ``ratio_mean/step_s``, ``ratio_std/step_s`` per SDE step; and the work done
    (``edges_trained``, ``forward_rows``, ``backward_rows``, ``optimizer_steps``).
    """
    sums: dict[str, float] = {}
    per_step: dict[int, list[Tensor]] = {}
    counters = dict.fromkeys(("edges_trained", "forward_rows", "backward_rows", "optimizer_steps"), 0.0)
    optimisation.optimizer.zero_grad(set_to_none=True)
    unchanged: list[tuple[ParentBatch, TensorDictBase]] = []  # scored before any step
    for micro, rows in enumerate(minibatches, start=1):
        minibatch = batch[rows]
        steps_optimiser = micro % accumulation == 0 or micro == len(minibatches)
        # the step's gradient is the mean over the minibatches it accumulates: fewer in a last, partial group
        group_start = (micro - 1) // accumulation * accumulation
        accumulated = min(accumulation, len(minibatches) - group_start)
        with gradient_sync(policy, steps_optimiser):  # accumulation steps skip the all-reduce
            with precision():
                terms = loss(minibatch)  # an EdgeLoss reads a ParentBatch under its own keys (loss_input)
            total = total_loss(terms)
            guard(total.detach(), "loss")
            (total / accumulated).backward()
        rows_count = float(minibatch.batch_size[0])
        counters["forward_rows"] += rows_count
        counters["backward_rows"] += rows_count
        counters["edges_trained"] += float(count_edges(minibatch))
        for key, value in terms.items():
            if value.dim() == 0:
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        log_ratio = terms.get("log_ratio", None)  # [M, K], for per-timestep ratio statistics
        steps, mask = minibatch["step"], minibatch["mask"]  # the batch's own fields, never the loss's (renamed) keys
        for step in torch.unique(steps).tolist() if log_ratio is not None else ():
            rows_at = steps == step
            per_step.setdefault(step, []).append(log_ratio[rows_at][mask[rows_at]])
        if before_update is not None and counters["optimizer_steps"] == 0:
            unchanged.append((minibatch, terms))
        if steps_optimiser:
            if before_update is not None and counters["optimizer_steps"] == 0:
                before_update(unchanged)
            optimisation.apply(guard)
            counters["optimizer_steps"] += 1
    if minibatches:  # an iteration with nothing to train (MixGRPO's empty window) leaves the schedule where it is
        optimisation.scheduler.step()
    out = {key: value / max(len(minibatches), 1) for key, value in sums.items()}
    out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
    for step, chunks in sorted(per_step.items()):
        ratio = torch.exp(torch.cat(chunks).double())
        out[f"ratio_mean/step_{step}"] = float(ratio.mean())
        out[f"ratio_std/step_{step}"] = float(ratio.std(unbiased=False)) if ratio.numel() > 1 else 0.0
    return out, counters
