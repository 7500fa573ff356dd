"""Hypothesis profiles: every property runs 200 examples; CI (CI=true) also derandomises."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    derandomize=True,
    database=None,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


# GPU-like numerics for every test (treegrpo.testing.numerics): each denoiser forward rounds by its
# batch shape, as cuBLAS kernels and TF32 do, so no test passes only because this machine's kernels
# happen to be batch-invariant. TREEGRPO_GPU_NUMERICS=off|tf32|bf16|<number> (default tf32); a test
# that compares against an independent reference at the same shapes opts out with
# @pytest.mark.exact_numerics.
import pytest

from treeadv.registry import registrations_undone
from treegrpo.testing.numerics import numerics_from_environment, simulated_gpu_numerics

_NUMERICS = numerics_from_environment(default="tf32")


@pytest.fixture(autouse=True)
def gpu_like_numerics(request):
    if _NUMERICS is None or request.node.get_closest_marker("exact_numerics"):
        yield None
        return
    with simulated_gpu_numerics(_NUMERICS) as size:
        yield size


@pytest.fixture(autouse=True)
def registrations_stay_in_their_test():
    """A plug-in a test registers (a loss, a reward, a kind) is unregistered after it, so no test sees
    another's: the registries hold the shipped entries and those of wider-scoped fixtures."""
    with registrations_undone():
        yield


def pytest_report_header(config):
    return f"denoiser numerics: {'as computed' if _NUMERICS is None else f'simulated GPU rounding ({_NUMERICS})'}"
