"""`treegrpo eval` pointed at a run evaluates the model that run trained: the checkpoint's saved
configuration is the base (flags and --config override it), and a checkpoint that does not fit the
built model is a one-line error before anything is sampled."""

from __future__ import annotations

import json

import pytest

from treegrpo.algos.checkpoint import checkpoint_config, latest_checkpoint, weight_shapes
from treegrpo.algos.entrypoints import checkpoint_fit_problems
from treegrpo.cli import main
from treegrpo.config import Config
from treegrpo.problems import build_problem

# A toy2d run off its preset (6 steps, not 8), so the test sees the run's sampling settings come back.
TOY = ["--model.kind", "toy2d", "--sampling.num_steps", "6", "--sampling.prompts_per_iteration", "2",
       "--train.iterations", "1", "--eval.samples_per_prompt", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-iteration toy2d run trained through the CLI; its folder."""
    folder = tmp_path_factory.mktemp("toy2d_run")
    assert main(["train", *TOY, "--train.out_dir", str(folder)]) == 0
    return folder


def test_eval_of_a_toy2d_run_evaluates_the_toy2d_model(run, tmp_path, capsys):
    # Before: the digits default was built and scored, then the checkpoint failed to load (exit 2).
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", "--train.out_dir", str(run), "--eval.out", str(out)]) == 0
    printed = capsys.readouterr().out
    state = latest_checkpoint(run) / "state.json"
    assert f"run configuration: {state} (model.kind=toy2d, loss.algorithm=treegrpo)" in printed.splitlines()[0]
    result = json.loads(out.read_text())
    assert result["config"]["model"]["kind"] == "toy2d"
    assert result["rewards"] == ["target", "diversity/latent_std"]  # toy2d's, not the digits rewards
    assert [row["policy"] for row in result["rows"]] == ["base", "checkpoint 1"]
    assert result["num_steps"] == 6 and result["samples_per_prompt"] == 2  # the run's settings, not the preset's
    assert result["config"]["train"]["out_dir"] == str(run)


def test_flags_and_a_config_file_override_the_run_configuration(run, tmp_path, capsys):
    file = tmp_path / "eval.toml"
    file.write_text("[eval]\nsamples_per_prompt = 3\n")  # no model.kind: the run's stays
    out = tmp_path / "eval.json"
    checkpoint = latest_checkpoint(run)
    assert main(["eval", "--config", str(file), "--checkpoint", str(checkpoint), "--eval.num_steps", "3",
                 "--eval.base", "false", "--eval.out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["model"]["kind"] == "toy2d" and result["checkpoint"] == str(checkpoint)
    assert result["samples_per_prompt"] == 3 and result["num_steps"] == 3
    assert [row["policy"] for row in result["rows"]] == ["checkpoint 1"]


def test_a_model_kind_override_that_does_not_fit_is_one_line_before_scoring(run, capsys):
    capsys.readouterr()
    assert main(["eval", "--train.out_dir", str(run), "--model.kind", "digits"]) == 2
    captured = capsys.readouterr()
    assert "scoring" not in captured.out  # nothing was sampled
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    checkpoint = latest_checkpoint(run)
    assert lines[0].startswith(f"treegrpo: error: checkpoint: {checkpoint} does not fit model.kind=digits "
                               "(train.lora_rank=0): "), lines[0]
    assert "is not a parameter of the model (and " in lines[0] and "more); evaluate it with" in lines[0]


def test_checkpoint_config_and_fit_against_lora_settings(run):
    checkpoint = latest_checkpoint(run)
    saved = checkpoint_config(checkpoint)
    assert saved["model"]["kind"] == "toy2d" and saved["sampling"]["num_steps"] == 6
    config = Config.from_dict(saved, check_used=False)
    model = build_problem(config).model
    shapes = weight_shapes(checkpoint)
    assert shapes and checkpoint_fit_problems(shapes, model, 0) == []
    problems = checkpoint_fit_problems(shapes, model, 2)  # full fine-tuning weights against a LoRA setting
    assert len(problems) == len(shapes) and "is not a LoRA weight" in problems[0]
    lora = {"net.0.lora_A.default.weight": (2, 3), "net.0.lora_B.default.weight": (64, 2),
            "nowhere.lora_A.default.weight": (2, 3)}
    assert checkpoint_fit_problems(lora, model, 2) == ["nowhere.lora_A.default.weight: the model has no module nowhere"]
    assert "for train.lora_rank=4" in checkpoint_fit_problems(lora, model, 4)[0]
    assert "a LoRA weight: the run set train.lora_rank" in checkpoint_fit_problems(lora, model, 0)[0]
