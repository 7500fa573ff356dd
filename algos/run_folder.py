"""The folder a training run writes to: checked before any expensive work, locked while the run writes.

``claim_run_folder(train)`` is called before the model loads. It refuses, in one line, an out_dir
that is empty, sits under a file, or cannot be written; a folder another process is writing
(an ``flock`` on ``<out_dir>/.lock``, held until the process ends or :meth:`RunFolder.release`);
and a folder that holds an earlier run unless the run resumes it (``train.resume``) or starts over
(``train.overwrite``, which deletes only what a run writes). Half-written checkpoints a crash left
behind are removed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from treegrpo.algos.checkpoint import CHECKPOINT_NAME, remove_staging

from treegrpo.config import ConfigError, TrainConfig

LOCK_FILE = ".lock"
RUN_OUTPUTS = ("checkpoints", "tensorboard", "samples", "final", "eval_before.json", "summary.json",
               "reward_curve.png")
"""What a training run writes into its out_dir: ``train.overwrite`` deletes exactly these."""

_held: dict[Path, tuple[int, int]] = {}  # folder -> (lock fd, claims by this process)


@dataclass
class RunFolder:
    """A claimed run folder; :meth:`release` drops the lock (also released when the process ends)."""

    path: Path

    def release(self) -> None:
        """Give the folder back (the last claim of this process unlocks it)."""
        held = _held.get(self.path)
        if held is None:
            return
        fd, count = held
        if count > 1:
            _held[self.path] = (fd, count - 1)
            return
        del _held[self.path]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def earlier_run(path: Path) -> str | None:
    """What in ``path`` shows an earlier training run (a checkpoint, a summary, logs), or ``None``."""
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir() and any(CHECKPOINT_NAME.fullmatch(p.name) for p in checkpoints.iterdir()):
        return "checkpoints/"
    for name in ("summary.json", "eval_before.json"):
        if (path / name).exists():
            return name
    tensorboard = path / "tensorboard"
    if tensorboard.is_dir() and any(tensorboard.iterdir()):
        return "tensorboard/"
    return None


def _lock(path: Path) -> None:
    """Take the folder's lock for this process (re-entrant within it, exclusive across processes)."""
    if path in _held:
        fd, count = _held[path]
        _held[path] = (fd, count + 1)
        return
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"train.out_dir: {path} is being written by another run (pid {owner}); wait for it or choose "
                          "another out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[path] = (fd, 1)


def check_writable(out_dir: str) -> Path:
    """``out_dir`` as a folder this process can write (created if missing); one-line errors otherwise."""
    if not out_dir.strip():
        raise ConfigError("train.out_dir: is empty; name a folder for logs, samples and checkpoints (runs/<name>)")
    path = Path(out_dir).expanduser()
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"train.out_dir: {out_dir} lies under {parent}, which is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(f"train.out_dir: cannot write to {out_dir} ({reason})") from None
    return path.resolve()


def claim_run_folder(train: TrainConfig, *, main: bool = True) -> RunFolder:
    """Check, lock and tidy ``train.out_dir`` for a run; only the main rank writes (``main``)."""
    path = check_writable(train.out_dir) if main else Path(train.out_dir).expanduser().resolve()
    if not main:
        return RunFolder(path)
    _lock(path)
    folder = RunFolder(path)
    try:
        remove_staging(path / "checkpoints")
        found = earlier_run(path)
        if train.resume and train.overwrite:
            raise ConfigError("train.overwrite: cannot be combined with train.resume (one continues the run in "
                              "out_dir, the other deletes it)")
        if found and not train.resume:
            if not train.overwrite:
                raise ConfigError(f"train.out_dir: {train.out_dir} holds an earlier run ({found}); pass --train.resume "
                                  "to continue it, --train.overwrite to start over there, or choose another out_dir")
            for name in RUN_OUTPUTS:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    except BaseException:
        folder.release()
        raise
    return folder


def free_bytes(path: Path) -> int:
    """Bytes free on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def check_space(path: Path, needed: int) -> None:
    """Refuse to start when one more checkpoint (``needed`` bytes) would not fit under ``path``."""
    free = free_bytes(path)
    if free < needed:
        raise ConfigError(f"train.out_dir: {path} has {free / 2**20:.0f} MiB free but one checkpoint needs about "
                          f"{needed / 2**20:.0f} MiB ({os.strerror(errno.ENOSPC).lower()} once it fills)")
