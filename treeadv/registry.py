"""One registry type for every plug-in point: estimators here, and treegrpo's losses, recipes, rewards and
model kinds.

It lives in ``treeadv`` because that is the lowest layer (torch and tensordict only), so the standalone
package and ``treegrpo`` share one behaviour on re-registration:

- a new name is added;
- the same entry again, or a re-definition of it (same ``__qualname__`` from the same source file, as
  when a plugin file is loaded a second time; for a dataclass entry, field by field), replaces the old
  one silently;
- a different entry under a taken name raises :class:`RegistryError` naming both, unless the caller
  passes ``replace=True`` (an explicit override, such as a test swapping in a fake).

Examples:
    >>> from treeadv.registry import Registry
    >>> colours = Registry("colour", field="paint.colour")
    >>> colours.add("red", "#f00")
    '#f00'
    >>> colours["red"], "red" in colours, colours.names()
    ('#f00', True, ['red'])
    >>> colours.add("red", "#e00")
    Traceback (most recent call last):
    ...
    treeadv.registry.RegistryError: colour 'red' is already registered ('#f00'); pass replace=True to replace it with '#e00'
    >>> colours["blue"]
    Traceback (most recent call last):
    ...
    treeadv.registry.RegistryError: paint.colour: expected one of red, got 'blue'
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import weakref
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A name registered twice to different entries, or looked up but never registered."""


def same_definition(old: object, new: object) -> bool:
    """Whether ``new`` is ``old`` or a re-definition of it: a class or function of the same qualified name
    from the same source file (a plugin loaded twice, or run as a script after being loaded as a plugin,
    under another module name), or from the same module where the file is unknown; a dataclass entry
    whose fields are each the same definition (a recipe, a reward's factory with its modalities); an
    equal plain value."""
    if old is new:
        return True
    if dataclasses.is_dataclass(old) and not isinstance(old, type) and type(old) is type(new):
        return all(same_definition(getattr(old, f.name), getattr(new, f.name)) for f in dataclasses.fields(old))
    if getattr(old, "__qualname__", None) is None:
        return type(old) is type(new) and old == new
    if getattr(old, "__qualname__", None) != getattr(new, "__qualname__", None):
        return False
    old_file, new_file = _source_file(old), _source_file(new)
    if old_file is not None and new_file is not None:
        return old_file == new_file
    return getattr(old, "__module__", None) == getattr(new, "__module__", None)


def _source_file(entry: object) -> str | None:
    """The file that defined a function or class, read from its code objects (a script run with
    ``runpy`` is not in ``sys.modules``, so ``inspect.getfile`` would name the wrong file)."""
    code = getattr(entry, "__code__", None)
    if code is None and isinstance(entry, type):
        code = next((getattr(v, "__code__", None) for v in vars(entry).values() if hasattr(v, "__code__")), None)
    if code is not None:
        return os.path.realpath(code.co_filename)
    try:
        return os.path.realpath(inspect.getfile(entry))  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None


class Registry(Generic[T]):
    """Name -> entry for one kind of plug-in, with one re-registration rule (the module docstring's).

    Args:
        kind: what an entry is, for errors (``"loss"``, ``"reward"``).
        field: the option a user writes the name in (``"loss.algorithm"``), named by lookup errors;
            default: ``kind``.
    """

    def __init__(self, kind: str, *, field: str | None = None) -> None:
        self.kind = kind
        self.field = field or kind
        self._entries: dict[str, T] = {}
        _EVERY_REGISTRY.add(self)

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` as ``name`` and return it (so it works inside decorators)."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind}: a name must be a non-empty string, got {name!r}")
        old = self._entries.get(name)
        if name in self._entries and not replace and not same_definition(old, entry):
            raise RegistryError(f"{self.kind} {name!r} is already registered ({_label(old)}); pass replace=True "
                                f"to replace it with {_label(entry)}")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (tests that register temporary entries clean up with it)."""
        if name not in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is not registered")
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise RegistryError(f"{self.field}: expected one of {', '.join(self.names())}, got {name!r}")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        """The entry of ``name``, or ``default``."""
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return list(self._entries.items())

    def values(self) -> list[T]:
        """The entries in registration order."""
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


_EVERY_REGISTRY: weakref.WeakSet[Registry] = weakref.WeakSet()


@contextlib.contextmanager
def registrations_undone() -> Iterator[None]:
    """Undo, on exit, every registration made inside, in every registry: for tests and examples that
    register temporary plug-ins without leaking them into the rest of the session."""
    saved = [(registry, dict(registry._entries)) for registry in list(_EVERY_REGISTRY)]
    try:
        yield
    finally:
        for registry, entries in saved:
            registry._entries = entries


def _label(entry: object) -> str:
    name = getattr(entry, "__qualname__", None)
    module = getattr(entry, "__module__", None)
    return f"{module}.{name}" if name and module else repr(entry)
