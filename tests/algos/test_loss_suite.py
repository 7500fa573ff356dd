"""Every registered loss runs the shared suite (:mod:`treegrpo.testing.losses`), and the suite catches
a loss with its sign flipped."""

from __future__ import annotations

import pytest

from treegrpo.algos import PPOClipLoss, ReinforceLoss, kl_reference
from treegrpo.algos.losses import LOSSES
from treegrpo.testing.losses import check_loss, check_policy_gradient, check_sign


def factory(loss_class):
    def make(problem, kl_coef):
        options = {"clip_range": 0.2} if issubclass(loss_class, PPOClipLoss) else {}
        return loss_class(problem.model, problem.transition, kl_coef=kl_coef,
                          reference=kl_reference(problem.model) if kl_coef else None, **options)
    return make


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_passes_the_shared_suite(name):
    check_loss(factory(LOSSES[name]))


@pytest.mark.slow
def test_the_examples_losses_pass_the_suite():
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "swap_loss.py"))
    check_loss(factory(example["ClipHigherLoss"]))
    check_loss(factory(example["SiblingPreferenceLoss"]), policy_gradient=False)  # reads the order, not A


class FlippedReinforce(ReinforceLoss):
    """REINFORCE with its sign flipped: descends the reward."""

    def forward(self, td):
        terms = super().forward(td)
        terms["loss_objective"] = -terms["loss_objective"]
        return terms


def test_the_suite_catches_a_flipped_sign():
    with pytest.raises(AssertionError, match="gradient at ratio 1"):
        check_policy_gradient(factory(FlippedReinforce))
    with pytest.raises(AssertionError, match="did not raise the reward"):
        check_sign(factory(FlippedReinforce))


def test_the_suite_catches_a_loss_that_ignores_renamed_keys():
    class Literal(ReinforceLoss):
        """Reads the advantage by its literal name, not through tensor_keys."""

        def forward(self, td):
            terms = super().forward(td)
            terms["loss_objective"] = terms["loss_objective"] + 0 * td["advantage"].sum()
            return terms

    from treegrpo.testing.losses import check_set_keys

    with pytest.raises(KeyError):
        check_set_keys(factory(Literal))
