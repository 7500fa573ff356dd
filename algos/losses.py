"""Policy-gradient losses over parent batches (:mod:`treegrpo.algos.batch`), TorchRL-style.

Every loss is a ``torchrl.objectives.LossModule``: it reads ``latent, step, cond, sample,
log_prob, advantage, mask`` and returns a TensorDict of ``loss_*`` terms (summed for the backward
pass) and diagnostics, including the detached ``[M, K]`` ``log_ratio`` for per-timestep logging.
They share :meth:`EdgeLoss.log_probs`, which runs the policy once per parent
and scores the parent's ``K`` children against that single Gaussian: one forward, ``K`` updates.
Algorithms differ only where they differ: the objective here, and the sampler and advantage
elsewhere. TorchRL's ``ClipPPOLoss`` is not reused because it wants one distribution per action
and a critic; here ``K`` actions share a distribution, log-probs are mean-reduced, and there is no
value function. The clipped objective itself is :func:`ppo_clip_objective`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor, nn
from torchrl.objectives import LossModule
from treegrpo.algos.model_setup import adapters_disabled
from treegrpo.envs.gaussian import gaussian_kl
from treegrpo.envs.models import Denoiser
from treegrpo.envs.transitions import Transition


def masked_mean(value: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``value`` over ``mask`` (0 when the mask is empty)."""
    mask = mask.to(value.dtype)
    return (value * mask).sum() / mask.sum().clamp(min=1)


def ppo_clip_objective(
    new_log_prob: Tensor, old_log_prob: Tensor, advantage: Tensor, mask: Tensor, clip_range: float
) -> dict[str, Tensor]:
    """PPO-clip, ``-mean min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` over real edges, and diagnostics."""
    log_ratio = new_log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    with torch.no_grad():
        real = ratio[mask]
        stats = {
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip_range).float(), mask),
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
    """

    in_keys: ClassVar[list[str]] = ["latent", "step", "cond", "sample", "log_prob", "advantage", "mask"]

    def __init__(self, model: Denoiser, transition: Transition, *, kl_coef: float = 0.0,
                 reference: Denoiser | str | None = None) -> None:
        super().__init__()
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef: expected a number >= 0, got {kl_coef!r}")
        if kl_coef > 0 and reference is None:
            raise ValueError("reference: kl_coef > 0 needs a reference model or 'disable_adapter'")
        self.model = model
        self.transition = transition
        self.kl_coef = kl_coef
        self._reference = reference if kl_coef > 0 else None

    def policy_mean_std(self, td: TensorDictBase, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std of the policy's Gaussian at each parent (one model row per parent)."""
        model = self.model if model is None else model
        step = td["step"]
        cond = td.get("cond", None)
        prediction = model(td["latent"], self.transition.model_time(step), cond)
        return self.transition.mean_std(td["latent"], prediction, step)

    def log_probs(self, td: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """``[M, K]`` log-probs of every child sample under the current policy, plus the mean and std."""
        mean, std = self.policy_mean_std(td)
        return self.transition.score_children(td["sample"], mean, std), mean, std

    def kl_terms(self, td: TensorDictBase, mean: Tensor, std: Tensor) -> dict[str, Tensor]:
        """``{"loss_kl", "kl"}`` for the batch (empty when ``kl_coef`` is 0): the mean over real edges
        of the per-parent KL to the reference (an edge carries its parent's KL)."""
        if self.kl_coef == 0:
            return {}
        kl = masked_mean(self.reference_kl(td, mean, std).unsqueeze(-1).expand_as(td["mask"]), td["mask"])
        return {"loss_kl": self.kl_coef * kl, "kl": kl.detach()}

    def reference_kl(self, td: TensorDictBase, mean: Tensor, std: Tensor) -> Tensor:
        """``[M]`` KL of the policy's transition to the reference's at each parent (no grad through
        the reference)."""
        if self._reference is None:
            raise ValueError("reference: this loss has no reference model (kl_coef is 0)")
        with torch.no_grad(), self._reference_context():
            model = self.model if self._reference == "disable_adapter" else self._reference
            ref_mean, _ = self.policy_mean_std(td, model)
        return gaussian_kl(mean, ref_mean, std, self.transition.reduce)

    def _reference_context(self):
        if self._reference != "disable_adapter":
            return nullcontext()
        return adapters_disabled(self.model)


class PPOClipLoss(EdgeLoss):
    """Clipped importance-ratio objective on every edge, plus the optional KL to a reference model."""

    out_keys: ClassVar[list[str]] = ["loss_objective", "loss_kl", "clip_fraction", "approx_kl", "ratio_mean", "ratio_std", "kl", "log_ratio"]

    def __init__(
        self,
        model: Denoiser,
        transition: Transition,
        *,
        clip_range: float = 1e-4,
        kl_coef: float = 0.0,
        reference: Denoiser | str | None = None,
    ) -> None:
        super().__init__(model, transition, kl_coef=kl_coef, reference=reference)
        if not clip_range > 0:
            raise ValueError(f"clip_range: expected a number > 0, got {clip_range!r}")
        self.clip_range = clip_range

    def forward(self, td: TensorDictBase) -> TensorDict:
        new_log_prob, mean, std = self.log_probs(td)
        terms = ppo_clip_objective(new_log_prob, td["log_prob"], td["advantage"], td["mask"], self.clip_range)
        terms.update(self.kl_terms(td, mean, std))
        return TensorDict(terms, batch_size=[])


class TreeGRPOLoss(PPOClipLoss):
    """TreeGRPO: PPO-clip on every SDE-window edge of the tree (no KL in the paper's setting)."""


class GRPOLoss(PPOClipLoss):
    """Trajectory GRPO (Flow-GRPO, DanceGRPO; MixGRPO with a windowed sampler): PPO-clip on every
    SDE step of every trajectory."""


class DDPOLoss(PPOClipLoss):
    """DDPO-PPO: the same clipped objective; its advantages come from the per-prompt stat tracker."""


class ReinforceLoss(EdgeLoss):
    """REINFORCE, ``-mean A log pi`` (plus the optional KL): the smallest loss that consumes per-edge
    advantages.

    It exists to show that the advantage interface is loss-agnostic; it is on-policy, so it is
    meant for one optimisation epoch per iteration.
    """

    out_keys: ClassVar[list[str]] = ["loss_objective", "loss_kl", "approx_kl", "ratio_mean", "ratio_std", "kl", "log_ratio"]

    def forward(self, td: TensorDictBase) -> TensorDict:
        new_log_prob, mean, std = self.log_probs(td)
        mask = td["mask"]
        log_ratio = (new_log_prob - td["log_prob"]).detach()
        real = torch.exp(log_ratio[mask])
        terms = {
            "loss_objective": -masked_mean(td["advantage"] * new_log_prob, mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": real.mean() if real.numel() else log_ratio.new_zeros(()),
            "ratio_std": real.std(unbiased=False) if real.numel() else log_ratio.new_zeros(()),
            "log_ratio": log_ratio,
            **self.kl_terms(td, mean, std),
        }
        return TensorDict(terms, batch_size=[])


def total_loss(terms: TensorDictBase) -> Tensor:
    """Sum of the ``loss_*`` entries, the quantity to differentiate."""
    return sum(value for key, value in terms.items() if key.startswith("loss_"))
