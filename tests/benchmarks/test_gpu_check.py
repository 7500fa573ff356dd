"""benchmarks/gpu_check.sh: the whole GPU check runs end to end on a CPU at the tiny sizes, every step
leaves its JSON, and a failing step is recorded while the others still run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["device", "cuda_tests", "iteration_lora", "iteration_full", "iteration_compiled", "onpolicy", "flux"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def gpu_check(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    import os

    run = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(out), "--python", sys.executable, *args],
                         capture_output=True, text=True, check=False, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=1500)
    return run, json.loads((out / "steps.json").read_text())


def by_step(status: dict) -> dict[str, dict]:
    return {step["step"]: step for step in status["steps"]}


@pytest.mark.slow
def test_the_tiny_gpu_check_runs_every_step_end_to_end(tmp_path):
    out = tmp_path / "check"
    run, status = gpu_check(out)
    steps = by_step(status)
    assert list(steps) == STEPS and status["complete"] and status["tiny"], run.stdout
    cuda = torch.cuda.is_available()
    for name, step in steps.items():
        expected = "skipped" if name == "cuda_tests" and not cuda else "ok"
        assert step["status"] == expected, (name, step, (out / "logs" / f"{name}.log").read_text()[-3000:])
    assert run.returncode == 0, run.stdout[-3000:]
    if not cuda:
        assert steps["cuda_tests"]["reason"].startswith("no CUDA device")
    assert status["gpu_budget_s"] <= 480  # the budgets of the GPU run sum under 8 minutes

    device = json.loads((out / "device.json").read_text())
    assert device["torch"] == torch.__version__ and device["diffusers"]
    assert device["matmul_tflops"]["bf16"] > 0 and device["matmul_tflops"]["fp32"] > 0
    assert device["device"] == ("cpu" if not cuda else torch.cuda.get_device_name(0))

    tests = json.loads((out / "cuda_tests.json").read_text())
    assert tests["selected"] >= 1 and tests["failed"] == 0 and (out / "cuda_tests.xml").exists()
    assert all("cuda" in (t["reason"] or "cuda").lower() for t in tests["tests"])

    lora = json.loads((out / "iteration_lora.json").read_text())
    assert lora["complete"] and lora["peak_tflops"] == pytest.approx(device["peak_tflops"])
    assert {row["method"] for row in lora["rows"]} == {"treegrpo k2 d3", "flow_grpo", "dance_grpo", "mix_grpo",
                                                       "branch_grpo"}
    for row in lora["rows"]:
        assert "error" not in row, row
        for key in ("seconds_per_iteration", "seconds_sampling", "seconds_update", "time_over_floor", "mfu"):
            assert row[key] > 0, (row["method"], key)
        assert row["images"] == row["prompts"] * 8  # the same images per prompt for every method
    assert {row["mode"] for row in json.loads((out / "iteration_full.json").read_text())["rows"]} == {"full"}
    compiled = json.loads((out / "iteration_compiled.json").read_text())
    assert compiled["compile"] and [row["method"] for row in compiled["rows"]] == ["treegrpo k2 d3"]

    onpolicy = json.loads((out / "onpolicy.json").read_text())
    assert [row["numerics"] for row in onpolicy["rows"]] == ["fp32", "bf16"]
    for row in onpolicy["rows"]:
        assert {"max_deviation", "ratio_std", "clipped_fraction"} <= set(row)
    flux = json.loads((out / "flux.json").read_text())
    assert flux["size"] == "flux-tiny" and {row["method"] for row in flux["rows"]} == {"treegrpo k2 d3", "dance_grpo"}


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "check"
    run, status = gpu_check(out, "--steps", "device,cuda_tests", env={"GPU_CHECK_FAIL": "device"})
    steps = by_step(status)
    assert run.returncode == 1 and status["complete"]
    assert steps["device"]["status"] == "failed" and "exit code 3" in steps["device"]["reason"]
    assert not (out / "device.json").exists()
    # the step after it ran and left its JSON
    assert steps["cuda_tests"]["status"] in {"ok", "skipped"}
    assert json.loads((out / "cuda_tests.json").read_text())["selected"] >= 1
    assert (out / "logs" / "cuda_tests.log").exists()


def test_a_bad_python_fails_every_step_but_the_status_file_is_written(tmp_path):
    out = tmp_path / "check"
    run = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(out), "--python", str(tmp_path / "no-python"),
                          "--steps", "device,onpolicy,flux"], capture_output=True, text=True, check=False, cwd=ROOT, timeout=300)
    status = json.loads((out / "steps.json").read_text())
    assert run.returncode == 1 and status["complete"]
    assert [(s["step"], s["status"]) for s in status["steps"]] == [
        ("device", "failed"), ("onpolicy", "failed"), ("flux", "failed")]
    assert all(s["exit_code"] == 127 for s in status["steps"])


def test_an_unknown_option_is_refused(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--tinyy"], capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)
    assert run.returncode == 2 and "unknown option --tinyy" in run.stderr
