"""What the trainer needs of its three parts, in one place: :class:`Sampler`, :class:`Advantage`, :class:`EdgeLoss`.

A sampler turns prompts into a :class:`~treegrpo.envs.Rollout` (a tree); an advantage turns the
tree's rewards into one advantage per edge; :func:`treegrpo.envs.parent_batch` groups the edges
into a :class:`~treegrpo.envs.ParentBatch`; a loss scores it. The trainer reads the batch by its
typed fields, and a loss reads it under its own key names (:meth:`EdgeLoss.loss_input`, renamed
with ``set_keys``), so renaming a loss's keys never breaks training. Everything else the trainer asks of
a loss (its ``model``, :meth:`EdgeLoss.log_probs`, :attr:`EdgeLoss.clip_bounds`) is API of
:class:`EdgeLoss`, not probed for.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.objectives import LossModule

import treeadv
from treegrpo.algos.loss_options import parse_loss_options
from treegrpo.algos.model_setup import adapters_disabled
from treegrpo.envs.gaussian import gaussian_kl
from treegrpo.envs.models import Cond, Denoiser
from treegrpo.envs.numerics import edge_sensitivity
from treegrpo.envs.parent_batch import ParentBatch
from treegrpo.envs.rollout import Rollout
from treegrpo.envs.transitions import FlowSDE, Transition
from treegrpo.envs.windows import WindowSchedule
from treegrpo.errors import TreegrpoError

if TYPE_CHECKING:
    from treegrpo.config import Config


Batch = ParentBatch | TensorDictBase
"""What a loss reads: a :class:`~treegrpo.envs.ParentBatch`, or a TensorDict under the loss's keys."""


class Sampler(Protocol):
    """What the trainer needs of a sampler (every :class:`~treegrpo.envs.sampler.PlannedSampler`: tree, trajectory, branch):
    the denoiser it samples with (the trainer checks the loss scores with the same one), its window
    schedule, and ``sample``."""

    model: Denoiser

    @property
    def schedule(self) -> WindowSchedule | None: ...

    def sample(self, cond: Cond, *, epoch: int, latent_shape: tuple[int, ...], num_prompts: int,
               generator: torch.Generator, device: torch.device) -> Rollout: ...


class Advantage(Protocol):
    """What the trainer needs of an advantage: ``(forest, rewards, leaf prompt ids) -> BackupResult``,
    and a state for checkpoints (``{}`` when it keeps none: :class:`~treegrpo.algos.GroupAdvantage`;
    DDPO's tracker keeps its buffers)."""

    def __call__(self, tree: treeadv.Tree, rewards: Tensor, prompt_ids: Tensor) -> treeadv.BackupResult: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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


def _parent_batch_input(loss: EdgeLoss, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: a :class:`~treegrpo.envs.ParentBatch` reaches ``forward`` as :meth:`EdgeLoss.loss_input`."""
    if args and isinstance(args[0], ParentBatch):
        return (loss.loss_input(args[0]), *args[1:])
    return args


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

    Every method that reads a batch takes a TensorDict under the loss's keys (:attr:`tensor_keys`,
    renamed with ``set_keys``) or a :class:`~treegrpo.envs.ParentBatch`, which it reads through
    :meth:`loss_input`. What the trainer needs of a loss is API here: :attr:`model` (the policy;
    the trainer swaps in its DDP wrapper), :meth:`log_probs` (the on-policy check) and
    :attr:`clip_bounds` (``None`` for an unclipped loss).
    """

    model: nn.Module
    """The policy the loss scores with (a denoiser, or the trainer's DDP wrapper of it)."""

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
        self.register_forward_pre_hook(_parent_batch_input)

    @property
    def clip_bounds(self) -> tuple[float, float] | None:
        """``(eps_low, eps_high)``: the importance ratio is clipped to ``[1 - eps_low, 1 + eps_high]``;
        ``None`` for a loss that clips nothing (the default, e.g. REINFORCE). The trainer's on-policy
        statistics count the edges that rounding alone puts outside these bounds."""
        return None

    def loss_input(self, batch: Batch) -> TensorDictBase:
        """``batch`` as this loss reads it: a :class:`~treegrpo.envs.ParentBatch` as a TensorDict
        under :attr:`tensor_keys` (:meth:`~treegrpo.envs.ParentBatch.as_loss_input`), a TensorDict as
        it is (its keys must be the loss's already)."""
        return batch.as_loss_input(self.tensor_keys) if isinstance(batch, ParentBatch) else batch

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

    def check_keys(self, td: Batch, required: tuple[str, ...] = ("latent", "step", "sample", "log_prob",
                                                                 "advantage", "mask")) -> None:
        """One-line :class:`EdgeBatchError` naming every key of ``required`` the batch lacks."""
        td = self.loss_input(td)
        present = set(td.keys(include_nested=True))
        missing = [str(getattr(self.tensor_keys, name)) for name in required
                   if getattr(self.tensor_keys, name) not in present]
        if missing:
            raise EdgeBatchError(f"{type(self).__name__}: the batch lacks {', '.join(missing)} (it has "
                                 f"{', '.join(sorted(map(str, present)))}); build it with treegrpo.envs.parent_batch "
                                 "or rename the loss's keys with set_keys")

    def conditioning(self, td: Batch) -> Cond:
        """The batch's conditioning, one row per parent."""
        td = self.loss_input(td)
        keys = self.tensor_keys
        present = set(td.keys(include_nested=True))
        if keys.cond in present:
            return td.get(keys.cond)
        if keys.cond_table in present and keys.cond_index in present:
            return td.get_non_tensor(keys.cond_table).rows(td.get(keys.cond_index))
        raise EdgeBatchError(f"{type(self).__name__}: the batch has no conditioning: neither {keys.cond!r} nor "
                             f"{keys.cond_table!r} with {keys.cond_index!r}; pass cond to treegrpo.envs.parent_batch")

    def policy_mean_std(self, td: Batch, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std of the policy's Gaussian at each parent (one model row per parent)."""
        td = self.loss_input(td)
        model = self.model if model is None else model
        keys = self.tensor_keys
        latent, step = td.get(keys.latent), td.get(keys.step)
        prediction = model(latent, self.transition.model_time(step), self.conditioning(td))
        return self.transition.mean_std(latent, prediction, step)

    def log_probs(self, td: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """``[M, K]`` log-probs of every child sample under the current policy, plus the mean and std."""
        td = self.loss_input(td)
        self.check_keys(td, ("latent", "step", "sample"))
        mean, std = self.policy_mean_std(td)
        return self.transition.score_children(td.get(self.tensor_keys.sample), mean, std), mean, std

    def kl_terms(self, td: Batch, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        """``{"loss_kl", "kl"}`` for the batch (empty when ``kl_coef`` is 0): the mean over real edges
        of the per-parent KL to the reference (an edge carries its parent's KL)."""
        td = self.loss_input(td)
        if self.kl_coef == 0:
            return {}
        mask = td.get(self.tensor_keys.mask)
        kl = masked_mean(self.reference_kl(td, mean, std).unsqueeze(-1).expand_as(mask), mask)
        return {"loss_kl": self.kl_coef * kl, "kl": kl.detach()}

    def reference_kl(self, td: Batch, mean: Tensor, std: Tensor) -> Tensor:
        """``[M]`` KL of the policy's transition to the reference's at each parent (no grad through
        the reference)."""
        td = self.loss_input(td)
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

    def rounding_terms(self, td: Batch, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        """``{"ratio_sensitivity": [M, K, 2]}``: how far each edge's log-ratio moves per unit of relative
        rounding of the model's output and of the step math (:func:`~treegrpo.envs.numerics.edge_sensitivity`);
        the trainer's on-policy statistics divide the first minibatch's ``log_ratio`` by the spread it
        gives, at no extra forward."""
        td = self.loss_input(td)
        keys = self.tensor_keys
        return {"ratio_sensitivity": edge_sensitivity(self.transition, td.get(keys.latent), td.get(keys.sample), mean,
                                                      std, td.get(keys.step))}

    def edge_terms(self, td: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Checks the keys, then ``(new log-probs [M, K], behaviour log-probs, advantages, mask)`` and
        the policy's ``mean, std`` at the parents (for the KL)."""
        td = self.loss_input(td)
        self.check_keys(td)
        new_log_prob, mean, std = self.log_probs(td)
        keys = self.tensor_keys
        return new_log_prob, td.get(keys.log_prob), td.get(keys.advantage), td.get(keys.mask), mean, std


__all__ = ["KL_FORMS", "Advantage", "Batch", "EdgeBatchError", "EdgeLoss", "Sampler", "masked_mean"]
