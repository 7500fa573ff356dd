"""Policy-gradient losses over parent batches (:func:`treegrpo.envs.parent_batch`), TorchRL-style.

Every loss is an :class:`~treegrpo.algos.interfaces.EdgeLoss` (a ``torchrl.objectives.LossModule``): it reads the keys of its :class:`_AcceptedKeys`
(renamed with ``set_keys``, as TorchRL losses are) and returns a TensorDict of ``loss_*`` terms
(summed for the backward pass) and diagnostics, including the detached ``[M, K]`` ``log_ratio``
for per-timestep logging. :meth:`EdgeLoss.log_probs` runs the policy once per parent and scores
the parent's ``K`` children against that single Gaussian (one forward, ``K`` updates).

There are two objectives: :class:`PPOClipLoss` (TreeGRPO, GRPO, MixGRPO and DDPO-PPO: the
algorithms differ in their samplers and advantages, see :mod:`treegrpo.algorithms`) with
asymmetric clip bounds, and :class:`ReinforceLoss`. :func:`register_loss` makes a new one
selectable as ``loss.algorithm``. TorchRL's ``ClipPPOLoss`` is not reused because it wants one
distribution per action and a critic; here ``K`` actions share a distribution, log-probs are
mean-reduced, and there is no value function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from treeadv.registry import Registry, RegistryError
from treegrpo.algos.interfaces import EdgeBatchError, EdgeLoss, masked_mean
from treegrpo.envs.models import Denoiser
from treegrpo.envs.transitions import Transition
from treegrpo.recipes import RECIPES, Recipe, recipe, register_recipe

if TYPE_CHECKING:
    from treegrpo.config import Config


def ppo_clip_objective(
    new_log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor, mask: Tensor, clip_range: float,
    clip_high: float | None = None,
) -> dict[str, Tensor]:
    """PPO-clip, ``-mean min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)`` over real edges, and
    diagnostics; ``eps_low = clip_range`` and ``eps_high = clip_high`` (``None``: ``clip_range``)."""
    high = clip_range if clip_high is None else clip_high
    log_ratio = new_log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1 - clip_range, 1 + high)
    with torch.no_grad():
        real = ratio[mask]
        outside = (ratio - 1 > high) | (1 - ratio > clip_range)
        stats = {
            "clip_fraction": masked_mean(outside.float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": real.mean() if real.numel() else ratio.new_zeros(()),
            "ratio_std": real.std(unbiased=False) if real.numel() else ratio.new_zeros(()),
            "log_ratio": log_ratio.detach(),
        }
    return {"loss_objective": masked_mean(torch.maximum(unclipped, clipped), mask), **stats}


class PPOClipLoss(EdgeLoss):
    """Clipped importance-ratio objective on every edge, ratios clipped to ``[1 - clip_range,
    1 + clip_high]`` (``clip_high=None``: symmetric), plus the optional KL to a reference model.

    Override :meth:`objective` to change the clipped objective and keep everything else (the
    forward per parent, the keys, the KL): see ``examples/swap_loss.py``.
    """

    out_keys: ClassVar[list[str]] = ["loss_objective", "loss_kl", "clip_fraction", "approx_kl", "ratio_mean",
                                     "ratio_std", "kl", "log_ratio", "ratio_sensitivity"]

    def __init__(self, model: Denoiser, transition: Transition, *, clip_range: float = 1e-4,
                 clip_high: float | None = None, kl_coef: float = 0.0, reference: Denoiser | str | None = None,
                 kl_form: str = "transition") -> None:
        super().__init__(model, transition, kl_coef=kl_coef, reference=reference, kl_form=kl_form)
        if not clip_range > 0:
            raise ValueError(f"clip_range: expected a number > 0, got {clip_range!r}")
        if clip_high is not None and not clip_high > 0:
            raise ValueError(f"clip_high: expected a number > 0 or None (= clip_range), got {clip_high!r}")
        self.clip_range = clip_range
        self.clip_high = clip_range if clip_high is None else clip_high

    @property
    def clip_bounds(self) -> tuple[float, float]:
        """``(clip_range, clip_high)``."""
        return self.clip_range, self.clip_high

    @classmethod
    def from_config(cls, config: Config, model: Denoiser, transition: Transition,
                    reference: Denoiser | str | None = None) -> PPOClipLoss:
        c = config.loss
        return cls(model, transition, clip_range=c.clip_range, clip_high=c.upper_clip, kl_coef=c.kl_coef,
                   reference=reference if c.kl_coef > 0 else None, kl_form=c.kl_form, **cls.options_from(config))

    def objective(self, new_log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor,
                  mask: Tensor) -> dict[str, Tensor]:
        """``loss_objective`` and the ratio diagnostics (PPO-clip with this loss's bounds)."""
        return ppo_clip_objective(new_log_prob, old_log_prob, advantage, mask, self.clip_range, self.clip_high)

    def forward(self, td: TensorDictBase) -> TensorDict:
        new_log_prob, old_log_prob, advantage, mask, mean, std = self.edge_terms(td)
        terms = self.objective(new_log_prob, old_log_prob, advantage, mask)
        terms.update(self.kl_terms(td, mean, std))
        terms.update(self.rounding_terms(td, mean, std))
        return TensorDict(terms, batch_size=[])


class ReinforceLoss(EdgeLoss):
    """REINFORCE, ``-mean A log pi`` (plus the optional KL): the smallest loss that consumes per-edge
    advantages.

    It shows that the advantage interface is loss-agnostic. It has no importance ratio, so its
    gradient is the policy gradient of the sampled edges only in an iteration's first optimisation
    pass; later passes (``train.inner_epochs > 1``, as ``examples/swap_loss.py`` runs every loss)
    reuse those edges as if the policy had not moved. ``ratio_mean`` and ``approx_kl`` show how far it has.
    """

    def forward(self, td: TensorDictBase) -> TensorDict:
        new_log_prob, old_log_prob, advantage, mask, mean, std = self.edge_terms(td)
        terms = {
            "loss_objective": -masked_mean(advantage * new_log_prob, mask),
            **ratio_diagnostics((new_log_prob - old_log_prob).detach(), mask),
            **self.kl_terms(td, mean, std),
            **self.rounding_terms(td, mean, std),
        }
        return TensorDict(terms, batch_size=[])


def ratio_diagnostics(log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """What a loss without a clip reports about how far the policy moved: ``approx_kl`` (mean of
    ``log_ratio^2 / 2`` over the edges in ``mask``), ``ratio_mean``, ``ratio_std`` and the detached
    ``[M, K]`` ``log_ratio`` itself (per-timestep logs)."""
    log_ratio = log_ratio.detach()
    real = torch.exp(log_ratio[mask])
    return {
        "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
        "ratio_mean": real.mean() if real.numel() else log_ratio.new_zeros(()),
        "ratio_std": real.std(unbiased=False) if real.numel() else log_ratio.new_zeros(()),
        "log_ratio": log_ratio,
    }


def total_loss(terms: TensorDictBase) -> Tensor:
    """Sum of the ``loss_*`` entries, the quantity to differentiate."""
    return sum(value for key, value in terms.items() if key.startswith("loss_"))


LOSSES: Registry[type[EdgeLoss]] = Registry("loss")
"""Loss name (an algorithm recipe's ``loss``) to its class; :func:`register_loss` adds."""
LOSSES.add("ppo_clip", PPOClipLoss)
LOSSES.add("reinforce", ReinforceLoss)

L = TypeVar("L", bound=type[EdgeLoss])


def register_loss(name: str, *, like: str = "treegrpo", replace: bool = False) -> Callable[[L], L]:
    """Class decorator: register a loss as the algorithm ``name``, trained as ``like`` is (its
    sampler and advantages, :mod:`treegrpo.recipes`). Then ``loss.algorithm = name`` selects it,
    with no edit elsewhere; the loss is built by its :meth:`~EdgeLoss.from_config`. A taken name
    follows :mod:`treeadv.registry`'s rule (a plugin loaded twice is fine; another class needs ``replace``).

    Examples:
        >>> from treegrpo.algos import PPOClipLoss, register_loss
        >>> from treegrpo.recipes import recipe
        >>> @register_loss("clip_doubled")
        ... class ClipDoubled(PPOClipLoss):
        ...     def __init__(self, model, transition, *, clip_range=1e-4, **options):
        ...         super().__init__(model, transition, clip_range=2 * clip_range, **options)
        >>> recipe("clip_doubled").sampler, recipe("clip_doubled").loss
        ('tree', 'clip_doubled')
    """
    like_recipe = recipe(like)

    def register(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, EdgeLoss)):
            raise TypeError(f"register_loss({name!r}): expected an EdgeLoss subclass, got {cls!r}")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else f"{cls.__name__} like {like}"
        previous = RECIPES.get(name)
        register_recipe(Recipe(name, like_recipe.sampler, like_recipe.advantage, loss=name,
                               clipped=issubclass(cls, PPOClipLoss), summary=summary), replace=replace)
        try:
            LOSSES.add(name, cls, replace=replace)
        except RegistryError:  # the name is another loss's: leave the recipes as they were
            if previous is None:
                RECIPES.remove(name)
            else:
                RECIPES.add(name, previous, replace=True)
            raise
        return cls

    return register


def loss_class(name: str) -> type[EdgeLoss]:
    """The loss class of the algorithm ``name``."""
    return LOSSES[RECIPES[name].loss]


__all__ = [
    "LOSSES", "EdgeBatchError", "PPOClipLoss", "ReinforceLoss", "loss_class", "masked_mean",
    "ppo_clip_objective", "ratio_diagnostics", "register_loss", "total_loss"]
