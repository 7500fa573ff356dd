"""Issue 35, items 2-4: a loss takes its own options (``loss.options``), errors name what the caller
wrote, and the KL's frozen reference is one library helper used by the trainer and the examples."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from treegrpo.algos import Config, ConfigError, PPOClipLoss, Trainer, build_loss, kl_reference, register_loss
from treegrpo.algos.loss_options import declared_options, parse_loss_options
from treegrpo.algos.losses import LOSSES
from treegrpo.algos.model_setup import apply_lora
from treegrpo.errors import renamed_fields
from treegrpo.problems import build_problem, digits_problem, toy2d_problem
from treegrpo.rewards import UnknownRewardError


class TypedOptionsLoss(PPOClipLoss):
    """A loss with one option of every kind ``loss.options`` types."""

    def __init__(self, model, transition, *, beta: float = 0.1, pairs: int = 2, hinge: bool = False,
                 mode: Literal["mean", "sum"] = "mean", cap: float | None = None, label: str = "x", **rest) -> None:
        super().__init__(model, transition, **rest)
        self.beta, self.pairs, self.hinge, self.mode, self.cap, self.label = beta, pairs, hinge, mode, cap, label


@pytest.fixture
def typed_loss():
    register_loss("typed_options_test")(TypedOptionsLoss)
    yield "typed_options_test"
    LOSSES.remove("typed_options_test")


def test_options_are_the_constructor_keywords_no_other_field_sets():
    assert set(declared_options(TypedOptionsLoss)) == {"beta", "pairs", "hinge", "mode", "cap", "label"}
    assert declared_options(PPOClipLoss) == {}  # clip_range, kl_coef, ...: loss.* fields of their own


def test_each_option_is_typed_from_its_annotation():
    parsed = parse_loss_options(TypedOptionsLoss, ["beta=2.5", "pairs=3", "hinge=true", "mode=sum", "cap=none",
                                                   "label=7"])
    assert parsed == {"beta": 2.5, "pairs": 3, "hinge": True, "mode": "sum", "cap": None, "label": "7"}
    assert type(parsed["pairs"]) is int and type(parsed["beta"]) is float


@pytest.mark.parametrize(("item", "message"), [
    ("beta", "loss.options: expected name=value, got 'beta'"),
    ("gamma=1", ("loss.options: TypedOptionsLoss has no option 'gamma'; its options: beta, cap, hinge, label, mode, "
                 "pairs")),
    ("clip_range=1", "loss.options: TypedOptionsLoss has no option 'clip_range' (it is loss.clip_range)"),
    ("pairs=2.5", "loss.options: pairs='2.5', expected an int"),
    ("hinge=maybe", "loss.options: hinge='maybe', expected true or false"),
    ("mode=max", "loss.options: mode='max', expected one of mean, sum"),
    ("beta=nan", "loss.options: beta='nan', expected a number"),
])
def test_a_bad_option_is_one_line_naming_it(item, message):
    with pytest.raises(ConfigError) as caught:
        parse_loss_options(TypedOptionsLoss, [item])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_registered_loss_gets_its_options_through_the_config(typed_loss):
    config = Config().override(["model.kind=toy2d", f"loss.algorithm={typed_loss}",
                                "loss.options=beta=3,pairs=4,mode=sum"])
    loss = build_loss(config, build_problem(config))
    assert (loss.beta, loss.pairs, loss.mode) == (3.0, 4, "sum")
    assert loss.clip_range == config.loss.clip_range  # the loss.* fields still set theirs


def test_a_builtin_loss_refuses_options_before_any_model_loads(capsys, tmp_path):
    from treegrpo import cli

    assert cli.main(["train", "--loss.options", "beta=10", "--train.out_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("loss.options: PPOClipLoss has no option 'beta'; its options: none"), error
    assert not any(tmp_path.iterdir())  # refused before the run folder, the model or the rewards
    config = Config().override(["model.kind=toy2d", "loss.algorithm=reinforce", "loss.options=beta=10"])
    with pytest.raises(ConfigError, match="ReinforceLoss has no option 'beta'"):  # and from Python, when built
        build_loss(config, build_problem(config))


def test_python_builders_name_their_arguments_and_the_config_names_its_fields():
    with pytest.raises(UnknownRewardError, match=r"^rewards: unknown reward 'aesthetic' for the digits model"):
        digits_problem(rewards=("classifier", "aesthetic"))
    with pytest.raises(UnknownRewardError, match=r"^eval_rewards: unknown reward 'x'"):
        digits_problem(eval_rewards=("x",))
    with pytest.raises(ValueError, match=r"^transition: a flow model takes one of"):
        digits_problem(transition="bogus")
    with pytest.raises(ValueError, match=r"^schedule: expected one of"):
        toy2d_problem(schedule="bogus")
    config = Config().override(["model.rewards=classifier,aesthetic"], check_used=False)
    with pytest.raises(UnknownRewardError, match=r"^model.rewards: unknown reward 'aesthetic' for the digits model"):
        build_problem(config)


def test_renamed_fields_keeps_the_error_class_and_leaves_other_errors_alone():
    with pytest.raises(UnknownRewardError, match=r"^model.rewards: x$"), renamed_fields({"rewards": "model.rewards"}):
        raise UnknownRewardError("rewards: x")
    with pytest.raises(ValueError, match=r"^other: y$"), renamed_fields({"rewards": "model.rewards"}):
        raise ValueError("other: y")
    with pytest.raises(KeyError), renamed_fields({"rewards": "model.rewards"}):
        raise KeyError("rewards")


def test_kl_reference_is_a_frozen_copy_or_the_adapter_switch():
    problem = toy2d_problem()
    reference = kl_reference(problem.model)
    assert reference is not problem.model and not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    for ours, theirs in zip(problem.model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs) and ours.data_ptr() != theirs.data_ptr()
    assert kl_reference(problem.model, adapters=True) == "disable_adapter"
    apply_lora(problem.model, rank=2, alpha=2.0)
    assert kl_reference(problem.model) == "disable_adapter"  # found in the model


def test_the_trainer_builds_its_reference_with_the_helper(monkeypatch, tmp_path):
    import treegrpo.algos.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "kl_reference", lambda model, **kw: calls.append(kw) or kl_reference(model, **kw))
    config = Config().override(["model.kind=toy2d", "loss.kl_coef=0.1", f"train.out_dir={tmp_path}"])
    Trainer(build_problem(config), config)
    assert calls == [{"adapters": False}]


def test_register_loss_never_replaces_a_taken_name_silently() -> None:
    from treeadv.registry import RegistryError
    from treegrpo.algos import PPOClipLoss, register_loss
    from treegrpo.recipes import RECIPES

    shipped = RECIPES["treegrpo"]
    with pytest.raises(RegistryError, match="recipe 'treegrpo' is already registered"):
        register_loss("treegrpo")(type("Impostor", (PPOClipLoss,), {}))
    assert RECIPES["treegrpo"] is shipped and "treegrpo" not in LOSSES
    with pytest.raises(RegistryError, match="loss 'ppo_clip' is already registered"):
        register_loss("ppo_clip")(type("Impostor", (PPOClipLoss,), {}))
    assert "ppo_clip" not in RECIPES and LOSSES["ppo_clip"] is PPOClipLoss
