"""Window schedules: the truncated-geometric law, reproducibility, shifting, the adaptive hook."""

from __future__ import annotations

import pytest
import torch

from treegrpo.envs import (
    AdaptiveGeometricWindow,
    FixedWindow,
    GeometricWindow,
    ShiftingWindow,
    truncated_geometric_probs,
)


@pytest.mark.parametrize("alpha", [0.3, 0.7, 1.0])
def test_truncated_geometric_matches_the_closed_form(alpha):
    n = 8
    probs = truncated_geometric_probs(alpha, n)
    if alpha == 1.0:
        expected = torch.full((n,), 1 / n, dtype=torch.float64)
    else:
        i = torch.arange(n, dtype=torch.float64)
        expected = alpha**i * (1 - alpha) / (1 - alpha**n)
    torch.testing.assert_close(probs, expected)


def test_geometric_window_frequencies_follow_the_law():
    window = GeometricWindow(num_steps=10, depth=3, alpha=0.6, seed=7)
    draws = torch.tensor([window.start(epoch) for epoch in range(4000)])
    freq = torch.bincount(draws, minlength=window.num_starts).double() / draws.numel()
    # 4000 draws: binomial std <= 0.008 per cell
    torch.testing.assert_close(freq, window.probabilities(), atol=0.03, rtol=0)
    assert draws.max() <= 10 - 3


def test_geometric_window_is_reproducible_per_epoch_and_seed():
    a = GeometricWindow(10, 3, 0.5, seed=1)
    b = GeometricWindow(10, 3, 0.5, seed=1)
    assert [a.start(e) for e in range(50)] == [b.start(e) for e in reversed(range(50))][::-1]
    assert [a.start(e) for e in range(50)] != [GeometricWindow(10, 3, 0.5, seed=2).start(e) for e in range(50)]


def test_fixed_and_shifting_windows():
    assert FixedWindow(10, 3, start=4).steps(99) == (4, 5, 6)
    shifting = ShiftingWindow(10, 3, start=0, shift=2, every=3)
    assert [shifting.start(e) for e in range(12)] == [0, 0, 0, 2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert ShiftingWindow(10, 3, start=6, shift=1).start(2) == 0  # wraps over the 8 legal starts


def test_adaptive_window_moves_alpha_on_stalls_and_resumes_exactly():
    window = AdaptiveGeometricWindow(10, 3, alpha=0.5, seed=0)
    window.update(mean_reward=1.0)
    assert window.alpha == 0.5  # first observation sets the best
    window.update(mean_reward=1.2)
    assert window.alpha == 0.5  # improvement keeps alpha
    window.update(mean_reward=1.1)
    assert window.alpha == pytest.approx(0.55)
    restored = AdaptiveGeometricWindow(10, 3, alpha=0.5, seed=0)
    restored.load_state_dict(window.state_dict())
    window.update(mean_reward=1.0)
    restored.update(mean_reward=1.0)
    assert restored.alpha == window.alpha and restored.start(5) == window.start(5)


def test_custom_alpha_rule():
    window = AdaptiveGeometricWindow(10, 2, alpha=0.9, rule=lambda alpha, stats, memory: stats["target"])
    window.update(target=0.25)
    assert window.alpha == 0.25
    with pytest.raises(ValueError, match="alpha"):
        window.update(target=1.5)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: GeometricWindow(10, 3, alpha=0.0), "alpha"),
        (lambda: GeometricWindow(10, 3, alpha=1.2), "alpha"),
        (lambda: FixedWindow(10, 11), "depth"),
        (lambda: FixedWindow(10, 3, start=8), "window_start"),
        (lambda: ShiftingWindow(10, 3, every=0), "every"),
        (lambda: FixedWindow(0, 0), "num_steps"),
    ],
)
def test_bad_window_arguments_raise_one_line_errors(make, name):
    with pytest.raises(ValueError, match=f"^{name}: ") as info:
        make()
    assert "\n" not in str(info.value)
