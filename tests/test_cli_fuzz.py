"""Fuzzing the command line: any mix of options, as flags or in a config file, gives a clean run that
trains, or one line of error; never a traceback, never a run that silently trains nothing."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from treegrpo.algos.checkpoint import latest_checkpoint

from treegrpo.cli import main

BASE = {"model.kind": "toy2d", "sampling.num_steps": "4", "sampling.prompts_per_iteration": "2",
        "train.iterations": "1", "train.checkpoint_every": "1", "train.sample_every": "1000",
        "eval.samples_per_prompt": "2", "sampling.shift": "1.0"}
VALUES: dict[str, list[str]] = {
    "loss.algorithm": ["treegrpo", "grpo", "mixgrpo", "ddpo", "reinforce", "ppo"],
    "sampling.branching": ["1", "2", "3", "0", "x"],
    "sampling.depth": ["1", "2", "4", "5"],
    "sampling.trees_per_prompt": ["1", "2"],
    "sampling.group_size": ["1", "2", "3"],
    "sampling.window": ["fixed", "geometric", "shifting", "adaptive", "random"],
    "sampling.window_start": ["0", "1", "3"],
    "sampling.alpha": ["0.3", "1", "0", "2"],
    "sampling.noise_level": ["0.7", "0", "1e30", "-1", "0.3"],
    "sampling.shift": ["1", "3", "1e-30", "0"],
    "sampling.transition": ["flow_sde", "dance_sde", "cps", "ddim"],
    "sampling.schedule": ["scheduler", "dancegrpo"],
    "sampling.sde_steps": ["all", "window"],
    "sampling.max_batch": ["0", "3"],
    "sampling.static_shapes": ["true", "false"],
    "sampling.guidance_scale": ["1", "3"],
    "loss.clip_range": ["0.2", "1e-4", "0", "-1"],
    "loss.kl_coef": ["0", "0.1", "-1"],
    "loss.estimator": ["logprob_softmax", "mean", "max", "leaf", "nope"],
    "loss.temperature": ["1", "auto", "0", "hot"],
    "loss.timestep_fraction": ["1", "0.5", "0"],
    "loss.reward_weights": ["", "1", "0", "1,2"],
    "optim.lr": ["3e-3", "1e-4", "1e39", "0", "abc"],
    "optim.grad_accumulation": ["1", "2"],
    "train.inner_epochs": ["1", "2"],
    "train.minibatch_parents": ["1", "4"],
    "train.precision": ["fp32", "bf16", "fp16"],
    "train.lora_rank": ["0", "2"],
    "train.device": ["cpu", "cuda:7", "tpu"],
    "train.resume": ["true", "false"],
    "train.ema_decay": ["0", "0.9", "1"],
    "model.rewards": ["target", "classifier"],
    "eval.rewards": ["", "target", "hpsv2"],
}


def _toml_value(text: str) -> str:
    if text in ("true", "false"):
        return text
    for cast in (int, float):
        try:
            cast(text)
            return text if cast is int else repr(float(text))
        except ValueError:
            pass
    if "," in text:
        return "[" + ", ".join(_toml_value(part) for part in text.split(",")) + "]"
    return json.dumps(text)


def _write_toml(path, options: dict[str, str]) -> None:
    sections: dict[str, list[str]] = {}
    for key, value in options.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"{name} = {_toml_value(value)}")
    path.write_text("\n\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()) + "\n")


def _initial_weights() -> dict[str, torch.Tensor]:
    from treegrpo.problems import toy2d_problem

    return {name: p.detach().clone() for name, p in toy2d_problem(4, prompts_per_iteration=2, seed=0).model.named_parameters()}


_counter = itertools.count()


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(chosen=st.dictionaries(st.sampled_from(sorted(VALUES)), st.just(""), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({key: st.sampled_from(VALUES[key]) for key in keys})),
    as_file=st.booleans())
def test_any_options_give_a_clean_run_or_one_line(chosen, as_file, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp(f"fuzz{next(_counter)}")
    options = {**BASE, **chosen, "train.out_dir": str(out / "run")}
    if as_file:
        _write_toml(out / "run.toml", options)
        argv = ["train", "--config", str(out / "run.toml")]
    else:
        argv = ["train", *itertools.chain.from_iterable((f"--{key}", value) for key, value in options.items())]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # the argument parser refusing a flag, also in one line
        code = stop.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    if code != 0:
        assert code == 2 and len(err) == 1 and err[0].startswith("treegrpo: error: "), (chosen, err)
        event(f"one-line error: {err[0].split(':')[2].strip()}")
        return
    event("clean run")
    assert not err, (chosen, err)
    checkpoint = latest_checkpoint(out / "run")
    assert checkpoint is not None and (out / "run" / "summary.json").is_file(), chosen
    trained = load_file(str(checkpoint / "model.safetensors"))
    initial = _initial_weights()
    changed = any(not torch.equal(value, initial[name.removeprefix("base_model.model.")])
                  for name, value in trained.items() if name.removeprefix("base_model.model.") in initial)
    assert changed or any("lora" in name for name in trained), (chosen, "the run changed no weight")
