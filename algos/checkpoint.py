"""Checkpoints that are never half-written and resume training exactly.

A checkpoint is a directory ``<run>/checkpoints/iter-XXXXXX/`` with ``model.safetensors`` (the
trained weights: all parameters, or only the LoRA adapter) and ``state.pt`` (optimiser, LR
schedule, EMA, RNG states, window and tracker state, iteration, config). It is written into a
temporary sibling directory and renamed into place, then ``latest`` is replaced atomically, so a
crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

MODEL_FILE, STATE_FILE, LATEST = "model.safetensors", "state.pt", "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or incomplete."""


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG a training step touches: Python, NumPy, torch (CPU and CUDA) and named generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def checkpoint_dir(run_dir: str | Path, iteration: int) -> Path:
    """Where checkpoint ``iteration`` of a run lives: ``<run>/checkpoints/iter-XXXXXX``."""
    return Path(run_dir) / "checkpoints" / f"iter-{iteration:06d}"


def save_checkpoint(
    run_dir: str | Path, iteration: int, model_state: dict[str, Tensor], state: dict[str, Any], keep: int = 3
) -> Path:
    """Write checkpoint ``iteration`` atomically and keep the newest ``keep``; returns its directory."""
    final = checkpoint_dir(run_dir, iteration)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        tensors = {name: t.detach().contiguous().cpu() for name, t in model_state.items()}
        save_file(tensors, str(staging / MODEL_FILE))
        torch.save(state, staging / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _atomic_write_text(root / LATEST, final.name)
    for old in sorted(p for p in root.glob("iter-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``latest`` points to, or ``None`` if the run has no checkpoint yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    return pointer.parent / pointer.read_text().strip()


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(model_state, state)`` from a checkpoint directory, naming any missing file."""
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint: {path / name} is missing; expected a directory written by save_checkpoint")
    return load_file(str(path / MODEL_FILE)), torch.load(path / STATE_FILE, weights_only=False)
