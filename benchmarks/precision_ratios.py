"""Importance ratios before the first update, when sampling and the loss run the model in given precisions.

A TreeGRPO iteration (k = 3, d = 3, NFE 10, 8 prompts; windows starting at steps 0, 4 and 7, pooled)
is sampled on the embedded digits model and
on a tiny random SD3 transformer (the real ``SD3Transformer2DModel`` code at test size), then every
edge is re-scored by ``PPOClipLoss.log_probs`` in minibatches of 16 parents, exactly as the first
update would. With one precision for both (what the trainer does) the ratios should be 1; with
float32 sampling and a bf16 loss (the trainer before it shared one precision context) they are not.
Prints the ratio's std, the largest ``|ratio - 1|`` and the share of edges outside clip ranges
1e-4 and 1e-2, and writes JSON.

    python benchmarks/precision_ratios.py [--out benchmarks/results/precision_ratios.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from treegrpo.algos.losses import PPOClipLoss
from treegrpo.benchmarks import RESULTS
from treegrpo.envs import TreeSampler, parent_batch
from treegrpo.envs.precision import model_precision

PAIRS = (("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "bf16"))  # (sampling, loss)
CLIP_RANGES = (1e-4, 1e-2)
WINDOW_STARTS = (0, 4, 7)


def problems(scratch: Path) -> dict[str, tuple]:
    """``name -> (model, transition, cond, latent_shape)`` for the digits model and a tiny SD3 pipeline."""
    from treegrpo.families.pipelines import load_pipeline
    from treegrpo.problems.digits import digits_problem
    from treegrpo.testing.pipelines import save_tiny_sd3_pipeline

    digits = digits_problem(prompts_per_iteration=8)
    cond, _ = digits.prompts(0, torch.Generator().manual_seed(0))
    out = {"digits (SD3 MMDiT, 287k params)": (digits.model, digits.transition, cond, digits.latent_shape)}
    pipeline = load_pipeline(save_tiny_sd3_pipeline(scratch / "sd3"), "sd3", frozen_dtype=torch.float32)
    prompts = [f"a photo of object {i}" for i in range(8)]
    out["tiny SD3 pipeline"] = (pipeline.denoiser, pipeline.transition("flow_sde", 10, 0.7), pipeline.encode(prompts),
                                pipeline.latent_shape(16))
    return out


@torch.no_grad()
def ratios(model, transition, cond, latent_shape, sampling: str, loss_precision: str, minibatch: int = 16) -> torch.Tensor:
    """``[E]`` importance ratios of one iteration's edges, re-scored as the first update would."""
    sampler = TreeSampler(model, transition, branching=3, depth=3)
    loss = PPOClipLoss(model, transition, clip_range=1e-4)
    out = []
    for start in WINDOW_STARTS:
        with model_precision(sampling, "cpu"):
            rollout = sampler.sample(cond, latent_shape=latent_shape, window_start=start,
                                     generator=torch.Generator().manual_seed(start))
        batch = parent_batch(rollout.tree, cond=cond)
        with model_precision(loss_precision, "cpu"):
            for lo in range(0, batch.batch_size[0], minibatch):
                rows = batch[lo:lo + minibatch]
                new = loss.log_probs(rows)[0].double()
                out.append(torch.exp(new - rows["log_prob"].double())[rows["mask"]])
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "precision_ratios.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, (model, transition, cond, shape) in problems(Path(scratch)).items():
            for sampling, loss_precision in PAIRS:
                ratio = ratios(model, transition, cond, shape, sampling, loss_precision)
                deviation = (ratio - 1).abs()
                rows.append({"problem": name, "sampling": sampling, "loss": loss_precision, "edges": ratio.numel(),
                             "ratio_std": float(ratio.std(unbiased=False)), "max_deviation": float(deviation.max()),
                             **{f"clipped_at_{c:g}": float((deviation > c).double().mean()) for c in CLIP_RANGES}})
    header = f"{'problem':<34} {'sampling':>8} {'loss':>5} {'edges':>6} {'ratio std':>10} {'max |r-1|':>10} " + " ".join(
        f"{'clip ' + format(c, 'g'):>9}" for c in CLIP_RANGES)
    print(header)
    for row in rows:
        print(f"{row['problem']:<34} {row['sampling']:>8} {row['loss']:>5} {row['edges']:>6} {row['ratio_std']:>10.2e} "
              f"{row['max_deviation']:>10.2e} " + " ".join(f"{row[f'clipped_at_{c:g}']:>9.1%}" for c in CLIP_RANGES))
    result = {"rows": rows, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "command": "python benchmarks/precision_ratios.py"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
