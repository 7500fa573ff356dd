"""`treegrpo bench --gpu` at the tiny sizes on CPU: every method runs, and the accounting in its JSON
agrees with the samplers' NFE formula and with itself; the FLUX-shaped run uses FLUX's adapter and schedule."""

from __future__ import annotations

import json

from treegrpo.envs import tree_nfe

from treegrpo import cli


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
    from treegrpo.envs import FluxDenoiser

    import benchmarks.gpu_iteration as bench

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
