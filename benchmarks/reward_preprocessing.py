"""How close each reward scorer's preprocessing is to its official pipeline, and what the exact mode costs.

Three measurements behind docs/rewards.md, on random images (seeded):

1. the torch Pillow resize (:func:`~treegrpo.rewards.pil_resize.pil_bicubic_resize`) against
   ``Image.resize(BICUBIC)``: largest difference in 8-bit levels and the fraction of exact values;
2. the model pixels of each pipeline (hpsv2's, torchvision's, the CLIP processor's) in exact and
   fast mode against the official one (:mod:`treegrpo.testing.official_preprocessing`), in 8-bit
   levels, for smooth 8-bit, smooth float and 8-bit noise images at square, non-square and
   half-pixel-offset sizes;
3. seconds per batch of 16 on this machine, fast against exact.

    python benchmarks/reward_preprocessing.py                 # prints three tables, writes JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from treegrpo.benchmarks import RESULTS
from treegrpo.rewards.pil_resize import pil_bicubic_resize
from treegrpo.rewards.preprocess import clip_processor_preprocess, hpsv2_preprocess, torchvision_clip_preprocess
from treegrpo.testing import official_preprocessing as official

RESIZES = [((512, 512), (224, 224)), ((768, 512), (336, 224)), ((512, 640), (224, 280)), ((1024, 1024), (224, 224)),
           ((1024, 448), (512, 224)), ((520, 512), (227, 224)), ((100, 90), (300, 270))]
"""(input, output) sizes of the resize check: the CLIP sizes, a tall downscale and a 3x upscale."""
SHAPES = [(512, 512), (768, 512), (512, 640), (1024, 1024), (227, 224), (520, 512), (150, 100)]
"""Image sizes of the pixel check: square, non-square, half-pixel crop offsets, an upscale."""
LEVELS = torch.tensor(official.OPENAI_STD).view(1, 3, 1, 1) * 255  # normalised units -> 8-bit levels


def pipelines(size: int) -> dict[str, tuple[Any, Any]]:
    """Pipeline name -> (the project's :class:`Preprocess`, the official transform)."""
    processor = {"size": {"shortest_edge": size}, "crop_size": size}
    return {"hpsv2": (hpsv2_preprocess(size), official.hpsv2_transform(size)),
            "torchvision (clipscore, aesthetic, imagereward)": (torchvision_clip_preprocess(size),
                                                                 official.torchvision_transform(size)),
            "clip processor (pickscore)": (clip_processor_preprocess(processor, size),
                                           official.clip_image_processor(size))}


def smooth(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Images in ``[0, 1]`` with structure at 1/32 of the side (what generated images look like, roughly)."""
    coarse = torch.rand(count, 3, max(height // 32, 2), max(width // 32, 2), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)


def images(content: str, count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    if content == "noise":
        return torch.randint(0, 256, (count, 3, height, width), generator=generator).float() / 255
    x = smooth(count, height, width, generator)
    return (x * 255).round() / 255 if content == "smooth 8-bit" else x


def resize_rows(generator: torch.Generator) -> list[dict[str, Any]]:
    rows = []
    for (height, width), out in RESIZES:
        for content in ("noise", "smooth"):
            levels = (images(content, 4, height, width, generator) * 255).round()
            gap = (pil_bicubic_resize(levels, out) - official.pil_resize(levels, out)).abs()
            rows.append({"input": f"{height}x{width}", "output": f"{out[0]}x{out[1]}", "content": content,
                         "values": gap.numel(), "max_levels": gap.max().item(),
                         "fraction_exact": (gap == 0).float().mean().item()})
    return rows


def pixel_rows(size: int, generator: torch.Generator) -> list[dict[str, Any]]:
    rows = []
    for name, (ours, reference) in pipelines(size).items():
        for height, width in SHAPES:
            for content in ("smooth 8-bit", "smooth float", "noise"):
                x = images(content, 4, height, width, generator)
                target = official.apply(reference, x)
                if target.shape[-2:] != (size, size):  # hpsv2 leaves a side already at size unpadded
                    continue
                exact, fast = ((ours(x, exact=True) - target).abs() * LEVELS, (ours(x) - target).abs() * LEVELS)
                rows.append({"pipeline": name, "image": f"{height}x{width}", "content": content,
                             "exact_max": exact.max().item(), "exact_mean": exact.mean().item(),
                             "fast_max": fast.max().item(), "fast_mean": fast.mean().item()})
    return rows


def cost_rows(size: int, batch: int, generator: torch.Generator) -> list[dict[str, Any]]:
    rows = []
    for name, (ours, _) in pipelines(size).items():
        for height, width in ((512, 512), (1024, 1024)):
            x = smooth(batch, height, width, generator)
            seconds = {}
            for exact in (False, True):
                ours(x, exact=exact)  # warm-up
                start = time.perf_counter()
                ours(x, exact=exact)
                seconds[exact] = time.perf_counter() - start
            rows.append({"pipeline": name, "image": f"{height}x{width}", "batch": batch,
                         "fast_s": seconds[False], "exact_s": seconds[True]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="the scorers' input side")
    parser.add_argument("--batch", type=int, default=16, help="images per timed call")
    parser.add_argument("--out", type=Path, default=RESULTS / "reward_preprocessing.json")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    result = {"resize": resize_rows(generator), "pixels": pixel_rows(args.size, generator),
              "cost": cost_rows(args.size, args.batch, generator), "torch_threads": torch.get_num_threads()}
    values = sum(r["values"] for r in result["resize"])
    exact = sum(r["values"] * r["fraction_exact"] for r in result["resize"])
    result["resize_summary"] = {"values": values, "max_levels": max(r["max_levels"] for r in result["resize"]),
                                "fraction_exact": exact / values}
    for title, key in (("Pillow resize in torch vs Image.resize(BICUBIC), 8-bit levels", "resize"),
                       ("model pixels vs the official pipeline, 8-bit levels", "pixels"),
                       ("seconds per batch, fast vs exact", "cost")):
        print(f"\n{title}\n{markdown(result[key])}")
    summary = result["resize_summary"]
    print(f"\nresize overall: max {summary['max_levels']:.0f} levels, {summary['fraction_exact']:.6f} of "
          f"{summary['values']} values exact")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
