"""The one base class of errors a user can fix by changing an input: the ``treegrpo`` command prints
them as one line (``treegrpo: error: <message>``) and keeps tracebacks for everything else, which
are bugs.

Every such error's message is one line that names what was wrong (an option, a file, a value) and
what is allowed; subclasses also inherit the builtin type callers already catch (``ValueError``,
``FileNotFoundError``, ...).
"""

from __future__ import annotations


class TreegrpoError(Exception):
    """An input the user can fix: a config value, a file, a folder, a checkpoint."""

    def __init__(self, message: str = "") -> None:
        super().__init__(" ".join(str(message).split("\n")))


class TreegrpoWarning(UserWarning):
    """Something the user should know that does not stop the run; the command prints it as one line."""


__all__ = ["TreegrpoError", "TreegrpoWarning"]
