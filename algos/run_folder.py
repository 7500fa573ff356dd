"""The folder a training run writes to: checked before any expensive work, locked and marked as the run's own.

``claim_run_folder(train)`` is called before the model loads. It refuses, in one line, an out_dir
that is empty, sits under a file, or cannot be written; a folder another process is writing
(an ``flock`` on ``<out_dir>/.lock``, held until the process ends or :meth:`RunFolder.release`);
and a folder that holds an earlier run unless the run resumes it (``train.resume``) or starts over
(``train.overwrite``). Half-written checkpoints a crash left behind are removed.

A run writes and deletes only what is its own. The run folder carries a marker (``.treegrpo-run``,
a JSON record with the run's id). Output folders may be links to another disk (``checkpoints/`` on a
bigger one is a common habit): every folder a link resolves to is claimed like the run folder, locked
and marked with the run's id, and one that belongs to another run, by its marker or its lock, or holds
files of no run, is refused in one line naming both paths. Deleting (``train.overwrite``, a restart of a
run stopped before its first checkpoint) removes only files the run writes, by name, after checking all
of them; anything else in the way stops it before anything is deleted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from treegrpo.algos.checkpoint import CHECKPOINT_NAME, LATEST, _written_by_save, remove_staging
from treegrpo.algos.checkpoint import free_bytes as _free_bytes
from treegrpo.config import TrainConfig
from treegrpo.errors import ConfigError

LOCK_FILE, MARKER = ".lock", ".treegrpo-run"
OUTPUT_FOLDERS = ("checkpoints", "tensorboard", "samples", "final")
"""Folders a run writes into; each may be a link to a folder elsewhere, which the run then claims."""
OUTPUT_FILES = ("eval_before.json", "summary.json", "reward_curve.png")
"""Files a run writes at its top level; never links."""
RUN_OUTPUTS = OUTPUT_FOLDERS + OUTPUT_FILES
"""What a training run writes into its out_dir: ``train.overwrite`` deletes these, and inside the folders
only what :func:`written_by_run` recognises."""
_MARKER_BYTES = 4096

_held: dict[Path, tuple[int, int]] = {}  # folder -> (lock fd, claims by this process)


@dataclass
class RunFolder:
    """A claimed run folder; :meth:`release` drops its locks (also released when the process ends).

    ``unfinished``: the folder held a run stopped before its first checkpoint (outputs, but no
    checkpoint and no summary), whose leftovers were cleared so the run starts afresh there."""

    path: Path
    unfinished: bool = False
    linked: list[Path] = field(default_factory=list)  # claimed folders that output links resolve to

    def release(self) -> None:
        """Give the folders back (the last claim of this process unlocks each)."""
        for folder in [*self.linked, self.path]:
            _unlock(folder)
        self.linked = []


def _unlock(path: Path) -> None:
    held = _held.get(path)
    if held is None:
        return
    fd, count = held
    if count > 1:
        _held[path] = (fd, count - 1)
        return
    del _held[path]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def earlier_run(path: Path) -> str | None:
    """What in ``path`` shows an earlier training run worth keeping (a checkpoint or a summary), or ``None``."""
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir() and any(CHECKPOINT_NAME.fullmatch(p.name) for p in checkpoints.iterdir()):
        return "checkpoints/"
    if os.path.lexists(path / "summary.json"):
        return "summary.json"
    return None


def started_run(path: Path) -> bool:
    """Whether ``path`` holds anything a run writes (a run may have stopped before its first checkpoint)."""
    for name in OUTPUT_FOLDERS:
        folder = path / name
        if folder.is_dir() and any(p.name not in (LOCK_FILE, MARKER) for p in folder.iterdir()):
            return True
    return any(os.path.lexists(path / name) for name in OUTPUT_FILES)


def _lock(path: Path, what: str) -> None:
    """Take the folder's lock for this process (re-entrant within it, exclusive across processes)."""
    if path in _held:
        fd, count = _held[path]
        _held[path] = (fd, count + 1)
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise ConfigError(f"train.out_dir: cannot lock {path} ({os.strerror(error.errno or 0)}); {what}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        owner = owner if owner.isdigit() else "unknown"
        raise ConfigError(f"train.out_dir: {path} is being written by another run (pid {owner}); {what}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[path] = (fd, 1)


def read_marker(folder: Path) -> dict | None:
    """The run marker in ``folder`` (``{"run": id, "role": "run" | "output", "folder": path}``), or
    ``None``; a marker that is a link, too long or not such a record is a one-line error."""
    marker = folder / MARKER
    if not os.path.lexists(marker):
        return None
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            raw = os.read(fd, _MARKER_BYTES + 1)
        finally:
            os.close(fd)
        record = json.loads(raw.decode("utf-8")) if len(raw) <= _MARKER_BYTES else None
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("run"), str) and record.get("role") in ("run", "output")
            and isinstance(record.get("folder"), str)):
        raise ConfigError(f"train.out_dir: {marker} is not a treegrpo run marker; remove it if the folder is yours")
    return record


def _write_marker(folder: Path, record: dict) -> None:
    temporary = folder / f".{MARKER}.{os.getpid()}"
    temporary.write_text(json.dumps(record) + "\n")
    os.replace(temporary, folder / MARKER)


def _claim_output(run: Path, run_id: str, name: str) -> Path | None:
    """Claim the folder the link ``run/name`` resolves to; ``None`` if ``run/name`` is not a link."""
    link = run / name
    if not link.is_symlink():
        if os.path.lexists(link) and not link.is_dir():
            raise ConfigError(f"train.out_dir: {link} is a file; the run writes a folder there")
        return None
    target = link.resolve()
    fix = "point the link at an empty folder of this run's own"
    if target == run or target in run.parents:
        raise ConfigError(f"train.out_dir: {link} links to {target}, the run folder or a folder above it; {fix}")
    target.mkdir(parents=True, exist_ok=True)  # a link to a folder not yet made on the bigger disk
    if not target.is_dir():
        raise ConfigError(f"train.out_dir: {link} links to {target}, which is not a folder; {fix}")

    def owner() -> dict | None:
        record = read_marker(target)
        if record is not None and (record["run"] != run_id or record["role"] == "run"):
            raise ConfigError(f"train.out_dir: {link} links to {target}, which belongs to the run in "
                              f"{record['folder']}; {fix}")
        if record is None and any(p.name not in (LOCK_FILE, MARKER) for p in target.iterdir()):
            raise ConfigError(f"train.out_dir: {link} links to {target}, which holds files of no run of this "
                              f"folder; {fix}")
        return record

    owner()  # before the lock: nothing is written into a folder that is not ours
    _lock(target, f"{link} links to it; {fix}")
    try:
        if owner() is None:  # again under the lock, then mark it ours
            _write_marker(target, {"run": run_id, "role": "output", "folder": str(run), "name": name})
    except BaseException:
        _unlock(target)
        raise
    return target


# What each output folder of a run holds, by name: the only entries deletion touches.
_WRITTEN = {
    "checkpoints": lambda p: (CHECKPOINT_NAME.fullmatch(p.name) and _written_by_save(p))
                             or (p.name == LATEST and p.is_file() and not p.is_symlink()),
    "tensorboard": lambda p: p.name.startswith("events.out.tfevents.") and p.is_file() and not p.is_symlink(),
    "samples": lambda p: re.fullmatch(r"(before|after|iter-\d{6})\.png", p.name) and p.is_file() and not p.is_symlink(),
    "final": lambda p: _exported(p),
}


def _exported(path: Path) -> bool:
    """What an export writes: weights and configs (``.safetensors``, ``.json``), or a folder of them."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return all(_exported(p) for p in path.iterdir())
    return path.is_file() and path.suffix in (".safetensors", ".json")


def written_by_run(path: Path) -> bool:
    """Whether ``path`` (an entry of an output folder) is something the run writes there."""
    return bool(_WRITTEN[path.parent.name](path)) if path.parent.name in _WRITTEN else False


def clear_outputs(run: Path, claimed: dict[str, Path], *, keep: tuple[str, ...] = (), why: str) -> None:
    """Delete what a run wrote in ``run`` (its output folders' recognised entries and its top-level
    files, except ``keep``), after checking every entry: anything else in an output folder stops it
    in one line before anything is deleted. ``claimed`` maps a linked folder's name to its target."""
    doomed: list[Path] = []
    for name in OUTPUT_FOLDERS:
        folder = claimed.get(name, run / name)
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name in (LOCK_FILE, MARKER) or entry.name.startswith((".iter-", f".{LATEST}.")):
                continue
            if not _WRITTEN[name](entry):
                raise ConfigError(f"{why}: {entry} was not written by a run (a link, or other files); move it "
                                  "out of the way first; nothing was deleted")
            doomed.append(entry)
    doomed += [run / name for name in OUTPUT_FILES if name not in keep and os.path.lexists(run / name)]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


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


def _run_id(path: Path) -> str:
    """The run's id from its marker, written on the first claim; a folder marked as another run's output is refused."""
    record = read_marker(path)
    if record is not None and record["role"] != "run":
        raise ConfigError(f"train.out_dir: {path} is the {record.get('name', 'output')} folder of the run in "
                          f"{record['folder']}; choose another out_dir")
    owner = next((parent for parent in path.parents if (parent / MARKER).is_file()), None)
    if record is None and owner is not None:  # e.g. another run's own checkpoints/ folder
        raise ConfigError(f"train.out_dir: {path} lies inside the run in {owner}; choose another out_dir")
    if record is None:
        record = {"run": uuid.uuid4().hex, "role": "run", "folder": str(path)}
        _write_marker(path, record)
    return record["run"]


def claim_run_folder(train: TrainConfig, *, main: bool = True) -> RunFolder:
    """Check, lock, mark and tidy ``train.out_dir`` for a run; only the main rank writes (``main``)."""
    path = check_writable(train.out_dir) if main else Path(train.out_dir).expanduser().resolve()
    if not main:
        return RunFolder(path)
    if train.resume and train.overwrite:
        raise ConfigError("train.overwrite: cannot be combined with train.resume (one continues the run in "
                          "out_dir, the other deletes it)")
    _lock(path, "wait for it or choose another out_dir")
    folder = RunFolder(path)
    try:
        run_id = _run_id(path)
        for name in OUTPUT_FILES:
            if (path / name).is_symlink():
                raise ConfigError(f"train.out_dir: {path / name} is a link; a run writes its own {name}, never "
                                  "through a link; remove the link")
        claimed = {}
        for name in OUTPUT_FOLDERS:
            target = _claim_output(path, run_id, name)
            if target is not None:
                folder.linked.append(target)
                claimed[name] = target
        remove_staging(path / "checkpoints")
        found = earlier_run(path)
        if found and not train.resume:
            if not train.overwrite:
                raise ConfigError(f"train.out_dir: {train.out_dir} holds an earlier run ({found}); pass --train.resume "
                                  "to continue it, --train.overwrite to start over there, or choose another out_dir")
            clear_outputs(path, claimed, why="train.overwrite")
        elif not found and started_run(path):  # stopped before its first checkpoint: start afresh there
            folder.unfinished = True
            clear_outputs(path, claimed, keep=("eval_before.json",), why="train.out_dir")
    except BaseException:
        folder.release()
        raise
    return folder


def free_bytes(path: Path) -> int:
    """Bytes free on the file system holding ``path`` (or its nearest existing parent)."""
    return _free_bytes(path)


def check_space(checkpoints: Path, needed: int, keep: int = 1) -> None:
    """Refuse to start when the checkpoints the run keeps would not fit under ``checkpoints``: ``keep``
    of ``needed`` bytes each, plus the one being written before the oldest is pruned, less those
    already there."""
    root = checkpoints.resolve()
    present = sum(1 for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name)) if root.is_dir() else 0
    count = max(1, keep + 1 - present)
    free, total = free_bytes(root), count * needed
    if free < total:
        raise ConfigError(f"train.out_dir: {root} has {free} bytes free but {count} more checkpoint(s) of about "
                          f"{needed} bytes (train.keep_checkpoints={keep}, plus one being written) need {total} bytes "
                          f"({os.strerror(errno.ENOSPC).lower()} once it fills); free some space, lower "
                          "train.keep_checkpoints, or link checkpoints/ to a bigger disk")
