"""``benchmarks/results_page.py``: the generated tables of a page are rewritten from the JSON, and
``--check`` fails when the committed tables and the JSON disagree."""

from __future__ import annotations

import json

import pytest

from treegrpo.benchmarks import results_page


def _row(group: str, name: str, seeds: int, reward: float) -> dict:
    return {
        "group": group, "name": name, "seeds": seeds, "algorithm": name, "num_steps": 10, "kl_coef": 0.15,
        "eval/classifier": [reward, 0.01], "before_eval/classifier": [0.78, 0.0],
        "eval/judge": [0.85, 0.02], "before_eval/judge": [0.84, 0.0],
        "eval/diversity/pixel": [0.1, 0.0], "before_eval/diversity/pixel": [0.12, 0.0],
        "diversity_kept/pixel": [0.8, 0.05], "final_train_reward": [0.7, 0.01], "seconds_per_iteration": [1.0, 0.1],
        "nfe_per_iteration": 1400.0, "backward_rows_per_iteration": 104.0, "images_per_iteration": 216.0,
        "images_per_prompt": 27.0, "wall_seconds": [40.0, 1.0], "iterations_at_budget": 40.0,
        "train_reward_at_budget": [0.7, 0.01],
    }


@pytest.fixture
def bench_json(tmp_path):
    data = {"meta": {"iterations": 40, "wallclock": {"budget_seconds": 40.0, "fastest": "treegrpo", "definition": ""}},
            "table": [_row("methods", "treegrpo", 3, 0.95), _row("methods", "flow_grpo", 3, 0.97),
                      _row("estimator", "mean", 1, 0.96), _row("estimator", "max", 1, 0.93)]}
    path = tmp_path / "compare_methods.json"
    path.write_text(json.dumps(data))
    return path


PAGE = """# Results

Prose the generator never touches.

<!-- results-table: methods -->
(stale)
<!-- end results-table -->

More prose.

<!-- results-table: estimator -->
<!-- end results-table -->
"""


def test_write_then_check_passes_and_a_changed_number_fails(bench_json, tmp_path, capsys):
    page = tmp_path / "results.md"
    page.write_text(PAGE)
    assert results_page.main(["--json", str(bench_json), "--page", str(page), "--check"]) == 1
    assert page.read_text() == PAGE  # --check writes nothing
    assert results_page.main(["--json", str(bench_json), "--page", str(page)]) == 0
    written = page.read_text()
    assert "Prose the generator never touches." in written and "More prose." in written and "(stale)" not in written
    assert "| treegrpo | 27 | 10 | 0.15 | 0.950 ± 0.010 (base 0.780) | 0.850 ± 0.020 (base 0.840) | 80% ± 5% |" in written
    assert "| mean | 0.960 (base 0.780) |" in written  # one seed: no spread
    assert results_page.main(["--json", str(bench_json), "--page", str(page), "--check"]) == 0
    data = json.loads(bench_json.read_text())
    data["table"][1]["eval/classifier"][0] = 0.5
    bench_json.write_text(json.dumps(data))
    capsys.readouterr()
    assert results_page.main(["--json", str(bench_json), "--page", str(page), "--check"]) == 1
    assert "differ" in capsys.readouterr().err


@pytest.mark.parametrize(("page", "code"), [("no markers here\n", 0),
                                            ("<!-- results-table: tree_shape -->\n<!-- end results-table -->\n", 2),
                                            ("<!-- results-table: methods -->\nno end\n", 2)])
def test_pages_without_markers_pass_and_bad_markers_fail(page, code, bench_json, tmp_path):
    path = tmp_path / "results.md"
    path.write_text(page)
    assert results_page.main(["--json", str(bench_json), "--page", str(path), "--check"]) == code


def test_wallclock_table_reads_the_budget(bench_json):
    table = results_page.render_tables(json.loads(bench_json.read_text()))["wallclock"]
    assert "iterations done in 40 s" in table and "| flow_grpo | 40 | 0.700 ± 0.010 | 0.700 ± 0.010 |" in table


def test_the_committed_results_page_matches_the_committed_json(capsys):
    """docs/results.md's generated tables are what benchmarks/results/compare_methods.json renders to,
    and the page has every table the JSON supports (so a rerun cannot leave one stale)."""
    page = results_page.DEFAULT_PAGE.read_text()
    data = json.loads(results_page.DEFAULT_JSON.read_text())
    assert set(results_page.generated_names(page)) == set(results_page.render_tables(data))
    assert results_page.main(["--check"]) == 0, capsys.readouterr().err


def test_the_committed_json_holds_diversity_the_judge_and_the_cost_for_every_method_and_seed():
    data = json.loads(results_page.DEFAULT_JSON.read_text())
    runs = [run for run in data["runs"] if run["group"] == "methods"]
    methods = {run["name"] for run in runs}
    assert methods == {"treegrpo", "branch_grpo", "flow_grpo", "dance_grpo", "mix_grpo", "ddpo"}
    assert all(sum(run["name"] == name for run in runs) == 3 for name in methods)  # three seeds each
    for run in runs:
        assert {"eval/judge", "eval/diversity/pixel", "eval/diversity/features"} <= set(run["after"])
        assert {"pixel", "features"} <= set(run["diversity_kept"])
        assert run["seconds_per_iteration"] > 0 and all(h["nfe_sampled"] > 0 and h["backward_rows"] > 0
                                                          for h in run["history"])
