"""Where the shipped weights live, and the one-line error for a missing weight file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from treegrpo.errors import TreegrpoError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped weights: ``base/`` (text encoder and transformer), ``classifier/`` and ``MANIFEST.json``."""


class MissingWeightsError(TreegrpoError, FileNotFoundError):
    """A weight file is missing; the message names it and the command that makes it."""


def require(directory: Path, names: tuple[str, ...], what: str) -> None:
    """Raise :class:`MissingWeightsError` for the first of ``names`` not in ``directory``.

    ``what`` is the pretraining target (``"base"`` or ``"classifier"``); the weights root the
    command writes to is the parent of the ``base``/``classifier`` folder.
    """
    for name in names:
        path = directory / name
        if not path.is_file():
            if directory.name == what:
                out, note = directory.parent, ""
            else:
                out, note = "OUT", f" (it writes OUT/{what}; load that folder)"
            raise MissingWeightsError(
                f"{path}: missing; make it with "
                f"`python -m treegrpo.embedded.pretrain --what {what} --out {out} --seed 0`{note}"
            )


def sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
