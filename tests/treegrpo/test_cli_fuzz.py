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
    "loss.algorithm": ["treegrpo", "grpo", "mixgrpo", "ddpo", "reinforce", "ppo", "flow_grpo", "dance_grpo",
                       "mix_grpo", "branch_grpo"],
    "sampling.split_steps": ["0,2", "", "0,9", "1,1", "3"],
    "sampling.split_noise_scale": ["1", "4", "0"],
    "sampling.last_step": ["sde", "x0", "ode", "final"],
    "sampling.slide": ["wrap", "mixgrpo"],
    "loss.prune_depths": ["2", "0"],
    "loss.width_pruning": ["off", "branch", "extremes"],
    "loss.kl_form": ["transition", "flow_grpo"],
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
    "loss.timestep_selection": ["random", "first", "per_sample", "last"],
    "loss.advantage_std": ["group", "group_bessel", "batch"],
    "loss.advantage_eps": ["auto", "1e-4", "0", "-1"],
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


# ---------------------------------------------------------------------------------------------- attacks on the run folder
# Every layout below ends in one line naming the problem (never the content of a file it refuses) or in
# a clean run that learns: links into another run, crafted state files with valid checksums, huge and
# non-UTF-8 inputs, and a disk too small for the run.

SECRET = "root:x:0:0:secret-first-line"


def _argv(out, *extra: str) -> list[str]:
    return ["train", *itertools.chain.from_iterable((f"--{k}", v) for k, v in BASE.items()),
            "--train.out_dir", str(out), *extra]


def _resummed(checkpoint, name: str) -> None:
    import hashlib

    sums = json.loads((checkpoint / "checksums.json").read_text())
    sums[name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "checksums.json").write_text(json.dumps(sums))


def _crafted(run, text: str):
    checkpoint = latest_checkpoint(run)
    (checkpoint / "state.json").write_text(text)
    _resummed(checkpoint, "state.json")


def _nan_weights(run):
    from safetensors.torch import save_file

    checkpoint = latest_checkpoint(run)
    weights = {name: torch.full_like(t, float("nan")) for name, t in load_file(str(checkpoint / "model.safetensors")).items()}
    save_file(weights, str(checkpoint / "model.safetensors"))
    _resummed(checkpoint, "model.safetensors")


def _link(mine, name: str, target) -> None:
    mine.mkdir(exist_ok=True)
    (mine / name).symlink_to(target)


def _latest_to(copy, text: bytes | None, target=None) -> None:
    (copy / "checkpoints" / "latest").unlink()
    if target is not None:
        (copy / "checkpoints" / "latest").symlink_to(target)
    else:
        (copy / "checkpoints" / "latest").write_bytes(text)


def _iter_link(copy, other) -> None:
    (copy / "checkpoints" / "iter-000009").symlink_to(latest_checkpoint(other))
    (copy / "checkpoints" / "latest").write_text("iter-000009")


# name -> (prepare(mine, copy_of_other, other, secret_file) -> argv extras, outcome)
LAYOUTS = {
    "checkpoints -> another run": (lambda m, c, o, s: _link(m, "checkpoints", o) or ["--train.resume"], "line"),
    "checkpoints -> its checkpoints": (lambda m, c, o, s: _link(m, "checkpoints", o / "checkpoints") or [
        "--train.resume"], "line"),
    "samples -> its samples": (lambda m, c, o, s: _link(m, "samples", o / "samples") or [], "line"),
    "summary.json -> a file": (lambda m, c, o, s: _link(m, "summary.json", s) or [], "line"),
    "out_dir = its checkpoints": (lambda m, c, o, s: ["--train.out_dir", str(o / "checkpoints")], "line"),
    "outputs -> an empty disk": (lambda m, c, o, s: [_link(m, n, m.parent / "disk" / n) for n in
                                                   ("checkpoints", "samples", "tensorboard")] and [], "learns"),
    "latest -> a secret file": (lambda m, c, o, s: _latest_to(c, None, s) or ["--train.resume"], "line"),
    "latest = a secret line": (lambda m, c, o, s: _latest_to(c, SECRET.encode()) or ["--train.resume"], "line"),
    "latest = non-UTF-8": (lambda m, c, o, s: _latest_to(c, b"\xff\xfe iter") or ["--train.resume"], "line"),
    "iter -> another run's": (lambda m, c, o, s: _iter_link(c, o) or ["--train.resume"], "line"),
    "state without optimizer": (lambda m, c, o, s: _crafted(c, '{"format": 2, "state": {"iteration": 1}}') or [
        "--train.resume"], "line"),
    "state nested 200,000 deep": (lambda m, c, o, s: _crafted(c, '{"format": 2, "state": {"h": ' + "[" * 200_000 +
                                                                "]" * 200_000 + "}}") or ["--train.resume"], "line"),
    "NaN weights, resummed": (lambda m, c, o, s: _nan_weights(c) or ["--train.resume"], "line"),
    "a 20 MB out_dir": (lambda m, c, o, s: ["--train.out_dir", "d" * 20_000_000], "line"),
    "a non-UTF-8 config file": (lambda m, c, o, s: (m.parent / "bad.toml").write_bytes(b"[train]\n\xff = 1\n") and [
        "--config", str(m.parent / "bad.toml")], "line"),
}


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A finished run (two checkpoints) that the layouts aim at."""
    other = tmp_path_factory.mktemp("victim") / "other"
    assert main(_argv(other, "--train.iterations", "2", "--train.sample_every", "1")) == 0
    return other


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_run_folder_attacks_end_in_one_line_or_a_run_that_learns(layout, other_run, tmp_path, capsys):
    import hashlib
    import shutil

    def tree(folder):
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.name != ".lock"}

    before = tree(other_run)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    mine, copy = tmp_path / "mine", tmp_path / "copy"
    shutil.copytree(other_run, copy, symlinks=True)
    prepare, outcome = LAYOUTS[layout]
    extra = prepare(mine, copy, other_run, secret)
    out = copy if layout.startswith(("latest", "iter", "state", "NaN")) else mine
    capsys.readouterr()
    try:
        code = main([*_argv(out), *extra])
    except SystemExit as stop:
        code = stop.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert tree(other_run) == before, (layout, "the other run was changed")
    if outcome == "line":
        assert code == 2 and len(err) == 1 and err[0].startswith("treegrpo: error: "), (layout, err)
        assert "secret" not in err[0] and len(err[0]) < 2200, (layout, err[0][:300])
        return
    assert code == 0 and not err, (layout, err)
    trained = load_file(str(latest_checkpoint(mine) / "model.safetensors"))
    initial = _initial_weights()
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items() if k in initial), (layout, "learned nothing")


@pytest.mark.slow
def test_a_disk_too_small_for_the_run_is_one_line(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True, check=False).returncode:
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    argv = " ".join(_argv(disk / "run", "--train.keep_checkpoints", "3"))
    command = f"mount -t tmpfs -o size=2m tmpfs {disk} && exec {sys.executable} -m treegrpo {argv}"
    done = subprocess.run([unshare, "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "TQDM_DISABLE": "1"})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, err[-5:]
    assert err[0].startswith(f"treegrpo: error: train.out_dir: {disk / 'run' / 'checkpoints'} has ") and (
        "bytes free but 4 more checkpoint(s)" in err[0]), err
