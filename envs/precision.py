"""One numerical policy: the precision every forward that produces or re-scores a log-prob runs in.

An importance ratio compares the log-prob a child was sampled with to the log-prob the loss gives
it. If sampling runs the model in float32 and the loss under bf16 autocast, the two are different
numerical policies and the ratio is off 1 before any update (on the digits model, std 3.5e-4 with
82% of edges clipped at clip range 1e-4). So sampling, the on-policy check and the loss all enter
:func:`model_precision` with the same setting; the transition's step math stays float32 inside it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16")
"""The model precisions: ``fp32`` (no autocast) and ``bf16`` (``torch.autocast`` to bfloat16)."""


def model_precision(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The context every policy forward of a run enters: nothing for ``fp32``, bf16 autocast on
    ``device``'s type for ``bf16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
