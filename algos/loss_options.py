"""``loss.options``: a loss's own keyword arguments, given as ``name=value`` text and typed from its
constructor's annotations.

A loss class declares its options by its ``__init__`` signature. The keyword arguments other
``loss.*`` fields already set (``clip_range``, ``kl_coef``, ...) and the objects the trainer passes
(``model``, ``transition``, ``reference``) are not options; every other keyword argument with a
default is. So a plugin loss ``def __init__(self, model, transition, *, beta: float = 0.1, **kl)``
takes ``--loss.options beta=10`` with no other registration.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from treegrpo.errors import ConfigError

SET_ELSEWHERE = frozenset({"model", "transition", "reference", "kl_coef", "kl_form", "clip_range", "clip_high"})
"""Constructor arguments the trainer or another ``loss.*`` field sets: never a ``loss.options`` key."""

_SIMPLE = {"float": float, "int": int, "bool": bool, "str": str}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def declared_options(loss_class: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of the options ``loss_class`` takes (see the module docstring).

    The annotation is a type (``float``, ``int``, ``bool``, ``str``, ``Literal[...]``, or one of
    them ``| None``), or ``None`` when the constructor leaves it unannotated (the value then stays text).
    """
    signature = inspect.signature(loss_class.__init__)
    try:
        hints = typing.get_type_hints(loss_class.__init__)
    except (NameError, TypeError, AttributeError):  # an annotation unresolvable at run time: read its text
        hints = {name: _SIMPLE.get(str(p.annotation).strip("'\" ")) for name, p in signature.parameters.items()}
    return {name: (hints.get(name), parameter.default) for name, parameter in signature.parameters.items()
            if name != "self" and name not in SET_ELSEWHERE
            and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            and parameter.default is not parameter.empty}


def _convert(text: str, annotation: Any) -> Any:
    """``text`` as ``annotation`` says; ``ValueError`` naming what was expected otherwise."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        if text.lower() == "none" and len(kinds) < len(get_args(annotation)):
            return None
        annotation = kinds[0] if len(kinds) == 1 else None
    if get_origin(annotation) is Literal:
        allowed = get_args(annotation)
        match = next((value for value in allowed if str(value) == text), None)
        if match is None:
            raise ValueError(f"one of {', '.join(map(str, allowed))}")
        return match
    if annotation is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError("true or false")
        return text.lower() in _TRUE
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("an int") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("a number") from None
        if math.isnan(value):
            raise ValueError("a number")
        return value
    return text


def parse_loss_options(loss_class: type, items: Sequence[str], field: str = "loss.options") -> dict[str, Any]:
    """The keyword arguments ``items`` (``name=value`` each) give ``loss_class``, typed by its
    annotations; a malformed item, an unknown name or an unconvertible value is one
    :class:`~treegrpo.errors.ConfigError` line naming ``field``."""
    declared = declared_options(loss_class)
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = (part.strip() for part in str(item).partition("="))
        if not sep or not name:
            raise ConfigError(f"{field}: expected name=value, got {item!r}")
        if name not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            hint = f" (it is loss.{name})" if name in SET_ELSEWHERE - {"model", "transition", "reference"} else ""
            raise ConfigError(f"{field}: {loss_class.__name__} has no option {name!r}{hint}; its options: {allowed}")
        annotation, _ = declared[name]
        try:
            options[name] = _convert(text, annotation)
        except ValueError as expected:
            raise ConfigError(f"{field}: {name}={text!r}, expected {expected}") from None
    return options


__all__ = ["SET_ELSEWHERE", "declared_options", "parse_loss_options"]
