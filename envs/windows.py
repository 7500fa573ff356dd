"""Where the SDE window sits: which ``d`` consecutive steps of ``T`` branch, epoch by epoch.

Every schedule answers :meth:`WindowSchedule.start` for an epoch. Random schedules derive their
generator from ``(seed, epoch)``, so the window of any epoch is reproducible without replaying
earlier epochs and a resumed run draws the same windows. Adaptive schedules change only through
:meth:`WindowSchedule.update` and carry their state in :meth:`state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from treegrpo.envs._checks import check_float, check_int


class WindowSchedule:
    """Base class: a window of ``depth`` consecutive SDE steps inside ``num_steps`` steps."""

    def __init__(self, num_steps: int, depth: int) -> None:
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.depth = check_int("depth", depth, minimum=0, maximum=num_steps)

    @property
    def num_starts(self) -> int:
        """Number of legal window starts, ``T - d + 1``."""
        return self.num_steps - self.depth + 1

    def start(self, epoch: int) -> int:  # pragma: no cover - abstract
        """The first SDE step of ``epoch``'s window."""
        raise NotImplementedError

    def steps(self, epoch: int) -> tuple[int, ...]:
        """The window's step indices for ``epoch``."""
        first = self.start(epoch)
        return tuple(range(first, first + self.depth))

    def update(self, **stats: float) -> None:
        """Hook for adaptive schedules (e.g. ``mean_reward=...``); fixed schedules ignore it."""

    def state_dict(self) -> dict[str, Any]:
        """State that changes during training (empty for stateless schedules)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def check_start(self, start: int) -> int:
        """Validate an explicit window start against the horizon."""
        return check_int("window_start", start, minimum=0, maximum=self.num_steps - self.depth)


class FixedWindow(WindowSchedule):
    """The same window every epoch."""

    def __init__(self, num_steps: int, depth: int, start: int = 0) -> None:
        super().__init__(num_steps, depth)
        self.first = self.check_start(start)

    def start(self, epoch: int) -> int:
        return self.first


def truncated_geometric_probs(alpha: float, num_starts: int) -> Tensor:
    """``P(s = i) = alpha^i (1 - alpha) / (1 - alpha^n)`` on ``i < n`` (uniform at ``alpha = 1``), float64."""
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
    weights = torch.full((num_starts,), alpha, dtype=torch.float64) ** torch.arange(num_starts, dtype=torch.float64)
    return weights / weights.sum()


class GeometricWindow(WindowSchedule):
    """Window start drawn each epoch from a truncated geometric law with parameter ``alpha``.

    Small ``alpha`` favours early (noisy) steps; ``alpha = 1`` is uniform over all starts.
    """

    def __init__(self, num_steps: int, depth: int, alpha: float, seed: int = 0) -> None:
        super().__init__(num_steps, depth)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.seed = check_int("seed", seed, minimum=0)

    def probabilities(self) -> Tensor:
        """``[T - d + 1]`` probabilities of each start under the current ``alpha``."""
        return truncated_geometric_probs(self.alpha, self.num_starts)

    def start(self, epoch: int) -> int:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + check_int("epoch", epoch, minimum=0))
        return int(torch.multinomial(self.probabilities(), 1, generator=generator))

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha = check_float("alpha", state["alpha"], low=0.0, high=1.0, low_open=True)


class ShiftingWindow(WindowSchedule):
    """A window that moves by ``shift`` steps every ``every`` epochs, wrapping at the horizon.

    TreeGRPO's official ``tree.s`` / ``tree.tou`` knobs and MixGRPO's sliding window.
    """

    def __init__(self, num_steps: int, depth: int, start: int = 0, shift: int = 1, every: int = 1) -> None:
        super().__init__(num_steps, depth)
        self.first = self.check_start(start)
        self.shift = check_int("shift", shift, minimum=0)
        self.every = check_int("every", every, minimum=1)

    def start(self, epoch: int) -> int:
        moves = check_int("epoch", epoch, minimum=0) // self.every
        return (self.first + self.shift * moves) % self.num_starts


AlphaRule = Callable[[float, Mapping[str, float], dict[str, Any]], float]


def reward_progress_rule(step: float = 0.05, min_delta: float = 0.0) -> AlphaRule:
    """Default adaptive rule: when the mean reward stops improving, raise ``alpha`` by ``step``.

    Raising ``alpha`` spreads the window towards later steps once the early steps stop paying off;
    an improvement keeps ``alpha``. The rule's memory (best reward so far) lives in ``memory``.
    """

    def rule(alpha: float, stats: Mapping[str, float], memory: dict[str, Any]) -> float:
        reward = float(stats["mean_reward"])
        best = memory.get("best")
        memory["best"] = reward if best is None else max(best, reward)
        if best is not None and reward <= best + min_delta:
            return min(1.0, alpha + step)
        return alpha

    return rule


class AdaptiveGeometricWindow(GeometricWindow):
    """A geometric window whose ``alpha`` follows training through ``rule`` at each :meth:`update`."""

    def __init__(
        self, num_steps: int, depth: int, alpha: float, seed: int = 0, rule: AlphaRule | None = None
    ) -> None:
        super().__init__(num_steps, depth, alpha, seed)
        self.rule = rule or reward_progress_rule()
        self.memory: dict[str, Any] = {}

    def update(self, **stats: float) -> None:
        alpha = self.rule(self.alpha, stats, self.memory)
        self.alpha = check_float("alpha (from rule)", alpha, low=0.0, high=1.0, low_open=True)

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "memory": dict(self.memory)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory = dict(state.get("memory", {}))
