"""Policy-gradient losses over parent batches (:func:`treegrpo.envs.parent_batch`), TorchRL-style.

Every loss is a ``torchrl.objectives.LossModule``: it reads the keys of its :class:`_AcceptedKeys`
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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule
from treegrpo.algos.loss_options import parse_loss_options
from treegrpo.algos.model_setup import adapters_disabled
from treegrpo.envs.gaussian import gaussian_kl
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.numerics import edge_sensitivity
from treegrpo.envs.transitions import FlowSDE, Transition

from treegrpo.algorithms import ALGORITHMS, Algorithm, algorithm, register_algorithm
from treegrpo.errors import TreegrpoError

if TYPE_CHECKING:
    from treegrpo.config import Config


KL_FORMS = ("transition", "flow_grpo")
"""Values of ``loss.kl_form``: which variance the KL to the reference divides by (:meth:`EdgeLoss.kl_step_factor`)."""


class EdgeBatchError(TreegrpoError, KeyError):
    """A parent batch lacks a key the loss reads."""

    def __str__(self) -> str:
        return str(self.args[0])


def masked_mean(value: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``value`` over ``mask`` (0 when the mask is empty)."""
    mask = mask.to(value.dtype)
    return (value * mask).sum() / mask.sum().clamp(min=1)


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


class EdgeLoss(LossModule):
    """Base class: holds the policy (a denoiser), its transition and the optional KL to a reference.

    ``kl_coef > 0`` adds ``loss_kl = kl_coef * mean over trained edges of KL(pi(.|x) || pi_ref(.|x))``,
    the closed-form KL between the policy's and the reference's Gaussian transition at the edge's
    parent (:func:`~treegrpo.envs.gaussian.gaussian_kl`: same std, so ``(mu - mu_ref)^2 / (2 std^2)``,
    reduced over latent dimensions as the log-probs are). The reference is any denoiser (a frozen
    copy) or ``"disable_adapter"`` for a model with LoRA adapters (the base model: adapters switched
    off for the reference forward, no second copy in memory). Subclasses write :meth:`forward` and
    call :meth:`kl_terms` with the policy's mean and std.

    The conditioning is the batch's ``cond``, or rows ``cond_index`` of its ``cond_table`` (what
    :func:`~treegrpo.envs.parent_batch` stores: the prompts' table once, gathered per minibatch).
    """

    @dataclass
    class _AcceptedKeys:
        """The batch keys this loss reads; rename them with :meth:`set_keys`."""

        latent: NestedKey = "latent"
        step: NestedKey = "step"
        sample: NestedKey = "sample"
        log_prob: NestedKey = "log_prob"
        advantage: NestedKey = "advantage"
        mask: NestedKey = "mask"
        cond: NestedKey = "cond"
        cond_table: NestedKey = "cond_table"
        cond_index: NestedKey = "cond_index"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    out_keys: ClassVar[list[str]] = ["loss_objective", "loss_kl", "approx_kl", "ratio_mean", "ratio_std", "kl",
                                     "log_ratio", "ratio_sensitivity"]

    def __init__(self, model: Denoiser, transition: Transition, *, kl_coef: float = 0.0,
                 reference: Denoiser | str | None = None, kl_form: str = "transition") -> None:
        super().__init__()
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef: expected a number >= 0, got {kl_coef!r}")
        if kl_form not in KL_FORMS:
            raise ValueError(f"kl_form: expected one of {', '.join(KL_FORMS)}, got {kl_form!r}")
        if kl_coef > 0 and reference is None:
            raise ValueError("reference: kl_coef > 0 needs a reference model or 'disable_adapter'")
        self.model = model
        self.transition = transition
        self.kl_coef, self.kl_form = kl_coef, kl_form
        self._reference = reference if kl_coef > 0 else None

    @classmethod
    def from_config(cls, config: Config, model: Denoiser, transition: Transition,
                    reference: Denoiser | str | None = None) -> EdgeLoss:
        """The loss a config describes (``loss.kl_coef`` to ``reference``); subclasses add their options."""
        c = config.loss
        return cls(model, transition, kl_coef=c.kl_coef, reference=reference if c.kl_coef > 0 else None,
                   kl_form=c.kl_form, **cls.options_from(config))

    @classmethod
    def options_from(cls, config: Config) -> dict[str, Any]:
        """The keyword arguments ``loss.options`` gives this class (``name=value`` items typed by the
        constructor's annotations: :func:`~treegrpo.algos.loss_options.parse_loss_options`). A loss
        that writes its own :meth:`from_config` passes them on with ``**cls.options_from(config)``."""
        return parse_loss_options(cls, config.loss.options)

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        """No value estimator: renamed keys need forwarding nowhere."""

    @property
    def in_keys(self) -> list[NestedKey]:
        """The keys :meth:`forward` reads (conditioning: ``cond``, or ``cond_table`` with ``cond_index``)."""
        keys = self.tensor_keys
        return [keys.latent, keys.step, keys.cond_index, keys.sample, keys.log_prob, keys.advantage, keys.mask]

    def check_keys(self, td: TensorDictBase, required: tuple[str, ...] = ("latent", "step", "sample", "log_prob",
                                                                          "advantage", "mask")) -> None:
        """One-line :class:`EdgeBatchError` naming every key of ``required`` the batch lacks."""
        present = set(td.keys(include_nested=True))
        missing = [str(getattr(self.tensor_keys, name)) for name in required
                   if getattr(self.tensor_keys, name) not in present]
        if missing:
            raise EdgeBatchError(f"{type(self).__name__}: the batch lacks {', '.join(missing)} (it has "
                                 f"{', '.join(sorted(map(str, present)))}); build it with treegrpo.envs.parent_batch "
                                 "or rename the loss's keys with set_keys")

    def conditioning(self, td: TensorDictBase) -> Cond:
        """The batch's conditioning, one row per parent."""
        keys = self.tensor_keys
        present = set(td.keys(include_nested=True))
        if keys.cond in present:
            return td.get(keys.cond)
        if keys.cond_table in present and keys.cond_index in present:
            return td.get_non_tensor(keys.cond_table).rows(td.get(keys.cond_index))
        raise EdgeBatchError(f"{type(self).__name__}: the batch has no conditioning: neither {keys.cond!r} nor "
                             f"{keys.cond_table!r} with {keys.cond_index!r}; pass cond to treegrpo.envs.parent_batch")

    def policy_mean_std(self, td: TensorDictBase, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std of the policy's Gaussian at each parent (one model row per parent)."""
        model = self.model if model is None else model
        keys = self.tensor_keys
        latent, step = td.get(keys.latent), td.get(keys.step)
        prediction = model(latent, self.transition.model_time(step), self.conditioning(td))
        return self.transition.mean_std(latent, prediction, step)

    def log_probs(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """``[M, K]`` log-probs of every child sample under the current policy, plus the mean and std."""
        self.check_keys(td, ("latent", "step", "sample"))
        mean, std = self.policy_mean_std(td)
        return self.transition.score_children(td.get(self.tensor_keys.sample), mean, std), mean, std

    def kl_terms(self, td: TensorDictBase, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        """``{"loss_kl", "kl"}`` for the batch (empty when ``kl_coef`` is 0): the mean over real edges
        of the per-parent KL to the reference (an edge carries its parent's KL)."""
        if self.kl_coef == 0:
            return {}
        mask = td.get(self.tensor_keys.mask)
        kl = masked_mean(self.reference_kl(td, mean, std).unsqueeze(-1).expand_as(mask), mask)
        return {"loss_kl": self.kl_coef * kl, "kl": kl.detach()}

    def reference_kl(self, td: TensorDictBase, mean: Tensor, std: Tensor) -> Tensor:
        """``[M]`` KL of the policy's transition to the reference's at each parent (no grad through
        the reference)."""
        if self._reference is None:
            raise ValueError("reference: this loss has no reference model (kl_coef is 0)")
        with torch.no_grad(), self._reference_context():
            model = self.model if self._reference == "disable_adapter" else self._reference
            ref_mean, _ = self.policy_mean_std(td, model)
        kl = gaussian_kl(mean, ref_mean, std, self.transition.reduce)
        return kl * self.kl_step_factor(td.get(self.tensor_keys.step)).to(kl) if self.kl_form == "flow_grpo" else kl

    def kl_step_factor(self, step: Tensor) -> Tensor:
        """``[M]`` factor of ``kl_form="flow_grpo"``: Flow-GRPO's ``flow_sde`` KL divides by the squared
        diffusion coefficient without the step's ``|dt|`` (``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``),
        so it is the true KL times ``|dt| = t - t_next``; its CPS KL uses the step's own std (factor 1)."""
        if not isinstance(self.transition, FlowSDE):
            return torch.ones(step.shape, dtype=torch.float64, device=step.device)
        t, t_next = self.transition.timesteps.times(step)
        return t - t_next

    def _reference_context(self):
        if self._reference != "disable_adapter":
            return nullcontext()
        return adapters_disabled(self.model)

    def rounding_terms(self, td: TensorDictBase, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        """``{"ratio_sensitivity": [M, K, 2]}``: how far each edge's log-ratio moves per unit of relative
        rounding of the model's output and of the step math (:func:`~treegrpo.envs.numerics.edge_sensitivity`);
        the trainer's on-policy statistics divide the first minibatch's ``log_ratio`` by the spread it
        gives, at no extra forward."""
        keys = self.tensor_keys
        return {"ratio_sensitivity": edge_sensitivity(self.transition, td.get(keys.latent), td.get(keys.sample), mean,
                                                      std, td.get(keys.step))}

    def edge_terms(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Checks the keys, then ``(new log-probs [M, K], behaviour log-probs, advantages, mask)`` and
        the policy's ``mean, std`` at the parents (for the KL)."""
        self.check_keys(td)
        new_log_prob, mean, std = self.log_probs(td)
        keys = self.tensor_keys
        return new_log_prob, td.get(keys.log_prob), td.get(keys.advantage), td.get(keys.mask), mean, std


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


LOSSES: dict[str, type[EdgeLoss]] = {"ppo_clip": PPOClipLoss, "reinforce": ReinforceLoss}
"""Loss name (an algorithm recipe's ``loss``) to its class; :func:`register_loss` adds."""

L = TypeVar("L", bound=type[EdgeLoss])


def register_loss(name: str, *, like: str = "treegrpo") -> Callable[[L], L]:
    """Class decorator: register a loss as the algorithm ``name``, trained as ``like`` is (its
    sampler and advantages, :mod:`treegrpo.algorithms`). Then ``loss.algorithm = name`` selects it,
    with no edit elsewhere; the loss is built by its :meth:`~EdgeLoss.from_config`.

        @register_loss("clip_higher")
        class ClipHigherLoss(PPOClipLoss): ...
    """
    recipe = algorithm(like)

    def register(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, EdgeLoss)):
            raise TypeError(f"register_loss({name!r}): expected an EdgeLoss subclass, got {cls!r}")
        LOSSES[name] = cls
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else f"{cls.__name__} like {like}"
        register_algorithm(Algorithm(name, recipe.sampler, recipe.advantage, loss=name,
                                     clipped=issubclass(cls, PPOClipLoss), summary=summary))
        return cls

    return register


def loss_class(name: str) -> type[EdgeLoss]:
    """The loss class of the algorithm ``name``."""
    return LOSSES[ALGORITHMS[name].loss]


__all__ = [
    "LOSSES", "EdgeBatchError", "EdgeLoss", "PPOClipLoss", "ReinforceLoss", "loss_class", "masked_mean",
    "ppo_clip_objective", "ratio_diagnostics", "register_loss", "total_loss"]
