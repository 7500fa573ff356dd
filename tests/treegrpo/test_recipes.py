"""The peer recipes: each sets its peer's own defaults, under the user's settings, and trains."""

from __future__ import annotations

import json

import pytest
import torch

from treegrpo.algos.build import build_advantage, build_sampler, run_transition
from treegrpo.algos.losses import PPOClipLoss
from treegrpo.cli import main
from treegrpo.config import Config, ConfigError, preset_config
from treegrpo.envs import CallableDenoiser, FlowSDE, FlowTimesteps, GaussianData
from treegrpo.problems import build_problem
from treegrpo.recipes import RECIPES

PEERS = ("flow_grpo", "dance_grpo", "mix_grpo", "branch_grpo")


def _settings(config: Config, keys: list[str]) -> dict[str, object]:
    return {key: getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) for key in keys}


def test_each_recipe_sets_its_peers_defaults():
    expected = {
        "flow_grpo": {"sampling.transition": "flow_sde", "sampling.noise_level": 0.7, "sampling.last_step": "sde",
                      "loss.timestep_selection": "first", "loss.timestep_fraction": 0.99, "loss.advantage_std": "batch",
                      "loss.clip_range": 1e-4, "loss.kl_form": "flow_grpo"},
        "dance_grpo": {"sampling.transition": "dance_sde", "sampling.noise_level": 0.3, "sampling.schedule": "dancegrpo",
                       "sampling.last_step": "ode", "sampling.shared_noise": True, "loss.timestep_selection": "per_sample",
                       "loss.timestep_fraction": 0.6, "loss.advantage_std": "group_bessel", "loss.kl_coef": 0.0},
        "mix_grpo": {"sampling.schedule": "dancegrpo", "sampling.slide": "mixgrpo", "sampling.depth": 4,
                     "sampling.window_every": 25, "sampling.last_step": "ode", "loss.advantage_std": "group_bessel"},
        "branch_grpo": {"sampling.num_steps": 20, "sampling.split_steps": [0, 3, 6, 9], "sampling.branching": 2,
                        "sampling.split_noise_scale": 4.0, "sampling.last_step": "x0", "loss.estimator": "leaf",
                        "loss.clip_range": 1e-3},
    }
    for name in PEERS:
        for config in (preset_config("digits", name), Config().override([f"loss.algorithm={name}"])):
            assert _settings(config, list(expected[name])) == expected[name], name
            config.check_used()  # a recipe's defaults are starting values, not settings the run ignores
        assert RECIPES[name].peer and RECIPES[name].defaults


def test_the_users_settings_win_over_the_recipe_and_switching_back_restores_the_preset():
    config = preset_config("digits").override(["loss.algorithm=dance_grpo", "sampling.noise_level=0.5"])
    assert (config.sampling.noise_level, config.sampling.transition) == (0.5, "dance_sde")
    back = config.override(["loss.algorithm=grpo"])
    digits = preset_config("digits")
    assert _settings(back, ["sampling.transition", "sampling.shift", "loss.clip_range", "loss.kl_coef",
                            "sampling.last_step"]) == _settings(digits, ["sampling.transition", "sampling.shift",
                                                                         "loss.clip_range", "loss.kl_coef",
                                                                         "sampling.last_step"])
    assert back.sampling.noise_level == 0.5  # the user's own setting stays


def test_cli_precedence_is_preset_then_recipe_then_file_then_flags(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('[sampling]\nnoise_level = 0.5\n[loss]\nclip_range = 0.01\n')
    assert main(["train", "--config", str(path), "--loss.algorithm", "dance_grpo", "--loss.timestep_fraction", "0.5",
                 "--print-config"]) == 0
    printed = capsys.readouterr().out
    config = Config.from_dict(__import__("tomllib").loads(printed))
    assert config.sampling.noise_level == 0.5 and config.loss.clip_range == 0.01  # the file over the recipe
    assert config.loss.timestep_fraction == 0.5  # the flag over the recipe
    assert config.sampling.transition == "dance_sde" and config.sampling.last_step == "ode"  # the recipe


def test_recipe_options_are_refused_where_the_algorithm_does_not_read_them():
    with pytest.raises(ConfigError, match="^sampling.split_steps: .* is not used with loss.algorithm=grpo"):
        Config().override(["loss.algorithm=grpo", "sampling.split_steps=0,2"])
    with pytest.raises(ConfigError, match="^loss.width_pruning: 'branch' is not used with loss.algorithm=treegrpo"):
        Config().override(["loss.width_pruning=branch"])
    with pytest.raises(ConfigError, match="^sampling.split_steps: \\[12\\] lie beyond the last step"):
        Config().override(["loss.algorithm=branch_grpo", "sampling.split_steps=0,12", "sampling.num_steps=10"])


def test_dance_grpo_never_trains_its_last_step_and_decodes_its_clean_prediction():
    config = preset_config("toy2d", "dance_grpo").override(["sampling.num_steps=6", "sampling.group_size=3"])
    problem = build_problem(config)
    sampler = build_sampler(config, problem)
    assert sampler.steps() == (0, 1, 2, 3, 4)  # DanceGRPO: samples[:, :-1]
    rollout = sampler.sample(problem.prompts(0, torch.Generator().manual_seed(0))[0], num_prompts=4,
                             latent_shape=problem.latent_shape, generator=torch.Generator().manual_seed(0))
    assert int(rollout.tree.payload["step"].max()) == 6 and rollout.sde_steps == (0, 1, 2, 3, 4)


def test_branch_grpo_builds_its_tree_widened_split_noise_and_depth_advantage():
    config = preset_config("toy2d", "branch_grpo").override(["sampling.num_steps=8", "sampling.split_steps=0,3"])
    problem = build_problem(config)
    transition = run_transition(config, problem)
    ratio = transition.step_std(torch.arange(8)) / problem.transition.step_std(torch.arange(8))
    torch.testing.assert_close(ratio, torch.tensor([4.0, 1, 1, 4, 1, 1, 1, 1], dtype=torch.float64))
    sampler = build_sampler(config, problem)
    assert sampler.split_steps == (0, 3) and sampler.decode == "x0" and sampler.leaves_per_tree == 4
    assert type(build_advantage(config)).__name__ == "DepthNormalizedAdvantage"


@pytest.mark.exact_numerics  # the KL of one batch, computed two ways at the same shapes
def test_flow_grpo_kl_is_flow_grpos_formula_the_true_kl_times_dt():
    """Flow-GRPO ``sd3_sde_with_logprob.py``: ``std_dev_t = sqrt(t / (1 - t)) a`` (``t = 1`` read as the
    next sigma), and ``kl = mean((mu - mu_ref)^2) / (2 std_dev_t^2)`` per sample."""
    data = GaussianData(torch.zeros(6), torch.eye(6) * 0.5)
    model = CallableDenoiser(lambda x, t, cond: data.velocity(x, t, None))
    reference = CallableDenoiser(lambda x, t, cond: data.velocity(x, t, None) + 0.05)
    transition = FlowSDE(FlowTimesteps.linear(10, shift=3.0), 0.7)
    generator = torch.Generator().manual_seed(0)
    latent, step = torch.randn(5, 6, generator=generator), torch.tensor([0, 2, 4, 7, 9])
    from tensordict import TensorDict

    td = TensorDict({"latent": latent, "step": step, "cond_index": torch.zeros(5, dtype=torch.long)}, batch_size=[5])
    td.set_non_tensor("cond_table", __import__("treegrpo.envs", fromlist=["CondTable"]).CondTable(None))
    ours = {form: PPOClipLoss(model, transition, kl_coef=1.0, reference=reference, kl_form=form) for form in
            ("transition", "flow_grpo")}
    mean, std = ours["flow_grpo"].policy_mean_std(td)
    kl = {form: loss.reference_kl(td, mean, std) for form, loss in ours.items()}
    sigmas = transition.timesteps.sigmas
    t = sigmas[step]
    t_safe = torch.where(t == 1, sigmas[1], t)
    std_dev_t = torch.sqrt(t / (1 - t_safe)) * 0.7
    ref_mean, _ = ours["flow_grpo"].policy_mean_std(td, reference)
    flow_grpo = ((mean - ref_mean) ** 2).mean(-1) / (2 * std_dev_t**2)
    torch.testing.assert_close(kl["flow_grpo"], flow_grpo.to(kl["flow_grpo"]), rtol=1e-6, atol=0)
    torch.testing.assert_close(kl["flow_grpo"], kl["transition"] * (t - sigmas[step + 1]).to(kl["transition"]))


@pytest.mark.parametrize("algorithm", PEERS)
def test_each_recipe_trains_on_digits_from_the_command_line(algorithm, tmp_path):
    flags = ["--loss.algorithm", algorithm, "--train.iterations", "1", "--sampling.prompts_per_iteration", "2",
             "--model.eval_count", "2", "--eval.samples_per_prompt", "2", "--train.out_dir", str(tmp_path)]
    flags += ["--sampling.num_steps", "8"]  # the peers' 10-25 steps, shortened for the test
    flags += ["--sampling.split_steps", "0,3"] if algorithm == "branch_grpo" else ["--sampling.group_size", "4"]
    assert main(["train", *flags]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["loss"]["algorithm"] == algorithm
    assert summary["training"]["edges_trained"] > 0 or algorithm == "mix_grpo"


def test_mix_grpo_trains_mixgrpos_windows_at_its_25_steps():
    """MixGRPO's FLUX script: T = 25, a 4-step window moving every 25 iterations, steps 23 and 24
    never trained; at iterations 525, 550 and 575 it trains [21, 22], [22] and nothing."""
    config = preset_config("toy2d", "mix_grpo").override(["sampling.num_steps=25"])
    sampler = build_sampler(config, build_problem(config))
    assert [sampler.steps(i) for i in (0, 24, 25, 525, 550, 575, 600)] == [
        (0, 1, 2, 3), (0, 1, 2, 3), (1, 2, 3, 4), (21, 22), (22,), (), (0, 1, 2, 3)]
    trained = set().union(*(sampler.steps(i) for i in range(600)))
    assert trained == set(range(23))


@pytest.mark.parametrize(("pruning", "per_tree"), [
    ([], 26),  # 8 steps, splits at 0 and 3: 2 + 2 + 2 edges, then 4 chains of 5
    (["loss.prune_depths=5,6"], 26 - 8),  # the 4 edges into each of depths 5 and 6
    (["loss.width_pruning=branch"], 26 - 8),  # after the last split, half of each chain's 4 edges
    (["loss.prune_depths=5", "loss.width_pruning=extremes", "loss.width_ratio=0.5"], 26 - 4 - 6),
])
def test_branch_grpo_trains_the_edges_its_pruning_leaves(pruning, per_tree, tmp_path):
    from treegrpo.algos.trainer import Trainer

    config = preset_config("toy2d", "branch_grpo").override(
        ["sampling.num_steps=8", "sampling.split_steps=0,3", "train.inner_epochs=1", f"train.out_dir={tmp_path}",
         *pruning])
    metrics = Trainer(build_problem(config), config).step()
    assert metrics["images"] == config.sampling.prompts_per_iteration * 4
    assert metrics["edges_trained"] == config.sampling.prompts_per_iteration * per_tree
