"""Checkpoints a user can trust: no code runs from one, no bad state is saved over a good one,
a resume says what changed, a run folder is claimed, and every damaged file is one line."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from treegrpo.algos.checkpoint import (
    CHECKSUMS,
    LATEST,
    MODEL_FILE,
    STATE_JSON,
    CheckpointError,
    decode_state,
    encode_state,
    latest_checkpoint,
    load_checkpoint,
    remove_staging,
    save_checkpoint,
)
from treegrpo.algos.trainer import NonFiniteTrainingError, Trainer
from treegrpo.cli import main
from treegrpo.config import Config, ConfigError
from treegrpo.problems import toy2d_problem


def _config(out_dir: Path, iterations: int = 4, **extra: object) -> Config:
    settings = {"model.kind": "toy2d", "sampling.num_steps": 6, "sampling.shift": 1.0,
                "sampling.prompts_per_iteration": 2, "train.iterations": iterations, "train.out_dir": str(out_dir),
                "optim.lr": 3e-3, "loss.clip_range": 0.2, "train.minibatch_parents": 2, "train.checkpoint_every": 2,
                "train.sample_every": 1000, "train.deterministic": True, **extra}
    return Config().override([f"{key}={value}" for key, value in settings.items()])


def _problem():
    return toy2d_problem(6, prompts_per_iteration=2, seed=0)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


class _Payload:
    """Unpickling this writes a file: what a malicious state.pt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


# ---------------------------------------------------------------------------------------------- the codec


def test_the_state_codec_round_trips_every_kind_of_state_exactly():
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                           "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
             "history": [{"loss": float("nan"), "reward": 1.5}], "memory": {"best": None}, "__odd": {"k": 1}}
    data, tensors = encode_state(state)
    text = json.dumps(data)
    back = decode_state(json.loads(text), tensors)
    assert back["python"] == state["python"] and back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(back["numpy"], state["numpy"], strict=True))
    assert back["numpy"][1].dtype == np.uint32 and torch.equal(back["torch"], state["torch"])
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["history"][0]["reward"] == 1.5 and back["history"][0]["loss"] != back["history"][0]["loss"]
    assert back["__odd"] == {"k": 1}
    with pytest.raises(TypeError, match="cannot store a _Payload"):
        encode_state({"x": _Payload(Path("/tmp/never"))})


# ---------------------------------------------------------------------------------------------- 1. no code runs


def _trained(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    Trainer(_problem(), _config(run_dir, 2)).fit(progress=False)
    return run_dir


def test_a_pickled_state_never_runs_under_resume_or_eval(tmp_path, capsys):
    run_dir = _trained(tmp_path)
    checkpoint = latest_checkpoint(run_dir)
    marker = tmp_path / "marker"
    # an old-format checkpoint (state.pt only) and a new one with an extra state.pt planted beside the data
    legacy = run_dir / "checkpoints" / "iter-000001"
    legacy.mkdir()
    (legacy / MODEL_FILE).write_bytes((checkpoint / MODEL_FILE).read_bytes())
    (legacy / "state.pt").write_bytes(pickle.dumps({"rng": _Payload(marker)}))
    (checkpoint / "state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    flags = ["--model.kind", "toy2d", "--sampling.num_steps", "6", "--sampling.shift", "1",
             "--sampling.prompts_per_iteration", "2", "--train.out_dir", str(run_dir)]
    assert main(["eval", *flags, "--checkpoint", str(legacy), "--eval.samples_per_prompt", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("treegrpo: error: checkpoint: ") and "pickle" in err and len(err.splitlines()) == 1
    assert main(["eval", *flags, "--checkpoint", str(checkpoint), "--eval.samples_per_prompt", "2"]) == 0
    (run_dir / "checkpoints" / LATEST).write_text("iter-000001")
    assert main(["train", *flags, "--train.resume", "--train.iterations", "4", "--optim.lr", "3e-3",
                 "--loss.clip_range", "0.2", "--train.minibatch_parents", "2", "--train.checkpoint_every", "2",
                 "--train.deterministic"]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_a_pickled_lora_file_is_refused(tmp_path):
    from treegrpo.problems.lora import check_lora_file

    lora = tmp_path / "lora.bin"
    lora.write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    with pytest.raises(ConfigError, match=r"^model.lora: .* is not a .safetensors file"):
        check_lora_file(lora)
    with pytest.raises(ConfigError, match=r"^model.lora: .* does not exist"):
        check_lora_file(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- 2. the guard


def test_a_non_finite_loss_after_an_update_leaves_the_good_checkpoint_byte_identical(tmp_path):
    trainer = Trainer(_problem(), _config(tmp_path, 6))
    trainer.fit(2, progress=False)  # writes iter-000002
    good = latest_checkpoint(tmp_path)
    before = _digest(good)
    forward, calls = trainer.loss.forward, {"n": 0}

    def poisoned(td):
        calls["n"] += 1
        terms = forward(td)
        if calls["n"] == 2:  # the second minibatch: one optimiser step has changed the weights already
            terms["loss_objective"] = terms["loss_objective"] * float("nan")
        return terms

    trainer.loss.forward = poisoned
    with pytest.raises(NonFiniteTrainingError, match=r"weights changed in this iteration .* last good state is "):
        trainer.fit(progress=False)
    assert _digest(good) == before and latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-000002", LATEST]


def test_weights_that_become_non_finite_are_never_saved(tmp_path):
    trainer = Trainer(_problem(), _config(tmp_path, 4, **{"train.checkpoint_every": 1}))
    trainer.fit(1, progress=False)
    with torch.no_grad():
        next(iter(trainer.named_params.values())).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to save iteration 1.*NaN or inf"):
        save_checkpoint(tmp_path, 1, dict(trainer.named_params), trainer.state_dict())
    with pytest.raises(CheckpointError, match="never written over another"):
        save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {})


def test_a_nan_reward_saves_the_state_before_the_iteration_so_resume_is_exact(tmp_path):
    straight = Trainer(_problem(), _config(tmp_path / "straight", 5, **{"train.checkpoint_every": 10}))
    straight.fit(progress=False)
    problem = _problem()
    reward = problem.reward
    problem.reward = lambda final, ids: reward(final, ids) * (float("nan") if trainer.iteration == 3 else 1.0)
    trainer = Trainer(problem, _config(tmp_path / "nan", 5, **{"train.checkpoint_every": 10}))
    with pytest.raises(NonFiniteTrainingError, match=r"^iteration 3: reward is not finite.*state before this iteration"):
        trainer.fit(progress=False)
    assert latest_checkpoint(tmp_path / "nan").name == "iter-000003"
    resumed = Trainer(_problem(), _config(tmp_path / "nan", 5, **{"train.checkpoint_every": 10, "train.resume": True}))
    resumed.fit(progress=False)
    for name, p in straight.named_params.items():
        assert torch.equal(p, resumed.named_params[name]), name


# ---------------------------------------------------------------------------------------------- 3. resume compares


def test_a_resume_with_another_lr_is_refused_unless_allowed_and_then_the_new_lr_wins(tmp_path):
    Trainer(_problem(), _config(tmp_path, 2)).fit(progress=False)
    with pytest.raises(ConfigError, match=r"^train.resume: .* other settings \(optim.lr 0.003 -> 0.0005\)"):
        Trainer(_problem(), _config(tmp_path, 4, **{"train.resume": True, "optim.lr": 5e-4}))
    with pytest.raises(ConfigError, match=r"loss.algorithm 'treegrpo' -> 'grpo'"):
        Trainer(_problem(), _config(tmp_path, 4, **{"train.resume": True, "loss.algorithm": "grpo"}))
    allowed = Trainer(_problem(), _config(tmp_path, 4, **{"train.resume": True, "optim.lr": 5e-4,
                                                          "train.allow_config_change": True, "optim.beta1": 0.5}))
    assert all(g["lr"] == 5e-4 and g["betas"] == (0.5, 0.999) for g in allowed.optimizer.param_groups)
    assert allowed.iteration == 2
    longer = Trainer(_problem(), _config(tmp_path, 9, **{"train.resume": True, "train.log_every": 3}))
    assert longer.iteration == 2  # the run's length and logging may change freely


def test_a_resume_that_finds_no_checkpoint_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.resume: there is no checkpoint .*typo"):
        Trainer(_problem(), _config(tmp_path / "typo", 2, **{"train.resume": True}))


# ---------------------------------------------------------------------------------------------- 4. the run folder


def test_a_used_folder_is_refused_without_resume_and_overwrite_starts_afresh(tmp_path, capsys):
    from treegrpo.algos.entrypoints import run

    run_dir = _trained(tmp_path)
    with pytest.raises(ConfigError, match=r"^train.out_dir: .* holds an earlier run \(checkpoints/\)"):
        Trainer(_problem(), _config(run_dir, 2))
    (run_dir / "eval_before.json").write_text(json.dumps({"eval/target": 123.0}))  # a stale, planted value
    summary = run(_config(run_dir, 2, **{"train.overwrite": True}), problem=_problem(), progress=False)
    assert summary["before"]["eval/target"] != 123.0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter-000002", LATEST]
    assert latest_checkpoint(run_dir).is_dir()
    with pytest.raises(ConfigError, match="cannot be combined with train.resume"):
        Trainer(_problem(), _config(run_dir, 2, **{"train.overwrite": True, "train.resume": True}))


def test_two_runs_in_one_folder_the_second_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "treegrpo", "train", "--model.kind", "toy2d", "--train.out_dir", str(tmp_path),
               "--sampling.num_steps", "6", "--sampling.prompts_per_iteration", "2"]
    first = subprocess.Popen([*command, "--train.iterations", "400"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "tensorboard").exists():
            time.sleep(0.05)
        second = subprocess.run([*command, "--train.iterations", "2"], check=False, env=env, capture_output=True, text=True,
                                timeout=120)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().startswith("treegrpo: error: train.out_dir: ") and "another run (pid" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_out_dir_errors_come_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--model.kind", "toy2d", "--train.out_dir", str(blocker / "run")]) == 2
    assert capsys.readouterr().err.strip() == (f"treegrpo: error: train.out_dir: {blocker / 'run'} lies under {blocker}, "
                                               "which is a file, not a folder")
    assert main(["train", "--model.kind", "toy2d", "--train.out_dir", ""]) == 2
    assert "train.out_dir: is empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 5. damaged files


def _damage(checkpoint: Path, how: str) -> None:
    if how == "flipped byte":
        data = bytearray((checkpoint / MODEL_FILE).read_bytes())
        data[len(data) // 2] ^= 0x01
        (checkpoint / MODEL_FILE).write_bytes(bytes(data))
    elif how == "truncated state":
        (checkpoint / STATE_JSON).write_text((checkpoint / STATE_JSON).read_text()[:20])
    elif how == "missing checksums":
        (checkpoint / CHECKSUMS).unlink()
    elif how == "garbage checksums":
        (checkpoint / CHECKSUMS).write_text("[1, 2")
    elif how == "resummed garbage":  # tensors replaced and the sums recomputed: the contents must still parse
        (checkpoint / MODEL_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
        sums = json.loads((checkpoint / CHECKSUMS).read_text())
        sums[MODEL_FILE] = hashlib.sha256((checkpoint / MODEL_FILE).read_bytes()).hexdigest()
        (checkpoint / CHECKSUMS).write_text(json.dumps(sums))


@pytest.mark.parametrize("how", ["flipped byte", "truncated state", "missing checksums", "garbage checksums",
                                 "resummed garbage"])
def test_every_damaged_checkpoint_file_is_one_line(tmp_path, how):
    run_dir = _trained(tmp_path)
    checkpoint = latest_checkpoint(run_dir)
    _damage(checkpoint, how)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(checkpoint)
    assert str(error.value).startswith("checkpoint: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("pointer", ["../../other/checkpoints/iter-000001", "/etc", "iter-1", ""])
def test_latest_must_name_a_checkpoint_of_this_run(tmp_path, pointer):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / LATEST).write_text(pointer)
    with pytest.raises(CheckpointError, match="expected a checkpoint of this run"):
        latest_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------- 7. housekeeping


def test_staging_leftovers_are_removed_and_files_are_readable(tmp_path):
    run_dir = _trained(tmp_path)
    root = run_dir / "checkpoints"
    (root / ".iter-000004.abc").mkdir()
    (root / ".iter-000004.abc" / MODEL_FILE).write_text("half")
    (root / f".{LATEST}.xyz").write_text("iter")
    Trainer(_problem(), _config(run_dir, 4, **{"train.resume": True}))
    assert sorted(p.name for p in root.iterdir()) == ["iter-000002", LATEST]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in checkpoint.iterdir())
    assert (root / LATEST).stat().st_mode & 0o777 == 0o644
    assert remove_staging(tmp_path / "nowhere") == 0


def test_a_failed_write_leaves_no_staging_and_names_the_disk_error(tmp_path, monkeypatch):
    import errno

    from treegrpo.algos import checkpoint as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "save_file", full)
    with pytest.raises(CheckpointError, match=r"checkpoints has \d+ bytes free but checkpoint 1 needs about \d+ bytes "
                                              r"\(No space left on device\); free some space"):
        save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []
    weights = {"w": torch.arange(3.0)}
    monkeypatch.undo()
    path = save_checkpoint(tmp_path, 1, weights, {"iteration": 1})
    assert torch.equal(load_file(str(path / MODEL_FILE))["w"], weights["w"])


# ---------------------------------------------------------------------------------------------- 6. crafted states


def _rewrite_state(checkpoint: Path, edit) -> None:
    """Change state.json with ``edit(document) -> text`` and recompute its sha256, as an attacker would."""
    document = json.loads((checkpoint / STATE_JSON).read_text())
    (checkpoint / STATE_JSON).write_text(edit(document))
    sums = json.loads((checkpoint / CHECKSUMS).read_text())
    sums[STATE_JSON] = hashlib.sha256((checkpoint / STATE_JSON).read_bytes()).hexdigest()
    (checkpoint / CHECKSUMS).write_text(json.dumps(sums))


def _without(key):
    def edit(document):
        del document["state"][key]
        return json.dumps(document)
    return edit


def _replace(path, value):
    def edit(document):
        node = document["state"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(document)
    return edit


def _deep(document):
    return '{"format": 2, "state": {"iteration": 0, "history": ' + "[" * 200_000 + "]" * 200_000 + "}}"


def _wide_moment(document):
    document["state"]["optimizer"]["state"]["__items__"][0][1]["exp_avg"] = document["state"]["rng"]["torch"]
    return json.dumps(document)


@pytest.mark.parametrize(("edit", "says"), [
    (_without("optimizer"), "lacks the key 'optimizer'"),
    (_deep, "is not valid JSON (or is nested too deep)"),
    (_replace(["iteration"], "7"), "holds a str under 'iteration', expected int"),
    (_replace(["history"], [[1, 2]]), "holds a 'history' entry that is not a record"),
    (_replace(["rng", "numpy"], {"__tuple__": ["MT19937", 5, 0, 0, 0.0]}), "does not fit this run ("),
    (_replace(["rng", "python"], 3), "holds an RNG state without a valid 'python' part"),
    (_wide_moment, "holds an optimizer tensor of shape"),
    (_replace(["advantage"], {"__items__": [[[1], 2]]}), "holds an entry the state codec cannot decode"),
])
def test_a_crafted_state_with_valid_checksums_is_one_line(tmp_path, edit, says, capsys):
    run_dir = _trained(tmp_path)
    _rewrite_state(latest_checkpoint(run_dir), edit)
    flags = ["--model.kind", "toy2d", "--sampling.num_steps", "6", "--sampling.shift", "1",
             "--sampling.prompts_per_iteration", "2", "--train.out_dir", str(run_dir), "--optim.lr", "3e-3",
             "--loss.clip_range", "0.2", "--train.minibatch_parents", "2", "--train.checkpoint_every", "2",
             "--train.deterministic", "--train.iterations", "4", "--train.resume", "--train.allow_config_change"]
    capsys.readouterr()
    assert main(["train", *flags]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(err) == 1 and err[0].startswith("treegrpo: error: checkpoint: ") and says in err[0], err


def test_non_finite_weights_are_refused_by_eval_whatever_the_checksums_say(tmp_path, capsys):
    from safetensors.torch import save_file

    run_dir = _trained(tmp_path)
    checkpoint = latest_checkpoint(run_dir)
    weights = load_file(str(checkpoint / MODEL_FILE))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(checkpoint / MODEL_FILE))
    sums = json.loads((checkpoint / CHECKSUMS).read_text())
    sums[MODEL_FILE] = hashlib.sha256((checkpoint / MODEL_FILE).read_bytes()).hexdigest()
    (checkpoint / CHECKSUMS).write_text(json.dumps(sums))
    flags = ["--model.kind", "toy2d", "--sampling.num_steps", "6", "--sampling.shift", "1",
             "--sampling.prompts_per_iteration", "2", "--train.out_dir", str(run_dir)]
    capsys.readouterr()
    assert main(["eval", *flags, "--eval.samples_per_prompt", "2"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "NaN or inf" in err[0] and "nan ± nan" not in captured.out


def test_a_pickle_named_like_safetensors_is_refused_by_its_bytes(tmp_path):
    from treegrpo.problems.lora import LORA_FILE, check_lora_file

    (tmp_path / LORA_FILE).write_bytes(pickle.dumps(_Payload(tmp_path / "marker")))
    with pytest.raises(ConfigError, match=r"^model.lora: .* is a pickle or a torch checkpoint, not a safetensors"):
        check_lora_file(tmp_path)
    (tmp_path / LORA_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ConfigError, match=r"its header is not a JSON object"):
        check_lora_file(tmp_path / LORA_FILE)
    assert not (tmp_path / "marker").exists()
