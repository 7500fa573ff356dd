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

from treegrpo.envs._checks import ArgumentError, check_float, check_int


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


class MixGRPOWindow(WindowSchedule):
    """MixGRPO's sliding window as its FLUX script runs it: it shrinks at the end of a sweep, may be
    empty, and then restarts.

    MixGRPO (``fastvideo/utils/grpo_states.py:87-99,148``, ``fastvideo/train_grpo_flux.py:916-947``)
    keeps a cursor ``c``: iteration ``i`` trains steps ``range(c, min(c + depth, last))``, and
    after ``every`` iterations the cursor moves by ``shift``. Once it passes ``last`` it returns to
    ``start`` (``rollback``) or stays at ``last`` for good. So at a position ``c > last - depth`` the
    window holds fewer than ``depth`` steps, and at ``c = last`` none: that iteration samples every
    step as an ODE step and trains nothing. The shipped script (``sampling_steps=25``,
    ``group_size=4``, ``iters_per_group=25``, ``--prog_overlap --prog_overlap_step 1 --roll_back``)
    gives a 600-iteration cycle whose last 25 iterations have an empty window, and steps 23 and 24
    are never trained.

    ``num_steps`` counts the steps a window may cover. MixGRPO keeps the log-probs of its first
    ``T - 1`` steps only (``train_grpo_flux.py:393-400``), so ``num_steps = T - 1``, and passes
    ``max_timesteps = T - 2`` as the exclusive end (``train_grpo_flux.py:919``), hence the default
    ``last = num_steps - 1``: the last kept step is never in a window either.

    ``strategy="random"`` is MixGRPO's ``sample_strategy="random"``: the first iteration uses
    ``start`` (its initial cursor), every later one a full window whose first step is uniform on
    ``[0, last - depth]``, drawn from ``(seed, epoch)`` (MixGRPO draws from fresh OS entropy).
    Its ``decay`` and ``exp_decay`` strategies, which vary ``every`` with the cursor, are not
    reproduced; no shipped script uses them.

    :meth:`steps` may return fewer than ``depth`` steps, or none; :meth:`start` returns the cursor,
    which is ``last`` when the window is empty. The schedule is a function of the epoch (the
    training iteration), so it carries no state.
    """

    def __init__(
        self,
        num_steps: int,
        depth: int = 4,
        every: int = 25,
        *,
        last: int | None = None,
        start: int = 0,
        shift: int = 1,
        rollback: bool = True,
        strategy: str = "progressive",
        seed: int = 0,
    ) -> None:
        super().__init__(num_steps, depth)
        check_int("depth", depth, minimum=1, maximum=num_steps)
        if num_steps < 2 and last is None:
            raise ArgumentError(f"num_steps: expected an int >= 2 when last is not given (last = num_steps - 1), got "
                             f"{num_steps}")
        self.last = check_int("last", num_steps - 1 if last is None else last, minimum=1, maximum=num_steps)
        self.first = check_int("start", start, minimum=0, maximum=self.last - 1)
        self.every = check_int("every", every, minimum=1)
        self.shift = check_int("shift", shift, minimum=0)
        self.seed = check_int("seed", seed, minimum=0)
        if not isinstance(rollback, bool):
            raise ArgumentError(f"rollback: expected True or False, got {rollback!r}")
        self.rollback = rollback
        if strategy not in ("progressive", "random"):
            raise ArgumentError(f"strategy: expected 'progressive' or 'random', got {strategy!r} (MixGRPO's decay and "
                             "exp_decay are not reproduced)")
        if strategy == "random" and depth > self.last:
            raise ArgumentError(f"depth: a random window of {depth} steps must end by last={self.last}; use depth <= "
                             f"{self.last}")
        self.strategy = strategy

    @property
    def positions(self) -> int | None:
        """Cursor positions in one sweep, ``(last - start) // shift + 1``; ``None`` when ``shift = 0``."""
        return None if self.shift == 0 else (self.last - self.first) // self.shift + 1

    def start(self, epoch: int) -> int:
        epoch = check_int("epoch", epoch, minimum=0)
        if self.strategy == "random":
            if epoch == 0:
                return self.first
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            return int(torch.randint(0, self.last - self.depth + 1, (1,), generator=generator))
        moves = epoch // self.every
        if self.positions is None:
            return self.first
        if self.rollback:
            return self.first + self.shift * (moves % self.positions)
        return min(self.first + self.shift * moves, self.last)

    def steps(self, epoch: int) -> tuple[int, ...]:
        """``range(c, min(c + depth, last))`` at the cursor ``c``: ``depth`` steps or fewer, possibly none."""
        first = self.start(epoch)
        return tuple(range(first, min(first + self.depth, self.last)))


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
