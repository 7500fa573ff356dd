"""treegrpo.problems: the tasks the trainer trains, built from one place keyed by ``model.kind``.

A :class:`Problem` holds the policy, its transition, where prompts come from and how leaves are
scored. :func:`build_problem` makes the one a :class:`~treegrpo.config.Config` names: ``toy2d``
(:mod:`.toy2d`), ``digits`` (the embedded default, :mod:`.digits`) or a diffusers pipeline of any
registered family (:mod:`treegrpo.families`, one kind each: :mod:`.text_to_image`). Importing this
package registers them in :data:`KINDS`, each with its builder, preset and the options it reads
(:func:`register_problem`; a family's come from its declaration, :func:`register_family_kind`).
"""

from __future__ import annotations

from treegrpo.kinds import KINDS
from treegrpo.problems.base import Problem, PromptFn, RewardFn
from treegrpo.problems.build import build_problem, register_family_kind, register_problem
from treegrpo.problems.toy2d import ResidualVelocity, render_points, toy2d_problem

__all__ = [
           "KINDS",
           "Problem",
           "PromptFn",
           "ResidualVelocity",
           "RewardFn",
           "build_problem",
           "register_family_kind",
           "register_problem",
           "render_points",
           "toy2d_problem",
]


def __getattr__(name: str):
    """``treegrpo.problems.digits_problem`` (:func:`treegrpo.problems.digits.digits_problem`) on first
    use: the embedded model's imports (diffusers) take seconds, so ``treegrpo.problems`` does not pay
    for them until it is asked for (and it stays out of ``__all__``, which API pages import eagerly)."""
    if name == "digits_problem":
        from treegrpo.problems.digits import digits_problem

        return digits_problem
    raise AttributeError(f"module 'treegrpo.problems' has no attribute {name!r}")
