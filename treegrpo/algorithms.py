"""Every algorithm's recipe, declared in one place: which sampler, which advantage, which loss.

A recipe is data. :mod:`treegrpo.config` reads it to know which options a run uses, and
:mod:`treegrpo.algos.recipes` turns it into objects. :func:`treegrpo.algos.register_loss` adds a
new algorithm (a loss class plus the recipe of an existing one), so a new loss is one class,
selectable as ``loss.algorithm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from treegrpo.errors import TreegrpoError

SamplerKind = Literal["tree", "trajectory", "sliding"]
AdvantageKind = Literal["tree", "leaf", "tracker"]


@dataclass(frozen=True)
class Algorithm:
    """How one algorithm trains.

    Attributes:
        name: the value of ``loss.algorithm``.
        sampler: ``tree`` (TreeGRPO's branching window), ``trajectory`` (independent trajectories,
            SDE on every step unless ``sampling.sde_steps=window``) or ``sliding`` (trajectories
            whose SDE steps are a sliding window, as MixGRPO's).
        advantage: ``tree`` (group-normalised leaves backed up by ``loss.estimator``), ``leaf``
            (each edge gets its trajectory's advantage) or ``tracker`` (DDPO's per-prompt statistics).
        loss: the name of its loss class in :data:`treegrpo.algos.losses.LOSSES`.
        clipped: whether the loss reads ``loss.clip_range`` and ``loss.clip_high``.
        summary: one line for the docs and errors.
    """

    name: str
    sampler: SamplerKind
    advantage: AdvantageKind
    loss: str
    clipped: bool = True
    summary: str = ""

    @property
    def tree(self) -> bool:
        """Whether samples branch (TreeGRPO); otherwise they are trajectories."""
        return self.sampler == "tree"


ALGORITHMS: dict[str, Algorithm] = {}
"""``loss.algorithm`` to its recipe."""


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm.name`` a value of ``loss.algorithm`` (re-registering a name replaces it)."""
    if algorithm.sampler not in ("tree", "trajectory", "sliding"):
        raise TreegrpoError(f"algorithm {algorithm.name!r}: sampler {algorithm.sampler!r} is not one of tree, "
                            "trajectory, sliding")
    if algorithm.advantage not in ("tree", "leaf", "tracker"):
        raise TreegrpoError(f"algorithm {algorithm.name!r}: advantage {algorithm.advantage!r} is not one of tree, "
                            "leaf, tracker")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def algorithm(name: str) -> Algorithm:
    """The recipe registered as ``name`` (a one-line error naming the registered ones otherwise)."""
    if name not in ALGORITHMS:
        raise TreegrpoError(f"loss.algorithm: expected one of {', '.join(sorted(ALGORITHMS))}, got {name!r}")
    return ALGORITHMS[name]


for _recipe in (
    Algorithm("treegrpo", "tree", "tree", "ppo_clip", summary="TreeGRPO: branching SDE window, tree advantages"),
    Algorithm("grpo", "trajectory", "leaf", "ppo_clip", summary="trajectory GRPO (Flow-GRPO, DanceGRPO)"),
    Algorithm("mixgrpo", "sliding", "leaf", "ppo_clip", summary="MixGRPO: SDE on a sliding window of steps"),
    Algorithm("ddpo", "trajectory", "tracker", "ppo_clip", summary="DDPO-PPO with per-prompt stat tracking"),
    Algorithm("reinforce", "trajectory", "leaf", "reinforce", clipped=False, summary="REINFORCE (no ratio, no clip)"),
):
    register_algorithm(_recipe)
