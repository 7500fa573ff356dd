"""Predict the floor of one training iteration at SD3.5-Medium and FLUX.1-dev scale, before any GPU run.

The floor is ``NFE x t_forward + trained rows x t_forward_backward`` (docs/performance.md). This
script supplies each factor without weights or a device:

- FLOPs per image: :class:`~torch.utils.flop_counter.FlopCounterMode` over one forward, and one
  forward + backward (full fine-tuning: weight gradients; frozen base: input gradients only, the
  LoRA lower bound), of the transformer built on the meta device at 512 px from
  ``gpu_iteration.SIZES``;
- per-image times: those FLOPs at a throughput, by default the one measured on one H100 for the
  SD3.5-M-shaped MMDiT (eager bf16: forward 9.6 ms/image, forward + backward 29.6 ms/image; the
  project's method notes), so a bigger model is assumed to run at the same utilisation;
- counts: the expected model evaluations of a TreeGRPO tree under the truncated geometric window
  (:func:`~treegrpo.envs.tree_nfe`, :func:`~treegrpo.envs.windows.truncated_geometric_probs`) and
  its parent rows ``1 + k + ... + k^(d-1)``; DanceGRPO's ``k^d`` trajectories (sharing the first
  step where ``--shared-first-step``) training ``int(0.6 (T + 1))`` steps each (its
  ``timestep_fraction``). Distilled guidance (FLUX.1-dev) is one forward per row; CFG would double
  the sampling column.

    python benchmarks/predicted_floor.py                          # SD3.5-M and FLUX.1-dev, NFE 10 and 6
    python benchmarks/predicted_floor.py --sizes flux-dev --steps 6 --prompts 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from treegrpo.benchmarks import RESULTS
from treegrpo.benchmarks.gpu_iteration import SIZES
from treegrpo.envs.rollout import tree_nfe
from treegrpo.envs.windows import truncated_geometric_probs

REFERENCE = "sd35m"
"""The size whose measured pass times set the assumed throughput."""
DANCE_TRAIN_FRACTION = 0.6
"""DanceGRPO's ``timestep_fraction``: the share of its ``T + 1`` schedule points it trains."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["sd35m", "flux-dev"], choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 6], help="NFE T of a trajectory")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per iteration (the paper: 32)")
    parser.add_argument("--branching", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="truncated-geometric window parameter")
    parser.add_argument("--forward-ms", type=float, default=9.6, help=f"measured {REFERENCE} forward, ms/image")
    parser.add_argument("--forward-backward-ms", type=float, default=29.6,
                        help=f"measured {REFERENCE} forward + backward, ms/image")
    parser.add_argument("--out", type=Path, default=RESULTS / "predicted_floor.json")
    return parser.parse_args(argv)


def _inputs(size: dict[str, Any], network: torch.nn.Module) -> dict[str, Any]:
    """One image's transformer inputs on the meta device (SD3: patchified inside; FLUX: packed tokens)."""
    meta = {"device": "meta"}
    channels, height, width = size["latent"]
    config = network.config
    if size["family"] == "flux":
        tokens = (height // 2) * (width // 2)
        return {"hidden_states": torch.empty(1, tokens, 4 * channels, **meta),
                "encoder_hidden_states": torch.empty(1, size["tokens"], config.joint_attention_dim, **meta),
                "pooled_projections": torch.empty(1, config.pooled_projection_dim, **meta),
                "timestep": torch.empty(1, **meta), "guidance": torch.empty(1, **meta),
                "img_ids": torch.empty(tokens, 3, **meta), "txt_ids": torch.empty(size["tokens"], 3, **meta),
                "return_dict": False}
    return {"hidden_states": torch.empty(1, channels, height, width, **meta),
            "encoder_hidden_states": torch.empty(1, size["tokens"], config.joint_attention_dim, **meta),
            "pooled_projections": torch.empty(1, config.pooled_projection_dim, **meta),
            "timestep": torch.empty(1, **meta), "return_dict": False}


def image_flops(name: str) -> dict[str, float]:
    """Forward, full forward + backward, and frozen-base forward + backward FLOPs of one image."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    size = SIZES[name]
    network_class = FluxTransformer2DModel if size["family"] == "flux" else SD3Transformer2DModel
    with torch.device("meta"):
        network = network_class(**size["transformer"])
    counts = {}
    for label, weights_grad in (("forward", None), ("forward_backward", True), ("forward_backward_frozen", False)):
        inputs = _inputs(size, network)
        if weights_grad is not None:
            network.requires_grad_(weights_grad)
            inputs["hidden_states"].requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            out = network(**inputs)[0]
            if weights_grad is not None:
                out.sum().backward()
        counts[label] = float(counter.get_total_flops())
    counts["parameters"] = float(sum(p.numel() for p in network.parameters()))
    return counts


def tree_counts(steps: int, branching: int, depth: int, alpha: float) -> tuple[float, int]:
    """Expected model evaluations of one tree under the geometric window, and its trained parent rows."""
    starts = steps - depth + 1
    probs = truncated_geometric_probs(alpha, starts)
    nfe = sum(float(p) * tree_nfe(steps, branching, depth, s) for s, p in enumerate(probs))
    return nfe, sum(branching**j for j in range(depth))


def dance_counts(steps: int, group: int, shared_first_step: bool) -> tuple[float, int]:
    """Model evaluations and trained rows of DanceGRPO's ``group`` trajectories for one prompt."""
    nfe = 1 + group * (steps - 1) if shared_first_step else group * steps
    return float(nfe), group * int(DANCE_TRAIN_FRACTION * (steps + 1))


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    flops = {name: image_flops(name) for name in dict.fromkeys([REFERENCE, *args.sizes])}
    forward_rate = flops[REFERENCE]["forward"] / (args.forward_ms / 1e3)
    backward_rate = flops[REFERENCE]["forward_backward"] / (args.forward_backward_ms / 1e3)
    group = args.branching**args.depth
    rows = []
    for name in args.sizes:
        per_image = flops[name]
        t_forward = per_image["forward"] / forward_rate
        t_full, t_frozen = per_image["forward_backward"] / backward_rate, per_image["forward_backward_frozen"] / backward_rate
        shared = SIZES[name]["family"] == "flux"  # FLUX peers start a prompt's group from one noise
        for steps in args.steps:
            methods = {f"treegrpo k{args.branching} d{args.depth}": tree_counts(steps, args.branching, args.depth,
                                                                               args.alpha),
                       "grpo (DanceGRPO settings)": dance_counts(steps, group, shared)}
            for method, (nfe, trained) in methods.items():
                nfe_total, trained_total = nfe * args.prompts, trained * args.prompts
                sampling_s = nfe_total * t_forward
                rows.append({
                    "size": name, "method": method, "steps": steps, "prompts": args.prompts,
                    "nfe_per_iteration": nfe_total, "forward_backward_rows": trained_total,
                    "sampling_s": sampling_s, "update_s": trained_total * t_full,
                    "floor_s": sampling_s + trained_total * t_full,
                    "floor_frozen_base_s": sampling_s + trained_total * t_frozen,
                    "forward_ms_per_image": 1e3 * t_forward, "forward_backward_ms_per_image": 1e3 * t_full,
                    "forward_tflop": per_image["forward"] / 1e12,
                    "forward_backward_tflop": per_image["forward_backward"] / 1e12,
                    "forward_backward_frozen_tflop": per_image["forward_backward_frozen"] / 1e12,
                    "parameters_b": per_image["parameters"] / 1e9,
                })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'size':<9}{'method':<27}{'T':>3}{'NFE/iter':>10}{'rows':>7}{'sample s':>10}{'update s':>10}"
              f"{'floor s':>10}{'frozen s':>10}{'fwd ms':>8}{'TFLOP':>7}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['size']:<9}{r['method']:<27}{r['steps']:>3}{r['nfe_per_iteration']:>10.0f}"
                     f"{r['forward_backward_rows']:>7}{r['sampling_s']:>10.1f}{r['update_s']:>10.1f}"
                     f"{r['floor_s']:>10.1f}{r['floor_frozen_base_s']:>10.1f}{r['forward_ms_per_image']:>8.1f}"
                     f"{r['forward_tflop']:>7.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = predict(args)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "reference": REFERENCE, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
