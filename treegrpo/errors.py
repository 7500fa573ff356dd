"""The one base class of errors a user can fix by changing an input: the ``treegrpo`` command prints
them as one line (``treegrpo: error: <message>``) and keeps tracebacks for everything else, which
are bugs.

Every such error's message is one line that names what was wrong (an option, a file, a value) and
what is allowed; subclasses also inherit the builtin type callers already catch (``ValueError``,
``FileNotFoundError``, ...). One type per kind of failure: :class:`ConfigError` (an option's value),
:class:`RunFileError` (a file a run wrote that cannot be read back).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class TreegrpoError(Exception):
    """An input the user can fix: a config value, a file, a folder, a checkpoint."""

    def __init__(self, message: str = "") -> None:
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(TreegrpoError, ValueError):
    """An invalid configuration value; the message is one line starting with ``section.field: ``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


class RunFileError(TreegrpoError, ValueError):
    """A file a run wrote (its summary, its evaluation JSON) that cannot be read back."""


class TreegrpoWarning(UserWarning):
    """Something the user should know that does not stop the run; the command prints it as one line."""


@contextmanager
def renamed_fields(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a one-line error whose message starts with ``name:`` (a key of ``names``) as the same
    error naming ``names[name]`` instead, so it names what the caller wrote.

    A Python builder names its arguments (``rewards: unknown reward ...``); the config path that
    calls it maps them to the options they came from (``model.rewards: ...``), and the Python
    builder maps the config-named errors of the functions it calls to its own arguments.
    """
    try:
        yield
    except (TreegrpoError, ValueError) as error:
        name, sep, rest = str(error).partition(":")
        if not sep or name not in names:
            raise
        try:
            renamed = type(error)(f"{names[name]}:{rest}")
        except TypeError:  # an error class whose constructor takes more than a message
            raise error from None
        raise renamed.with_traceback(error.__traceback__) from None


__all__ = ["ConfigError", "RunFileError", "TreegrpoError", "TreegrpoWarning", "renamed_fields"]
