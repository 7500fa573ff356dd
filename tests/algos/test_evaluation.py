"""Held-out evaluation: the statistics against a plain-Python reference, and `treegrpo eval` on the
embedded digits default (base and checkpoint rows from the same noise)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from treegrpo.algos.evaluation import HeldOutScores, column_order, held_out_scores
from treegrpo.algos.trainer import Trainer
from treegrpo.cli import build_parser, main, resolve_config
from treegrpo.config import Config
from treegrpo.problems import build_problem


def _scores(seed: int) -> HeldOutScores:
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.tensor([3, 1, 3, 0, 1, 0, 3, 1, 0])  # unsorted, 3 samples each
    return HeldOutScores(("a", "b"), torch.randn(9, 2, generator=generator, dtype=torch.float64), prompt_ids, 3, seed)


def test_summary_and_paired_difference_match_plain_python():
    base, tuned = _scores(0), _scores(1)
    for j, name in enumerate(base.names):
        per_prompt = {p: statistics.fmean(float(base.scores[i, j]) for i in range(9) if base.prompt_ids[i] == p)
                      for p in (0, 1, 3)}
        stats = base.summary()[name]
        assert stats["mean"] == pytest.approx(statistics.fmean(base.scores[:, j].tolist()))
        assert stats["std"] == pytest.approx(statistics.pstdev(base.scores[:, j].tolist()))
        assert stats["sem"] == pytest.approx(statistics.stdev(per_prompt.values()) / 3 ** 0.5)
        tuned_prompt = {p: statistics.fmean(float(tuned.scores[i, j]) for i in range(9) if tuned.prompt_ids[i] == p)
                        for p in (0, 1, 3)}
        differences = [tuned_prompt[p] - per_prompt[p] for p in (0, 1, 3)]
        paired = tuned.paired_difference(base)[name]
        assert paired["mean"] == pytest.approx(statistics.fmean(differences))
        assert paired["sem"] == pytest.approx(statistics.stdev(differences) / 3 ** 0.5)
    other = HeldOutScores(("a", "c"), base.scores, base.prompt_ids, 3, 0)
    with pytest.raises(ValueError, match="cannot be paired"):
        other.paired_difference(base)


def test_paper_columns_come_first_in_the_papers_order():
    assert column_order(["pickscore", "clipscore", "hpsv2", "x", "imagereward", "aesthetic"]) == [
        "hpsv2", "imagereward", "aesthetic", "clipscore", "pickscore", "x"]


def test_treegrpo_eval_on_the_embedded_default(tmp_path, capsys):
    options = ["--train.out_dir", str(tmp_path), "--train.iterations", "2", "--train.checkpoint_every", "2",
               "--sampling.prompts_per_iteration", "2"]
    assert main(["train", *options]) == 0
    capsys.readouterr()
    assert main(["eval", *options, "--eval.samples_per_prompt", "2", "--eval.rewards", "jpeg_compressibility,classifier"]) == 0
    out = capsys.readouterr().out
    assert "classifier" in out and "vs base" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert [row["policy"] for row in result["rows"]] == ["base", "checkpoint 2"]
    assert result["rewards"] == ["jpeg_compressibility", "classifier", "diversity/pixel", "diversity/features"]
    assert result["rows"][0]["rewards"]["diversity/pixel"]["mean"] > 0.05  # digits keep the given order, diversity last
    assert result["prompts"] == 40 and result["samples_per_prompt"] == 2

    config = resolve_config(build_parser().parse_args(
        ["eval", *options, "--eval.samples_per_prompt", "2", "--eval.rewards", "jpeg_compressibility,classifier"]))
    fresh = Trainer(build_problem(config), config, read_only=True)  # the folder holds the run: read it
    expected_base = fresh.evaluate()
    fresh.resume()
    expected_trained = fresh.evaluate()
    for row, expected in zip(result["rows"], (expected_base, expected_trained)):
        for name in result["rewards"]:
            assert row["rewards"][name]["mean"] == pytest.approx(expected[f"eval/{name}"], abs=1e-9)
    assert expected_trained["eval/classifier"] != expected_base["eval/classifier"]


def test_unknown_eval_reward_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "--train.out_dir", str(tmp_path), "--eval.rewards", "hpsv2"]) == 2
    error = capsys.readouterr().err
    assert "eval.rewards: unknown reward 'hpsv2' for the digits model" in error and error.count("\n") == 1


def test_eval_num_steps_reaches_every_problem_kind():
    for steps in (0, 4):
        config = Config().override(["model.kind=toy2d", "sampling.num_steps=6", f"eval.num_steps={steps}"])
        problem = build_problem(config)
        assert (problem.eval_transition is None) if steps == 0 else problem.eval_transition.num_steps == steps
        scores = held_out_scores(problem, config, samples_per_prompt=2)
        assert scores.names == ("target",) and scores.scores.shape == (4, 1)
