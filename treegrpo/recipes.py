"""Every algorithm's recipe, declared in one place: which sampler, which advantage, which loss.

A recipe is data. :mod:`treegrpo.config` reads it to know which options a run uses, and
:mod:`treegrpo.algos.recipes` turns it into objects. :func:`treegrpo.algos.register_loss` adds a
new algorithm (a loss class plus the recipe of an existing one), so a new loss is one class,
selectable as ``loss.algorithm``.

The generic recipes (``treegrpo``, ``grpo``, ``mixgrpo``, ``ddpo``, ``reinforce``) start from the
toolkit's defaults. The peer recipes (``flow_grpo``, ``dance_grpo``, ``mix_grpo``, ``branch_grpo``)
also carry ``defaults``: the settings that make them their peer's algorithm as its own code runs it
(schedule, SDE and noise, window, step selection, normalisation, last step, KL, clip;
``docs/recipes.md`` gives each value's file and line). Choosing one applies them under the user's
own settings: the model kind's preset < the recipe's defaults < config file < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from treegrpo.errors import TreegrpoError

SamplerKind = Literal["tree", "trajectory", "sliding", "branch"]
AdvantageKind = Literal["tree", "leaf", "tracker", "depth"]
SAMPLERS = ("tree", "trajectory", "sliding", "branch")
ADVANTAGES = ("tree", "leaf", "tracker", "depth")


@dataclass(frozen=True)
class Algorithm:
    """How one algorithm trains.

    Attributes:
        name: the value of ``loss.algorithm``.
        sampler: ``tree`` (TreeGRPO's branching window), ``trajectory`` (independent trajectories,
            SDE on every step unless ``sampling.sde_steps=window``), ``sliding`` (trajectories
            whose SDE steps are a sliding window, as MixGRPO's) or ``branch`` (BranchGRPO's trees:
            SDE on every step, splitting at ``sampling.split_steps``).
        advantage: ``tree`` (group-normalised leaves backed up by ``loss.estimator``), ``leaf``
            (each edge gets its trajectory's advantage), ``tracker`` (DDPO's per-prompt statistics)
            or ``depth`` (BranchGRPO's: backed up by ``loss.estimator``, then normalised within
            each tree's depth).
        loss: the name of its loss class in :data:`treegrpo.algos.losses.LOSSES`.
        clipped: whether the loss reads ``loss.clip_range`` and ``loss.clip_high``.
        summary: one line for the docs and errors.
        defaults: ``section.field=value`` settings the recipe makes over the model kind's preset
            (its peer's own defaults); the user's settings override them.
        peer: the peer's repository and training script, for the docs.
    """

    name: str
    sampler: SamplerKind
    advantage: AdvantageKind
    loss: str
    clipped: bool = True
    summary: str = ""
    defaults: tuple[str, ...] = ()
    peer: str = ""

    @property
    def tree(self) -> bool:
        """Whether samples branch (TreeGRPO, BranchGRPO); otherwise they are trajectories."""
        return self.sampler in ("tree", "branch")


ALGORITHMS: dict[str, Algorithm] = {}
"""``loss.algorithm`` to its recipe."""


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm.name`` a value of ``loss.algorithm`` (re-registering a name replaces it)."""
    if algorithm.sampler not in SAMPLERS:
        raise TreegrpoError(f"algorithm {algorithm.name!r}: sampler {algorithm.sampler!r} is not one of "
                            f"{', '.join(SAMPLERS)}")
    if algorithm.advantage not in ADVANTAGES:
        raise TreegrpoError(f"algorithm {algorithm.name!r}: advantage {algorithm.advantage!r} is not one of "
                            f"{', '.join(ADVANTAGES)}")
    bad = [item for item in algorithm.defaults if "=" not in item or "." not in item.partition("=")[0]]
    if bad:
        raise TreegrpoError(f"algorithm {algorithm.name!r}: defaults must be section.field=value, got {bad}")
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

# The peers' own algorithms: their defaults, file and line in docs/recipes.md.
_DANCE_SCHEDULE = ("sampling.schedule=dancegrpo", "sampling.shift=3.0")
_DANCE_SAMPLING = ("sampling.transition=dance_sde", "sampling.noise_level=0.3", *_DANCE_SCHEDULE)
for _recipe in (
    Algorithm("flow_grpo", "trajectory", "leaf", "ppo_clip", peer="yifan123/flow_grpo scripts/train_sd3.py",
              summary="Flow-GRPO as its SD3 config runs it: SDE on every step, the first 99% trained, global std",
              defaults=("sampling.num_steps=10", "sampling.transition=flow_sde", "sampling.noise_level=0.7",
                        "sampling.schedule=scheduler",
                        "sampling.last_step=sde", "sampling.shared_noise=false", "loss.timestep_selection=first",
                        "loss.timestep_fraction=0.99", "loss.advantage_std=batch", "loss.advantage_eps=auto",
                        "loss.clip_range=1e-4", "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0.01",
                        "loss.kl_form=flow_grpo")),
    Algorithm("dance_grpo", "trajectory", "leaf", "ppo_clip", peer="XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py",
              summary="DanceGRPO as its FLUX script runs it: eta 0.3, 60% of steps per sample, last step not trained",
              defaults=(*_DANCE_SAMPLING, "sampling.num_steps=16", "sampling.last_step=ode",
                        "sampling.shared_noise=true", "loss.timestep_selection=per_sample", "loss.timestep_fraction=0.6",
                        "loss.advantage_std=group_bessel", "loss.advantage_eps=auto", "loss.clip_range=1e-4",
                        "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
    Algorithm("mix_grpo", "sliding", "leaf", "ppo_clip", peer="Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py",
              summary="MixGRPO as its FLUX script runs it: a 4-step SDE window moving every 25 iterations",
              defaults=("sampling.transition=flow_sde", "sampling.noise_level=0.7", *_DANCE_SCHEDULE,
                        "sampling.num_steps=25", "sampling.last_step=ode", "sampling.shared_noise=true",
                        "sampling.slide=mixgrpo", "sampling.depth=4", "sampling.window_start=0",
                        "sampling.window_shift=1", "sampling.window_every=25", "loss.timestep_fraction=1.0",
                        "loss.advantage_std=group_bessel", "loss.advantage_eps=auto", "loss.clip_range=1e-4",
                        "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
    Algorithm("branch_grpo", "branch", "depth", "ppo_clip",
              peer="Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py",
              summary="BranchGRPO: trees split at fixed steps, fused rewards normalised per depth, every edge trained",
              defaults=(*_DANCE_SAMPLING, "sampling.num_steps=20", "sampling.branching=2",
                        "sampling.split_steps=0,3,6,9", "sampling.split_noise_scale=4.0", "sampling.last_step=x0",
                        "sampling.trees_per_prompt=1", "loss.estimator=leaf", "loss.timestep_fraction=1.0",
                        "loss.clip_range=1e-3", "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
):
    register_algorithm(_recipe)
