"""``treegrpo bench --quick``: every method and ablation runs, and the outputs are complete and consistent;
``treegrpo bench`` forwards the options it uses and refuses the others in one line."""

from __future__ import annotations

import json

import pytest

from treegrpo import cli

# The script is imported only inside tests that run after the CLI's run_module (runpy warns otherwise).
METHODS = {"treegrpo", "branch_grpo", "flow_grpo", "dance_grpo", "mix_grpo", "ddpo"}


# The digits run takes about two minutes on two quiet cores: it is in the long set that CI also runs (pytest -m slow).
@pytest.mark.parametrize("kind", ["toy2d", pytest.param("digits", marks=pytest.mark.slow)])
def test_quick_bench_writes_tables_plots_and_consistent_accounting(kind, tmp_path, capsys):
    assert cli.main(["bench", "--quick", "--model.kind", kind, "--", "--out", str(tmp_path)]) == 0
    for name in ("compare_methods.json", "compare_methods.md", "compare_methods.png", "ablations.png",
                 "reward_vs_diversity.png"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "compare_methods.json").read_text())
    rows = {(row["group"], row["name"]): row for row in data["table"]}
    methods = {name: row for (group, name), row in rows.items() if group == "methods"}
    assert set(methods) == METHODS
    configs = {run["name"]: run["config"] for run in data["runs"] if run["group"] == "methods"}
    assert all(config["loss"]["algorithm"] == name for name, config in configs.items())  # the recipes, not overrides
    assert configs["dance_grpo"]["sampling"]["num_steps"] == 16 and configs["mix_grpo"]["sampling"]["num_steps"] == 25
    # held equal: prompts, learning rate, images per prompt (except BranchGRPO's own tree)
    assert len({(c["sampling"]["prompts_per_iteration"], c["optim"]["lr"]) for c in configs.values()}) == 1
    assert len({row["images_per_prompt"] for name, row in methods.items() if name != "branch_grpo"}) == 1
    assert methods["branch_grpo"]["images_per_prompt"] == 16
    assert {group for group, _ in rows} == {"methods", "tree_shape", "alpha", "estimator", "kl"}
    assert {name for group, name in rows if group == "estimator"} >= {"mean"}
    assert "logprob_softmax" not in {name for group, name in rows if group == "estimator"}  # identical to mean
    kl = {name for group, name in rows if group == "kl"}
    assert {"treegrpo,kl=0", "flow_grpo,kl=0", "flow_grpo,kl=0.01"} <= kl
    diversity = "diversity_kept/pixel" if kind == "digits" else "diversity_kept/latent_std"
    assert all(diversity in row and row[diversity][0] >= 0 for row in rows.values())
    if kind == "digits":  # the unseen judge and both diversity measures, for every run
        assert all("eval/judge" in row and "diversity_kept/features" in row for row in rows.values())
    for run in data["runs"]:
        assert len(run["history"]) == data["meta"]["iterations"] == 3
        assert run["before"]["eval_samples"] == run["after"]["eval_samples"] > 0
    # A tree shares its prefix and window: fewer model evaluations than k^d independent trajectories.
    assert methods["treegrpo"]["nfe_per_iteration"] < methods["ddpo"]["nfe_per_iteration"]
    assert methods["mix_grpo"]["backward_rows_per_iteration"] < methods["flow_grpo"]["backward_rows_per_iteration"]
    budget = data["meta"]["wallclock"]["budget_seconds"]
    assert budget == pytest.approx(min(row["wall_seconds"][0] for row in methods.values()), rel=0.5)
    output = capsys.readouterr().out
    assert "| treegrpo |" in output and "±" not in output  # one seed: no spread


def test_quick_bench_writes_to_the_working_directory(tmp_path, monkeypatch):
    from treegrpo.benchmarks import compare_methods

    monkeypatch.chdir(tmp_path)
    assert compare_methods.output_folder(compare_methods.parse_args(["--quick"])) == tmp_path / "bench-results/quick"
    assert compare_methods.output_folder(compare_methods.parse_args([])) == tmp_path / "bench-results"
    assert compare_methods.output_folder(compare_methods.parse_args(["--out", "x"])) == compare_methods.Path("x")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--quick", "--train.iterations", "1"], ["--quick", "--iterations", "1"]),
    (["--train.seed", "4", "--set", "optim.lr=1e-4", "--", "--no-ablations"],
     ["--set", "optim.lr=1e-4", "--seeds", "4", "--no-ablations"]),
])
def test_bench_forwards_the_options_it_uses(argv, expected, monkeypatch):
    seen = []
    monkeypatch.setattr(cli.runpy, "run_module", lambda *a, **k: seen.append(list(cli.sys.argv[1:])))
    assert cli.main(["bench", *argv]) == 0
    assert seen == [expected]


@pytest.mark.parametrize("argv", [["--name", "backup_speed", "--train.iterations", "1"],
                                  ["--loss.algorithm", "flow_grpo"]])
def test_bench_refuses_options_it_does_not_use_in_one_line(argv, capsys):
    assert cli.main(["bench", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("treegrpo: error: --") and error.count("\n") == 1
