"""`treegrpo bench --gpu` at the tiny size on CPU: every method runs, and the accounting in its JSON
agrees with the samplers' NFE formula and with itself."""

from __future__ import annotations

import json

from treegrpo.algos import cli
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
