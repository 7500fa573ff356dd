"""The optimisation half: each optimiser step's gradient is the mean over the minibatches it accumulated."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from treegrpo.algos.update import Optimisation, optimise
from treegrpo.config import OptimConfig


class _LinearLoss(nn.Module):
    """``loss_objective = w . mean_rows x``: its gradient in ``w`` is the minibatch's mean ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, minibatch: TensorDict) -> TensorDict:
        return TensorDict({"loss_objective": (minibatch["x"] @ self.w).mean()}, batch_size=[])


@pytest.mark.parametrize(("minibatches", "accumulation"), [(5, 2), (7, 3), (4, 4), (3, 5)])
def test_each_step_averages_the_minibatches_it_accumulated(minibatches, accumulation) -> None:
    loss = _LinearLoss()
    rows = torch.arange(2 * minibatches)
    x = torch.randn(rows.numel(), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = TensorDict({"x": x, "step": torch.zeros(rows.numel(), dtype=torch.long),
                        "mask": torch.ones(rows.numel(), 1, dtype=torch.bool)}, batch_size=[rows.numel()])
    chunks = list(rows.split(2))
    optimisation = Optimisation(dict(loss.named_parameters()), OptimConfig(lr=1e-3))
    seen: list[torch.Tensor] = []

    def record(guard) -> None:  # the gradient each optimiser step would take
        seen.append(loss.w.grad.clone())
        optimisation.optimizer.step()  # w moves, but a linear loss's gradient does not depend on it
        optimisation.optimizer.zero_grad(set_to_none=True)

    optimisation.apply = record
    _, counters = optimise(loss, loss, batch, chunks, optimisation, accumulation=accumulation,
                           precision=contextlib.nullcontext, guard=lambda value, name: None)
    # by hand: step g's gradient is the mean over its minibatches of each minibatch's mean x
    groups = [chunks[i:i + accumulation] for i in range(0, minibatches, accumulation)]
    want = [torch.stack([x[c].mean(0) for c in group]).mean(0) for group in groups]
    assert counters["optimizer_steps"] == len(groups) == len(seen)
    for got, expected in zip(seen, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
