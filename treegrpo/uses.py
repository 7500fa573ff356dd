"""Which options a run reads: the declaration each recipe and model kind makes of the options only
some runs read.

A :class:`Use` is declared where its reader lives: the recipes' in :mod:`treegrpo.recipes`, a model
kind's when it is registered (:mod:`treegrpo.kinds`), and the section-level rules (an option read
only with some ``sampling.transition``) in :mod:`treegrpo.config`, whose ``Config.check_used``
consults them all and refuses an option the run would ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Use(NamedTuple):
    """Options that only some algorithms or model kinds read: ``applies(config)`` says whether this
    run reads them, ``who`` names, for the error, the settings that would (text, or a function of
    nothing when it lists registered algorithms or kinds).

    ``by`` is what decides, as the error names it: ``"algorithm"`` (``loss.algorithm``), ``"kind"``
    (``model.kind``), ``"schedule"`` (``model.kind`` with ``sampling.schedule``), ``"transition"``,
    or a function of the config giving that text.
    """

    fields: tuple[str, ...]
    applies: Callable[[Any], bool]
    who: str | Callable[[], str]
    by: str | Callable[[Any], str] = "algorithm"

    def context(self, config: Any) -> str:
        """The setting that rules the option out, as the error names it."""
        if callable(self.by):
            return self.by(config)
        if self.by == "kind":
            return f"model.kind={config.model.kind}"
        if self.by == "schedule":
            return f"model.kind={config.model.kind} with sampling.schedule={config.sampling.schedule}"
        if self.by == "transition":
            return f"sampling.transition={config.sampling.transition}"
        return f"loss.algorithm={config.loss.algorithm}"

    def users(self) -> str:
        """The settings that would read these options."""
        return self.who() if callable(self.who) else self.who


__all__ = ["Use"]
