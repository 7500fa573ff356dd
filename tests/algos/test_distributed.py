"""Data-parallel training on CPU with gloo: 2 ranks under torchrun compute what one process computes.

One process with ``sampling.chunks = 2`` samples the same two pieces of each iteration as two ranks
with one chunk each (one generator per piece), trains on the same stratified minibatches, and so
must end with the same weights, to float tolerance, under DDP (LoRA) and FSDP2 (full fine-tuning).
A run killed mid-training resumes on one process: exactly when ``ranks x chunks`` is kept, and with
other noise (but the same history so far) when it is not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The ranks run in torchrun's processes, which the simulated GPU rounding of tests/conftest.py does not
# reach; the one-process references run the same pieces, so every forward has the same batch shape on
# both sides, and they compare at exact numerics.
pytestmark = [pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc"),
              pytest.mark.exact_numerics]
import torch
from safetensors.torch import load_file

from treegrpo.algos.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint
from treegrpo.algos.trainer import Trainer
from treegrpo.config import ConfigError, preset_config
from treegrpo.devices import Ranks
from treegrpo.problems import build_problem

SETTINGS = {
    "sampling.prompts_per_iteration": 4, "train.minibatch_parents": 8, "train.deterministic": "true",
    "train.checkpoint_every": 1, "train.sample_every": 1000, "train.keep_checkpoints": 20,
    "optim.lr": 2e-4, "eval.samples_per_prompt": 1,
}
LORA = {"train.lora_rank": 4, "optim.lr": 2e-3, "optim.grad_accumulation": 2}  # DDP's no_sync on every other step


def _overrides(**extra: object) -> list[str]:
    return [f"{key}={value}" for key, value in {**SETTINGS, **extra}.items()]


def _one_process(out_dir: Path, iterations: int, **extra: object) -> Trainer:
    """The reference run, on one thread as each torchrun worker is (OMP_NUM_THREADS=1): kernels may
    round differently with another thread count, and Adam turns such differences in near-zero
    gradients into visible ones."""
    config = preset_config("digits").override(
        _overrides(**{"train.out_dir": str(out_dir), "train.iterations": iterations, **extra}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(build_problem(config), config)
        if trainer.iteration == 0:
            trainer.save()  # iter-000000: the starting weights
        trainer.fit(progress=False)
    finally:
        torch.set_num_threads(threads)
    return trainer


def _torchrun(nproc: int, out_dir: Path, iterations: int, **extra: object) -> subprocess.Popen:
    flags = [f"--set={key}={value}" for key, value in
             {**SETTINGS, "train.out_dir": out_dir, "train.iterations": iterations, **extra}.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "treegrpo", "train", *flags]
    with open(out_dir.parent / f"{out_dir.name}.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(process: subprocess.Popen, out_dir: Path, timeout: float = 600) -> None:
    code = process.wait(timeout=timeout)
    log = (out_dir.parent / f"{out_dir.name}.log").read_text()
    assert code == 0, log[-4000:]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions)."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            kids = [int(c) for c in children.read_text().split()]
            found += kids
            stack += kids
    return found


def _weights(run_dir: Path, iteration: int) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dir(run_dir, iteration) / "model.safetensors"))


def _assert_weights_close(actual: dict, expected: dict, start: dict) -> None:
    assert actual.keys() == expected.keys()
    moved = max(float((expected[k] - start[k]).abs().max()) for k in expected)
    worst = max(float((actual[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-5 and moved > 100 * worst, (worst, moved)  # equal, and training did move them


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """One process, two chunks: the same computation as two ranks with one chunk each."""
    root = tmp_path_factory.mktemp("one_process")
    runs = {"lora": root / "lora", "full": root / "full"}
    _one_process(runs["lora"], 3, **{"sampling.chunks": 2, **LORA})
    _one_process(runs["full"], 6, **{"sampling.chunks": 2})
    return runs


def test_ddp_with_lora_on_two_ranks_equals_one_process(reference, tmp_path):
    run = tmp_path / "ddp"
    _finish(_torchrun(2, run, 3, **LORA), run)
    for iteration in (1, 2, 3):
        _assert_weights_close(_weights(run, iteration), _weights(reference["lora"], iteration),
                              _weights(reference["lora"], 0))
    ours, theirs = (load_checkpoint(checkpoint_dir(r, 3))[1]["history"] for r in (run, reference["lora"]))
    assert [h["reward_mean"] for h in ours] == pytest.approx([h["reward_mean"] for h in theirs], abs=1e-6)
    assert [h["images"] for h in ours] == [h["images"] for h in theirs]  # counters are global sums
    assert (run / "summary.json").is_file() and (run / "tensorboard").is_dir()  # rank 0 wrote them once


def test_fsdp_run_killed_mid_training_resumes_on_one_process(reference, tmp_path):
    run = tmp_path / "fsdp"
    process = _torchrun(2, run, 40, **{"train.parallel": "fsdp"})
    deadline = time.monotonic() + 600
    while not checkpoint_dir(run, 3).is_dir():
        assert process.poll() is None, (run.parent / "fsdp.log").read_text()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for pid in [process.pid, *_descendants(process.pid)]:  # the launcher and both ranks, mid-iteration
        os.kill(pid, signal.SIGKILL)
    process.wait()
    for iteration in (1, 2, 3):  # FSDP's full-tensor checkpoints equal the one-process run's weights
        _assert_weights_close(_weights(run, iteration), _weights(reference["full"], iteration),
                              _weights(reference["full"], 0))
    latest = latest_checkpoint(run)
    assert latest is not None
    killed_at = int(latest.name.split("-")[1])
    assert killed_at < 40

    # 2 ranks x 1 chunk -> 1 process x 2 chunks: the same pieces, so the run continues exactly.
    same_pieces = tmp_path / "same_pieces"
    shutil.copytree(run, same_pieces)
    _one_process(same_pieces, 6, **{"sampling.chunks": 2, "train.resume": "true"})
    _assert_weights_close(_weights(same_pieces, 6), _weights(reference["full"], 6), _weights(reference["full"], 0))

    # 1 process x 1 chunk: other noise from the checkpoint on, the same history up to it.
    other_pieces = tmp_path / "other_pieces"
    shutil.copytree(run, other_pieces)
    trainer = _one_process(other_pieces, killed_at + 2, **{"train.resume": "true"})
    assert trainer.iteration == killed_at + 2
    history = trainer.history
    expected = load_checkpoint(latest)[1]["history"]
    assert [h["reward_mean"] for h in history[:killed_at]] == [h["reward_mean"] for h in expected]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    resumed, exact = _weights(other_pieces, killed_at + 2), _weights(reference["full"], killed_at + 2)
    assert max(float((resumed[k] - exact[k]).abs().max()) for k in exact) > 1e-5  # other noise, other updates


def test_prompts_must_split_evenly_over_ranks(tmp_path):
    config = preset_config("digits").override(_overrides(**{"train.out_dir": str(tmp_path),
                                                           "sampling.prompts_per_iteration": 4}))
    with pytest.raises(ConfigError, match=r"^sampling.prompts_per_iteration: 4 prompts do not split evenly over 3 ranks"):
        Trainer(build_problem(config), config, ranks=Ranks(rank=0, world_size=3))


def test_the_multi_gpu_example_runs_on_two_cpu_ranks(tmp_path):
    example = Path(__file__).parents[2] / "examples" / "distributed_training.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(example),
               "--device=cpu", "--iterations=2", f"--out={tmp_path / 'run'}"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("world size")]
    assert len(lines) == 1 and lines[0].startswith("world size 2: 2 iterations, 216 images per iteration"), result.stdout
    assert (tmp_path / "run" / "checkpoints" / "iter-000002" / "model.safetensors").is_file()



def test_fsdp_units_are_the_outermost_blocks_with_trained_parameters():
    from torch import nn

    from treegrpo.algos.distributed import _outermost_blocks

    def block() -> nn.Module:
        inner = nn.Module()
        inner.to_out = nn.ModuleList([nn.Linear(2, 2), nn.Dropout(0.0)])  # a list inside a block
        return inner

    model = nn.Module()
    model.blocks = nn.ModuleList([block(), block(), block()])
    model.blocks[2].requires_grad_(False)  # frozen: nothing to shard for the optimiser
    model.head = nn.Linear(2, 2)
    assert _outermost_blocks(model) == [model.blocks[0], model.blocks[1]]


def test_cuda_means_this_ranks_gpu(monkeypatch):
    from treegrpo.devices import local_device, ranks_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks_from_env() == Ranks(rank=3, world_size=4, local_rank=1)
    assert local_device("cuda") == torch.device("cuda", 1)
    assert local_device("auto") == torch.device("cuda", 1)
    assert local_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match=r"^RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK=4, WORLD_SIZE=4"):
        ranks_from_env()

