"""GPU-like numerics on a CPU: every denoiser's output depends, at rounding level, on its batch shape.

On a GPU, cuBLAS and cuDNN choose kernels by shape, so the same row computed in a batch of 8 and in
a batch of 3 differs in its last bits, and TF32 or bf16 make those bits ``1e-3`` or ``4e-3`` of the
value. A CPU whose kernels happen to be batch-invariant hides every test that assumes otherwise.
:func:`simulated_gpu_numerics` puts that behaviour back: while it is active, the output ``v`` of
every :class:`~treegrpo.envs.Denoiser` forward becomes ``v * (1 + relative * u)``, with ``u``
standard normal, drawn from a generator seeded by the output's shape. The same rows in the same
batch shape give the same numbers (as a GPU's deterministic kernels do); a different batch shape
gives different ones. It also declares that rounding (:func:`~treegrpo.envs.numerics.assume_rounding`),
as a GPU's TF32 or bf16 arithmetic would, so the on-policy statistics measure against it.

``TREEGRPO_GPU_NUMERICS`` (``tf32``, ``bf16``, ``off`` or a number) switches it on for the whole
test suite (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

from treegrpo.envs.models import Denoiser
from treegrpo.envs.numerics import UNIT_ROUNDOFF, assume_rounding

if TYPE_CHECKING:
    from treegrpo.problems import Problem

LEVELS: dict[str, float] = {"tf32": 1e-3, "bf16": 4e-3}
"""Relative rounding of each simulated arithmetic (TF32 and bf16 round at about ``1e-3`` and ``4e-3``)."""

ENVIRONMENT_VARIABLE = "TREEGRPO_GPU_NUMERICS"


def _level(relative: float | str) -> float:
    value = LEVELS.get(relative, None) if isinstance(relative, str) else float(relative)
    if value is None or not value > 0:
        raise ValueError(f"relative: expected one of {', '.join(LEVELS)} or a number > 0, got {relative!r}")
    return value


def shape_noise(shape: torch.Size, dtype: torch.dtype, device: torch.device, cache: dict) -> Tensor:
    """The fixed standard-normal pattern of one output shape (cached: the same shape, the same numbers)."""
    key = (tuple(shape), dtype, device)
    if key not in cache:
        seed = zlib.crc32(repr(tuple(shape)).encode())
        generator = torch.Generator().manual_seed(seed)
        cache[key] = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device, dtype)
        if len(cache) > 256:  # keep memory bounded over long test sessions
            cache.pop(next(iter(cache)))
    return cache[key]


@contextlib.contextmanager
def simulated_gpu_numerics(relative: float | str = "tf32") -> Iterator[float]:
    """Make every denoiser forward round like a GPU kernel chosen by batch shape, at ``relative``
    (``"tf32"`` 1e-3, ``"bf16"`` 4e-3, or a number); yields the relative size.

    Applies to every :class:`~treegrpo.envs.Denoiser` called while active (a guided denoiser and the
    model inside it each round, as two kernels would), without wrapping or copying any model.
    """
    size = _level(relative)
    cache: dict = {}

    def perturb(module: nn.Module, args: tuple, output: object) -> object:
        if not isinstance(module, Denoiser) or not isinstance(output, Tensor) or not output.is_floating_point():
            return output
        return output * (1 + size * shape_noise(output.shape, output.dtype, output.device, cache))

    handle = register_module_forward_hook(perturb)
    try:
        with assume_rounding(max(size, UNIT_ROUNDOFF["fp32"])):
            yield size
    finally:
        handle.remove()


def sd35_latent_problem(prompts: int = 2, num_steps: int = 10, seed: int = 0) -> Problem:
    """A :class:`~treegrpo.problems.Problem` at SD3.5's latent size (16x64x64, 65,536 dimensions a
    log-prob averages over) around a one-layer random ``SD3Transformer2DModel``: what the on-policy
    statistics see at real size, on a CPU. The reward is a cheap brightness target."""
    from diffusers import SD3Transformer2DModel
    from tensordict import TensorDict

    from treegrpo.envs import FlowSDE, FlowTimesteps, SD3Denoiser
    from treegrpo.problems import Problem

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16,
        pos_embed_max_size=64)
    generator = torch.Generator().manual_seed(seed + 1)
    table = TensorDict({"encoder_hidden_states": torch.randn(prompts, 8, 32, generator=generator),
                        "pooled_projections": torch.randn(prompts, 16, generator=generator)}, batch_size=[prompts])

    def prompt_table(iteration: int, generator: torch.Generator):
        return table, torch.arange(prompts)

    def reward(final: Tensor, prompt_ids: Tensor) -> Tensor:
        return -(final.float().mean(dim=(1, 2, 3)) - 0.1).square()

    return Problem(model=SD3Denoiser(transformer), transition=FlowSDE(FlowTimesteps.named("scheduler", num_steps, shift=3.0)),
                   latent_shape=(16, 64, 64), prompts=prompt_table, reward=reward, reward_names=("brightness",),
                   device="cpu")


def assert_close_up_to_rounding(actual: Tensor, expected: Tensor, *, tolerance: float = 1e-2) -> None:
    """Assert that two results computed in different batch shapes agree up to kernel rounding.

    On a GPU (or under :func:`simulated_gpu_numerics`) a row computed in another batch shape rounds
    differently, ``1e-3`` relative per TF32 forward and more after several steps; a bookkeeping bug
    (rows mixed up, a wrong step or prompt) moves results by order 1. ``tolerance`` (relative and
    absolute) sits between the two. Results from the same shapes should be compared exactly."""
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


def numerics_from_environment(default: str = "off") -> float | str | None:
    """The level ``TREEGRPO_GPU_NUMERICS`` asks for (``None`` for ``off``); a bad value is one line."""
    text = os.environ.get(ENVIRONMENT_VARIABLE, default).strip().lower()
    if text in ("off", "0", "", "none"):
        return None
    try:
        _level(text if text in LEVELS else float(text))
    except ValueError:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: expected off, {', '.join(LEVELS)} or a number > 0, "
                         f"got {text!r}") from None
    return text if text in LEVELS else float(text)


__all__ = ["ENVIRONMENT_VARIABLE", "LEVELS", "assert_close_up_to_rounding", "numerics_from_environment", "sd35_latent_problem", "shape_noise",
           "simulated_gpu_numerics"]
