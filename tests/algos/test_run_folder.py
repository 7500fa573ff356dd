"""A run folder that cannot be turned against its owner: a run writes and deletes only what is its own,
follows no link into another run, reports a baseline of what it measured, says in one line when
the disk is full, and restarts plainly when it stopped before its first checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from treegrpo.algos.checkpoint import LATEST, CheckpointError, latest_checkpoint, save_checkpoint
from treegrpo.cli import main

FLAGS = ["--model.kind", "toy2d", "--sampling.num_steps", "4", "--sampling.shift", "1",
         "--sampling.prompts_per_iteration", "2", "--train.checkpoint_every", "1", "--train.sample_every", "1",
         "--eval.samples_per_prompt", "2", "--train.keep_checkpoints", "1"]


def _train(capsys, out: Path, *extra: str, iterations: int = 1) -> tuple[int, list[str]]:
    """Run ``treegrpo train`` on the toy problem; the exit code and stderr lines (progress bars left out)."""
    capsys.readouterr()
    code = main(["train", *FLAGS, "--train.out_dir", str(out), "--train.iterations", str(iterations), *extra])
    captured = capsys.readouterr()
    return code, [line for line in captured.err.strip().splitlines() if "%|" not in line and line.strip()]


def _one_line(capsys, out: Path, *extra: str, iterations: int = 1) -> str:
    code, err = _train(capsys, out, *extra, iterations=iterations)
    assert code == 2 and len(err) == 1 and err[0].startswith("treegrpo: error: "), err
    return err[0][len("treegrpo: error: "):]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) and its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# ---------------------------------------------------------------------------------------------- 1. links


@pytest.mark.parametrize("into", ["run folder", "checkpoints", "unmarked run"])
def test_a_checkpoints_link_into_another_run_is_refused_and_that_run_is_untouched(tmp_path, capsys, into):
    other = tmp_path / "other"
    assert _train(capsys, other, iterations=2)[0] == 0
    if into == "unmarked run":  # a run written before runs carried markers
        for marker in other.rglob(".treegrpo-run"):
            marker.unlink()
    before = _tree(other)
    mine = tmp_path / "mine"
    mine.mkdir()
    target = other if into == "run folder" else other / "checkpoints"
    (mine / "checkpoints").symlink_to(target)
    message = _one_line(capsys, mine, "--train.resume", iterations=4)
    assert message.startswith(f"train.out_dir: {mine / 'checkpoints'} links to {target}"), message
    assert _tree(other) == before and latest_checkpoint(other).name == "iter-000002"


def test_output_folders_linked_to_another_disk_keep_working_and_overwrite_clears_only_run_files(tmp_path, capsys):
    disk = tmp_path / "disk"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoints", "samples", "tensorboard"):
        (disk / name).mkdir(parents=True)
        (run / name).symlink_to(disk / name)
    assert _train(capsys, run, iterations=2)[0] == 0
    assert latest_checkpoint(run).name == "iter-000002" and (disk / "checkpoints" / "iter-000002").is_dir()
    assert _train(capsys, run, "--train.resume", iterations=3)[0] == 0
    assert latest_checkpoint(run).name == "iter-000003"
    assert _train(capsys, run, "--train.overwrite", iterations=1)[0] == 0
    assert all((run / name).is_symlink() for name in ("checkpoints", "samples", "tensorboard"))
    assert sorted(p.name for p in (disk / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "iter-000001", LATEST]


def test_overwrite_checks_everything_before_deleting_anything(tmp_path, capsys):
    run, foreign = tmp_path / "run", tmp_path / "foreign"
    assert _train(capsys, run)[0] == 0
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    shutil.rmtree(run / "samples")
    (run / "samples").symlink_to(foreign)
    before = _tree(run)
    message = _one_line(capsys, run, "--train.overwrite")
    assert message.startswith(f"train.out_dir: {run / 'samples'} links to {foreign}, which holds files of no run")
    assert _tree(run) == before and (foreign / "notes.txt").read_text() == "keep me"
    (run / "samples").unlink()
    (run / "samples").mkdir()
    (run / "samples" / "notes.txt").write_text("mine, not the run's")
    message = _one_line(capsys, run, "--train.overwrite")
    assert "notes.txt was not written by a run" in message and "nothing was deleted" in message
    assert _tree(run) == {**before, "samples/notes.txt": _tree(run)["samples/notes.txt"]}


def test_a_linked_checkpoint_and_a_linked_latest_are_refused_without_echoing_the_file(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert _train(capsys, run)[0] == 0
    assert _train(capsys, other, iterations=3)[0] == 0
    root = run / "checkpoints"
    (root / "iter-000003").symlink_to(latest_checkpoint(other))
    (root / LATEST).write_text("iter-000003")
    with pytest.raises(CheckpointError, match=r"iter-000003 is a link"):
        latest_checkpoint(run)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the-secret-first-line\n")
    (root / LATEST).unlink()
    (root / LATEST).symlink_to(secret)
    message = _one_line(capsys, run, "--train.resume", iterations=4)
    assert message.startswith("checkpoint: ") and "the-secret" not in message and "root:x" not in message
    (root / LATEST).unlink()
    (root / LATEST).write_text("root:x:0:0:the-secret-first-line")
    with pytest.raises(CheckpointError) as error:
        latest_checkpoint(run)
    assert "secret" not in str(error.value) and "root:x" not in str(error.value)


def test_pruning_deletes_only_checkpoints_the_run_wrote(tmp_path):
    import torch

    root = tmp_path / "checkpoints"
    other = tmp_path / "other"
    save_checkpoint(other, 1, {"w": torch.zeros(2)}, {})
    root.mkdir()
    (root / "iter-000000").symlink_to(other / "checkpoints" / "iter-000001")
    for i in (1, 2, 3):
        save_checkpoint(tmp_path, i, {"w": torch.zeros(2)}, {}, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["iter-000000", "iter-000003", LATEST]
    assert (other / "checkpoints" / "iter-000001" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- 2. the baseline


def test_a_resume_with_other_eval_settings_measures_the_starting_policy_again(tmp_path, capsys):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    assert _train(capsys, run, iterations=2)[0] == 0
    code, _ = _train(capsys, run, "--train.resume", "--eval.samples_per_prompt", "3", iterations=3)
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert _train(capsys, fresh, "--eval.samples_per_prompt", "3", iterations=1)[0] == 0
    measured = json.loads((fresh / "summary.json").read_text())["before"]
    assert summary["before"] == measured  # the base policy under the new settings, not the old file
    baseline = json.loads((run / "eval_before.json").read_text())
    assert baseline["measured_with"]["eval"]["samples_per_prompt"] == 3


def test_an_old_baseline_without_a_key_or_a_column_is_never_reported(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(capsys, run, iterations=2)[0] == 0
    (run / "eval_before.json").write_text(json.dumps({"eval_samples": 4.0, "iteration": 0.0}))  # no eval/ column
    capsys.readouterr()
    assert main(["train", *FLAGS, "--train.out_dir", str(run), "--train.iterations", "3", "--train.resume"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "measuring the starting policy again" in out


# ---------------------------------------------------------------------------------------------- 3. a full disk


def test_a_disk_that_fills_during_the_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch
    from safetensors import SafetensorError

    from treegrpo.algos import checkpoint as module

    first = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {})
    save_file = module.save_file

    def fills(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(module, "save_file", fills)
    with pytest.raises(CheckpointError, match=rf"^checkpoint: {tmp_path / 'checkpoints'} has \d+ bytes free but "
                                              r"checkpoint 2 needs about \d+ bytes") as error:
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(2)}, {})
    assert "\n" not in str(error.value)
    monkeypatch.setattr(module, "save_file", save_file)
    monkeypatch.setattr(module, "free_bytes", lambda path: 100)
    with pytest.raises(CheckpointError, match=r"has 100 bytes free but checkpoint 2 needs about"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(2)}, {})
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-000001", LATEST]


def test_the_start_counts_every_checkpoint_kept(tmp_path, capsys, monkeypatch):
    from treegrpo.algos import run_folder

    needed = {}

    def free(path):
        needed["path"] = path
        return 3 * 2**20

    monkeypatch.setattr(run_folder, "free_bytes", free)
    message = _one_line(capsys, tmp_path / "run", "--train.keep_checkpoints", "3")
    assert message.startswith(f"train.out_dir: {tmp_path / 'run' / 'checkpoints'} has 3145728 bytes free but 4 more "
                              "checkpoint(s)"), message


_FULL_DISK = """
import os, sys
from pathlib import Path
from treegrpo.algos.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from treegrpo.algos.trainer import Trainer
from treegrpo.config import Config
from treegrpo.problems import toy2d_problem

run = Path(sys.argv[1]) / "run"
config = Config().override(["model.kind=toy2d", "sampling.num_steps=4", "sampling.prompts_per_iteration=2",
                            "train.iterations=3", f"train.out_dir={run}", "train.checkpoint_every=1",
                            "train.sample_every=1000", "train.log_every=1000", "train.keep_checkpoints=1"])
trainer = Trainer(toy2d_problem(4, prompts_per_iteration=2, seed=0), config)
trainer.fit(1, progress=False)
good = latest_checkpoint(run)
filler = Path(sys.argv[1]) / "filler"
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # the disk fills up under the run
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    os.close(fd)
try:
    trainer.fit(progress=False)
except CheckpointError as error:
    print("ERROR", error)
load_checkpoint(latest_checkpoint(run))
print("LATEST", latest_checkpoint(run) == good)
"""


def test_a_tmpfs_that_fills_mid_run_is_one_line_and_the_last_checkpoint_loads(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent(_FULL_DISK))
    command = f"mount -t tmpfs -o size=8m tmpfs {disk} && exec {sys.executable} {script} {disk}"
    done = subprocess.run([unshare, "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "LATEST True"
    error = next(line for line in lines if line.startswith("ERROR "))
    assert f"{disk / 'run' / 'checkpoints'} has " in error and "bytes free but checkpoint" in error


# ---------------------------------------------------------------------------------------------- 7. an early stop


def _stopped_before_first_checkpoint(capsys, run: Path) -> None:
    """What a run killed during its first iteration leaves: a claimed folder, a baseline, logs, a grid."""
    assert _train(capsys, run)[0] == 0
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").unlink()
    (run / "reward_curve.png").unlink()


@pytest.mark.parametrize("how", ["--train.resume", "plain retry"])
def test_a_run_stopped_before_its_first_checkpoint_restarts_without_overwrite(tmp_path, capsys, how):
    run = tmp_path / "run"
    _stopped_before_first_checkpoint(capsys, run)
    code, err = _train(capsys, run, *([how] if how.startswith("--") else []), iterations=2)
    assert code == 0, err
    assert latest_checkpoint(run).name == "iter-000002" and (run / "summary.json").is_file()
    assert len(list((run / "tensorboard").iterdir())) == 1  # the stopped run's log went with it


def test_a_resume_in_a_folder_with_no_run_points_to_the_command_that_works(tmp_path, capsys):
    message = _one_line(capsys, tmp_path / "typo", "--train.resume")
    assert "there is no checkpoint and no earlier run" in message and "drop --train.resume" in message
