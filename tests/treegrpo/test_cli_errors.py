"""Every bad input is one line before expensive work, every project error is one line at the CLI,
and settings that would train nothing are refused."""

from __future__ import annotations

import pytest
import torch

from treegrpo.cli import main
from treegrpo.config import Config, ConfigError

TOY = ["--model.kind", "toy2d", "--sampling.num_steps", "6", "--sampling.prompts_per_iteration", "2",
       "--train.iterations", "1"]


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI and return its one error line (a progress bar may precede it, nothing else may)."""
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("treegrpo: error: ") and "Traceback" not in lines[0], lines
    return lines[0][len("treegrpo: error: "):]


@pytest.mark.parametrize(("flags", "starts"), [
    (["--loss.estimator", "softmaxx"], "loss.estimator: expected one of leaf, logprob_softmax, max, mean, got 'softmaxx'"),
    (["--sampling.noise_level", "0"], "sampling.noise_level: expected a number > 0"),
    (["--sampling.noise_level", "1e30"], "sampling.noise_level: 1e+30 with sampling.shift=1.0 gives a non-finite"),
    (["--sampling.shift", "1e-30"], "sampling.noise_level: 0.7 with sampling.shift=1e-30 gives a non-finite"),
    (["--optim.lr", "1e39"], "optim.lr: expected a number in (0, 1], got 1e+39"),
    (["--sampling.branching", "1"], "sampling.branching: 1 with sampling.trees_per_prompt=1 gives each prompt one"),
    (["--loss.algorithm", "grpo", "--sampling.group_size", "1"], "sampling.group_size: 1 gives each prompt one"),
    (["--sampling.transition", "ddim"], "sampling.transition: the toy2d model is a flow model"),
    (["--train.seed", "99999999999999999999999"], "train.seed: expected an int in [0, 4294967295], got 9999"),
    (["--eval.seed", "18446744073709551616"], "eval.seed: expected an int in [-1, 4294967295]"),
    (["--train.lora_rank", "2", "--train.lora_targets", "nosuchmodule"],
     "train.lora_targets: 'nosuchmodule' matches no module of ResidualVelocity; expected module-name suffixes"),
    (["--train.lora_rank", "100000"], "train.lora_rank: 100000 exceeds 4x the width of the widest targeted layer"),
    (["--loss.adv_clip", "1e-12"], "loss.adv_clip: 1e-12 clips every advantage"),
])
def test_bad_inputs_are_one_line_before_any_work(flags, starts, tmp_path, capsys):
    message = _one_line_error(capsys, ["train", *TOY, "--train.out_dir", str(tmp_path / "run"), *flags])
    assert message.startswith(starts), message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_digits_errors_name_the_unknown_reward_and_zero_weights(tmp_path, capsys):
    out = ["--train.out_dir", str(tmp_path / "run")]
    message = _one_line_error(capsys, ["train", "--model.rewards", "foo", "--loss.reward_weights", "1", *out])
    assert message.startswith("model.rewards: unknown reward 'foo' for the digits model")
    message = _one_line_error(capsys, ["train", "--loss.reward_weights", "0,0", *out])
    assert message.startswith("loss.reward_weights: all zero")


def test_a_non_finite_training_error_is_one_line_at_the_cli(tmp_path, capsys, monkeypatch):
    from treegrpo.problems import toy2d as problems

    build = problems.toy2d_problem

    def poisoned(*args, **kwargs):
        problem = build(*args, **kwargs)
        problem.reward = lambda final, ids: torch.full((final.shape[0],), float("nan"))
        return problem

    monkeypatch.setattr(problems, "toy2d_problem", poisoned)
    message = _one_line_error(capsys, ["train", *TOY, "--train.out_dir", str(tmp_path)])
    assert message.startswith("iteration 0: reward is not finite")


def test_a_full_disk_is_one_line_at_the_cli(tmp_path, capsys, monkeypatch):
    import errno

    from treegrpo.algos import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    message = _one_line_error(capsys, ["train", *TOY, "--train.out_dir", str(tmp_path)])
    assert message.startswith("checkpoint: ") and "bytes free but checkpoint 1 needs about" in message
    assert "No space left on device" in message


def test_too_little_space_for_one_checkpoint_is_refused_at_the_start(tmp_path, capsys, monkeypatch):
    from treegrpo.algos import run_folder

    monkeypatch.setattr(run_folder, "free_bytes", lambda path: 1000)
    message = _one_line_error(capsys, ["train", *TOY, "--train.out_dir", str(tmp_path)])
    assert message.startswith("train.out_dir: ") and "has 1000 bytes free but 4 more checkpoint(s)" in message


def test_huge_rewards_still_give_advantages():
    import treeadv

    rewards = torch.tensor([1e30, 2e30, 3e30, 1e30], dtype=torch.float32)
    advantage = treeadv.leaf_advantages(rewards, torch.tensor([0, 0, 1, 1]))
    assert advantage.dtype == torch.float32 and torch.isfinite(advantage).all()
    torch.testing.assert_close(advantage, torch.tensor([-1.0, 1.0, 1.0, -1.0]), rtol=1e-5, atol=1e-5)


def test_digits_evaluate_model_eval_count_prompts():
    from treegrpo.problems.digits import digits_problem

    _, ids = digits_problem(eval_count=10).eval_prompts()
    assert ids.tolist() == list(range(10))


def test_learnable_configurations_pass_and_ddpo_may_use_groups_of_one():
    Config().override(["loss.algorithm=ddpo", "sampling.group_size=1"])
    Config().override(["sampling.branching=1", "sampling.trees_per_prompt=2"])
    with pytest.raises(ConfigError, match="^train.out_dir: is empty"):
        Config().override(["train.out_dir="])


def test_rewards_constant_in_every_group_warn_in_one_line_with_the_count(tmp_path, capsys, monkeypatch):
    from treegrpo.problems import toy2d as problems

    build = problems.toy2d_problem

    def constant(*args, **kwargs):
        problem = build(*args, **kwargs)
        problem.reward = lambda final, ids: torch.ones(final.shape[0])
        return problem

    monkeypatch.setattr(problems, "toy2d_problem", constant)
    from treegrpo.errors import TreegrpoWarning

    with pytest.warns(TreegrpoWarning) as caught:
        assert main(["train", *TOY, "--train.out_dir", str(tmp_path), "--eval.samples_per_prompt", "2"]) == 0
    expected = ("rewards are constant within all 2 groups of this iteration (2 of 2), so every advantage is 0 and "
                "nothing is learned; check that the reward varies with the image")
    assert [str(w.message) for w in caught if w.category is TreegrpoWarning] == [expected]


def test_constant_groups_counts_groups_with_one_value_in_every_column():
    from treegrpo.algos.advantages import constant_groups

    rewards = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 3.0], [0.5, 0.5], [0.5, 0.5]])
    assert constant_groups(rewards, torch.tensor([0, 0, 1, 1, 2, 2])) == (2, 3)
    assert constant_groups(rewards[:, 0], torch.tensor([0, 0, 0, 0, 1, 1])) == (2, 2)
