"""Predict the floor of one training iteration at SD3.5-Medium, FLUX.1-dev, Wan2.1-T2V-1.3B and
Qwen-Image scale, before any GPU run.

The floor is ``NFE x evaluations per row x t_forward + trained rows x evaluations per row x
t_forward_backward`` (docs/performance.md). This script supplies each factor without weights or a
device:

- FLOPs per sample (an image, or one 81-frame video for Wan):
  :class:`~torch.utils.flop_counter.FlopCounterMode` over one forward, and one forward + backward
  (full fine-tuning: weight gradients; frozen base: input gradients only, the LoRA lower bound), of
  the transformer built on the meta device (no weights, no memory) from :data:`FLOOR_SIZES`
  (``gpu_iteration.SIZES`` plus the Wan2.1-T2V-1.3B and Qwen-Image shapes defined here);
- per-sample times: those FLOPs at a throughput, by default the one measured on one H100 for the
  SD3.5-M-shaped MMDiT (eager bf16: forward 9.6 ms/image, forward + backward 29.6 ms/image; the
  project's method notes), so a bigger model is assumed to run at the same utilisation;
- counts: the expected model evaluations of a TreeGRPO tree under the truncated geometric window
  (:func:`~treegrpo.envs.tree_nfe`, :func:`~treegrpo.envs.windows.truncated_geometric_probs`) and
  its parent rows ``1 + k + ... + k^(d-1)``; DanceGRPO's ``k^d`` trajectories (sharing the first
  step where the size's peers start a group from one noise) training ``int(0.6 (T + 1))`` steps
  each (its ``timestep_fraction``). Distilled guidance (FLUX.1-dev) is one forward per row;
  classifier-free guidance (Wan2.1, Qwen-Image's true CFG) is two, in sampling and in the update
  alike, since the trained policy is the guided one (the project's ``GuidedDenoiser`` samples and
  is trained, as Flow-GRPO trains with CFG).

Each size has its own default NFE and prompts per iteration (:data:`FLOOR_SETTINGS`: the settings
of its ``configs/*.yaml``); ``--steps`` and ``--prompts`` override them for every size.

    python benchmarks/predicted_floor.py                  # the four sizes, writes results/predicted_floor.json
    python benchmarks/predicted_floor.py --markdown       # and the docs/performance.md tables
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

FLOOR_SIZES: dict[str, dict[str, Any]] = {
    **SIZES,
    # Wan2.1-T2V-1.3B's transformer config (Wan-AI/Wan2.1-T2V-1.3B-Diffusers: dim 12 x 128 = 1536, 30
    # blocks, FFN 8960); 480 x 832, 81 frames: VAE latents 16 x 21 x 60 x 104 (4x in time, 8x in space),
    # 1 x 2 x 2 patches, 21 x 30 x 52 = 32 760 video tokens; 512 UMT5 tokens (WanPipeline pads every
    # prompt to max_sequence_length 512 and the cross-attention reads all of them).
    "wan21-1.3b": {"family": "wan",
                   "transformer": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
                                   "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
                                   "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
                                   "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024},
                   "tokens": 512, "latent": (16, 21, 60, 104)},
    # Qwen-Image's transformer config (60 MMDiT blocks, 24 heads of 128, Qwen2.5-VL's 3584-wide hidden
    # states); 512 px: latents 16 x 64 x 64 packed 2x2 by the transformer into 1024 tokens of 64; 64 text
    # tokens, a typical training prompt (HPDv2 / PickScore prompts run 10-40 words; the denoiser drops
    # the padding columns no row of a batch uses, so the batch's longest prompt is what the model sees).
    "qwen-image": {"family": "qwen_image",
                   "transformer": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
                                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                                   "guidance_embeds": False, "axes_dims_rope": (16, 56, 56)},
                   "tokens": 64, "latent": (16, 64, 64)},
}
"""Transformer shapes whose FLOPs are counted: ``gpu_iteration.SIZES`` and the two predicted-only sizes."""

FLOOR_SETTINGS: dict[str, dict[str, Any]] = {
    # configs/sd35_medium.yaml (the paper: NFE 10, 32 prompts); 6 for comparison. Guidance off.
    "sd35m": {"steps": (10, 6), "prompts": 32, "evaluations": 1, "shared_first_step": False,
              "guidance": "none (CFG 1)"},
    # configs/flux_dev.yaml (NFE 6); 10 as the paper. Distilled guidance: one forward per row. FLUX
    # peers (DanceGRPO's --init_same_noise) start a prompt's group from one noise.
    "flux-dev": {"steps": (10, 6), "prompts": 32, "evaluations": 1, "shared_first_step": True,
                 "guidance": "distilled 3.5 (1 forward/row)"},
    # configs/wan21_t2v_1.3b.yaml: NFE 20 (Flow-GRPO's Wan setting), 16 prompts; 10 for comparison.
    # CFG (4.5 there, Flow-GRPO's; WanPipeline's default 5.0): two forwards per row. DanceGRPO's video
    # scripts start a group from one noise (--init_same_noise).
    "wan21-1.3b": {"steps": (20, 10), "prompts": 16, "evaluations": 2, "shared_first_step": True,
                   "guidance": "CFG 4.5-5 (2 forwards/row)"},
    # configs/qwen_image.yaml: NFE 10 (Flow-GRPO's Qwen-Image setting), 32 prompts; 6 for comparison.
    # True CFG 4: two forwards per row. One shared noise per group, as DanceGRPO's FLUX runs (no peer
    # publishes DanceGRPO on Qwen-Image; sharing is the baseline's cheaper reading).
    "qwen-image": {"steps": (10, 6), "prompts": 32, "evaluations": 2, "shared_first_step": True,
                   "guidance": "true CFG 4 (2 forwards/row)"},
}
"""Per size: default NFE list and prompts per iteration, model evaluations per row (2 with CFG), whether
DanceGRPO's trajectories share their first step, and the guidance in words (for the table)."""
DEFAULT_FLOOR = {"steps": (10, 6), "prompts": 32, "evaluations": 1, "shared_first_step": False, "guidance": "none"}
DEFAULT_SIZES = ("sd35m", "flux-dev", "wan21-1.3b", "qwen-image")


def _network_class(family: str) -> type:
    import diffusers

    return getattr(diffusers, {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel",
                               "wan": "WanTransformer3DModel", "qwen_image": "QwenImageTransformer2DModel"}[family])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), choices=sorted(FLOOR_SIZES))
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="NFE T of a trajectory (default: each size's, FLOOR_SETTINGS)")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per iteration (default: each size's; the paper: 32)")
    parser.add_argument("--layers", type=int, default=None,
                        help="count FLOPs with this many blocks of each kind (a quick check; the FLOPs then "
                             "describe the reduced model, not the named size)")
    parser.add_argument("--markdown", action="store_true", help="also print one docs/performance.md table per size")
    parser.add_argument("--branching", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5, help="truncated-geometric window parameter")
    parser.add_argument("--forward-ms", type=float, default=9.6, help=f"measured {REFERENCE} forward, ms/image")
    parser.add_argument("--forward-backward-ms", type=float, default=29.6,
                        help=f"measured {REFERENCE} forward + backward, ms/image")
    parser.add_argument("--out", type=Path, default=RESULTS / "predicted_floor.json")
    return parser.parse_args(argv)


def _inputs(size: dict[str, Any], network: torch.nn.Module) -> dict[str, Any]:
    """One sample's transformer inputs on the meta device (SD3: patchified inside; FLUX: packed tokens;
    Wan: a ``[1, C, F, H, W]`` video latent, patchified inside; Qwen-Image: packed 2x2 tokens, text
    mask ``None`` (every kept column valid, as the project's denoiser passes it))."""
    meta = {"device": "meta"}
    config = network.config
    family = size["family"]
    if family == "wan":
        return {"hidden_states": torch.empty(1, *size["latent"], **meta), "timestep": torch.empty(1, **meta),
                "encoder_hidden_states": torch.empty(1, size["tokens"], config.text_dim, **meta),
                "return_dict": False}
    channels, height, width = size["latent"]
    if family == "qwen_image":
        tokens = (height // 2) * (width // 2)
        return {"hidden_states": torch.empty(1, tokens, 4 * channels, **meta),
                "encoder_hidden_states": torch.empty(1, size["tokens"], config.joint_attention_dim, **meta),
                "encoder_hidden_states_mask": None, "timestep": torch.empty(1, **meta),
                "img_shapes": [[(1, height // 2, width // 2)]], "return_dict": False}
    if family == "flux":
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


def transformer_config(name: str, layers: int | None = None) -> dict[str, Any]:
    """The size's transformer config; with ``layers``, every block count (``num_layers``, FLUX's
    ``num_single_layers``, SD3's dual-attention layers) cut to at most ``layers``."""
    config = dict(FLOOR_SIZES[name]["transformer"])
    if layers is not None:
        for key in ("num_layers", "num_single_layers"):
            if key in config:
                config[key] = min(config[key], layers)
        if "dual_attention_layers" in config:
            config["dual_attention_layers"] = [i for i in config["dual_attention_layers"] if i < config["num_layers"]]
    return config


def image_flops(name: str, layers: int | None = None) -> dict[str, float]:
    """Forward, full forward + backward, and frozen-base forward + backward FLOPs of one sample (an
    image; a video for Wan), counted by ``FlopCounterMode`` on the transformer built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    size = FLOOR_SIZES[name]
    with torch.device("meta"):
        network = _network_class(size["family"])(**transformer_config(name, layers))
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


def floor_settings(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The size's :data:`FLOOR_SETTINGS`, with ``--steps`` / ``--prompts`` where given."""
    settings = dict(FLOOR_SETTINGS.get(name, {**DEFAULT_FLOOR,
                                              "shared_first_step": FLOOR_SIZES[name]["family"] == "flux"}))
    if args.steps is not None:
        settings["steps"] = tuple(args.steps)
    if args.prompts is not None:
        settings["prompts"] = args.prompts
    return settings


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    flops = {name: image_flops(name, args.layers) for name in dict.fromkeys([REFERENCE, *args.sizes])}
    forward_rate = flops[REFERENCE]["forward"] / (args.forward_ms / 1e3)
    backward_rate = flops[REFERENCE]["forward_backward"] / (args.forward_backward_ms / 1e3)
    group = args.branching**args.depth
    rows = []
    for name in args.sizes:
        per_image, settings = flops[name], floor_settings(name, args)
        t_forward = per_image["forward"] / forward_rate
        t_full, t_frozen = per_image["forward_backward"] / backward_rate, per_image["forward_backward_frozen"] / backward_rate
        evaluations, prompts = settings["evaluations"], settings["prompts"]
        for steps in settings["steps"]:
            methods = {f"treegrpo k{args.branching} d{args.depth}": tree_counts(steps, args.branching, args.depth,
                                                                               args.alpha),
                       "grpo (DanceGRPO settings)": dance_counts(steps, group, settings["shared_first_step"])}
            for method, (nfe, trained) in methods.items():
                nfe_total, trained_total = nfe * prompts, trained * prompts
                sampling_s = nfe_total * evaluations * t_forward
                update_s = trained_total * evaluations * t_full
                rows.append({
                    "size": name, "method": method, "steps": steps, "prompts": prompts,
                    "guidance": settings["guidance"], "evaluations_per_row": evaluations,
                    "nfe_per_iteration": nfe_total, "forwards_per_iteration": nfe_total * evaluations,
                    "forward_backward_rows": trained_total,
                    "sampling_s": sampling_s, "update_s": update_s, "floor_s": sampling_s + update_s,
                    "floor_frozen_base_s": sampling_s + trained_total * evaluations * t_frozen,
                    "forward_ms_per_image": 1e3 * t_forward, "forward_backward_ms_per_image": 1e3 * t_full,
                    "forward_backward_frozen_ms_per_image": 1e3 * t_frozen,
                    "forward_tflop": per_image["forward"] / 1e12,
                    "forward_backward_tflop": per_image["forward_backward"] / 1e12,
                    "forward_backward_frozen_tflop": per_image["forward_backward_frozen"] / 1e12,
                    "parameters_b": per_image["parameters"] / 1e9,
                    "layers": args.layers,
                })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'size':<11}{'method':<27}{'T':>3}{'NFE/iter':>10}{'evals':>6}{'rows':>7}{'sample s':>10}"
              f"{'update s':>10}{'floor s':>10}{'frozen s':>10}{'fwd ms':>9}{'TFLOP':>8}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['size']:<11}{r['method']:<27}{r['steps']:>3}{r['nfe_per_iteration']:>10.0f}"
                     f"{r['evaluations_per_row']:>6}{r['forward_backward_rows']:>7}{r['sampling_s']:>10.1f}"
                     f"{r['update_s']:>10.1f}{r['floor_s']:>10.1f}{r['floor_frozen_base_s']:>10.1f}"
                     f"{r['forward_ms_per_image']:>9.1f}{r['forward_tflop']:>8.2f}")
    return "\n".join(lines)


def _thousands(value: float, digits: int = 0) -> str:
    """``12 345.6``: thousands grouped by spaces, as docs/performance.md writes them."""
    return f"{value:,.{digits}f}".replace(",", " ")


def markdown(rows: list[dict[str, Any]]) -> str:
    """One docs/performance.md table per size: NFE, model forwards (x2 with CFG), trained rows, the floor
    split into sampling + update, and the frozen-base floor."""
    out = []
    for name in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == name]
        first = mine[0]
        out.append(f"`{name}`: {first['parameters_b']:.2f} B parameters, {first['forward_tflop']:.2f} TFLOP forward, "
                   f"{first['forward_backward_tflop']:.2f} forward + backward, {first['forward_backward_frozen_tflop']:.2f} "
                   f"frozen base per sample; {first['forward_ms_per_image']:.1f} / {first['forward_backward_ms_per_image']:.1f}"
                   f" / {first['forward_backward_frozen_ms_per_image']:.1f} ms; {first['prompts']} prompts; "
                   f"guidance: {first['guidance']}\n")
        out.append("| method | NFE | NFE / iteration | forwards / iteration | fwd+bwd rows | floor (eager, full backward) "
                   "| with frozen-base backward |")
        out.append("|---|---|---|---|---|---|---|")
        for r in mine:
            method = (f"TreeGRPO k={r['method'].split()[1][1:]}, d={r['method'].split()[2][1:]}"
                      if r["method"].startswith("treegrpo") else "GRPO, DanceGRPO settings")
            rows_text = _thousands(r["forward_backward_rows"])
            if r["evaluations_per_row"] != 1:
                rows_text += f" (x{r['evaluations_per_row']})"
            out.append(f"| {method} | {r['steps']} | {_thousands(r['nfe_per_iteration'])} | "
                       f"{_thousands(r['forwards_per_iteration'])} | {rows_text} | "
                       f"{_thousands(r['sampling_s'], 1)} + {_thousands(r['update_s'], 1)} = {_thousands(r['floor_s'], 1)} s | "
                       f"{_thousands(r['floor_frozen_base_s'], 1)} s |")
        ratios = []
        for steps in dict.fromkeys(r["steps"] for r in mine):
            pair = {r["method"].split()[0]: r["floor_s"] for r in mine if r["steps"] == steps}
            if {"treegrpo", "grpo"} <= pair.keys():
                ratios.append(f"NFE {steps}: {pair['grpo'] / pair['treegrpo']:.1f}x")
        out.append(f"\nFloor ratio DanceGRPO / TreeGRPO: {', '.join(ratios)}.\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = predict(args)
    print(table(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    per_size = {name: {**floor_settings(name, args), "tokens": FLOOR_SIZES[name]["tokens"],
                       "latent": FLOOR_SIZES[name]["latent"], "transformer": transformer_config(name, args.layers)}
                for name in args.sizes}
    args.out.write_text(json.dumps({"settings": settings, "reference": REFERENCE, "sizes": per_size, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
