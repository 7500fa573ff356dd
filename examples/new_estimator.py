"""Write a backup estimator, register it, property-test it with ``treeadv.testing``, and train with it.

The estimator weights each child edge by the paper's softmax of its stored log-prob times the
number of leaves below it, ``w_e ~ n_e exp(l_e / temperature)``. On a regular tree every sibling
has the same leaf count and it equals ``logprob_softmax``; on an irregular tree (a pruned or
early-stopped branch) a child standing for more leaves counts for more.

Three checks, then a training run:

1. every invariant the estimator claims, on random forests drawn by ``forest_cases()``;
2. a property of its own: it equals ``logprob_softmax`` on regular forests;
3. a false claim is caught: ``equal_logprob_mean`` does not hold on irregular forests, and the kit
   finds (and shrinks) a forest that shows it;
4. ``loss.estimator=logprob_leaf_softmax`` trains ``toy2d`` through the ordinary ``Trainer``.

    python examples/new_estimator.py --examples 100
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import torch
from hypothesis import HealthCheck, Phase, given, settings
from torch import Tensor

import treeadv
from treeadv import BackupEstimator, Siblings, register_estimator
from treeadv.estimators import UNIVERSAL_INVARIANTS
from treeadv.testing import ForestCase, InvariantViolation, check_estimator, forest_cases


@register_estimator("logprob_leaf_softmax")
@dataclass(frozen=True)
class LogProbLeafSoftmax(BackupEstimator):
    """``w_e = n_e exp(l_e / T) / sum_e' n_e' exp(l_e' / T)`` over each parent's children (``n``: leaves below)."""

    temperature: float = 1.0
    # What it claims; check_estimator tests exactly these. Not "equal_logprob_mean": with equal
    # log-probs it gives the leaf-weighted mean, which is the arithmetic mean only on regular trees.
    invariants: ClassVar[frozenset[str]] = UNIVERSAL_INVARIANTS | {"affine", "logprob_shift"}

    def weights(self, siblings: Siblings) -> Tensor:
        # A softmax of log-prob / T + log n: the per-parent max shift keeps sum-reduced log-probs finite.
        return siblings.softmax(siblings.log_prob / self.temperature + siblings.leaf_count.log())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="hypothesis forests per property")
    parser.add_argument("--iterations", type=int, default=10, help="training iterations on toy2d")
    args = parser.parse_args()
    budget = settings(max_examples=args.examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
    estimator = LogProbLeafSoftmax(temperature=0.5)
    claimed = set()

    @budget
    @given(forest_cases())
    def claimed_invariants(case: ForestCase) -> None:
        claimed.update(name for name, outcome in check_estimator(estimator, case.tree, case.leaf_adv).items()
                       if outcome == "passed")

    @budget
    @given(forest_cases(regular=True))
    def equals_logprob_softmax_on_regular_forests(case: ForestCase) -> None:
        ours = treeadv.backup(case.tree, case.leaf_adv, estimator)
        paper = treeadv.backup(case.tree, case.leaf_adv, "logprob_softmax", temperature=0.5)
        torch.testing.assert_close(ours, paper, rtol=1e-9, atol=1e-9)

    @settings(budget, max_examples=max(args.examples, 50), phases=[Phase.generate])  # report the first, unshrunk
    @given(forest_cases(regular=False))
    def false_claim(case: ForestCase) -> None:
        check_estimator(estimator, case.tree, case.leaf_adv, invariants={"equal_logprob_mean"})

    claimed_invariants()
    print(f"1. claimed invariants hold on {args.examples} forests: {', '.join(sorted(claimed))}")
    equals_logprob_softmax_on_regular_forests()
    print(f"2. equals logprob_softmax on {args.examples} regular forests")
    try:
        false_claim()
    except InvariantViolation as error:
        print(f"3. the kit rejects a false claim: {str(error).splitlines()[0]}")
    else:
        raise SystemExit("3. expected check_estimator to reject equal_logprob_mean on irregular forests")

    # The registry makes the name usable anywhere an estimator name is: treeadv.backup, GroupAdvantage, the config.
    from treegrpo.algos import Config, Trainer
    from treegrpo.problems import toy2d_problem

    with tempfile.TemporaryDirectory() as scratch:
        config = Config().override([
            "model.kind=toy2d", "sampling.num_steps=8", "sampling.prompts_per_iteration=4", "optim.lr=3e-3",
            "loss.clip_range=0.2", "loss.estimator=logprob_leaf_softmax", f"train.iterations={args.iterations}",
            "train.minibatch_parents=64", f"train.out_dir={scratch}", "train.checkpoint_every=1000",
        ])
        history = Trainer(toy2d_problem(num_steps=8, prompts_per_iteration=4), config).fit(progress=False)
    print(f"4. trained with loss.estimator=logprob_leaf_softmax: reward {history[0]['reward_mean']:+.4f} -> "
          f"{sum(h['reward_mean'] for h in history[-3:]) / 3:+.4f} (mean of the last 3 iterations)")


if __name__ == "__main__":
    main()
