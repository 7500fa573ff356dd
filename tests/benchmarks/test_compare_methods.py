"""``treegrpo bench --quick``: every method and ablation runs, and the outputs are complete and consistent."""

from __future__ import annotations

import json

import pytest

from treegrpo import cli


# The digits run takes a minute and a half on two cores: it is in the long set that CI also runs (pytest -m slow).
@pytest.mark.parametrize("kind", ["toy2d", pytest.param("digits", marks=pytest.mark.slow)])
def test_quick_bench_writes_tables_plots_and_consistent_accounting(kind, tmp_path, capsys):
    assert cli.main(["bench", "--quick", "--", "--kind", kind, "--out", str(tmp_path)]) == 0
    for name in ("compare_methods.json", "compare_methods.md", "compare_methods.png", "ablations.png",
                 "reward_vs_diversity.png"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "compare_methods.json").read_text())
    rows = {(row["group"], row["name"]): row for row in data["table"]}
    assert {name for group, name in rows if group == "methods"} == {"treegrpo", "grpo", "dancegrpo", "mixgrpo", "ddpo"}
    dance = next(run for run in data["runs"] if run["name"] == "dancegrpo")["config"]
    assert (dance["loss"]["algorithm"], dance["sampling"]["schedule"], dance["sampling"]["transition"]) == (
        "grpo", "dancegrpo", "dance_sde")
    assert {group for group, _ in rows} == {"methods", "tree_shape", "alpha", "estimator", "kl"}
    assert {name for group, name in rows if group == "kl"} == {"treegrpo,kl=0", "treegrpo,kl=0.15", "grpo,kl=0",
                                                                "grpo,kl=0.15"}
    diversity = "eval/diversity/pixel" if kind == "digits" else "eval/diversity/latent_std"
    assert all(diversity in row and row[diversity][0] >= 0 for row in rows.values())
    if kind == "digits":  # the unseen judge and both diversity measures, for every run
        assert all("eval/judge" in row and "eval/diversity/features" in row for row in rows.values())
    images = {row["images_per_iteration"] for (group, _), row in rows.items() if group == "methods"}
    assert len(images) == 1  # the same images per prompt and prompts per iteration for every method
    methods = {name: row for (group, name), row in rows.items() if group == "methods"}
    # A tree shares its prefix and window: fewer model evaluations than k^d independent trajectories.
    assert methods["treegrpo"]["nfe_per_iteration"] < methods["grpo"]["nfe_per_iteration"]
    assert methods["mixgrpo"]["backward_rows_per_iteration"] < methods["grpo"]["backward_rows_per_iteration"]
    for run in data["runs"]:
        assert len(run["history"]) == data["meta"]["iterations"]
        assert run["before"]["eval_samples"] == run["after"]["eval_samples"] > 0
    assert "| treegrpo |" in capsys.readouterr().out
