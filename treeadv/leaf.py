"""Leaf advantages: rewards normalised within their group (prompt), one reward model at a time.

For reward model ``j`` and the leaves ``l`` of group ``g`` (docs/concepts.md, "Leaf advantages")::

    A_l^(j) = (r_l^(j) - mean_g r^(j)) / (std_g r^(j) + eps),     A_l = sum_j w_j A_l^(j)

with the population standard deviation by default. ``std`` chooses how the spread is measured,
as each peer does (the mean is always the group's):

- ``"group"``: the group's population std, ``eps = 1e-6`` (this project's default);
- ``"group_bessel"``: the group's Bessel-corrected std, ``eps = 1e-8`` (DanceGRPO and MixGRPO,
  ``group_rewards.std() + 1e-8``: DanceGRPO ``fastvideo/train_grpo_flux.py:542``, MixGRPO
  ``fastvideo/train_grpo_flux.py:448``);
- ``"batch"``: the population std of the whole batch, ``eps = 1e-4`` (Flow-GRPO's SD3 configs,
  ``sample.global_std = True``: ``config/base.py:52``, ``flow_grpo/stat_tracking.py:25-29``).

Normalising each reward before weighting keeps a reward with a large scale (Aesthetic ~ 6) from
drowning one with a small scale (CLIPScore ~ 0.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from treeadv.errors import NonFiniteError
from treeadv.errors import format_indices as _listed

STD_EPS: dict[str, float] = {"group": 1e-6, "group_bessel": 1e-8, "batch": 1e-4}
"""Each ``std`` choice of :func:`leaf_advantages` with the ``eps`` its peer adds to it."""


def leaf_advantages(
    rewards: Tensor,
    group: Tensor,
    weights: Tensor | Sequence[float] | None = None,
    eps: float | None = None,
    std: str = "group",
) -> Tensor:
    """Group-normalised, weighted leaf advantages ``[L]``.

    Args:
        rewards: ``[L]`` (one reward model) or ``[L, m]`` (one column per reward model), float.
        group: ``[L]`` integer group (prompt) id of each leaf; ids need not be contiguous.
        weights: ``[m]`` non-negative weight per reward column; defaults to ``1/m`` each
            (the paper's HPSv2.1 + CLIPScore run uses ``[0.8, 0.2]``).
        eps: added to the standard deviation before dividing; ``None``: the peer's of ``std``
            (:data:`STD_EPS`).
        std: ``"group"`` (population std within the group), ``"group_bessel"`` (Bessel-corrected,
            ``n - 1``) or ``"batch"`` (population std over all ``L`` leaves, each column on its own).

    Edge cases: a group of one leaf, or a group whose rewards are all equal, has zero spread, so
    its leaves get advantage exactly 0 (no learning signal rather than noise divided by eps); under
    ``"group_bessel"`` a one-leaf group also gives 0, where the peer's ``std()`` of one value is NaN.
    NaN or inf rewards raise :class:`NonFiniteError` naming how many and in which groups, since a
    single NaN would otherwise poison its whole group.

    Examples:
        >>> import torch
        >>> from treeadv import leaf_advantages
        >>> leaf_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1]), eps=0.0)
        tensor([-1.,  1.,  0.,  0.])
        >>> rewards = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # two reward models, one group
        >>> leaf_advantages(rewards, torch.tensor([0, 0]), weights=[0.8, 0.2], eps=0.0)
        tensor([-1.,  1.])

    The statistics are computed in float64 (float32 rewards near ``1e30`` would overflow the
    variance and give all-zero advantages) and the result comes back in the dtype of ``rewards``.
    """
    if not isinstance(rewards, Tensor) or not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards: expected a floating-point tensor [L] or [L, m], got {_describe(rewards)}")
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards: expected shape [L] or [L, m], got {tuple(rewards.shape)}")
    out_dtype = rewards.dtype
    columns = (rewards if rewards.dim() == 2 else rewards.unsqueeze(1)).to(torch.float64)  # [L, m]
    num_leaves, num_rewards = columns.shape
    group = torch.as_tensor(group, device=rewards.device)
    if group.shape != (num_leaves,) or group.dtype.is_floating_point or group.dtype == torch.bool:
        raise ValueError(
            f"group: expected integer ids of shape ({num_leaves},), got {_describe(group)}"
        )
    if std not in STD_EPS:
        raise ValueError(f"std: expected one of {', '.join(STD_EPS)}, got {std!r}")
    if eps is None:
        eps = STD_EPS[std]
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    weight_t = _reward_weights(weights, num_rewards, columns)

    bad_rows = (~torch.isfinite(columns)).any(dim=1)
    if bool(bad_rows.any()):
        bad_groups = torch.unique(group[bad_rows])
        raise NonFiniteError(
            f"rewards: {int((~torch.isfinite(columns)).sum())} NaN/inf values in "
            f"{bad_groups.numel()} groups (group ids {_listed(bad_groups)}); "
            "drop or repair those samples before computing advantages"
        )

    _, slot = torch.unique(group, return_inverse=True)  # [L] in 0..G-1
    num_groups = int(slot.max()) + 1 if num_leaves else 0
    count = torch.zeros(num_groups, dtype=columns.dtype, device=columns.device)
    count.index_add_(0, slot, torch.ones_like(columns[:, 0]))
    mean = torch.zeros(num_groups, num_rewards, dtype=columns.dtype, device=columns.device)
    mean.index_add_(0, slot, columns)
    mean /= count.unsqueeze(1)
    centred = columns - mean[slot]  # [L, m]
    if std == "batch":  # one spread per column, over every leaf: [1, m]
        spread = centred.new_zeros(1, num_rewards) if num_leaves == 0 else (
            (columns - columns.mean(0, keepdim=True)).square().mean(0, keepdim=True).sqrt())
    else:
        squares = torch.zeros_like(mean).index_add_(0, slot, centred.square())  # [G, m]
        dof = count - 1 if std == "group_bessel" else count
        # a one-leaf group has no Bessel spread; its centred rewards are 0, so any finite divisor gives 0
        spread = (squares / dof.clamp(min=1).unsqueeze(1)).sqrt()[slot]  # [L, m]
    # a zero spread has zero centred rewards; keep them 0 rather than 0/0 when eps is 0
    normalised = torch.where(centred == 0, 0.0, centred / (spread + eps))  # [L, m]
    # an elementwise sum, not a matmul: BLAS may order the m products differently with the thread count
    return (normalised * weight_t).sum(-1).to(out_dtype)


def _reward_weights(weights: Tensor | Sequence[float] | None, num_rewards: int, like: Tensor) -> Tensor:
    if weights is None:
        return torch.full((num_rewards,), 1.0 / num_rewards, dtype=like.dtype, device=like.device)
    weight_t = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if weight_t.shape != (num_rewards,):
        raise ValueError(
            f"weights: expected one weight per reward column ({num_rewards}), got shape {tuple(weight_t.shape)}"
        )
    if not bool(torch.isfinite(weight_t).all()) or bool((weight_t < 0).any()):
        raise ValueError(f"weights: expected finite non-negative values, got {weight_t.tolist()}")
    return weight_t


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__
