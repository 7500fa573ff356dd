"""Every algorithm's recipe, declared in one place: which sampler, which advantage, which loss, and
which options it reads.

A recipe is data, kept in the registry :data:`RECIPES` (``loss.algorithm`` to its :class:`Recipe`).
The options whose use depends on the recipe are declared next to the recipes, in :data:`USES`, and
:meth:`treegrpo.config.Config.check_used` refuses one the chosen recipe does not read;
:mod:`treegrpo.algos.build` turns a recipe into objects. :func:`treegrpo.algos.register_loss` adds a
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from treeadv.registry import Registry
from treegrpo.errors import TreegrpoError
from treegrpo.uses import Use

SamplerKind = Literal["tree", "trajectory", "sliding", "branch"]
AdvantageKind = Literal["tree", "leaf", "tracker", "depth"]
SAMPLERS = ("tree", "trajectory", "sliding", "branch")
ADVANTAGES = ("tree", "leaf", "tracker", "depth")


@dataclass(frozen=True)
class Recipe:
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


RECIPES: Registry[Recipe] = Registry("recipe", field="loss.algorithm")
"""``loss.algorithm`` to its recipe (:class:`treeadv.registry.Registry`: registering a different recipe
under a taken name is refused unless ``replace=True``)."""


def register_recipe(recipe: Recipe, *, replace: bool = False) -> Recipe:
    """Make ``recipe.name`` a value of ``loss.algorithm``. The same recipe again (an equal one, as when
    a plugin file is loaded twice) replaces it; a different one needs ``replace=True``."""
    if recipe.sampler not in SAMPLERS:
        raise TreegrpoError(f"algorithm {recipe.name!r}: sampler {recipe.sampler!r} is not one of "
                            f"{', '.join(SAMPLERS)}")
    if recipe.advantage not in ADVANTAGES:
        raise TreegrpoError(f"algorithm {recipe.name!r}: advantage {recipe.advantage!r} is not one of "
                            f"{', '.join(ADVANTAGES)}")
    bad = [item for item in recipe.defaults if "=" not in item or "." not in item.partition("=")[0]]
    if bad:
        raise TreegrpoError(f"algorithm {recipe.name!r}: defaults must be section.field=value, got {bad}")
    return RECIPES.add(recipe.name, recipe, replace=replace)


def recipe(name: str) -> Recipe:
    """The recipe registered as ``name`` (a one-line error naming the registered ones otherwise)."""
    if name not in RECIPES:
        raise TreegrpoError(f"loss.algorithm: expected one of {', '.join(RECIPES.names())}, got {name!r}")
    return RECIPES[name]


for _recipe in (
    Recipe("treegrpo", "tree", "tree", "ppo_clip", summary="TreeGRPO: branching SDE window, tree advantages"),
    Recipe("grpo", "trajectory", "leaf", "ppo_clip", summary="trajectory GRPO (Flow-GRPO, DanceGRPO)"),
    Recipe("mixgrpo", "sliding", "leaf", "ppo_clip", summary="MixGRPO: SDE on a sliding window of steps"),
    Recipe("ddpo", "trajectory", "tracker", "ppo_clip", summary="DDPO-PPO with per-prompt stat tracking"),
    Recipe("reinforce", "trajectory", "leaf", "reinforce", clipped=False, summary="REINFORCE (no ratio, no clip)"),
):
    register_recipe(_recipe)

# The peers' own algorithms: their defaults, file and line in docs/recipes.md.
_DANCE_SCHEDULE = ("sampling.schedule=dancegrpo", "sampling.shift=3.0")
_DANCE_SAMPLING = ("sampling.transition=dance_sde", "sampling.noise_level=0.3", *_DANCE_SCHEDULE)
for _recipe in (
    Recipe("flow_grpo", "trajectory", "leaf", "ppo_clip", peer="yifan123/flow_grpo scripts/train_sd3.py",
              summary="Flow-GRPO as its SD3 config runs it: SDE on every step, the first 99% trained, global std",
              defaults=("sampling.num_steps=10", "sampling.transition=flow_sde", "sampling.noise_level=0.7",
                        "sampling.schedule=scheduler",
                        "sampling.last_step=sde", "sampling.shared_noise=false", "loss.timestep_selection=first",
                        "loss.timestep_fraction=0.99", "loss.advantage_std=batch", "loss.advantage_eps=auto",
                        "loss.clip_range=1e-4", "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0.01",
                        "loss.kl_form=flow_grpo")),
    Recipe("dance_grpo", "trajectory", "leaf", "ppo_clip", peer="XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py",
              summary="DanceGRPO as its FLUX script runs it: eta 0.3, 60% of steps per sample, last step not trained",
              defaults=(*_DANCE_SAMPLING, "sampling.num_steps=16", "sampling.last_step=ode",
                        "sampling.shared_noise=true", "loss.timestep_selection=per_sample", "loss.timestep_fraction=0.6",
                        "loss.advantage_std=group_bessel", "loss.advantage_eps=auto", "loss.clip_range=1e-4",
                        "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
    Recipe("mix_grpo", "sliding", "leaf", "ppo_clip", peer="Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py",
              summary="MixGRPO as its FLUX script runs it: a 4-step SDE window moving every 25 iterations",
              defaults=("sampling.transition=flow_sde", "sampling.noise_level=0.7", *_DANCE_SCHEDULE,
                        "sampling.num_steps=25", "sampling.last_step=ode", "sampling.shared_noise=true",
                        "sampling.slide=mixgrpo", "sampling.depth=4", "sampling.window_start=0",
                        "sampling.window_shift=1", "sampling.window_every=25", "loss.timestep_fraction=1.0",
                        "loss.advantage_std=group_bessel", "loss.advantage_eps=auto", "loss.clip_range=1e-4",
                        "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
    Recipe("branch_grpo", "branch", "depth", "ppo_clip",
              peer="Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py",
              summary="BranchGRPO: trees split at fixed steps, fused rewards normalised per depth, every edge trained",
              defaults=(*_DANCE_SAMPLING, "sampling.num_steps=20", "sampling.branching=2",
                        "sampling.split_steps=0,3,6,9", "sampling.split_noise_scale=4.0", "sampling.last_step=x0",
                        "sampling.trees_per_prompt=1", "loss.estimator=leaf", "loss.timestep_fraction=1.0",
                        "loss.clip_range=1e-3", "loss.clip_high=0", "loss.adv_clip=5", "loss.kl_coef=0")),
):
    register_recipe(_recipe)


# ----------------------------------------------------------------------------------------------
# The options whose use the recipe decides. ``loss.kl_form`` (read when ``loss.kl_coef > 0``) is
# declared here too, as every loss reads it alike; the one rule decided by ``sampling.transition``
# (``sampling.cps_scoring``) lives with the sections in :mod:`treegrpo.config`, and the model kinds'
# with each kind (:mod:`treegrpo.kinds`).


def _algorithms(applies: Callable[[Recipe], bool]) -> Callable[[], str]:
    """``loss.algorithm=a, b``: the registered algorithms whose recipe ``applies``."""
    return lambda: "loss.algorithm=" + ", ".join(sorted(r.name for r in RECIPES.values() if applies(r)))


def _tree(config: Any) -> bool:
    """Whether the run samples trees (TreeGRPO's window or BranchGRPO's splits)."""
    return config.loss.recipe.tree


def _window_tree(config: Any) -> bool:
    """Whether the run samples TreeGRPO's trees, whose window ``sampling.window`` places."""
    return config.loss.recipe.sampler == "tree"


def _branch(config: Any) -> bool:
    return config.loss.recipe.sampler == "branch"


def sliding_window(config: Any) -> bool:
    """Trajectories whose SDE steps are a sliding window (MixGRPO, or ``sampling.sde_steps=window``)."""
    recipe = config.loss.recipe
    return recipe.sampler == "sliding" or (recipe.sampler == "trajectory" and config.sampling.sde_steps == "window")


def windowed(config: Any) -> bool:
    """Whether the SDE steps are a window of ``sampling.depth`` steps (a tree's, or a sliding one)."""
    return _window_tree(config) or sliding_window(config)


def window_start_fixed(config: Any) -> bool:
    """Whether the window starts at ``sampling.window_start`` (a fixed or shifting tree window, or a
    sliding one) rather than at a drawn step."""
    return (_window_tree(config) and config.sampling.window in ("fixed", "shifting")) or sliding_window(config)


def _advantage(config: Any) -> str:
    return config.loss.recipe.advantage


def _by_algorithm(config: Any) -> str:
    """``loss.algorithm=NAME``, with the tree window when the recipe places one (the error's context)."""
    return f"loss.algorithm={config.loss.algorithm}" + (
        f" (sampling.window={config.sampling.window})" if _window_tree(config) else "")


def _use(fields: tuple[str, ...], applies: Callable[[Any], bool], who: str | Callable[[], str]) -> Use:
    return Use(fields, applies, who, _by_algorithm)


USES: tuple[Use, ...] = (
    _use(("sampling.branching", "sampling.trees_per_prompt"), _tree, _algorithms(lambda a: a.tree)),
    _use(("loss.estimator", "loss.estimator_options"), lambda c: _advantage(c) in ("tree", "depth"),
         _algorithms(lambda a: a.advantage in ("tree", "depth"))),
    _use(("loss.temperature",), lambda c: _advantage(c) in ("tree", "depth") and c.loss.estimator == "logprob_softmax",
         lambda: _algorithms(lambda a: a.advantage in ("tree", "depth"))() + " with loss.estimator=logprob_softmax"),
    _use(("sampling.window",), _window_tree, _algorithms(lambda a: a.sampler == "tree")),
    _use(("sampling.alpha",), lambda c: _window_tree(c) and c.sampling.window in ("geometric", "adaptive"),
         "a tree algorithm (treegrpo) with sampling.window=geometric or adaptive"),
    _use(("sampling.split_steps", "sampling.split_noise_scale", "loss.prune_depths", "loss.prune_every",
          "loss.prune_stop_depth", "loss.width_pruning", "loss.width_ratio", "loss.prune_fraction"), _branch,
         _algorithms(lambda a: a.sampler == "branch")),
    _use(("sampling.slide",), sliding_window, "loss.algorithm=mixgrpo, mix_grpo, or sampling.sde_steps=window"),
    _use(("loss.kl_form",), lambda c: c.loss.kl_coef > 0, "loss.kl_coef > 0"),
    _use(("sampling.depth",), windowed,
         "loss.algorithm=treegrpo, mixgrpo, mix_grpo, or a trajectory algorithm with sampling.sde_steps=window"),
    _use(("sampling.window_start",), window_start_fixed,
         "sampling.window=fixed or shifting (treegrpo), mixgrpo, mix_grpo, or sampling.sde_steps=window"),
    _use(("sampling.window_shift", "sampling.window_every"),
         lambda c: (_window_tree(c) and c.sampling.window == "shifting") or sliding_window(c),
         "sampling.window=shifting (treegrpo), mixgrpo, mix_grpo, or sampling.sde_steps=window"),
    _use(("sampling.group_size",), lambda c: not _tree(c), _algorithms(lambda a: not a.tree)),
    _use(("sampling.sde_steps", "sampling.shared_noise"), lambda c: not _tree(c), _algorithms(lambda a: not a.tree)),
    _use(("loss.clip_range", "loss.clip_high"), lambda c: c.loss.recipe.clipped, _algorithms(lambda a: a.clipped)),
    _use(("loss.tracker_buffer", "loss.tracker_min_count"), lambda c: _advantage(c) == "tracker",
         _algorithms(lambda a: a.advantage == "tracker")),
    _use(("loss.reward_aggregation", "loss.advantage_std", "loss.advantage_eps"), lambda c: _advantage(c) != "tracker",
         "every algorithm but ddpo (its tracker normalises the weighted reward)"),
)
"""The options only some recipes read (and ``loss.kl_form``, read with ``loss.kl_coef > 0``)."""


__all__ = ["RECIPES", "USES", "Recipe", "recipe", "register_recipe", "sliding_window", "window_start_fixed",
           "windowed"]
