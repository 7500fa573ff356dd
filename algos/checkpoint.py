"""Checkpoints that hold only data, are never half-written, and resume training exactly.

A checkpoint is a directory ``<run>/checkpoints/iter-XXXXXX/`` with

- ``model.safetensors``: the trained weights (all parameters, or only the LoRA adapter);
- ``state.safetensors``: every tensor of the training state (optimiser moments, EMA, RNG states);
- ``state.json``: the rest of it (iteration, LR schedule, window and tracker state, history, config),
  with each tensor replaced by a reference into ``state.safetensors``;
- ``checksums.json``: the sha256 of each of those files, checked before anything is read.

Nothing in it is a pickle, so loading a checkpoint someone handed you cannot run code: tensors come
from safetensors, the rest from JSON (:func:`encode_state`). It is written into a hidden staging
sibling, every file and the folder fsynced, then renamed into place, and ``latest`` is replaced
atomically, so a crash at any moment leaves the previous checkpoint intact. A checkpoint is never
written over an existing one, and never with a non-finite tensor in it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from treegrpo.algos.state_schema import state_depth_problem, training_state_problem
from treegrpo.config import Config, default
from treegrpo.errors import TreegrpoError
from treegrpo.formats import FileFormatError, check_safetensors

MODEL_FILE, STATE_TENSORS, STATE_JSON, CHECKSUMS, LATEST = (
    "model.safetensors", "state.safetensors", "state.json", "checksums.json", "latest")
LEGACY_STATE = "state.pt"  # the pickled state of treegrpo 0.1 checkpoints, never loaded
CHECKPOINT_NAME = re.compile(r"iter-(\d{6})")
FORMAT = 2


class CheckpointError(TreegrpoError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or cannot be written; the message is one line."""


# ---------------------------------------------------------------------------------------------- the resume policy

MAY_CHANGE_ON_RESUME: frozenset[str] = frozenset({
    *(f"train.{name}" for name in ("iterations", "log_every", "checkpoint_every", "sample_every", "eval_every",
                                   "keep_checkpoints", "resume", "overwrite", "allow_config_change", "out_dir",
                                   "device", "dist_backend", "check_on_policy", "rescore_on_policy", "compile",
                                   "compile_backend", "gradient_checkpointing", "deterministic")),
    "train.parallel", "sampling.chunks",  # how the work is shared out: any world size resumes any checkpoint
    *(f"sampling.{name}" for name in ("max_batch", "static_shapes", "background_scoring")),
    *(f"model.{name}" for name in ("eval_count", "eval_prompts", "embedding_cache", "embedding_memory",
                                   "precompute_embeddings", "vae_batch", "reward_dir")),
})
"""Options a resumed run may change freely: run length, logging, checkpointing, devices, speed, and
evaluation (the whole ``eval`` section); everything else changes what is trained."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def config_changes(saved: Mapping[str, Any], config: Config) -> list[str]:
    """``section.field old -> new`` for every option that differs between a checkpoint's saved
    configuration and ``config``, outside :data:`MAY_CHANGE_ON_RESUME` and ``eval``. An option the
    checkpoint does not record counts as its default."""
    changes = []
    current = config.to_dict()
    for section, values in current.items():
        if section == "eval":
            continue
        recorded = saved.get(section, {}) if isinstance(saved.get(section, {}), Mapping) else {}
        for name, value in values.items():
            key = f"{section}.{name}"
            if key in MAY_CHANGE_ON_RESUME:
                continue
            old = recorded.get(name, default(key))
            if isinstance(old, list | tuple) and isinstance(value, list):
                old = list(old)
            if isinstance(old, str) and _number(value) and _as_number(old) == value:
                old = value  # a number an earlier version stored as text (loss.temperature)
            if old != value:
                changes.append(f"{key} {old!r} -> {value!r}")
    return changes


# ---------------------------------------------------------------------------------------------- the state codec


def encode_state(state: Any) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, NumPy arrays, numbers, strings) into a JSON
    value and the tensors it references: ``{"__tensor__": name}`` stands for a tensor,
    ``{"__tuple__": [...]}`` for a tuple, ``{"__items__": [[key, value], ...]}`` for a dict whose keys
    are not all strings, ``{"__ndarray__": name, "dtype": ...}`` for a NumPy array."""
    tensors: dict[str, Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            name = f"t{len(tensors)}"
            tensors[name] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "ui" else value.copy())
            return {"__ndarray__": name, "dtype": str(value.dtype)}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"checkpoint state: cannot store a {type(value).__name__} ({value!r:.60}) as data")

    return encode(state), tensors


def decode_state(data: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state` (a reference to a missing tensor is a :class:`CheckpointError`)."""

    def tensor(name: Any) -> Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise CheckpointError(f"checkpoint: {STATE_JSON} refers to a tensor {name!r} that {STATE_TENSORS} lacks")
        return tensors[name]

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict):
            if "__tensor__" in value:
                return tensor(value["__tensor__"])
            if "__ndarray__" in value:
                return tensor(value["__ndarray__"]).numpy().astype(np.dtype(str(value.get("dtype", "float64"))))
            if "__tuple__" in value:
                return tuple(decode(v) for v in value["__tuple__"])
            if "__items__" in value:
                return {decode(k): decode(v) for k, v in value["__items__"]}
            return {k: decode(v) for k, v in value.items()}
        return value

    return decode(data)


# ---------------------------------------------------------------------------------------------- RNG


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
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


# ---------------------------------------------------------------------------------------------- files


def checkpoint_dir(run_dir: str | Path, iteration: int) -> Path:
    """Where checkpoint ``iteration`` of a run lives: ``<run>/checkpoints/iter-XXXXXX``."""
    return Path(run_dir) / "checkpoints" / f"iter-{iteration:06d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync(path.parent)


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an inf."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def remove_staging(root: Path) -> int:
    """Delete half-written checkpoints (``.iter-*`` staging folders) and ``.latest.*`` temporaries
    under ``root`` (a run's ``checkpoints/``), as a crashed write leaves them; returns how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for leftover in root.iterdir():
        if leftover.name.startswith((".iter-", f".{LATEST}.")):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def free_bytes(path: Path) -> int:
    """Bytes free on the file system holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def no_space_error(folder: Path, needed: int, what: str) -> CheckpointError:
    """The one line of a full disk: the folder, the bytes needed and the bytes free."""
    return CheckpointError(f"checkpoint: {folder} has {free_bytes(folder)} bytes free but {what} needs about "
                           f"{needed} bytes ({os.strerror(errno.ENOSPC)}); free some space or lower "
                           "train.keep_checkpoints; the previous checkpoint and latest are intact")


def _write_error(path: Path, error: OSError) -> CheckpointError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    hint = {errno.ENOSPC: "; free some space or lower train.keep_checkpoints",
            errno.EROFS: "; choose a writable train.out_dir", errno.EACCES: "; choose a writable train.out_dir"}
    return CheckpointError(f"checkpoint: cannot write {path}: {reason}{hint.get(error.errno, '')}")


def save_checkpoint(
    run_dir: str | Path, iteration: int, model_state: dict[str, Tensor], state: dict[str, Any], keep: int = 3
) -> Path:
    """Write checkpoint ``iteration`` atomically and keep the newest ``keep``; returns its directory.

    Refuses (:class:`CheckpointError`) to write a non-finite tensor or over an existing checkpoint.
    """
    final = checkpoint_dir(run_dir, iteration)
    root = final.parent
    weights = {name: t.detach().contiguous().cpu() for name, t in model_state.items()}
    data, tensors = encode_state(state)
    bad = non_finite(weights) + [f"state {name}" for name in non_finite(tensors)]
    if bad:
        raise CheckpointError(f"checkpoint: refusing to save iteration {iteration}: {len(bad)} tensor(s) hold NaN or "
                              f"inf (first: {bad[0]}); the last good checkpoint is kept")
    if os.path.lexists(final):
        raise CheckpointError(f"checkpoint: {final} already exists; a checkpoint is never written over another")
    text = json.dumps({"format": FORMAT, "state": data}, allow_nan=True) + "\n"
    needed = sum(t.numel() * t.element_size() for t in (*weights.values(), *tensors.values())) + len(text) + (64 << 10)
    if free_bytes(root) < needed:
        raise no_space_error(root, needed, f"checkpoint {iteration}")
    staging = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        save_file(weights, str(staging / MODEL_FILE), metadata={"format": str(FORMAT)})
        save_file(tensors, str(staging / STATE_TENSORS), metadata={"format": str(FORMAT)})
        (staging / STATE_JSON).write_text(text)
        files = (MODEL_FILE, STATE_TENSORS, STATE_JSON)
        checksums = {name: _sha256(staging / name) for name in files}
        (staging / CHECKSUMS).write_text(json.dumps(checksums, indent=1, sort_keys=True) + "\n")
        for name in (*files, CHECKSUMS):
            os.chmod(staging / name, 0o644)
            _fsync(staging / name)
        os.chmod(staging, 0o755)
        _fsync(staging)
        os.replace(staging, final)
        staging = None
        _fsync(root)
        _atomic_write_text(root / LATEST, final.name)
    except (OSError, SafetensorError) as error:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
            raise no_space_error(root, needed, f"checkpoint {iteration}") from None
        if isinstance(error, SafetensorError):
            raise CheckpointError(f"checkpoint: cannot write {final}: {str(error).splitlines()[0][:120]}") from None
        raise _write_error(final, error) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    prune(root, keep, final)
    return final


def _written_by_save(folder: Path) -> bool:
    """Whether ``folder`` is a real folder holding only the files :func:`save_checkpoint` writes."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return all(p.name in (MODEL_FILE, STATE_TENSORS, STATE_JSON, CHECKSUMS) and p.is_file() and not p.is_symlink()
               for p in folder.iterdir())


def prune(root: Path, keep: int, newest: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints under ``root``; returns what was deleted.

    Only folders :func:`save_checkpoint` wrote are counted or deleted (real ``iter-XXXXXX`` folders
    holding its four files); a link, or a folder with anything else in it, is left alone. Everything
    is checked before anything is deleted."""
    written = sorted((p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and _written_by_save(p)),
                     key=lambda p: int(p.name[5:]))
    doomed = [p for p in written if p != newest][: max(0, len(written) - keep)]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``latest`` points to, or ``None`` if the run has no checkpoint yet.

    ``latest`` must name a checkpoint of this run (``iter-XXXXXX`` inside its ``checkpoints/``);
    anything else, such as a path into another run, is a :class:`CheckpointError`.
    """
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not os.path.lexists(pointer):
        return None
    expected = "expected a checkpoint of this run (a file naming iter-XXXXXX in the same checkpoints/ folder)"
    if pointer.is_symlink() or not pointer.is_file():
        raise CheckpointError(f"checkpoint: {pointer} is a link or not a file; {expected}")
    try:
        fd = os.open(pointer, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            raw = os.read(fd, 64)
        finally:
            os.close(fd)
        name = raw.decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint: cannot read {pointer} ({type(error).__name__})") from None
    if not CHECKPOINT_NAME.fullmatch(name):  # its content is never echoed: it may be any file's
        raise CheckpointError(f"checkpoint: {pointer} does not name a checkpoint; {expected}")
    folder = pointer.parent / name
    if folder.is_symlink():
        raise CheckpointError(f"checkpoint: {folder} is a link; {expected}, not a link that may lead into another run")
    return folder


def _encoded_state(path: Path) -> dict[str, Any]:
    """The encoded training state in ``path``'s ``state.json`` (tensors still referenced by name); a
    file that is not JSON, or not a treegrpo state, is a one-line :class:`CheckpointError`."""
    try:
        document = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint: {path / STATE_JSON} is not valid JSON (or is nested too deep)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("state"), dict):
        raise CheckpointError(f"checkpoint: {path / STATE_JSON} is not a treegrpo state (format {FORMAT})")
    return document["state"]


def _refuse_legacy(path: Path) -> None:
    """A one-line :class:`CheckpointError` for a treegrpo 0.1 checkpoint (a pickled state, never loaded)."""
    if (path / LEGACY_STATE).exists() and not (path / STATE_JSON).exists():
        raise CheckpointError(f"checkpoint: {path} was written by an older treegrpo ({LEGACY_STATE} is a pickle, which "
                              "is never loaded because it can run code); retrain or convert it in a trusted session")


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(model_state, state)`` from a checkpoint directory, after checking every file against
    ``checksums.json``. Only safetensors and JSON are read, never a pickle; every problem is a
    one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: {path} is not a checkpoint folder")
    if path.is_symlink() and CHECKPOINT_NAME.fullmatch(path.name):
        raise CheckpointError(f"checkpoint: {path} is a link; a run's checkpoint is a real folder (a link may lead "
                              "into another run)")
    _refuse_legacy(path)
    for name in (MODEL_FILE, STATE_TENSORS, STATE_JSON, CHECKSUMS):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint: {path / name} is missing; expected a folder written by save_checkpoint")
        if (path / name).is_symlink():
            raise CheckpointError(f"checkpoint: {path / name} is a link; expected a file written by save_checkpoint")
    try:
        checksums = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        checksums = None
    if not isinstance(checksums, dict):
        raise CheckpointError(f"checkpoint: {path / CHECKSUMS} is not a JSON object of sha256 sums")
    for name in (MODEL_FILE, STATE_TENSORS, STATE_JSON):
        if checksums.get(name) != _sha256(path / name):
            raise CheckpointError(f"checkpoint: {path / name} does not match its sha256 in {CHECKSUMS} (the file is "
                                  "corrupt or was changed)")
    try:
        for name in (MODEL_FILE, STATE_TENSORS):
            check_safetensors(path / name, "checkpoint")
        weights = load_file(str(path / MODEL_FILE))
        tensors = load_file(str(path / STATE_TENSORS))
    except FileFormatError as error:
        raise CheckpointError(str(error)) from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint: cannot read the tensors in {path} ({type(error).__name__})") from None
    bad = non_finite(weights) + [f"state {name}" for name in non_finite(tensors)]
    if bad:
        raise CheckpointError(f"checkpoint: {path} holds {len(bad)} tensor(s) with NaN or inf (first: {bad[0][:60]}); "
                              "save_checkpoint never writes one, so the files were changed")
    encoded = _encoded_state(path)
    problem = state_depth_problem(encoded)
    if problem is None:
        try:
            state = decode_state(encoded, tensors)
        except (TypeError, ValueError, KeyError, IndexError):
            problem = "holds an entry the state codec cannot decode"
        else:
            problem = training_state_problem(state)
    if problem is not None:  # checked whatever the checksums say: they may have been recomputed
        raise CheckpointError(f"checkpoint: {path / STATE_JSON} {problem}; expected a state written by save_checkpoint")
    return weights, state


# ---------------------------------------------------------------------------------------------- reading parts


def checkpoint_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """The configuration a checkpoint was trained with (``state.json``'s ``config``: section to field
    to value), or ``{}`` when it records none. Only ``state.json`` is read, as JSON, after it matches
    its sha256 in ``checksums.json``; every problem is a one-line :class:`CheckpointError`."""
    path = Path(path)
    _refuse_legacy(path)
    for name in (STATE_JSON, CHECKSUMS):
        if not (path / name).is_file() or (path / name).is_symlink():
            raise CheckpointError(f"checkpoint: {path / name} is missing or a link; expected a folder written by "
                                  "save_checkpoint")
    try:
        checksums = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        checksums = None
    if not isinstance(checksums, dict) or checksums.get(STATE_JSON) != _sha256(path / STATE_JSON):
        raise CheckpointError(f"checkpoint: {path / STATE_JSON} does not match its sha256 in {CHECKSUMS} (the file is "
                              "corrupt or was changed)")
    state = _encoded_state(path)
    config = decode_state(state.get("config", {}), {})  # a tensor reference in it is a CheckpointError
    if not isinstance(config, dict) or not all(isinstance(values, dict) for values in config.values()):
        raise CheckpointError(f"checkpoint: {path / STATE_JSON} holds a config that is not a table of sections")
    return config


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in a checkpoint's ``model.safetensors`` (the trained parameters),
    read from the file's header alone (checked first, :func:`check_safetensors`); the tensors, and their
    checksums, are read when the checkpoint loads (:func:`load_checkpoint`)."""
    file = Path(path) / MODEL_FILE
    if not file.is_file() or file.is_symlink():
        raise CheckpointError(f"checkpoint: {file} is missing or a link; expected a folder written by save_checkpoint")
    try:
        check_safetensors(file, "checkpoint")
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileFormatError as error:
        raise CheckpointError(str(error)) from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint: cannot read the header of {file} ({type(error).__name__})") from None
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"checkpoint: {file} gives a tensor without a shape; expected a file written by "
                                  "save_checkpoint")
        shapes[name] = tuple(shape)
    return shapes
