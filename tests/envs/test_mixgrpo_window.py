"""MixGRPOWindow against a plain-Python transcription of MixGRPO's sliding-window bookkeeping."""

from __future__ import annotations

import pytest

from treegrpo.envs.windows import MixGRPOWindow


class PeerCursor:
    """MixGRPO's ``GRPOTrainingStates`` for the progressive strategy (``fastvideo/utils/grpo_states.py``),
    rewritten: the same counters, the same comparisons, the same order of updates."""

    def __init__(self, T: int, window: int, iters: int, stride: int, roll_back: bool, init: int = 0) -> None:
        self.end = T - 2  # train_grpo_flux.py builds it with max_timesteps = sampling_steps - 2
        self.window, self.iters, self.stride, self.roll_back = window, iters, stride, roll_back
        self.init = self.position = init
        self.count = 0

    def current(self) -> tuple[int, ...]:
        return tuple(range(self.position, min(self.position + self.window, self.end)))

    def advance(self) -> None:
        self.count += 1
        if self.count >= self.iters:
            self.count = 0
            self.position += self.stride
        if self.position > self.end:
            if self.roll_back:
                self.position, self.count = self.init, 0
            else:
                self.position = self.end


def peer_windows(iterations: int, **cursor: int) -> list[tuple[int, ...]]:
    """The training loop's order: read the window, then advance (``train_grpo_flux.py:946-947``)."""
    state = PeerCursor(**cursor)
    out = []
    for _ in range(iterations):
        out.append(state.current())
        state.advance()
    return out


def ours(T: int, window: int, iters: int, stride: int, roll_back: bool, init: int = 0) -> MixGRPOWindow:
    # MixGRPO keeps T - 1 steps' log-probs: the window's horizon
    return MixGRPOWindow(T - 1, window, iters, start=init, shift=stride, rollback=roll_back)


SHIPPED = {"T": 25, "window": 4, "iters": 25, "stride": 1, "roll_back": True}


@pytest.mark.parametrize(
    "cursor",
    [
        SHIPPED,
        {"T": 16, "window": 4, "iters": 7, "stride": 1, "roll_back": True},
        {"T": 10, "window": 3, "iters": 3, "stride": 2, "roll_back": True, "init": 1},
        {"T": 12, "window": 5, "iters": 4, "stride": 3, "roll_back": True},
        {"T": 12, "window": 4, "iters": 5, "stride": 1, "roll_back": False},
        {"T": 25, "window": 4, "iters": 20, "stride": 0, "roll_back": True},  # the Flash* script: never moves
    ],
)
def test_every_iteration_matches_the_transcription(cursor):
    iterations = 1300
    window = ours(**cursor)
    assert [window.steps(i) for i in range(iterations)] == peer_windows(iterations, **cursor)


def test_the_shipped_script_at_the_end_of_a_sweep():
    window = ours(**SHIPPED)
    assert window.last == 23
    assert [window.steps(i) for i in (500, 525, 550, 575, 599, 600)] == [
        (20, 21, 22), (21, 22), (22,), (), (), (0, 1, 2, 3)
    ]
    assert window.start(575) == 23  # an empty window's start is ``last``


def test_the_shipped_window_is_empty_25_of_every_600_iterations_and_never_reaches_23():
    window = ours(**SHIPPED)
    windows = [window.steps(i) for i in range(1800)]
    for cycle in range(3):
        block = windows[600 * cycle : 600 * (cycle + 1)]
        assert [i for i, steps in enumerate(block) if not steps] == list(range(575, 600))
    assert {step for steps in windows for step in steps} == set(range(23))


def test_without_rollback_the_window_stays_empty_after_one_sweep():
    window = ours(T=25, window=4, iters=25, stride=1, roll_back=False)
    assert all(window.steps(i) == () for i in range(575, 5000, 37))


def test_random_strategy_starts_at_start_then_draws_full_windows_reproducibly():
    window = MixGRPOWindow(24, 4, strategy="random", start=5, seed=3)
    assert window.steps(0) == (5, 6, 7, 8)
    starts = [window.start(e) for e in range(1, 2000)]
    assert min(starts) == 0 and max(starts) == 23 - 4  # MixGRPO: integers(0, max_timesteps - group_size + 1)
    assert all(len(window.steps(e)) == 4 for e in range(1, 200))
    again = MixGRPOWindow(24, 4, strategy="random", start=5, seed=3)
    assert [again.start(e) for e in reversed(range(1, 2000))][::-1] == starts
    assert starts != [MixGRPOWindow(24, 4, strategy="random", seed=4).start(e) for e in range(1, 2000)]
    assert window.state_dict() == {}


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: MixGRPOWindow(24, 0), "depth"),
        (lambda: MixGRPOWindow(24, 25), "depth"),
        (lambda: MixGRPOWindow(24, 4, 0), "every"),
        (lambda: MixGRPOWindow(24, 4, last=25), "last"),
        (lambda: MixGRPOWindow(24, 4, start=23), "start"),
        (lambda: MixGRPOWindow(24, 4, shift=-1), "shift"),
        (lambda: MixGRPOWindow(24, 4, rollback="yes"), "rollback"),
        (lambda: MixGRPOWindow(24, 4, strategy="decay"), "strategy"),
        (lambda: MixGRPOWindow(24, 24, strategy="random"), "depth"),
        (lambda: MixGRPOWindow(1, 1), "num_steps"),
    ],
)
def test_bad_arguments_raise_one_line_errors(make, name):
    with pytest.raises(ValueError, match=f"^{name}: ") as info:
        make()
    assert "\n" not in str(info.value)
