"""What a training state read back from ``state.json`` must look like before a trainer uses it.

Checksums prove a checkpoint's files were not damaged by accident; they say nothing of a file
someone wrote with its sums recomputed. So the decoded state is checked the way an input is: its
nesting depth (a JSON document 200,000 levels deep would exhaust the recursion limit), every key
:meth:`~treegrpo.algos.Trainer.resume` reads, and each one's type. The functions return the first
problem in words (never a value read from the file), or ``None``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

MAX_DEPTH = 64
"""Deepest nesting a treegrpo state reaches is about ten (optimizer -> state -> items -> ...)."""

_DICT, _LIST = (dict,), (list,)
TRAINING_STATE: dict[str, tuple[type, ...]] = {
    "iteration": (int,), "optimizer": _DICT, "scheduler": _DICT, "ema": (dict, type(None)), "rng": _DICT,
    "window": _DICT, "advantage": _DICT, "history": _LIST, "evaluations": _LIST, "config": _DICT,
}
"""The keys of :meth:`Trainer.state_dict` and the types each may hold."""


def state_depth_problem(data: Any) -> str | None:
    """Whether JSON ``data`` nests deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def training_state_problem(state: Any) -> str | None:
    """The first way the decoded ``state`` is not a trainer's state: a missing key, a value of the
    wrong type, an optimiser without ``state``/``param_groups``, an RNG state without its parts, a
    history entry that is not a record."""
    if not isinstance(state, dict):
        return "is not a mapping of state entries"
    for key, types in TRAINING_STATE.items():
        if key not in state:
            return f"lacks the key {key!r}"
        value = state[key]
        if not isinstance(value, types) or isinstance(value, bool):
            return f"holds a {type(value).__name__} under {key!r}, expected {_type_names(types)}"
    if state["iteration"] < 0:
        return "holds a negative iteration"
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        return "holds an optimizer without its 'state' mapping and 'param_groups' list"
    if not all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in optimizer["param_groups"]):
        return "holds an optimizer param group that is not a record with a 'params' list"
    rng = state["rng"]
    for key, types in {"python": (tuple, list), "numpy": (tuple, list), "torch": (Tensor,), "generators": _DICT}.items():
        if not isinstance(rng.get(key), types):
            return f"holds an RNG state without a valid {key!r} part"
    if not all(isinstance(g, Tensor) for g in rng["generators"].values()):
        return "holds a generator state that is not a tensor"
    for key in ("history", "evaluations"):
        if not all(isinstance(entry, dict) for entry in state[key]):
            return f"holds a {key!r} entry that is not a record"
    return None


def optimizer_shape_problem(optimizer: dict[str, Any], shapes: list[tuple[int, ...]]) -> str | None:
    """Whether the optimiser state's per-parameter tensors (AdamW's moments) fit ``shapes``, the
    full shapes of the trained parameters in order: a crafted state would otherwise load and fail
    inside the first step."""
    for index, entries in optimizer["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(shapes) or not isinstance(entries, dict):
            return "holds optimizer state for a parameter the model does not train"
        for value in entries.values():
            if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != shapes[index]:
                return (f"holds an optimizer tensor of shape {tuple(value.shape)} for parameter {index}, whose shape is "
                        f"{shapes[index]}")
    return None


__all__ = ["MAX_DEPTH", "TRAINING_STATE", "optimizer_shape_problem", "state_depth_problem", "training_state_problem"]
