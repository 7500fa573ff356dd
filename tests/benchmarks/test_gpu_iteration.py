"""`treegrpo bench --gpu` at the tiny sizes on CPU: every method runs, and the accounting in its JSON
agrees with the samplers' NFE formula and with itself; the FLUX-shaped run uses FLUX's adapter and schedule."""

from __future__ import annotations

import json

import pytest
import torch

from treegrpo import cli
from treegrpo.envs import tree_nfe


def test_gpu_iteration_benchmark_runs_at_tiny_size(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = ["--size", "tiny", "--device", "cpu", "--iterations", "1", "--steps", "6", "--max-batch", "8",
            "--minibatch", "4", "--images-per-prompt", "8", "--modes", "lora", "full", "--peak-tflops", "1", "--out", str(out),
            "--methods", "treegrpo k2 d3", "grpo (DanceGRPO)", "mixgrpo", "ddpo"]
    assert cli.main(["bench", "--gpu", "--", *args]) == 0
    data = json.loads(out.read_text())
    rows = {(row["method"], row["mode"]): row for row in data["rows"]}
    assert set(rows) == {(m, mode) for m in ("treegrpo k2 d3", "grpo (DanceGRPO)", "mixgrpo", "ddpo")
                         for mode in ("lora", "full")}
    for row in rows.values():
        assert row["images"] == data["prompts"] * 8  # the same images per prompt for every method
        assert row["seconds_per_iteration"] > 0 and row["floor_s"] > 0 and row["mfu"] > 0
        assert abs(row["images_per_second"] * row["seconds_per_iteration"] - row["images"]) < 1e-6
        assert row["flops_per_image_forward"] > 0
    tree = rows[("treegrpo k2 d3", "lora")]
    # the window start varies per iteration, so the tree's NFE is one of the formula's values
    assert tree["nfe_sampled"] in {data["prompts"] * tree_nfe(6, 2, 3, s) for s in range(4)}
    # DanceGRPO's group shares its initial noise: one row for the first step, then 8 trajectories
    assert rows[("grpo (DanceGRPO)", "lora")]["nfe_sampled"] == data["prompts"] * (1 + 8 * 5)
    # trees train one row per internal node; GRPO one row per trained step of every trajectory
    assert tree["forward_backward_rows"] == data["prompts"] * (1 + 2 + 4)
    trained = round(6 * 0.6)  # steps trained per iteration; the shared first step is one row for the group
    assert rows[("grpo (DanceGRPO)", "lora")]["forward_backward_rows"] in {
        data["prompts"] * 8 * trained, data["prompts"] * (1 + 8 * (trained - 1))}
    assert "vs Dance" in capsys.readouterr().out


def test_gpu_iteration_benchmark_runs_at_tiny_flux_size(tmp_path):
    """The FLUX family: packed tokens, distilled guidance (one forward per row), the resolution-shifted schedule."""
    import benchmarks.gpu_iteration as bench
    from treegrpo.envs import FluxDenoiser

    out = tmp_path / "flux.json"
    args = ["--size", "flux-tiny", "--device", "cpu", "--iterations", "1", "--steps", "4", "--max-batch", "8",
            "--minibatch", "4", "--images-per-prompt", "8", "--modes", "lora", "--out", str(out),
            "--methods", "treegrpo k2 d3", "grpo (DanceGRPO)"]
    assert cli.main(["bench", "--gpu", "--", *args]) == 0
    data = json.loads(out.read_text())
    rows = {row["method"]: row for row in data["rows"]}
    prompts = data["prompts"]
    assert rows["treegrpo k2 d3"]["images"] == rows["grpo (DanceGRPO)"]["images"] == prompts * 8
    assert rows["treegrpo k2 d3"]["nfe_sampled"] in {prompts * tree_nfe(4, 2, 3, s) for s in range(2)}
    assert rows["grpo (DanceGRPO)"]["nfe_sampled"] == prompts * (1 + 8 * 3)  # guidance is distilled: 1 per row
    assert all(row["flops_per_image_forward"] > 0 for row in rows.values())

    parsed = bench.parse_args(["--size", "flux-tiny", "--steps", "4", "--prompts", "2"])
    problem = bench.synthetic_problem(parsed, bench.build_transformer(parsed, bench.torch.float32), "cpu")
    assert isinstance(problem.model, FluxDenoiser) and problem.model.guidance_scale == 3.5
    # 8 x 8 latents are 16 tokens: mu = 0.5 + 0.65 (16 - 256) / 3840, below SD3's static shift of 3
    shifted = problem.transition.timesteps.sigmas
    assert shifted[1] < bench.flow_timesteps(bench.parse_args(["--size", "tiny", "--steps", "4"]), "scheduler").sigmas[1]


def test_branch_grpo_splits_to_the_same_images_per_prompt():
    import benchmarks.gpu_iteration as bench

    assert bench.branch_shape(27, 10) == (3, [0, 3, 6])
    assert bench.branch_shape(8, 6) == (2, [0, 2, 4])
    assert bench.branch_shape(16, 20) == (2, [0, 3, 6, 9])  # BranchGRPO's own
    assert bench.branch_shape(9, 10) == (3, [0, 3])
    assert bench.branch_shape(12, 10) == (12, [0])  # no power: one split of every image
    with pytest.raises(ValueError, match="no power"):
        bench.branch_shape(1, 10)


def test_a_method_out_of_memory_halves_its_prompts_and_a_failed_one_keeps_the_others(tmp_path, monkeypatch):
    """On CUDA out of memory a method retries with half the prompts; one that cannot run is an error row,
    the JSON is still written with every other row, and the script exits 1."""
    import benchmarks.gpu_iteration as bench

    calls = []

    def fake_run(args, method, mode, device, scratch):
        calls.append((method, args.prompts))
        if method == "ddpo":
            raise RuntimeError("broken on purpose")
        if args.prompts > 2 or method == "mixgrpo":
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return {"method": method, "mode": mode, "prompts": args.prompts, "seconds_per_iteration": 1.0,
                "seconds_sampling": 0.5, "seconds_update": 0.5, "images": 8 * args.prompts, "nfe_sampled": 1,
                "forward_backward_rows": 1, "images_per_second": 8.0, "floor_s": 1.0, "time_over_floor": 1.0,
                "tflops_per_second": 1.0, "mfu": None, "peak_memory_gib": None, "top_operators": None}

    monkeypatch.setattr(bench, "run_method", fake_run)
    out = tmp_path / "gpu.json"
    result = bench.main(["--size", "tiny", "--device", "cpu", "--prompts", "8", "--out", str(out),
                         "--methods", "treegrpo k2 d3", "mixgrpo", "ddpo"])
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows == {row["method"]: row for row in result["rows"]} and result["complete"]
    assert rows["treegrpo k2 d3"]["prompts"] == 2 and rows["treegrpo k2 d3"]["out_of_memory_at_prompts"] == [8, 4]
    assert rows["mixgrpo"]["error"] == "out of memory at prompts [8, 4, 2, 1]"
    assert rows["ddpo"]["error"] == "RuntimeError: broken on purpose"
    assert calls.count(("ddpo", 8)) == 1  # any other error is not retried
